package mailmsg

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

const (
	// maxLineOctets is RFC 5322 §2.1.1's hard limit, CRLF excluded. A raw
	// message with a longer line is folded or re-encoded to fit (see
	// reencode.go); one whose header line cannot be folded is refused.
	maxLineOctets = 998
	// maxMIMEDepth bounds multipart nesting in raw messages. Real mail nests
	// 3–5 deep (mixed > related > alternative); deeper trees only cost
	// parser work here and at the receiver.
	maxMIMEDepth = 20
)

// rawReservedHeaders may not appear in a raw message: Bcc would leak
// recipients, the rest would forge trace or authentication data. Keys are
// lower-case; "arc-" names are refused by prefix.
var rawReservedHeaders = []string{
	"bcc", "resent-bcc", "received", "return-path", "dkim-signature", "authentication-results",
}

// rawMessage is a raw submission that passed validation.
type rawMessage struct {
	norm      []byte // CRLF-normalised, folded and re-encoded message; may alias Input.Raw
	messageID string // the message's own Message-ID, without brackets; "" if none
	hasDate   bool
}

// validateRaw checks a raw message and records violations on "raw". It
// returns nil when the message is invalid.
func (v *validated) validateRaw(raw []byte, lim Limits) *rawMessage {
	bad := func(format string, args ...any) *rawMessage {
		v.add("raw", format, args...)
		return nil
	}
	if len(raw) > lim.MaxMessageBytes {
		return bad("message is %d octets, limit %d", len(raw), lim.MaxMessageBytes)
	}
	if bytes.IndexByte(raw, 0) >= 0 {
		return bad("contains NUL")
	}
	// norm may alias raw; nothing below writes to it.
	norm := raw
	if !IsCanonicalCRLF(raw) {
		norm = NormalizeCRLF(raw)
	}
	if bytes.HasPrefix(norm, crlf) {
		return bad("has no header section")
	}
	hdrEnd := bytes.Index(norm, []byte("\r\n\r\n"))
	longBody := false
	if _, l := longestLine(norm); l > maxLineOctets {
		// Only a message with a long line pays for this.
		hdr, body := norm, []byte(nil)
		if hdrEnd >= 0 {
			hdr, body = norm[:hdrEnd+2], norm[hdrEnd+4:]
		}
		folded, err := foldHeader(hdr)
		if err != nil {
			return bad("%s", err)
		}
		longBody = hasLongLine(body)
		if len(folded) != len(hdr) {
			norm = folded
			if body != nil {
				norm = concat(folded, crlf, body)
				hdrEnd = len(folded) - 2
			}
		}
	}

	var hdrBytes []byte
	if hdrEnd < 0 { // header section only, no body
		hdrBytes = append(ensureFinalCRLF(bytes.Clone(norm)), '\r', '\n')
	} else {
		hdrBytes = norm[:hdrEnd+4]
	}
	th, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(hdrBytes)))
	if err != nil {
		return bad("malformed header section: %s", err)
	}
	h := mail.Header{Header: message.Header{Header: th}}

	r := &rawMessage{norm: norm}
	ok := true
	problem := func(format string, args ...any) {
		v.add("raw", format, args...)
		ok = false
	}
	switch n := len(h.Values("From")); {
	case n == 0:
		problem("has no From header")
	case n > 1:
		problem("has %d From headers, want exactly one", n)
	default:
		if _, err := h.AddressList("From"); err != nil {
			problem("malformed From header: %s", err)
		}
	}
	for _, k := range []string{"Date", "Message-Id", "Subject", "Sender"} {
		if n := len(h.Values(k)); n > 1 {
			problem("has %d %s headers, want at most one", n, k)
		}
	}
	for f := th.Fields(); f.Next(); {
		k := strings.ToLower(f.Key())
		if strings.HasPrefix(k, "arc-") || containsString(rawReservedHeaders, k) {
			problem("must not contain a %s header", f.Key())
		}
	}
	if h.Has("Message-Id") {
		id, err := h.MessageID()
		if err != nil || id == "" {
			problem("malformed Message-ID header")
		}
		r.messageID = id
	}
	r.hasDate = h.Has("Date")
	if err := checkMIMETree(norm); err != nil {
		problem("%s", err)
	}
	if !isASCII(string(hdrBytes)) {
		v.smtputf8 = true
	}
	if ok && longBody {
		// A message that needs SMTPUTF8 is sent 8-bit anyway, so only
		// one that does not is made 7-bit while it is rewritten.
		h, b, err := reencoder{sevenBit: !v.smtputf8}.message(norm[:hdrEnd+2], norm[hdrEnd+4:])
		if err != nil {
			problem("%s", err)
		} else if r.norm = concat(h, crlf, b); hasLongLine(r.norm) {
			// Unreachable unless the rewrite missed a case; Built.Body
			// promises the limit.
			n, l := longestLine(r.norm)
			problem("line %d is %d octets once re-encoded, limit %d", n, l, maxLineOctets)
		}
	}
	if !ok {
		return nil
	}
	return r
}

// build prepends the missing Message-ID and Date fields, leaving every
// validated octet in place, and returns the body and the message's id.
func (r *rawMessage) build(now time.Time, idDomain string) ([]byte, string, error) {
	id := r.messageID
	var th textproto.Header
	// Added bottom-up: textproto writes the newest field first.
	if !r.hasDate {
		var mh mail.Header
		mh.SetDate(now)
		th.Add("Date", mh.Get("Date"))
	}
	if id == "" {
		var err error
		if id, err = newMessageID(idDomain); err != nil {
			return nil, "", err
		}
		th.Add("Message-ID", "<"+id+">")
	}
	var buf bytes.Buffer
	buf.Grow(len(r.norm) + 200)
	if th.Len() > 0 {
		if err := textproto.WriteHeader(&buf, th); err != nil {
			return nil, "", fmt.Errorf("mailmsg: write added headers: %w", err)
		}
		buf.Truncate(buf.Len() - 2) // drop the blank line that ends a header section
	}
	buf.Write(r.norm)
	return ensureFinalCRLF(buf.Bytes()), id, nil
}

// longestLine returns the 1-based number and length (CRLF excluded) of the
// longest line of a CRLF-normalised message.
func longestLine(b []byte) (lineNo, length int) {
	n := 0
	for len(b) > 0 {
		n++
		i := bytes.Index(b, []byte("\r\n"))
		l := i
		if i < 0 {
			l = len(b)
			b = nil
		} else {
			b = b[i+2:]
		}
		if l > length {
			lineNo, length = n, l
		}
	}
	return lineNo, length
}

// checkMIMETree walks a raw message's MIME structure: multipart nesting is
// bounded and base64 parts must decode, so a message the receiver cannot
// parse is refused at submission instead of bouncing later. Unknown charsets
// and transfer encodings are left to the receiver.
func checkMIMETree(msg []byte) error {
	e, err := message.Read(bytes.NewReader(msg))
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		return fmt.Errorf("malformed MIME structure: %w", err)
	}
	return walkEntity(e, 0)
}

func walkEntity(e *message.Entity, depth int) error {
	if depth > maxMIMEDepth {
		return fmt.Errorf("MIME parts nested more than %d deep", maxMIMEDepth)
	}
	mr := e.MultipartReader()
	if mr == nil {
		if strings.EqualFold(strings.TrimSpace(e.Header.Get("Content-Transfer-Encoding")), "base64") {
			if _, err := io.Copy(io.Discard, e.Body); err != nil {
				return fmt.Errorf("invalid base64 in a MIME part at depth %d: %w", depth, err)
			}
		}
		return nil
	}
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
			return fmt.Errorf("malformed multipart at depth %d: %w", depth, err)
		}
		if err := walkEntity(p, depth+1); err != nil {
			return err
		}
	}
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
