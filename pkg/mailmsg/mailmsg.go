// Package mailmsg validates one message submission and builds the exact
// octets Postflow hands to SMTP DATA.
//
// Its scope is the message itself: address syntax (RFC 5321 Mailbox rules on
// top of RFC 5322 parsing), header safety (no injection, no reserved or
// routing headers), size limits, MIME construction for structured content
// and light-touch preparation of raw content. It knows nothing about
// tenants, verified domains, suppression or queues, and it does not depend
// on the protobuf API: the API layer maps a SendRequest into Input and maps
// ValidationError's field violations back into a BadRequest detail. Field
// names in violations use the proto field paths ("to[2]",
// "headers[3].value").
//
// # Raw messages
//
// A raw message is kept octet for octet, with three exceptions:
//
//   - Every bare CR and bare LF becomes CRLF (NormalizeCRLF), so nothing on
//     the wire can end DATA early (SMTP smuggling). A NUL is refused.
//   - Message-ID and Date fields are added when missing.
//   - A line over 998 octets (RFC 5322 §2.1.1) is made to fit rather than
//     refused. A header line is folded at whitespace (RFC 5322 §2.2.3); one
//     with no whitespace to fold at is refused on "raw". Each MIME leaf part
//     whose body has such a line is re-encoded: base64 stays base64 with
//     76-octet lines, anything else (7bit, 8bit, binary, none, and
//     quoted-printable with overlong lines) is decoded and re-encoded as
//     quoted-printable. The part's other header fields keep their octets;
//     Content-Transfer-Encoding is replaced in place; a message without
//     MIME-Version gets one, and a part without Content-Type gets
//     "text/plain; charset=" us-ascii, utf-8 or unknown-8bit (RFC 1428),
//     whichever its content is. Multipart delimiters are written anew
//     around the same boundaries; a preamble is kept unless it would itself
//     need rewriting, and epilogues are dropped. A transfer encoding that
//     cannot be decoded is refused on "raw".
//
// 8-bit content: a message that is rewritten for a long line, and whose
// header and envelope are ASCII (it does not need SMTPUTF8), also has its
// 8-bit leaf parts re-encoded as quoted-printable, so the stored message is
// 7-bit throughout: deliverable to a server without 8BITMIME (RFC 6152),
// and a DKIM signature made later survives a relay's downgrade (RFC 6376
// §5.3). A message that needs SMTPUTF8 keeps its 8-bit parts (SMTPUTF8
// implies 8BITMIME). A message with no long line is not rewritten at all,
// 8-bit content included: it is sent as is, with BODY=8BITMIME where the
// server offers it. Only a message with a long line pays for MIME parsing
// beyond validation.
package mailmsg

import (
	"bytes"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Default limits, used for any Limits field that is zero or negative.
const (
	// DefaultMaxMessageBytes matches the documented API maximum; the gRPC
	// MaxRecvMsgSize must stay above it.
	DefaultMaxMessageBytes = 10 << 20
	// DefaultMaxRecipients is per request across to, cc and bcc, like
	// SES v1's 50.
	DefaultMaxRecipients = 50
	// DefaultMaxHeaders bounds custom headers only.
	DefaultMaxHeaders = 50
	// DefaultMaxHeaderValueBytes is the RFC 5322 §2.1.1 line limit; values
	// are measured once RFC 2047-encoded.
	DefaultMaxHeaderValueBytes = 998
)

// Limits bounds one submission. A zero or negative field takes its default.
type Limits struct {
	// MaxMessageBytes bounds the built Body (default DefaultMaxMessageBytes).
	MaxMessageBytes int
	// MaxRecipients bounds to, cc and bcc together (default
	// DefaultMaxRecipients).
	MaxRecipients int
	// MaxHeaders bounds the custom headers (default DefaultMaxHeaders).
	MaxHeaders int
	// MaxHeaderValueBytes bounds the subject and each custom header value
	// after RFC 2047 encoding (default DefaultMaxHeaderValueBytes).
	MaxHeaderValueBytes int
}

func (l Limits) withDefaults() Limits {
	if l.MaxMessageBytes <= 0 {
		l.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if l.MaxRecipients <= 0 {
		l.MaxRecipients = DefaultMaxRecipients
	}
	if l.MaxHeaders <= 0 {
		l.MaxHeaders = DefaultMaxHeaders
	}
	if l.MaxHeaderValueBytes <= 0 {
		l.MaxHeaderValueBytes = DefaultMaxHeaderValueBytes
	}
	return l
}

// Header is one custom header field requested by the caller.
type Header struct{ Name, Value string }

// Input is one message submission, mirroring postflow.v1.SendRequest.
// Either structured content (Subject, Text, HTML, Headers, ReplyTo) or Raw
// is given, never both; a non-empty Raw selects raw mode.
type Input struct {
	From                 string
	To, Cc, Bcc, ReplyTo []string
	Subject, Text, HTML  string
	Headers              []Header
	Tags                 []string
	Metadata             map[string]string
	IdempotencyKey       string
	Raw                  []byte
}

// FieldError is one problem with one request field. Field is the proto
// field path ("from", "to[2]", "headers[3].name", "metadata"); Description
// is lower-case text safe to show the caller.
type FieldError struct {
	Field       string
	Description string
}

// Error returns "<field>: <description>".
func (e FieldError) Error() string { return e.Field + ": " + e.Description }

// ValidationError lists every problem found in an Input, in field order.
// Build returns it (as *ValidationError) whenever the input is invalid; the
// API layer turns it into INVALID_ARGUMENT with a BadRequest detail.
type ValidationError struct {
	Violations []FieldError
}

// Error joins all violations.
func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		parts[i] = v.Error()
	}
	return "invalid message: " + strings.Join(parts, "; ")
}

// Built is a validated message ready for queueing.
type Built struct {
	// MessageID is the RFC 5322 Message-ID without angle brackets. It is
	// generated ("<random>@msgIDDomain") unless a raw message carried its
	// own, in which case it is the caller's value and may not be unique.
	MessageID string
	// EnvelopeFrom is the MAIL FROM address (From's Addr).
	EnvelopeFrom string
	// Recipients are the envelope recipients in request order: to, cc, bcc.
	Recipients []Address
	// Body is the whole message, headers included, with CRLF line endings
	// only, no line over 998 octets (raw input with such a line is folded
	// or re-encoded; see the package doc) and a final CRLF; it is ready for
	// DATA apart from dot-stuffing, which is the SMTP client's job.
	Body []byte
	// SMTPUTF8 reports that the message needs the SMTPUTF8 extension
	// (RFC 6531): an envelope or Reply-To address has a non-ASCII local part,
	// or a raw message's header section holds non-ASCII octets.
	SMTPUTF8 bool
}

// Build validates in against lim and, when it is valid, builds the message.
//
// now stamps the Date header and must not be zero. msgIDDomain is the right
// side of generated Message-IDs and must be a valid host name.
//
// If the input is invalid, the error is a *ValidationError that lists every
// violation, not just the first. Any other error (bad now or msgIDDomain, no
// randomness, a MIME writer failure) is an internal error, not the
// caller's fault.
func Build(in Input, lim Limits, now time.Time, msgIDDomain string) (*Built, error) {
	if now.IsZero() {
		return nil, errors.New("mailmsg: zero time for the Date header")
	}
	idDomain, err := normalizeDomain(msgIDDomain)
	if err != nil {
		return nil, fmt.Errorf("mailmsg: invalid message-id domain: %w", err)
	}
	lim = lim.withDefaults()

	v := validateInput(in, lim)
	if len(v.errs) > 0 {
		return nil, &ValidationError{Violations: v.errs}
	}

	b := &Built{
		EnvelopeFrom: v.from.Addr,
		Recipients:   v.recipients,
		SMTPUTF8:     v.smtputf8,
	}
	if v.raw != nil {
		b.Body, b.MessageID, err = v.raw.build(now, idDomain)
		if err != nil {
			return nil, err
		}
	} else {
		b.MessageID, err = newMessageID(idDomain)
		if err != nil {
			return nil, err
		}
		b.Body, err = buildStructured(in, v, now, b.MessageID)
		if err != nil {
			return nil, err
		}
	}
	if len(b.Body) > lim.MaxMessageBytes {
		return nil, &ValidationError{Violations: []FieldError{{
			Field:       sizeField(in),
			Description: fmt.Sprintf("message is %d octets once built, limit %d", len(b.Body), lim.MaxMessageBytes),
		}}}
	}
	return b, nil
}

// sizeField names the field to blame for an oversized message: raw, or the
// larger of the two bodies.
func sizeField(in Input) string {
	switch {
	case len(in.Raw) > 0:
		return "raw"
	case len(in.HTML) > len(in.Text):
		return "html"
	default:
		return "text"
	}
}

// msgIDEncoding is lower-case base32 without padding: safe in a msg-id
// (RFC 5322 §3.6.4 dot-atom-text) and case-insensitive-unique.
var msgIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newMessageID returns "<26 base32 chars>@domain" carrying 128 random bits,
// so ids cannot be guessed or collide.
func newMessageID(domain string) (string, error) {
	var r [16]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("mailmsg: message-id randomness: %w", err)
	}
	return msgIDEncoding.EncodeToString(r[:]) + "@" + domain, nil
}

// ensureFinalCRLF makes b end with CRLF: SMTP's "<CRLF>.<CRLF>" terminator
// needs the last line to be complete (RFC 5321 §4.1.1.4).
func ensureFinalCRLF(b []byte) []byte {
	if !bytes.HasSuffix(b, []byte("\r\n")) {
		b = append(b, '\r', '\n')
	}
	return b
}
