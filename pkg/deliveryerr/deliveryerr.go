// Package deliveryerr defines the one error type that carries a delivery
// outcome: an SMTP reply code, an RFC 3463 enhanced status code, a message safe
// to show the sender, and the private cause. Every layer of the delivery path
// (DNS routing, egress policy, the SMTP client, expiry) reports failures as an
// *Error so that the worker classifies them in one place.
package deliveryerr

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Error is a delivery failure. Code is the SMTP reply code (RFC 5321 §4.2),
// either received from the remote server or synthesised locally (for DNS and
// policy failures) with the code a server would have used. Enhanced is the
// RFC 3463 status code in dotted form ("5.1.1"), empty when unknown. Message
// is safe to show to the sender; Err, if set, is the private cause for logs.
type Error struct {
	Code     int
	Enhanced string
	Message  string
	// Remote reports whether the reply came from the remote server rather
	// than being synthesised by Postflow.
	Remote bool
	Err    error
}

// Error formats the reply the way it would appear on the wire.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(strconv.Itoa(e.Code))
	if e.Enhanced != "" {
		b.WriteByte(' ')
		b.WriteString(e.Enhanced)
	}
	if e.Message != "" {
		b.WriteByte(' ')
		b.WriteString(e.Message)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the private cause.
func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether the failure may succeed on a later attempt. It
// derives from the reply class: 4xx is temporary, 5xx permanent. An enhanced
// code, when present, wins over the reply code's class, as RFC 3463 §2 makes
// it the more specific signal; codes outside 4xx/5xx are treated as temporary.
func (e *Error) Temporary() bool {
	if len(e.Enhanced) > 0 {
		switch e.Enhanced[0] {
		case '4':
			return true
		case '5':
			return false
		}
	}
	return e.Code/100 != 5
}

// Temporary builds a locally synthesised temporary failure.
func Temporary(code int, enhanced, msg string, cause error) *Error {
	return &Error{Code: code, Enhanced: enhanced, Message: msg, Err: cause}
}

// Permanent builds a locally synthesised permanent failure.
func Permanent(code int, enhanced, msg string, cause error) *Error {
	return &Error{Code: code, Enhanced: enhanced, Message: msg, Err: cause}
}

// Outcome is the classification of an error for retry purposes.
type Outcome int

// Outcomes, from the worker's point of view.
const (
	// OutcomeTemporary means: retry later.
	OutcomeTemporary Outcome = iota
	// OutcomePermanent means: never retry; the recipient bounced.
	OutcomePermanent
)

// String returns "temporary" or "permanent".
func (o Outcome) String() string {
	if o == OutcomePermanent {
		return "permanent"
	}
	return "temporary"
}

// Classify maps any error to an outcome and the *Error that describes it.
// Errors that are not an *Error anywhere in their chain (network failures,
// timeouts, bugs) are temporary: retrying is the safe default, and max age
// bounds how long that can last. Classify(nil) returns OutcomeTemporary and
// nil and must not be relied upon.
func Classify(err error) (Outcome, *Error) {
	var de *Error
	if errors.As(err, &de) {
		if de.Temporary() {
			return OutcomeTemporary, de
		}
		return OutcomePermanent, de
	}
	if err == nil {
		return OutcomeTemporary, nil
	}
	return OutcomeTemporary, &Error{Code: 451, Enhanced: "4.4.0", Message: "delivery attempt failed", Err: err}
}

// FormatEnhanced renders a three-part enhanced code; it returns "" when the
// class is zero (no enhanced code).
func FormatEnhanced(class, subject, detail int) string {
	if class == 0 {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", class, subject, detail)
}
