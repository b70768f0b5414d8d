package api

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"

	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/mailmsg"
	"github.com/postflow/postflow/pkg/queue"
)

func TestToStatus(t *testing.T) {
	t.Parallel()
	const secret = "dial tcp 10.1.2.3:4222: secret internal detail"
	validation := &mailmsg.ValidationError{Violations: []mailmsg.FieldError{
		{Field: "to[2]", Description: "not an address"},
		{Field: "headers[3].value", Description: "contains CR"},
	}}

	tests := []struct {
		name     string
		err      error
		wantCode codes.Code
		// wantFields are the BadRequest field violations expected, in order.
		wantFields []string
	}{
		{"validation error", validation, codes.InvalidArgument, []string{"to[2]", "headers[3].value"}},
		{"wrapped validation error", fmt.Errorf("send: %w", validation), codes.InvalidArgument, []string{"to[2]", "headers[3].value"}},
		{"not found", eventlog.ErrNotFound, codes.NotFound, nil},
		{"wrapped not found", fmt.Errorf("status: %w", eventlog.ErrNotFound), codes.NotFound, nil},
		{"queue full", fmt.Errorf("%w: %w", queue.ErrFull, errors.New(secret)), codes.ResourceExhausted, nil},
		{"queue full wrapped twice", fmt.Errorf("send: %w", fmt.Errorf("%w: maximum messages exceeded", queue.ErrFull)), codes.ResourceExhausted, nil},
		{"message too large for the stream", fmt.Errorf("%w: %w", queue.ErrTooLarge, errors.New(secret)), codes.InvalidArgument, nil},
		{"queue unavailable", fmt.Errorf("%w: %w", queue.ErrUnavailable, errors.New(secret)), codes.Unavailable, nil},
		{"queue unavailable wrapped twice", fmt.Errorf("send: %w", fmt.Errorf("%w: no responders", queue.ErrUnavailable)), codes.Unavailable, nil},
		{"deadline exceeded", fmt.Errorf("publish: %w", context.DeadlineExceeded), codes.Unavailable, nil},
		{"unavailable with deadline", fmt.Errorf("%w: %w", queue.ErrUnavailable, context.DeadlineExceeded), codes.Unavailable, nil},
		{"canceled", fmt.Errorf("%w: %w", queue.ErrUnavailable, context.Canceled), codes.Canceled, nil},
		{"unknown", errors.New(secret), codes.Internal, nil},
		{"wrapped unknown", fmt.Errorf("build: %w", errors.New(secret)), codes.Internal, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := toStatus(tc.err)
			if st.Code() != tc.wantCode {
				t.Errorf("toStatus(%v).Code() = %v, want %v", tc.err, st.Code(), tc.wantCode)
			}
			if strings.Contains(st.Message(), "secret") || strings.Contains(st.Message(), "10.1.2.3") {
				t.Errorf("toStatus(%v).Message() = %q, leaks the internal cause", tc.err, st.Message())
			}
			if tc.wantCode == codes.Internal && st.Message() == tc.err.Error() {
				t.Errorf("toStatus(%v).Message() = %q, want a generic message", tc.err, st.Message())
			}

			var fields []string
			for _, d := range st.Details() {
				br, ok := d.(*errdetails.BadRequest)
				if !ok {
					continue
				}
				for _, v := range br.GetFieldViolations() {
					if v.GetDescription() == "" {
						t.Errorf("toStatus(%v) violation %q has no description", tc.err, v.GetField())
					}
					fields = append(fields, v.GetField())
				}
			}
			if strings.Join(fields, ",") != strings.Join(tc.wantFields, ",") {
				t.Errorf("toStatus(%v) BadRequest fields = %q, want %q", tc.err, fields, tc.wantFields)
			}
		})
	}
}

func TestIsClientError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want bool
	}{
		{&mailmsg.ValidationError{}, true},
		{fmt.Errorf("send: %w", &mailmsg.ValidationError{}), true},
		{queue.ErrFull, false},
		{errors.New("boom"), false},
		{nil, false},
	}
	for _, tc := range tests {
		if got := isClientError(tc.err); got != tc.want {
			t.Errorf("isClientError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestNewMessageID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                 string
		tenantA, keyA        string
		tenantB, keyB        string
		wantSame, checkValid bool
	}{
		{"same tenant and key", "acme", "order-42", "acme", "order-42", true, true},
		{"different key", "acme", "order-42", "acme", "order-43", false, true},
		{"different tenant", "acme", "order-42", "other", "order-42", false, true},
		// The separator keeps field boundaries apart.
		{"shifted boundary", "ab", "c", "a", "bc", false, true},
		{"no key is random", "acme", "", "acme", "", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := newMessageID(tc.tenantA, tc.keyA)
			b := newMessageID(tc.tenantB, tc.keyB)
			if (a == b) != tc.wantSame {
				t.Errorf("newMessageID(%q, %q) = %q, newMessageID(%q, %q) = %q, want equal = %v",
					tc.tenantA, tc.keyA, a, tc.tenantB, tc.keyB, b, tc.wantSame)
			}
			for _, id := range []string{a, b} {
				if !validMessageID(id) {
					t.Errorf("validMessageID(%q) = false for newMessageID output, want true", id)
				}
				if !queue.IsSubjectToken(id) {
					t.Errorf("newMessageID output %q is not a subject token", id)
				}
			}
		})
	}
}

func TestValidMessageID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want bool
	}{
		{"abcdefghijklmnopqrstuvwx", true},
		{"234567abcdefghijklmnopqr", true},
		{"", false},
		{"abcdefghijklmnopqrstuvw", false},   // 23
		{"abcdefghijklmnopqrstuvwxy", false}, // 25
		{"ABCDEFGHIJKLMNOPQRSTUVWX", false},  // upper case
		{"abcdefghijklmnopqrstuvw1", false},  // 1 is not base32
		{"abcdefghijklmnopqrstuvw8", false},  // 8 is not base32
		{"abcdefghijklmnopqrstuvw0", false},
		{"abcdefghijklmnopqrstuv.x", false},
		{"abcdefghijklmnopqrstuv>x", false},
		{"abcdefghijklmnopqrstuv x", false},
		{"abcdefghijklmnopqrstuv-x", false},
		{"abcdefghijklmnopqrstuvwé", false}, // 25 bytes
		{"abcdefghijklmnopqrstuvé", false},  // 24 bytes, non-ASCII
	}
	for _, tc := range tests {
		if got := validMessageID(tc.in); got != tc.want {
			t.Errorf("validMessageID(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
