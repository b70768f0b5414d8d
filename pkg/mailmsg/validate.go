package mailmsg

import (
	"fmt"
	"mime"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits fixed by the API contract (postflow.v1.SendRequest).
const (
	maxTags              = 10
	maxTagLen            = 64
	maxMetadataKeys      = 10
	maxMetadataKeyLen    = 64
	maxMetadataValueLen  = 256
	maxIdempotencyKeyLen = 255
	// maxHeaderNameLen keeps "Name: " well inside one folded header line;
	// go-message's folding misbehaves on names of 74 octets or more.
	maxHeaderNameLen = 64
)

// reservedHeaders are header names Postflow writes itself, or that would
// leak Bcc recipients or forge trace, routing or authentication data.
// Keys are lower-case; "arc-" names are refused by prefix.
var reservedHeaders = map[string]bool{
	"from": true, "to": true, "cc": true, "bcc": true, "reply-to": true,
	"subject": true, "date": true, "message-id": true, "mime-version": true,
	"content-type": true, "content-transfer-encoding": true,
	"received": true, "return-path": true, "dkim-signature": true,
	"authentication-results": true, "sender": true,
}

func isReservedHeader(name string) bool {
	n := strings.ToLower(name)
	return reservedHeaders[n] || strings.HasPrefix(n, "arc-")
}

// validated is the outcome of validateInput: the violations and, for the
// fields that parsed, their parsed forms.
type validated struct {
	errs       []FieldError
	from       Address
	to, cc     []Address
	replyTo    []Address
	recipients []Address
	smtputf8   bool
	raw        *rawMessage // nil in structured mode
}

func (v *validated) add(field, format string, args ...any) {
	v.errs = append(v.errs, FieldError{Field: field, Description: fmt.Sprintf(format, args...)})
}

// address parses one address field, recording a violation on failure.
func (v *validated) address(field, s string) (Address, bool) {
	a, err := ParseAddress(s)
	if err != nil {
		v.add(field, "%s", err.Error())
		return Address{}, false
	}
	if a.needsSMTPUTF8() {
		v.smtputf8 = true
	}
	return a, true
}

func validateInput(in Input, lim Limits) *validated {
	v := &validated{}
	rawMode := len(in.Raw) > 0

	if in.From == "" {
		v.add("from", "is required")
	} else if a, ok := v.address("from", in.From); ok {
		v.from = a
	}

	v.validateRecipients(in, lim)

	if rawMode && len(in.ReplyTo) > 0 {
		v.add("reply_to", "must be empty when raw is set")
	} else {
		for i, s := range in.ReplyTo {
			if a, ok := v.address(fmt.Sprintf("reply_to[%d]", i), s); ok {
				v.replyTo = append(v.replyTo, a)
			}
		}
	}

	if rawMode {
		for _, f := range []struct {
			name string
			set  bool
		}{
			{"subject", in.Subject != ""},
			{"text", in.Text != ""},
			{"html", in.HTML != ""},
			{"headers", len(in.Headers) > 0},
		} {
			if f.set {
				v.add(f.name, "must be empty when raw is set")
			}
		}
		v.raw = v.validateRaw(in.Raw, lim)
	} else {
		v.validateStructured(in, lim)
	}

	v.validateTags(in.Tags)
	v.validateMetadata(in.Metadata)
	v.validateIdempotencyKey(in.IdempotencyKey)
	return v
}

func (v *validated) validateRecipients(in Input, lim Limits) {
	total := len(in.To) + len(in.Cc) + len(in.Bcc)
	if total == 0 {
		v.add("to", "at least one recipient is required across to, cc and bcc")
		return
	}
	seen := make(map[string]string, total)
	n := 0
	for _, list := range []struct {
		name  string
		addrs []string
		dst   *[]Address
	}{
		{"to", in.To, &v.to},
		{"cc", in.Cc, &v.cc},
		{"bcc", in.Bcc, nil},
	} {
		for i, s := range list.addrs {
			n++
			if n == lim.MaxRecipients+1 {
				v.add(list.name, "too many recipients: %d across to, cc and bcc, limit %d", total, lim.MaxRecipients)
			}
			field := fmt.Sprintf("%s[%d]", list.name, i)
			a, ok := v.address(field, s)
			if !ok {
				continue
			}
			if first, dup := seen[a.key()]; dup {
				v.add(field, "duplicates %s (%s)", first, a.Addr)
				continue
			}
			seen[a.key()] = field
			v.recipients = append(v.recipients, a)
			if list.dst != nil {
				*list.dst = append(*list.dst, a)
			}
		}
	}
}

func (v *validated) validateStructured(in Input, lim Limits) {
	if in.Text == "" && in.HTML == "" {
		v.add("text", "at least one of text and html is required")
	}
	for _, f := range []struct{ name, body string }{{"text", in.Text}, {"html", in.HTML}} {
		switch {
		case !utf8.ValidString(f.body):
			v.add(f.name, "invalid UTF-8")
		case strings.IndexByte(f.body, 0) >= 0:
			v.add(f.name, "contains NUL")
		}
	}
	// Building never shrinks a body (quoted-printable only grows it), so
	// this refuses hopeless sizes before any encoding work is done.
	if n := len(in.Text) + len(in.HTML); n > lim.MaxMessageBytes {
		v.add(sizeField(in), "text and html are %d octets, limit %d for the whole message", n, lim.MaxMessageBytes)
	}

	if err := checkHeaderValue(in.Subject, lim); err != nil {
		v.add("subject", "%s", err)
	}

	if len(in.Headers) > lim.MaxHeaders {
		v.add("headers", "too many headers: %d, limit %d", len(in.Headers), lim.MaxHeaders)
	}
	for i, h := range in.Headers {
		if err := checkHeaderName(h.Name); err != nil {
			v.add(fmt.Sprintf("headers[%d].name", i), "%s", err)
		}
		if err := checkHeaderValue(h.Value, lim); err != nil {
			v.add(fmt.Sprintf("headers[%d].value", i), "%s", err)
		}
	}
}

// checkHeaderName enforces RFC 5322 §2.2 field-name syntax (printable
// US-ASCII 33–126 except ':') and the reserved list.
func checkHeaderName(name string) error {
	if name == "" {
		return fmt.Errorf("is empty")
	}
	if len(name) > maxHeaderNameLen {
		return fmt.Errorf("is %d octets, limit %d", len(name), maxHeaderNameLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 33 || c > 126 || c == ':' {
			return fmt.Errorf("holds %s; names are printable US-ASCII without ':' or spaces", describeOctet(c))
		}
	}
	if isReservedHeader(name) {
		return fmt.Errorf("%q is set by Postflow or not allowed", name)
	}
	return nil
}

// checkHeaderValue rejects anything that could end the header line or that
// is not text, and bounds the encoded length.
func checkHeaderValue(s string, lim Limits) error {
	// TAB is folding white space and harmless in a value.
	if err := checkText(s, true); err != nil {
		return err
	}
	if n := len(encodeHeaderValue(s)); n > lim.MaxHeaderValueBytes {
		return fmt.Errorf("is %d octets once encoded, limit %d", n, lim.MaxHeaderValueBytes)
	}
	return nil
}

// encodeHeaderValue RFC 2047-encodes s when it holds non-ASCII text, exactly
// as go-message's SetText does.
func encodeHeaderValue(s string) string {
	return mime.QEncoding.Encode("utf-8", s)
}

func (v *validated) validateTags(tags []string) {
	if len(tags) > maxTags {
		v.add("tags", "too many tags: %d, limit %d", len(tags), maxTags)
	}
	for i, t := range tags {
		if err := checkTag(t); err != nil {
			v.add(fmt.Sprintf("tags[%d]", i), "%s", err)
		}
	}
}

func checkTag(t string) error {
	if t == "" || len(t) > maxTagLen {
		return fmt.Errorf("must be 1 to %d characters, got %d", maxTagLen, len(t))
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("holds %s; only [A-Za-z0-9_.-] is allowed", describeOctet(c))
		}
	}
	return nil
}

func (v *validated) validateMetadata(md map[string]string) {
	if len(md) > maxMetadataKeys {
		v.add("metadata", "too many keys: %d, limit %d", len(md), maxMetadataKeys)
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	slices.Sort(keys) // deterministic violation order
	for _, k := range keys {
		val := md[k]
		switch {
		case !utf8.ValidString(k):
			v.add("metadata", "key %q: invalid UTF-8", k)
		case k == "" || utf8.RuneCountInString(k) > maxMetadataKeyLen:
			v.add("metadata", "key %q: must be 1 to %d characters", k, maxMetadataKeyLen)
		case strings.ContainsFunc(k, unicode.IsControl):
			v.add("metadata", "key %q: contains a control character", k)
		case !utf8.ValidString(val):
			v.add("metadata", "value of key %q: invalid UTF-8", k)
		case utf8.RuneCountInString(val) > maxMetadataValueLen:
			v.add("metadata", "value of key %q: %d characters, limit %d", k, utf8.RuneCountInString(val), maxMetadataValueLen)
		}
	}
}

func (v *validated) validateIdempotencyKey(k string) {
	if len(k) > maxIdempotencyKeyLen {
		v.add("idempotency_key", "is %d characters, limit %d", len(k), maxIdempotencyKeyLen)
		return
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; c < 33 || c > 126 {
			v.add("idempotency_key", "holds %s; only printable US-ASCII without spaces is allowed", describeOctet(c))
			return
		}
	}
}

// describeOctet names c for an error message without echoing raw control
// or non-ASCII octets.
func describeOctet(c byte) string {
	if c > ' ' && c < 0x7f {
		return fmt.Sprintf("%q", c)
	}
	return fmt.Sprintf("octet 0x%02X", c)
}
