package mailmsg

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
)

// This file makes a raw message's lines fit RFC 5322 §2.1.1's 998 octets
// without refusing it: header lines are folded at whitespace and MIME leaf
// parts are re-encoded. It only runs for a message that has such a line,
// so every other raw message keeps its octets.

var crlf = []byte("\r\n")

// hasLongLine reports whether a CRLF-normalised b has a line over
// maxLineOctets octets, CRLF excluded.
func hasLongLine(b []byte) bool {
	for len(b) > maxLineOctets {
		i := bytes.Index(b, crlf)
		if i < 0 {
			return true
		}
		if i > maxLineOctets {
			return true
		}
		b = b[i+2:]
	}
	return false
}

// concat returns the parts joined in a new slice: the parts may alias the
// caller's raw input, which must not be written to.
func concat(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func isWSP(c byte) bool { return c == ' ' || c == '\t' }

// foldHeader folds each line of hdr, a CRLF-normalised header section
// without its closing blank line, that is over maxLineOctets octets. A fold
// is a CRLF inserted before a space or tab that precedes a visible octet
// (RFC 5322 §2.2.3), so unfolding restores the field exactly. hdr itself
// is returned when no line is too long; the result always ends in CRLF.
// A line that has no such place within its first maxLineOctets octets
// after the field name is an error naming the line (1-based).
func foldHeader(hdr []byte) ([]byte, error) {
	if !hasLongLine(hdr) {
		return hdr, nil
	}
	out := make([]byte, 0, len(hdr)+64)
	n := 0
	for rest := hdr; len(rest) > 0; {
		n++
		var line []byte
		if i := bytes.Index(rest, crlf); i >= 0 {
			line, rest = rest[:i], rest[i+2:]
		} else {
			line, rest = rest, nil
		}
		if len(line) > maxLineOctets {
			folded, ok := foldLine(line)
			if !ok {
				return nil, fmt.Errorf("header line %d is %d octets with no whitespace to fold it at, limit %d", n, len(line), maxLineOctets)
			}
			line = folded
		}
		out = append(out, line...)
		out = append(out, crlf...)
	}
	return out, nil
}

// foldLine folds one header line as foldHeader describes, greedily: each
// piece is as long as it may be. Folds go after the colon on a field's
// first line, and never leave a piece of whitespace only.
func foldLine(line []byte) ([]byte, bool) {
	// start is the lowest index a fold may be placed before.
	var start int
	if isWSP(line[0]) { // a continuation line
		start = bytes.IndexFunc(line, func(r rune) bool { return r != ' ' && r != '\t' }) + 1
		if start == 0 {
			return nil, false
		}
	} else {
		start = bytes.IndexByte(line, ':') + 1
		if start == 0 {
			return nil, false
		}
	}
	out := make([]byte, 0, len(line)+8)
	for len(line) > maxLineOctets {
		at := -1
		for i := min(maxLineOctets, len(line)-2); i >= start; i-- {
			if isWSP(line[i]) && !isWSP(line[i+1]) {
				at = i
				break
			}
		}
		if at < 0 {
			return nil, false
		}
		out = append(out, line[:at]...)
		out = append(out, crlf...)
		line = line[at:] // starts with the whitespace, then a visible octet
		start = 2
	}
	return append(out, line...), true
}

// headerFields splits a header section into its fields, each with its
// continuation lines and CRLFs.
func headerFields(hdr []byte) [][]byte {
	var fields [][]byte
	for len(hdr) > 0 {
		end := 0
		for {
			i := bytes.Index(hdr[end:], crlf)
			if i < 0 {
				end = len(hdr)
				break
			}
			end += i + 2
			if end >= len(hdr) || !isWSP(hdr[end]) {
				break
			}
		}
		fields = append(fields, hdr[:end])
		hdr = hdr[end:]
	}
	return fields
}

// hasField reports whether hdr has a field named name.
func hasField(hdr []byte, name string) bool {
	for _, f := range headerFields(hdr) {
		if colon := bytes.IndexByte(f, ':'); colon >= 0 && strings.EqualFold(string(bytes.TrimRight(f[:colon], " \t")), name) {
			return true
		}
	}
	return false
}

// setField returns hdr with the first field named name replaced by
// "name: value", any later field of that name removed, or the field added
// at the end of the section when there is none. Other fields keep their
// octets and order.
func setField(hdr []byte, name, value string) []byte {
	out := make([]byte, 0, len(hdr)+len(name)+len(value)+4)
	done := false
	for _, f := range headerFields(hdr) {
		colon := bytes.IndexByte(f, ':')
		if colon < 0 || !strings.EqualFold(string(bytes.TrimRight(f[:colon], " \t")), name) {
			out = append(out, f...)
			continue
		}
		if !done {
			out = append(out, name+": "+value+"\r\n"...)
			done = true
		}
	}
	if !done {
		out = append(out, name+": "+value+"\r\n"...)
	}
	return out
}

// reencoder rewrites the MIME entities of a raw message whose body has a
// line over maxLineOctets octets. Entities without such a line (and, with
// sevenBit, without 8-bit octets) keep their octets.
type reencoder struct {
	// sevenBit also re-encodes leaf parts that hold 8-bit octets, so that
	// the rewritten message is 7-bit throughout.
	sevenBit bool
}

// needs reports whether content must be rewritten.
func (r reencoder) needs(content []byte) bool {
	return hasLongLine(content) || r.sevenBit && !isASCII(content)
}

// message rewrites a message given as its header section (without the
// closing blank line) and its body. When the body changed and the header
// has no MIME-Version, one is added: the body now relies on MIME.
func (r reencoder) message(hdr, body []byte) ([]byte, []byte, error) {
	h, b, err := r.entity(hdr, body, "", "text/plain", 0)
	if err != nil {
		return nil, nil, err
	}
	if !bytes.Equal(b, body) && !hasField(h, "MIME-Version") {
		h = setField(h, "MIME-Version", "1.0")
	}
	return h, b, nil
}

// sectionName names a MIME section in errors: "" is the message itself,
// "1.2" the second part of the first (IMAP's numbering, RFC 3501 §6.4.5).
func sectionName(section string) string {
	if section == "" {
		return "the message"
	}
	return "MIME part " + section
}

// entity returns hdr and body rewritten so that no line is over
// maxLineOctets octets. hdr is the entity's header section without its
// closing blank line; body its content; section numbers it for errors;
// defaultType is the media type that applies without a Content-Type (RFC
// 2046 §5.1.5). Errors are caller errors, with text safe to show the
// caller.
func (r reencoder) entity(hdr, body []byte, section, defaultType string, depth int) ([]byte, []byte, error) {
	path := sectionName(section)
	if depth > maxMIMEDepth {
		return nil, nil, fmt.Errorf("MIME parts nested more than %d deep", maxMIMEDepth)
	}
	hdr, err := foldHeader(hdr)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if !r.needs(body) {
		return hdr, body, nil
	}
	th, err := textproto.ReadHeader(bufio.NewReader(io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(crlf))))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: malformed header section: %w", path, err)
	}
	mediaType, params := defaultType, map[string]string(nil)
	if ct := th.Get("Content-Type"); ct != "" {
		// RFC 2045 §5.2: a Content-Type that does not parse means
		// text/plain, which is re-encoded like any leaf.
		mediaType = "text/plain"
		if mt, p, err := mime.ParseMediaType(ct); err == nil || errors.Is(err, mime.ErrInvalidMediaParameter) {
			mediaType, params = mt, p
		}
	}
	cte := strings.ToLower(strings.TrimSpace(th.Get("Content-Transfer-Encoding")))
	identity := cte == "" || cte == "7bit" || cte == "8bit" || cte == "binary"
	switch {
	case strings.HasPrefix(mediaType, "multipart/"):
		body, err = r.multipart(body, params["boundary"], section, mediaType == "multipart/digest", depth)
		return hdr, body, err
	case (mediaType == "message/rfc822" || mediaType == "message/global") && identity:
		// The embedded message's parts are numbered as this part's.
		ih, ib := splitMessage(body)
		if ih, ib, err = r.entity(ih, ib, section, "text/plain", depth+1); err != nil {
			return nil, nil, err
		}
		if ib == nil {
			return hdr, ih, nil
		}
		return hdr, concat(ih, crlf, ib), nil
	}
	return r.leaf(hdr, body, th, cte, path)
}

// splitMessage splits a CRLF-normalised message into its header section
// (without the blank line) and its body, nil when there is none.
func splitMessage(msg []byte) (hdr, body []byte) {
	if bytes.HasPrefix(msg, crlf) {
		return nil, msg[2:]
	}
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		return msg[:i+2], msg[i+4:]
	}
	return msg, nil
}

// multipart rewrites the parts of a multipart body. The delimiters are
// written anew around the original boundary; the preamble is kept unless it
// would itself need rewriting, and the epilogue is dropped: neither is
// shown to a reader (RFC 2046 §5.1.1).
func (r reencoder) multipart(body []byte, boundary, section string, digest bool, depth int) ([]byte, error) {
	path := sectionName(section)
	if boundary == "" {
		return nil, fmt.Errorf("%s: multipart without a boundary", path)
	}
	childType := "text/plain"
	if digest {
		childType = "message/rfc822"
	}
	var out bytes.Buffer
	out.Grow(len(body) + len(body)/8)
	delim := "--" + boundary
	if pre := preamble(body, delim); !r.needs(pre) {
		out.Write(pre)
	}
	mr := textproto.NewMultipartReader(bytes.NewReader(body), boundary)
	for n := 1; ; n++ {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: malformed multipart: %w", path, err)
		}
		var ph bytes.Buffer
		if err := textproto.WriteHeader(&ph, p.Header); err != nil {
			return nil, fmt.Errorf("%s: malformed part header: %w", path, err)
		}
		pb, err := io.ReadAll(p)
		if err != nil {
			return nil, fmt.Errorf("%s: malformed multipart: %w", path, err)
		}
		child := strconv.Itoa(n)
		if section != "" {
			child = section + "." + child
		}
		h, b, err := r.entity(ph.Bytes()[:ph.Len()-2], pb, child, childType, depth+1)
		if err != nil {
			return nil, err
		}
		if n > 1 {
			out.Write(crlf)
		}
		out.WriteString(delim + "\r\n")
		out.Write(h)
		out.Write(crlf)
		out.Write(b)
	}
	// No CRLF after the close delimiter: the enclosing entity's own
	// delimiter, or ensureFinalCRLF for the message, supplies it.
	out.WriteString("\r\n" + delim + "--")
	return out.Bytes(), nil
}

// preamble returns the lines of a multipart body before its first
// delimiter line, "--boundary" then optional whitespace (RFC 2046 §5.1.1),
// as go-message's reader finds it.
func preamble(body []byte, delim string) []byte {
	for off := 0; off < len(body); {
		line := body[off:]
		if i := bytes.Index(line, crlf); i >= 0 {
			line = line[:i]
		}
		if rest, ok := bytes.CutPrefix(line, []byte(delim)); ok && len(bytes.TrimLeft(rest, " \t")) == 0 {
			return body[:off]
		}
		off += len(line) + 2
	}
	return nil
}

// leaf re-encodes one leaf part: base64 stays base64 with 76-octet lines,
// anything else becomes quoted-printable, whose lines are at most 76
// octets and 7-bit (RFC 2045 §6.7). The part's other header fields keep
// their octets; a part without a Content-Type gets one naming its charset,
// because the default, us-ascii, would misname 8-bit text.
func (r reencoder) leaf(hdr, body []byte, th textproto.Header, cte, path string) ([]byte, []byte, error) {
	// Decoded with go-message, under a header that carries only the
	// transfer encoding so that no charset conversion applies.
	var eh message.Header
	eh.Set("Content-Transfer-Encoding", cte)
	// The quoted-printable reader reads a line at a time into a buffer of
	// its own unless handed one at least as large as the longest line.
	_, longest := longestLine(body)
	e, err := message.New(eh, bufio.NewReaderSize(bytes.NewReader(body), longest+2))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: has a line over %d octets or 8-bit data in transfer encoding %q, which cannot be re-encoded", path, maxLineOctets, cte)
	}
	decoded, err := io.ReadAll(e.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: needs re-encoding but its %s content does not decode: %w", path, cte, err)
	}

	var out bytes.Buffer
	out.Grow(len(decoded) + len(decoded)/4 + 16)
	if cte == "base64" {
		enc := base64.StdEncoding.EncodeToString(decoded)
		for len(enc) > 76 {
			out.WriteString(enc[:76])
			out.Write(crlf)
			enc = enc[76:]
		}
		out.WriteString(enc)
		return hdr, out.Bytes(), nil
	}
	w := quotedprintable.NewWriter(&out)
	// Text mode turns CRLF into QP hard line breaks; content whose line
	// breaks are not all CRLF (decoded from malformed quoted-printable)
	// is encoded octet for octet instead.
	w.Binary = !IsCanonicalCRLF(decoded)
	if _, err := w.Write(decoded); err != nil {
		return nil, nil, fmt.Errorf("mailmsg: quoted-printable: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, nil, fmt.Errorf("mailmsg: quoted-printable: %w", err)
	}
	hdr = setField(hdr, "Content-Transfer-Encoding", "quoted-printable")
	if !th.Has("Content-Type") {
		hdr = setField(hdr, "Content-Type", "text/plain; charset="+charsetOf(decoded))
	}
	return hdr, out.Bytes(), nil
}

// charsetOf names the charset of text that declares none: us-ascii or
// utf-8 when it is that, else unknown-8bit (RFC 1428).
func charsetOf(b []byte) string {
	switch {
	case isASCII(b):
		return "us-ascii"
	case utf8.Valid(b):
		return "utf-8"
	default:
		return "unknown-8bit"
	}
}

// SevenBit returns msg, a complete CRLF message, with every MIME leaf part
// that holds 8-bit octets (or a line over 998 octets) re-encoded as
// quoted-printable, or re-wrapped base64, so that it may go to a server
// that does not offer 8BITMIME (RFC 6152 §3, the conversion RFC 1652 §3
// allows a relay). Parts that need no change keep their octets; msg itself
// is returned when nothing does. It fails for a message whose header
// section holds 8-bit octets (it needs SMTPUTF8, not a conversion) and for
// parts whose encoding cannot be decoded.
func SevenBit(msg []byte) ([]byte, error) {
	if isASCII(msg) {
		return msg, nil
	}
	end := bytes.Index(msg, []byte("\r\n\r\n"))
	if end < 0 || !isASCII(msg[:end]) {
		return nil, errors.New("mailmsg: the header section has 8-bit octets; the message needs SMTPUTF8")
	}
	h, b, err := reencoder{sevenBit: true}.message(msg[:end+2], msg[end+4:])
	if err != nil {
		return nil, fmt.Errorf("mailmsg: %w", err)
	}
	return concat(h, crlf, b), nil
}
