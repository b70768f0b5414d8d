package api

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/mailmsg"
	"github.com/postflow/postflow/pkg/queue"
)

// toStatus is the one place where errors become gRPC statuses. Internal
// causes never reach the client: unknown errors become a generic INTERNAL.
func toStatus(err error) *status.Status {
	var ve *mailmsg.ValidationError
	var grpcErr interface{ GRPCStatus() *status.Status }
	switch {
	case errors.As(err, &grpcErr):
		// Already a deliberate status (ALREADY_EXISTS, say).
		return grpcErr.GRPCStatus()
	case errors.As(err, &ve):
		br := &errdetails.BadRequest{}
		for _, v := range ve.Violations {
			br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Description})
		}
		st := status.New(codes.InvalidArgument, ve.Error())
		if withDetails, derr := st.WithDetails(br); derr == nil {
			return withDetails
		}
		return st
	case errors.Is(err, eventlog.ErrNotFound):
		return status.New(codes.NotFound, "message not found")
	case errors.Is(err, queue.ErrTooLarge):
		return status.New(codes.InvalidArgument, "message larger than the queue accepts")
	case errors.Is(err, queue.ErrFull):
		return status.New(codes.ResourceExhausted, "queue full: message not accepted, retry later")
	case errors.Is(err, context.DeadlineExceeded):
		// Our publish deadline (or the caller's) passed before the PubAck.
		return status.New(codes.Unavailable, "queue did not acknowledge in time: retry with the same idempotency_key")
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, "canceled")
	case errors.Is(err, queue.ErrUnavailable):
		return status.New(codes.Unavailable, "queue unavailable: retry with the same idempotency_key")
	default:
		return status.New(codes.Internal, "internal error")
	}
}

// isClientError reports whether err is the caller's fault and not worth a
// warning in our logs.
func isClientError(err error) bool {
	var ve *mailmsg.ValidationError
	if errors.As(err, &ve) || errors.Is(err, eventlog.ErrNotFound) {
		return true
	}
	switch status.Code(err) {
	case codes.AlreadyExists, codes.InvalidArgument, codes.NotFound, codes.OutOfRange:
		return true
	}
	return false
}

// unavailable is UNAVAILABLE with msg: a dependency failed, retry.
func unavailable(msg string) error {
	return status.New(codes.Unavailable, msg).Err()
}

// badField is INVALID_ARGUMENT naming one request field, as Send's
// validation errors name theirs.
func badField(field, desc string) error {
	return toStatus(&mailmsg.ValidationError{Violations: []mailmsg.FieldError{{Field: field, Description: desc}}}).Err()
}
