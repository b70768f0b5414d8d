package dsn

import (
	"net/mail"
	"strings"

	"github.com/emersion/go-message/textproto"
)

// field is one unfolded header field. Keys keep their spelling; lookups
// compare them case-insensitively, as RFC 5322 §1.2.2 and RFC 3464 §2.1
// require.
type field struct {
	key, value string
}

// nextLine returns the line of s starting at pos without its terminator
// (LF or CRLF) and the offset of the line after it.
func nextLine(s string, pos int) (line string, next int) {
	i := strings.IndexByte(s[pos:], '\n')
	if i < 0 {
		line, next = s[pos:], len(s)
	} else {
		line, next = s[pos:pos+i], pos+i+1
	}
	return strings.TrimSuffix(line, "\r"), next
}

// validFieldName reports whether k is an RFC 5322 §2.2 field name: printable
// US-ASCII except colon.
func validFieldName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

// readFields reads one block of header fields from s starting at pos: a
// message header section (RFC 5322 §2.2), or one of the header-like blocks
// of a delivery-status or feedback-report body (RFC 3464 §2.1, RFC 5965
// §3.1). The block ends at an empty line; next is the offset after that
// line, or len(s).
//
// It is lenient where real mail is broken: folded lines are unfolded with
// one space (RFC 5322 §2.2.3), a line that is neither a field nor a
// continuation (an mbox "From " line, a comment, stray text) is skipped
// rather than ending the block, and a continuation with no field before it
// is dropped. go-message's textproto.ReadHeader stops at the first such
// line, which would lose the rest of a DSN.
func readFields(s string, pos int) (fs []field, next int) {
	// The value being read is built here and stored when the field ends,
	// so that a field folded over many lines costs linear time.
	var value strings.Builder
	open := false
	end := func() {
		if open {
			fs[len(fs)-1].value = value.String()
			open = false
		}
	}
	for pos < len(s) {
		var line string
		line, pos = nextLine(s, pos)
		if line == "" {
			end()
			return fs, pos
		}
		if line[0] == ' ' || line[0] == '\t' {
			if t := strings.TrimSpace(line); open && t != "" {
				if value.Len() > 0 {
					value.WriteByte(' ')
				}
				value.WriteString(t)
			}
			continue
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		// A space before the colon violates RFC 5322 but is common.
		key := strings.TrimRight(line[:colon], " \t")
		if !validFieldName(key) {
			continue
		}
		end()
		fs = append(fs, field{key: key})
		value.Reset()
		value.WriteString(strings.TrimSpace(line[colon+1:]))
		open = true
	}
	end()
	return fs, pos
}

// fieldBlocks splits s into its blank-line separated field blocks, skipping
// empty ones. At most maxBlocks blocks are returned.
func fieldBlocks(s string) [][]field {
	var blocks [][]field
	for pos := 0; pos < len(s) && len(blocks) < maxBlocks; {
		var fs []field
		fs, pos = readFields(s, pos)
		if len(fs) > 0 {
			blocks = append(blocks, fs)
		}
	}
	return blocks
}

// get returns the first value of key in fs, or "".
func get(fs []field, key string) string {
	for _, f := range fs {
		if strings.EqualFold(f.key, key) {
			return f.value
		}
	}
	return ""
}

// values returns every value of key in fs, in order.
func values(fs []field, key string) []string {
	var vs []string
	for _, f := range fs {
		if strings.EqualFold(f.key, key) {
			vs = append(vs, f.value)
		}
	}
	return vs
}

// toHeader converts fs into a go-message header with the same field order.
func toHeader(fs []field) textproto.Header {
	var h textproto.Header
	// Header.Add prepends to the fields already there, so add in reverse.
	for i := len(fs) - 1; i >= 0; i-- {
		h.Add(fs[i].key, fs[i].value)
	}
	return h
}

// isAtom reports whether s can be an RFC 3464 address-type, mta-name-type
// or diagnostic-type (an RFC 5322 atom; in practice letters, digits and
// hyphens such as "rfc822", "dns", "smtp", "x-postfix", "utf-8").
func isAtom(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// typedValue splits an RFC 3464 typed field value, "type; value" (§2.2.2
// Reporting-MTA, §2.3.1 Original-Recipient, §2.3.2 Final-Recipient, §2.3.5
// Remote-MTA, §2.3.6 Diagnostic-Code), and returns the value. A value
// without a well-formed type, as some MTAs write, is returned whole.
func typedValue(v string) string {
	v = strings.TrimSpace(v)
	i := strings.IndexByte(v, ';')
	if i <= 0 || !isAtom(strings.TrimSpace(v[:i])) {
		return v
	}
	return strings.TrimSpace(v[i+1:])
}

// hostName returns the host of an mta-name field value: the type prefix,
// any trailing comment ("mx.example.com (192.0.2.1, the server for ...)"),
// address-literal brackets and a root-label dot are removed.
func hostName(v string) string {
	f := strings.Fields(typedValue(v))
	if len(f) == 0 {
		return ""
	}
	h := strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(f[0], "["), "]"), ".")
	if strings.HasPrefix(h, "(") {
		return ""
	}
	return h
}

// unbracket removes whitespace and one pair of enclosing angle brackets:
// "<a@b>" becomes "a@b", "<>" becomes "".
func unbracket(v string) string {
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, "<") {
		if i := strings.IndexByte(v, '>'); i > 0 {
			return strings.TrimSpace(v[1:i])
		}
		return strings.TrimSpace(v[1:])
	}
	return v
}

// maxAddrLen bounds a candidate address; RFC 5321 §4.5.3.1.3 limits a path
// to 256 octets, so anything much longer is not an address.
const maxAddrLen = 320

// cleanAddr returns v as a bare mailbox address, or "" when v does not look
// like one (no "@", whitespace inside, too long).
func cleanAddr(v string) string {
	a := unbracket(v)
	a = strings.TrimPrefix(a, "mailto:")
	a = strings.TrimRight(a, ".,;:>")
	a = strings.TrimLeft(a, "<(\"'")
	a = strings.TrimRight(a, ")\"'")
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at == len(a)-1 || len(a) > maxAddrLen || strings.ContainsAny(a, " \t<>()[],;") {
		return ""
	}
	return a
}

// headerAddrs returns the addresses of an address-list header value such as
// To (RFC 5322 §3.4). It falls back to picking "@" tokens when the list does
// not parse, which is common in bounces.
func headerAddrs(v string) []string {
	if strings.TrimSpace(v) == "" {
		return nil
	}
	var out []string
	if list, err := mail.ParseAddressList(v); err == nil {
		for _, a := range list {
			if c := cleanAddr(a.Address); c != "" {
				out = append(out, c)
			}
		}
		return out
	}
	for _, tok := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		if c := cleanAddr(tok); c != "" {
			out = append(out, c)
		}
	}
	return out
}

// messageID returns a Message-ID value (RFC 5322 §3.6.4) without angle
// brackets or surrounding comments.
func messageID(v string) string {
	v = strings.TrimSpace(v)
	if i := strings.IndexByte(v, '<'); i >= 0 {
		if j := strings.IndexByte(v[i:], '>'); j > 0 {
			return strings.TrimSpace(v[i+1 : i+j])
		}
	}
	if f := strings.Fields(v); len(f) > 0 {
		return f[0]
	}
	return ""
}
