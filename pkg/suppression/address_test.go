package suppression_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/postflow/postflow/pkg/suppression"
)

func TestNormalize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
	}{
		{"user@example.com", "user@example.com"},
		{"  User@Example.COM \t\n", "user@example.com"},
		{"First.Last+Tag@Sub.Example.ORG", "first.last+tag@sub.example.org"},
		{"user@Bücher.de", "user@xn--bcher-kva.de"},
		{"user@xn--bcher-kva.de", "user@xn--bcher-kva.de"},
		{"ÜSER@example.com", "üser@example.com"},
		{`"a@b"@example.com`, `"a@b"@example.com`},
		{"x@localhost", "x@localhost"},
		{strings.Repeat("a", 64) + "@" + strings.Repeat("b", 185) + ".com", strings.Repeat("a", 64) + "@" + strings.Repeat("b", 185) + ".com"},
	}
	for _, tc := range tests {
		got, err := suppression.Normalize(tc.in)
		if err != nil {
			t.Errorf("Normalize(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Normalize(%q) = %q, want %q", tc.in, got, tc.want)
		}
		again, err := suppression.Normalize(got)
		if err != nil || again != got {
			t.Errorf("Normalize(%q) = %q, %v; not idempotent", got, again, err)
		}
	}
}

func TestNormalizeRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in string
	}{
		{"empty", ""},
		{"blank", " \t "},
		{"no at", "user.example.com"},
		{"empty local part", "@example.com"},
		{"empty domain", "user@"},
		{"only at", "@"},
		{"space inside", "us er@example.com"},
		{"tab inside", "user@exa\tmple.com"},
		{"no-break space", "user\u00a0x@example.com"},
		{"LF", "user@example.com\nBcc: x@y.z"},
		{"CR", "user\r@example.com"},
		{"NUL", "user\x00@example.com"},
		{"DEL", "user\x7f@example.com"},
		{"C1 control", "user\u0085x@example.com"},
		{"invalid UTF-8", "us\xffer@example.com"},
		{"unquoted at in local part", "a@b@example.com"},
		{"address literal", "user@[192.0.2.1]"},
		{"underscore in domain", "user@ex_ample.com"},
		{"255 octets", strings.Repeat("a", 64) + "@" + strings.Repeat("b", 186) + ".com"},
		{"over 254 octets only once lower-cased", strings.Repeat("Ⱥ", 100) + "@example.com"}, // U+023A: 2 octets, U+2C65: 3
	}
	for _, tc := range tests {
		got, err := suppression.Normalize(tc.in)
		if err == nil {
			t.Errorf("%s: Normalize(%q) = %q, want an error", tc.name, tc.in, got)
			continue
		}
		if !errors.Is(err, suppression.ErrInvalidAddress) || !errors.Is(err, suppression.ErrInvalidArgument) {
			t.Errorf("%s: Normalize(%q) error %v does not wrap ErrInvalidAddress and ErrInvalidArgument", tc.name, tc.in, err)
		}
	}
}
