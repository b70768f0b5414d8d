package mailmsg

import (
	"bytes"
	"fmt"
	"io"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// buildStructured writes the MIME form of a validated structured input.
// A body that is already 7-bit with lines of at most 998 octets is sent as
// is ("7bit", RFC 2045 §2.7): no encoding cost and byte-identical text for
// the recipient. Any other body is quoted-printable, so lines stay under 77
// octets and 8-bit text is safe on any transport. Bodies' line breaks are
// canonicalised to CRLF first (RFC 2046 §4.1.1).
func buildStructured(in Input, v *validated, now time.Time, msgID string) ([]byte, error) {
	// go-message writes the most recently added field first, so fields are
	// added bottom-up: custom headers, then Message-ID … From.
	var h mail.Header
	single := in.Text == "" || in.HTML == ""
	var singleBody []byte
	var singleEncoding string
	if single {
		singleBody = canonicalBody(in.Text + in.HTML)
		ct := "text/plain"
		if in.Text == "" {
			ct = "text/html"
		}
		singleEncoding = transferEncoding(singleBody)
		h.Set("Content-Transfer-Encoding", singleEncoding)
		h.SetContentType(ct, map[string]string{"charset": "utf-8"})
	}
	h.Set("MIME-Version", "1.0")
	for i := len(in.Headers) - 1; i >= 0; i-- {
		h.Add(in.Headers[i].Name, encodeHeaderValue(in.Headers[i].Value))
	}
	h.Set("Message-ID", "<"+msgID+">")
	h.SetDate(now)
	h.SetSubject(in.Subject)
	h.SetAddressList("Reply-To", mailAddresses(v.replyTo))
	h.SetAddressList("Cc", mailAddresses(v.cc))
	h.SetAddressList("To", mailAddresses(v.to))
	h.SetAddressList("From", mailAddresses([]Address{v.from}))

	var buf bytes.Buffer
	buf.Grow(len(in.Text) + len(in.HTML) + 2048)
	if single && singleEncoding == "7bit" {
		// A 7bit body needs no encoding and its lines are known to fit:
		// write it after the header as is, instead of through go-message's
		// line wrapper, which re-scans it byte by byte.
		if err := textproto.WriteHeader(&buf, h.Header.Header); err != nil {
			return nil, fmt.Errorf("mailmsg: write headers: %w", err)
		}
		buf.Write(singleBody)
		return ensureFinalCRLF(buf.Bytes()), nil
	}
	if single {
		w, err := mail.CreateSingleInlineWriter(&buf, h)
		if err != nil {
			return nil, fmt.Errorf("mailmsg: write headers: %w", err)
		}
		if err := writeBody(w, singleBody); err != nil {
			return nil, err
		}
		return ensureFinalCRLF(buf.Bytes()), nil
	}

	mw, err := mail.CreateInlineWriter(&buf, h)
	if err != nil {
		return nil, fmt.Errorf("mailmsg: write headers: %w", err)
	}
	// RFC 2046 §5.1.4: alternatives go from plainest to richest.
	for _, p := range []struct{ ct, body string }{{"text/plain", in.Text}, {"text/html", in.HTML}} {
		body := canonicalBody(p.body)
		var ph mail.InlineHeader
		ph.SetContentType(p.ct, map[string]string{"charset": "utf-8"})
		ph.Set("Content-Transfer-Encoding", transferEncoding(body))
		pw, err := mw.CreatePart(ph)
		if err != nil {
			return nil, fmt.Errorf("mailmsg: create %s part: %w", p.ct, err)
		}
		if err := writeBody(pw, body); err != nil {
			return nil, err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, fmt.Errorf("mailmsg: close multipart: %w", err)
	}
	return ensureFinalCRLF(buf.Bytes()), nil
}

// canonicalBody returns body as CRLF-canonical bytes, copying once.
func canonicalBody(body string) []byte {
	b := []byte(body)
	if IsCanonicalCRLF(b) {
		return b
	}
	return NormalizeCRLF(b)
}

func writeBody(w io.WriteCloser, body []byte) error {
	if _, err := w.Write(body); err != nil {
		return fmt.Errorf("mailmsg: write body: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("mailmsg: close body: %w", err)
	}
	return nil
}

func mailAddresses(as []Address) []*mail.Address {
	out := make([]*mail.Address, len(as))
	for i, a := range as {
		// net/mail quotes the local part itself when needed, so it gets the
		// unquoted value.
		out[i] = &mail.Address{Name: a.Name, Address: a.Local + "@" + a.Domain}
	}
	return out
}

// transferEncoding picks "7bit" for a CRLF-canonical body of US-ASCII whose
// lines fit RFC 5322's 998 octets, else "quoted-printable". (NUL never
// reaches here: validation refuses it.)
func transferEncoding(body []byte) string {
	if !isASCII(body) {
		return "quoted-printable"
	}
	for len(body) > 0 {
		i := bytes.IndexByte(body, '\n')
		if i < 0 {
			i = len(body)
		}
		line := bytes.TrimSuffix(body[:i], []byte("\r"))
		if len(line) > 998 {
			return "quoted-printable"
		}
		body = body[min(i+1, len(body)):]
	}
	return "7bit"
}
