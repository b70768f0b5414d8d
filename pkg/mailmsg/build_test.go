package mailmsg

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	nettextproto "net/textproto"
	"slices"
	"strings"
	"testing"
	"testing/quick"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"github.com/postflow/postflow/pkg/testenv"
)

// checkWire asserts the invariants every Built.Body keeps: CRLF only, a
// final CRLF, and no line over 998 octets.
func checkWire(t *testing.T, body []byte) {
	t.Helper()
	if i := bareCRorLF(body); i >= 0 {
		t.Fatalf("body has a bare CR or LF at offset %d: %q", i, body)
	}
	if !bytes.HasSuffix(body, []byte("\r\n")) {
		t.Fatalf("body does not end with CRLF: %q", body)
	}
	if n, l := longestLine(body); l > maxLineOctets {
		t.Fatalf("body line %d is %d octets", n, l)
	}
}

func headerSection(t *testing.T, body []byte) textproto.Header {
	t.Helper()
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(body)))
	if err != nil {
		t.Fatalf("read back header section: %v\n%s", err, body)
	}
	return h
}

// decodedParts reads a built message back with go-message and returns each
// inline part's media type and decoded body, plus the top-level header.
func decodedParts(t *testing.T, body []byte) (mail.Header, map[string]string) {
	t.Helper()
	mr, err := mail.CreateReader(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("mail.CreateReader: %v", err)
	}
	parts := map[string]string{}
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("NextPart: %v", err)
		}
		ih, ok := p.Header.(*mail.InlineHeader)
		if !ok {
			t.Fatalf("part header %T, want inline", p.Header)
		}
		ct, params, err := ih.ContentType()
		if err != nil || params["charset"] != "utf-8" {
			t.Fatalf("part Content-Type %q %v, %v; want charset utf-8", ct, params, err)
		}
		b, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatalf("read %s part: %v", ct, err)
		}
		parts[ct] = string(b)
	}
	return mr.Header, parts
}

func TestBuildStructuredRoundTrip(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("long line without breaks ", 100) // > 998 octets on one line
	tests := []struct {
		name        string
		text, html  string
		wantType    string
		wantText    string // decoded text/plain part; "-" when absent
		wantHTML    string
		subject     string
		fromName    string
		toName      string
		replyToName string
	}{
		{
			name: "text only", text: "Hello\r\nworld\r\n", wantType: "text/plain",
			wantText: "Hello\r\nworld\r\n", wantHTML: "-", subject: "Plain ASCII", fromName: "Sender", toName: "",
		},
		{
			// A single part is the whole rest of the message, so it gains
			// the final CRLF every SMTP message ends with; bare LFs become
			// CRLF (RFC 2046 §4.1.1).
			name: "text only gains final crlf", text: "line1\nline2", wantType: "text/plain",
			wantText: "line1\r\nline2\r\n", wantHTML: "-", subject: "Grüße aus Köln", fromName: "Jürgen Müller", toName: "Zoë",
		},
		{
			name: "html only", html: "<p>Héllo = \"wörld\"</p>\r\n", wantType: "text/html",
			wantText: "-", wantHTML: "<p>Héllo = \"wörld\"</p>\r\n", subject: "日本語の件名", fromName: "山田太郎", toName: "Ünïcödé, Name",
		},
		{
			name: "alternative", text: "Hi\r\n.\r\nnot the end\r\n" + long, html: "<b>Hi</b>\r\n" + long + "\r\n", wantType: "multipart/alternative",
			wantText: "Hi\r\n.\r\nnot the end\r\n" + long, wantHTML: "<b>Hi</b>\r\n" + long + "\r\n",
			subject: strings.TrimSpace(strings.Repeat("ünïcode subject that needs folding ", 5)), fromName: "Renée \"Quotes\" O'Brien", toName: "Bob", replyToName: "Support Désk",
		},
		{
			name: "alternative with trailing spaces and equals", text: "a = b  \r\ntrailing\t\r\n", html: "<p style=\"x\">  </p>", wantType: "multipart/alternative",
			wantText: "a = b  \r\ntrailing\t\r\n", wantHTML: "<p style=\"x\">  </p>", subject: "", fromName: "", toName: "",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := Input{
				From:    (&mail.Address{Name: tc.fromName, Address: "sender@example.com"}).String(),
				To:      []string{(&mail.Address{Name: tc.toName, Address: "to@example.org"}).String()},
				Cc:      []string{"Carla Cc <cc@example.org>"},
				Bcc:     []string{"Hidden Person <hidden@secret.example>"},
				Subject: tc.subject,
				Text:    tc.text,
				HTML:    tc.html,
				Headers: []Header{{"X-Campaign", "spring-2026"}, {"List-Unsubscribe", "<mailto:unsub@example.com>"}, {"X-Note", "café ☕"}, {"X-Campaign", "second"}},
			}
			if tc.replyToName != "" {
				in.ReplyTo = []string{(&mail.Address{Name: tc.replyToName, Address: "support@example.com"}).String()}
			}
			b, err := Build(in, Limits{}, testNow, testIDDomain)
			if err != nil {
				t.Fatalf("Build() error = %v", err)
			}
			checkWire(t, b.Body)

			h, parts := decodedParts(t, b.Body)
			if ct, _, _ := h.ContentType(); ct != tc.wantType {
				t.Errorf("Content-Type = %q, want %q", ct, tc.wantType)
			}
			for ct, want := range map[string]string{"text/plain": tc.wantText, "text/html": tc.wantHTML} {
				got, ok := parts[ct]
				switch {
				case want == "-" && ok:
					t.Errorf("unexpected %s part %q", ct, got)
				case want != "-" && got != want:
					t.Errorf("decoded %s part = %q, want %q", ct, got, want)
				}
			}
			if got, err := h.Subject(); err != nil || got != tc.subject {
				t.Errorf("Subject = %q, %v; want %q", got, err, tc.subject)
			}
			for _, c := range []struct {
				key, name, addr string
			}{
				{"From", tc.fromName, "sender@example.com"},
				{"To", tc.toName, "to@example.org"},
				{"Cc", "Carla Cc", "cc@example.org"},
			} {
				got, err := h.AddressList(c.key)
				if err != nil || len(got) != 1 || got[0].Name != c.name || got[0].Address != c.addr {
					t.Errorf("%s = %v, %v; want [%q <%s>]", c.key, got, err, c.name, c.addr)
				}
			}
			if tc.replyToName != "" {
				got, err := h.AddressList("Reply-To")
				if err != nil || len(got) != 1 || got[0].Name != tc.replyToName {
					t.Errorf("Reply-To = %v, %v; want name %q", got, err, tc.replyToName)
				}
			}
			// Non-ASCII display names travel RFC 2047-encoded.
			hdr := b.Body[:bytes.Index(b.Body, []byte("\r\n\r\n"))]
			if !isASCII(string(hdr)) {
				t.Errorf("header section holds non-ASCII octets:\n%s", hdr)
			}

			// Bcc: envelope only.
			if h.Has("Bcc") || bytes.Contains(b.Body, []byte("hidden@secret.example")) || bytes.Contains(b.Body, []byte("Hidden Person")) {
				t.Errorf("Bcc recipient leaked into the message:\n%s", b.Body)
			}
			var rcpts []string
			for _, r := range b.Recipients {
				rcpts = append(rcpts, r.Addr)
			}
			if want := []string{"to@example.org", "cc@example.org", "hidden@secret.example"}; !slices.Equal(rcpts, want) {
				t.Errorf("Recipients = %v, want %v", rcpts, want)
			}
			if b.EnvelopeFrom != "sender@example.com" || b.SMTPUTF8 {
				t.Errorf("EnvelopeFrom, SMTPUTF8 = %q, %v; want sender@example.com, false", b.EnvelopeFrom, b.SMTPUTF8)
			}

			// Custom headers, in order, decoded.
			if got := h.Values("X-Campaign"); !slices.Equal(got, []string{"spring-2026", "second"}) {
				t.Errorf("X-Campaign = %q, want both values in order", got)
			}
			if got := h.Get("List-Unsubscribe"); got != "<mailto:unsub@example.com>" {
				t.Errorf("List-Unsubscribe = %q", got)
			}
			if got, err := h.Text("X-Note"); err != nil || got != "café ☕" {
				t.Errorf("X-Note = %q, %v; want %q", got, err, "café ☕")
			}

			// Generated headers.
			if id, err := h.MessageID(); err != nil || id != b.MessageID || !strings.HasSuffix(id, "@"+testIDDomain) || len(id) != 26+1+len(testIDDomain) {
				t.Errorf("Message-ID = %q, %v; Built.MessageID = %q", id, err, b.MessageID)
			}
			if d, err := h.Date(); err != nil || !d.Equal(testNow) {
				t.Errorf("Date = %v, %v; want %v", d, err, testNow)
			}
			if got := h.Get("MIME-Version"); got != "1.0" {
				t.Errorf("MIME-Version = %q, want 1.0", got)
			}
			for _, k := range []string{"From", "To", "Cc", "Subject", "Date", "Message-Id", "Mime-Version", "Content-Type"} {
				if n := len(h.Values(k)); n != 1 {
					t.Errorf("%d %s headers, want exactly one", n, k)
				}
			}
		})
	}
}

func TestBuildMessageIDsAreUnique(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 100 {
		b, err := Build(validInput(), Limits{}, testNow, testIDDomain)
		if err != nil {
			t.Fatal(err)
		}
		if seen[b.MessageID] {
			t.Fatalf("MessageID %q repeated", b.MessageID)
		}
		seen[b.MessageID] = true
	}
}

// TestBuildMessageIDOnSenderDomain: SenderDomain gives Build the sender's
// domain in A-label form, and a placeholder for a From Build will refuse.
func TestBuildMessageIDOnSenderDomain(t *testing.T) {
	t.Parallel()
	in := validInput()
	in.From = "Shop <news@Bücher.example>"
	b, err := Build(in, Limits{}, testNow, SenderDomain(in.From))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(b.MessageID, "@xn--bcher-kva.example") {
		t.Errorf("Message-ID %q, want one on the sender's domain xn--bcher-kva.example", b.MessageID)
	}
	if got := SenderDomain("not an address"); got != "postflow.invalid" {
		t.Errorf("SenderDomain of a bad From = %q, want the placeholder", got)
	}
}

func TestBuildSMTPUTF8(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(in *Input)
		want   bool
	}{
		{"ascii", func(in *Input) {}, false},
		{"idn domain only", func(in *Input) { in.To = []string{"a@bücher.de"} }, false},
		{"utf-8 display name only", func(in *Input) { in.From = "Zoë <sender@example.com>" }, false},
		{"utf-8 local in to", func(in *Input) { in.To = []string{"zoë@example.org"} }, true},
		{"utf-8 local in bcc", func(in *Input) { in.Bcc = []string{"用户@example.org"} }, true},
		{"utf-8 local in from", func(in *Input) { in.From = "josé@example.com" }, true},
		{"utf-8 local in reply_to", func(in *Input) { in.ReplyTo = []string{"josé@example.com"} }, true},
		{"raw with utf-8 header", func(in *Input) {
			*in = Input{From: "s@example.com", To: []string{"r@example.org"}, Raw: []byte("From: s@example.com\r\nSubject: Grüße\r\n\r\nx\r\n")}
		}, true},
		{"raw with utf-8 body only", func(in *Input) {
			*in = Input{From: "s@example.com", To: []string{"r@example.org"}, Raw: []byte("From: s@example.com\r\n\r\nGrüße\r\n")}
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := validInput()
			tc.mutate(&in)
			b, err := Build(in, Limits{}, testNow, testIDDomain)
			if err != nil {
				t.Fatalf("Build() error = %v", err)
			}
			if b.SMTPUTF8 != tc.want {
				t.Errorf("Build(%s).SMTPUTF8 = %v, want %v", tc.name, b.SMTPUTF8, tc.want)
			}
		})
	}
}

func TestBuildRaw(t *testing.T) {
	t.Parallel()
	const date = "Date: Wed, 04 Mar 2026 05:06:07 +0000\r\n"
	tests := []struct {
		name       string
		raw        string
		wantPrefix string // header lines Build adds; "<id>" stands for the generated id
		wantRest   string // everything after the added lines
		wantID     string // "" means generated
	}{
		{
			name:       "adds message-id and date",
			raw:        "From: s@example.com\r\nSubject: x\r\n\r\nbody\r\n",
			wantPrefix: "Message-Id: <<id>>\r\n" + date,
			wantRest:   "From: s@example.com\r\nSubject: x\r\n\r\nbody\r\n",
		},
		{
			name:     "keeps existing message-id and date",
			raw:      "Date: Mon, 1 Jan 2024 00:00:00 -0500\r\nMessage-ID: <abc.123@client.example>\r\nFrom: s@example.com\r\n\r\nbody\r\n",
			wantRest: "Date: Mon, 1 Jan 2024 00:00:00 -0500\r\nMessage-ID: <abc.123@client.example>\r\nFrom: s@example.com\r\n\r\nbody\r\n",
			wantID:   "abc.123@client.example",
		},
		{
			name:       "adds date only",
			raw:        "Message-ID: <k@client.example>\r\nFrom: s@example.com\r\n\r\nbody\r\n",
			wantPrefix: date,
			wantRest:   "Message-ID: <k@client.example>\r\nFrom: s@example.com\r\n\r\nbody\r\n",
			wantID:     "k@client.example",
		},
		{
			name:     "normalises line endings and smuggling attempts",
			raw:      "Date: x\nMessage-ID: <k@c.example>\nFrom: s@example.com\r\n\nline\n.\r\nMAIL FROM:<evil@example.net>\r\r\nend",
			wantRest: "Date: x\r\nMessage-ID: <k@c.example>\r\nFrom: s@example.com\r\n\r\nline\r\n.\r\nMAIL FROM:<evil@example.net>\r\n\r\nend\r\n",
			wantID:   "k@c.example",
		},
		{
			name:     "header section only",
			raw:      "Date: x\r\nMessage-ID: <k@c.example>\r\nFrom: s@example.com",
			wantRest: "Date: x\r\nMessage-ID: <k@c.example>\r\nFrom: s@example.com\r\n",
			wantID:   "k@c.example",
		},
		{
			name:     "body bytes kept, 8-bit and long folded header",
			raw:      "Date: x\r\nMessage-ID: <k@c.example>\r\nFrom: s@example.com\r\nX-Long: a\r\n b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße =3D \xe2\x98\x95 \r\n\r\n",
			wantRest: "Date: x\r\nMessage-ID: <k@c.example>\r\nFrom: s@example.com\r\nX-Long: a\r\n b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße =3D \xe2\x98\x95 \r\n\r\n",
			wantID:   "k@c.example",
		},
		{
			name:     "valid nested multipart and base64",
			raw:      "Date: x\r\nMessage-ID: <k@c.example>\r\n" + nested(5)[:len("From: sender@example.com\r\n")] + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29y\r\nbGQ=\r\n--z--\r\n",
			wantRest: "Date: x\r\nMessage-ID: <k@c.example>\r\n" + nested(5)[:len("From: sender@example.com\r\n")] + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29y\r\nbGQ=\r\n--z--\r\n",
			wantID:   "k@c.example",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := Input{From: "s@example.com", To: []string{"r@example.org"}, Bcc: []string{"b@example.org"}, Raw: []byte(tc.raw)}
			b, err := Build(in, Limits{}, testNow, testIDDomain)
			if err != nil {
				t.Fatalf("Build() error = %v", err)
			}
			checkWire(t, b.Body)
			if tc.wantID != "" && b.MessageID != tc.wantID {
				t.Errorf("MessageID = %q, want %q", b.MessageID, tc.wantID)
			}
			if tc.wantID == "" && !strings.HasSuffix(b.MessageID, "@"+testIDDomain) {
				t.Errorf("MessageID = %q, want a generated id", b.MessageID)
			}
			want := strings.ReplaceAll(tc.wantPrefix, "<id>", b.MessageID) + tc.wantRest
			if string(b.Body) != want {
				t.Errorf("Body =\n%q\nwant\n%q", b.Body, want)
			}
			if len(b.Recipients) != 2 || b.EnvelopeFrom != "s@example.com" {
				t.Errorf("envelope = %q %v", b.EnvelopeFrom, b.Recipients)
			}
		})
	}
}

func TestBuildMIMEDepthLimit(t *testing.T) {
	t.Parallel()
	for _, depth := range []int{maxMIMEDepth, maxMIMEDepth + 1} {
		in := Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: []byte(nested(depth))}
		_, err := Build(in, Limits{}, testNow, testIDDomain)
		if wantErr := depth > maxMIMEDepth; (err != nil) != wantErr {
			t.Errorf("Build(raw nested %d deep) error = %v, want error %v", depth, err, wantErr)
		}
	}
}

// checkNoHeaderInjection builds a message whose subject and one custom
// header come from the caller and asserts that either Build refuses it
// (with a ValidationError) or the header section holds exactly the fields
// Postflow meant to write.
// It reports whether the message was built.
func checkNoHeaderInjection(t *testing.T, subject, name, value string) bool {
	t.Helper()
	in := validInput()
	in.Subject = subject
	in.Headers = []Header{{Name: name, Value: value}}
	b, err := Build(in, Limits{}, testNow, testIDDomain)
	if err != nil {
		var ve *ValidationError
		if !errors.As(err, &ve) {
			t.Fatalf("Build(subject %q, header %q: %q) error = %v, want *ValidationError", subject, name, value, err)
		}
		return false
	}
	checkWire(t, b.Body)
	h := headerSection(t, b.Body)
	var got []string
	for f := h.Fields(); f.Next(); {
		got = append(got, f.Key())
	}
	want := []string{"From", "To", "Subject", "Date", "Message-Id", nettextproto.CanonicalMIMEHeaderKey(name), "Mime-Version", "Content-Type", "Content-Transfer-Encoding"}
	if !slices.Equal(got, want) {
		t.Fatalf("Build(subject %q, header %q: %q) header fields = %q, want %q\n%s", subject, name, value, got, want, b.Body)
	}
	// Plain one-line subjects also read back unchanged.
	plain := len(subject) < 60 && subject == strings.TrimSpace(subject) && !strings.ContainsAny(subject, "\t") && !strings.Contains(subject, "=?")
	mh := mail.Header{}
	mh.Header.Header = h
	if s, err := mh.Subject(); plain && (err != nil || s != subject) {
		t.Fatalf("Subject %q read back as %q, %v", subject, s, err)
	}
	return true
}

func TestHeaderInjectionProperty(t *testing.T) {
	t.Parallel()
	// Mostly harmless text with an occasional hostile piece, so that both
	// refusals and successfully built messages are common.
	safe := []string{"a", "Z", " ", "\t", ":", "Bcc: x@example.net", "é", "☕", "=?utf-8?q?=0D=0A?=", ".", "\u2028"}
	hostile := []string{"\r", "\n", "\r\n", "\r\n ", "\x00", "\x1b", "\xff", "\r\n\r\n", "\u0085"}
	gen := func(r *rand.Rand, max int) string {
		var b strings.Builder
		for range r.IntN(max) {
			if r.IntN(40) == 0 {
				b.WriteString(hostile[r.IntN(len(hostile))])
			} else {
				b.WriteString(safe[r.IntN(len(safe))])
			}
		}
		return b.String()
	}
	names := []string{"X-A", "X-Long-" + strings.Repeat("n", 56), "Bcc", "X A", "X-A:", "X-\r\nB"}
	built := 0
	f := func(seed uint64) bool {
		r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		if checkNoHeaderInjection(t, gen(r, 30), names[r.IntN(len(names))], gen(r, 80)) {
			built++
		}
		return true
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 3000}); err != nil {
		t.Error(err)
	}
	t.Logf("%d of 3000 generated inputs built", built)
	// The property is only meaningful if many generated inputs were valid.
	if built < 100 {
		t.Errorf("only %d of 3000 generated inputs built; the generator is too hostile", built)
	}
}

func FuzzHeaderInjection(f *testing.F) {
	for _, s := range [][3]string{
		{"Hello", "X-A", "v"},
		{"Hi\r\nBcc: x@example.net", "X-A", "v"},
		{"Hi", "X-A", "v\nBcc: x@example.net"},
		{"Hi", "X-A: y\r\nX-B", "v"},
		{strings.Repeat("é", 100), "X-A", strings.Repeat("x", 990)},
		{strings.Repeat("a", 990), "X-" + strings.Repeat("n", 62), strings.Repeat(" ", 500)},
		{"=?utf-8?q?a=0D=0AB?=", "X-A", "\t"},
		{"\u2028\u0085", "X-A", "\r\n\r\nbody"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, subject, name, value string) {
		checkNoHeaderInjection(t, subject, name, value)
	})
}

func FuzzBuildRaw(f *testing.F) {
	for _, s := range []string{
		"From: s@example.com\r\n\r\nbody", "From: s@example.com\n\nx\n.\r\nQUIT\r\n", nested(3),
		"From: s@example.com\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n\r\nx\r\n",
		"From: s@example.com\r\nMessage-ID: <<>>\r\n\r\n", " From: x\r\n\r\n", "From:\r\n\r\n",
		"From: s@example.com\r\n\r\n" + strings.Repeat("x", 999) + "\n\xff\r\n",
		"From: s@example.com\r\nSubject: " + strings.Repeat("ab ", 400) + "\r\n\r\n.\r\n",
		"From: s@example.com\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + strings.Repeat("=3D", 400) + "\r\n--z--\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		in := Input{From: "s@example.com", To: []string{"r@example.org"}, Raw: raw}
		b, err := Build(in, Limits{MaxMessageBytes: 1 << 16}, testNow, testIDDomain)
		if err != nil {
			var ve *ValidationError
			if len(raw) > 0 && !errors.As(err, &ve) {
				t.Fatalf("Build(raw %q) error = %v, want *ValidationError", raw, err)
			}
			return
		}
		checkWire(t, b.Body)
		// Only a message with a line over 998 octets is rewritten, and
		// then it reads back the same wherever the input could be read.
		norm := NormalizeCRLF(raw)
		if !hasLongLine(norm) {
			if !bytes.Contains(b.Body, norm) {
				t.Fatalf("Build(raw %q) body %q does not keep the normalised input", raw, b.Body)
			}
			return
		}
		if want, err := testenv.MIMELeaves(ensureFinalCRLF(norm)); err == nil {
			got, err := testenv.MIMELeaves(b.Body)
			if err != nil || fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
				t.Fatalf("Build(raw %q) body %q reads back as %q, %v; want %q", raw, b.Body, got, err, want)
			}
		}
	})
}
