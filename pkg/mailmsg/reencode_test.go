package mailmsg

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/quotedprintable"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-message"

	"github.com/postflow/postflow/pkg/testenv"
)

// unfold undoes header folding (RFC 5322 §2.2.3).
func unfold(b []byte) []byte {
	return regexp.MustCompile("\r\n([ \t])").ReplaceAll(b, []byte("$1"))
}

func TestFoldHeader(t *testing.T) {
	t.Parallel()
	words := func(n int) string { return strings.TrimSpace(strings.Repeat("word ", n)) }
	tests := []struct {
		name    string
		hdr     string
		wantErr string // "" means it folds
	}{
		{"short lines", "From: a@example.com\r\nSubject: hi\r\n", ""},
		{"998-octet line", "Subject: " + strings.Repeat("x", 989) + "\r\n", ""},
		{"one fold", "Subject: " + words(250) + "\r\n", ""},
		{"several folds", "X-List: " + words(1000) + "\r\n", ""},
		{"tab before the fold", "X-A: " + strings.Repeat("y", 900) + "\t" + strings.Repeat("z", 900) + "\r\n", ""},
		{"fold right after the colon", "X-A: " + strings.Repeat("y", 997) + "\r\n", ""},
		{"long continuation line", "X-A: a\r\n " + words(300) + "\r\nX-B: b\r\n", ""},
		{"no final CRLF", "X-A: " + words(300), ""},
		{"one long word", "X-A: " + strings.Repeat("y", 998) + "\r\n", "header line 1 is 1003 octets"},
		{"only whitespace to fold at late", "From: a@example.com\r\nX-A: " + strings.Repeat("y", 1000) + " z\r\n", "header line 2 is"},
		{"trailing whitespace only", "X-A: y" + strings.Repeat(" ", 1000) + "\r\n", "header line 1"},
		{"continuation of whitespace and one word", "X-A: a\r\n" + strings.Repeat(" ", 10) + strings.Repeat("y", 1000) + "\r\n", "header line 2"},
		{"whitespace in the name only", "X A" + strings.Repeat("y", 1000) + ": v\r\n", "header line 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := foldHeader([]byte(tc.hdr))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("foldHeader(%.40q…) error = %v, want one containing %q", tc.hdr, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("foldHeader(%.40q…) error = %v", tc.hdr, err)
			}
			if hasLongLine(got) {
				t.Errorf("foldHeader(%.40q…) left a line over 998 octets: %q", tc.hdr, got)
			}
			if want := ensureFinalCRLF([]byte(tc.hdr)); !bytes.Equal(unfold(got), unfold(want)) {
				t.Errorf("foldHeader(%.40q…) unfolds to\n%q\nwant\n%q", tc.hdr, unfold(got), unfold(want))
			}
			if !hasLongLine([]byte(tc.hdr)) && &got[0] != &[]byte(tc.hdr)[0] && string(got) != tc.hdr {
				t.Errorf("foldHeader(%.40q…) changed a header without long lines", tc.hdr)
			}
			for _, line := range strings.Split(strings.TrimSuffix(string(got), "\r\n"), "\r\n") {
				if strings.TrimSpace(line) == "" {
					t.Errorf("foldHeader(%.40q…) made a whitespace-only line", tc.hdr)
				}
			}
		})
	}
}

// leaves reads msg with go-message and returns each leaf part as
// "media/type: decoded content", descending into embedded messages, in
// order. It is what a reader sees, whatever the transfer encoding.
func leaves(t *testing.T, msg []byte) []string {
	t.Helper()
	out, err := testenv.MIMELeaves(msg)
	if err != nil {
		t.Fatalf("read back %q: %v", msg, err)
	}
	return out
}

func TestBuildRawReencodesLongLines(t *testing.T) {
	t.Parallel()
	const hdr = "From: s@example.com\r\nSubject: long\r\nMessage-ID: <k@c.example>\r\nDate: x\r\n"
	x := func(n int) string { return strings.Repeat("x", n) }
	attachment := "--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29y\r\nbGQ=\r\n"
	tests := []struct {
		name     string
		raw      string
		utf8Hdr  bool     // add a UTF-8 header field, making the message SMTPUTF8
		same     bool     // the body must be the input, octet for octet
		contains []string // substrings of the built message
		absent   []string // substrings it must not hold
		wantErr  string   // a violation on "raw" containing this
	}{
		{name: "998-octet line is sent as is", raw: hdr + "\r\n" + x(998) + "\r\n", same: true},
		{name: "8-bit body without a long line is sent as is", raw: hdr + "Content-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n", same: true},
		{
			name:     "999 octets, no MIME: quoted-printable and MIME fields added",
			raw:      hdr + "\r\n" + x(999) + "\r\n",
			contains: []string{hdr + "Content-Transfer-Encoding: quoted-printable\r\nContent-Type: text/plain; charset=us-ascii\r\nMIME-Version: 1.0\r\n\r\n"},
		},
		{name: "1000 octets", raw: hdr + "\r\n" + x(1000), contains: []string{"Content-Transfer-Encoding: quoted-printable\r\n"}},
		{name: "1500 octets between short lines", raw: hdr + "\r\nbefore\r\n" + x(1500) + "\r\nafter\r\n", contains: []string{"\r\n\r\nbefore\r\nxxx", "\r\nafter\r\n"}},
		{name: "UTF-8 text without Content-Type", raw: hdr + "\r\nÜ " + x(1200) + "\r\n", contains: []string{"charset=utf-8\r\n", "=C3=9C x"}},
		{name: "Latin-1 octets without Content-Type", raw: hdr + "\r\n\xfc " + x(1200) + "\r\n", contains: []string{"charset=unknown-8bit\r\n", "=FC x"}},
		{
			name:     "declared charset and 7bit encoding kept in place",
			raw:      hdr + "MIME-Version: 1.0\r\nContent-Transfer-Encoding: 7bit\r\nContent-Type: text/plain; charset=iso-8859-1\r\nX-After: 1\r\n\r\n" + x(1200) + "\r\n",
			contains: []string{"MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\nContent-Type: text/plain; charset=iso-8859-1\r\nX-After: 1\r\n\r\n"},
			absent:   []string{"7bit", "us-ascii"},
		},
		{name: "bare LF endings around the long line", raw: "From: s@example.com\nSubject: lf\n\nshort\n" + x(1500) + "\nend\n", contains: []string{"\r\nshort\r\n", "\r\nend\r\n"}},
		{name: "long line starting with a dot", raw: hdr + "\r\n." + x(1500) + "\r\n.\r\n", contains: []string{"\r\n.xxx", "=\r\nxxx"}},
		{name: "trailing whitespace on the long line", raw: hdr + "\r\n" + x(1500) + "  \r\n", contains: []string{" =20\r\n"}},
		{
			name: "multipart: only the part with the long line changes",
			raw: hdr + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\nThis is MIME.\r\n" +
				"--b\r\nContent-Type: text/plain\r\n\r\nshort text\r\n" +
				"--b\r\nContent-Type: text/html; charset=utf-8\r\nX-Part: 2\r\n\r\n<p>" + x(1500) + "</p>\r\n" +
				attachment + "--b--\r\n",
			contains: []string{
				"\r\n\r\nThis is MIME.\r\n--b\r\nContent-Type: text/plain\r\n\r\nshort text\r\n--b\r\n",
				"Content-Type: text/html; charset=utf-8\r\nX-Part: 2\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>xx",
				attachment + "--b--\r\n",
			},
		},
		{
			name: "multipart: an 8-bit sibling is made 7-bit too",
			raw: hdr + "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n" +
				"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n" +
				"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + x(1500) + "\r\n--b--\r\n",
			contains: []string{"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r\n"},
			absent:   []string{"Grüße"},
		},
		{
			name:    "multipart, SMTPUTF8 message: the 8-bit sibling stays 8-bit",
			utf8Hdr: true,
			raw: hdr + "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n" +
				"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n" +
				"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + x(1500) + "\r\n--b--\r\n",
			contains: []string{"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n--b\r\n"},
		},
		{
			name:     "long quoted-printable line is decoded and re-encoded",
			raw:      hdr + "MIME-Version: 1.0\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + strings.Repeat("a=3Db ", 300) + "\r\n",
			contains: []string{"Content-Transfer-Encoding: quoted-printable\r\n\r\na=3Db a=3Db"},
		},
		{
			name:     "base64 on one long line is re-wrapped as base64",
			raw:      hdr + "MIME-Version: 1.0\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + strings.Repeat("QUJD", 500) + "\r\n",
			contains: []string{"Content-Transfer-Encoding: base64\r\n\r\n" + strings.Repeat("QUJD", 19) + "\r\n"},
			absent:   []string{"quoted-printable"},
		},
		{
			name: "nested multipart",
			raw: hdr + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n" +
				"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n" +
				"--inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n--inner\r\nContent-Type: text/html\r\n\r\n" + x(2000) + "\r\n--inner--\r\n" +
				"--outer\r\nContent-Type: text/plain\r\n\r\nsecond\r\n--outer--\r\n",
			contains: []string{"--inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n--inner\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n", "\r\n--inner--\r\n--outer\r\n"},
		},
		{
			name: "embedded message",
			raw: hdr + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" +
				"--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: inner@example.com\r\nSubject: inner\r\n\r\n" + x(1500) + "\r\n--b--\r\n",
			contains: []string{"--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: inner@example.com\r\nSubject: inner\r\nContent-Transfer-Encoding: quoted-printable\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"},
		},
		{
			name: "long part header folded",
			raw: hdr + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" +
				"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"" + strings.Repeat("w ", 600) + "\"\r\n\r\nok\r\n--b--\r\n",
			contains: []string{"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"w w", "\r\n w w"},
		},
		{
			name:   "long preamble line dropped",
			raw:    hdr + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + x(1500) + "\r\n--b\r\nContent-Type: text/plain\r\n\r\nok\r\n--b--\r\n",
			absent: []string{"xxx"},
		},
		{
			name:     "long header folded, body kept",
			raw:      "From: s@example.com\r\nSubject: " + strings.Repeat("ab ", 400) + "\r\n\r\nGrüße\r\n",
			contains: []string{"\r\n ab ab", "\r\n\r\nGrüße\r\n"},
			absent:   []string{"quoted-printable", "MIME-Version"},
		},
		{
			name:    "header line that cannot be folded",
			raw:     "From: s@example.com\r\nX-Token: " + x(1200) + "\r\n\r\nbody\r\n",
			wantErr: "header line 2 is 1209 octets with no whitespace to fold it at, limit 998",
		},
		{
			name:    "part header that cannot be folded",
			raw:     hdr + "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nok\r\n--b\r\nX-Token: " + x(1200) + "\r\n\r\nok\r\n--b--\r\n",
			wantErr: "MIME part 2: header line 1 is 1209 octets",
		},
		{
			name:    "unknown transfer encoding",
			raw:     hdr + "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n" + x(1200) + "\r\n--b--\r\n",
			wantErr: `MIME part 1: has a line over 998 octets or 8-bit data in transfer encoding "x-uuencode"`,
		},
		{
			name:    "multipart without a boundary",
			raw:     hdr + "Content-Type: multipart/mixed\r\n\r\n" + x(1200) + "\r\n",
			wantErr: "boundary is empty",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			raw := []byte(tc.raw)
			if tc.utf8Hdr {
				raw = append([]byte("X-Note: Grüße\r\n"), raw...)
			}
			orig := bytes.Clone(raw)
			b, err := Build(Input{From: "s@example.com", To: []string{"r@example.org"}, Raw: raw}, Limits{}, testNow, testIDDomain)
			if !bytes.Equal(raw, orig) {
				t.Fatalf("Build modified its input")
			}
			if tc.wantErr != "" {
				var ve *ValidationError
				if !errors.As(err, &ve) || len(ve.Violations) != 1 || ve.Violations[0].Field != "raw" || !strings.Contains(ve.Violations[0].Description, tc.wantErr) {
					t.Fatalf("Build(%s) error = %v, want one violation on raw containing %q", tc.name, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Build(%s) error = %v", tc.name, err)
			}
			checkWire(t, b.Body)
			if b.SMTPUTF8 != tc.utf8Hdr {
				t.Errorf("Build(%s).SMTPUTF8 = %v, want %v", tc.name, b.SMTPUTF8, tc.utf8Hdr)
			}
			norm := ensureFinalCRLF(NormalizeCRLF(raw))
			if tc.same && !bytes.HasSuffix(b.Body, norm) {
				t.Errorf("Build(%s) body =\n%q\nwant the input unchanged:\n%q", tc.name, b.Body, norm)
			}
			for _, s := range tc.contains {
				if !bytes.Contains(b.Body, []byte(s)) {
					t.Errorf("Build(%s) body lacks %q:\n%s", tc.name, s, b.Body)
				}
			}
			for _, s := range tc.absent {
				if bytes.Contains(b.Body, []byte(s)) {
					t.Errorf("Build(%s) body holds %q:\n%s", tc.name, s, b.Body)
				}
			}
			if got, want := leaves(t, b.Body), leaves(t, norm); fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
				t.Errorf("Build(%s) reads back as\n%q\nwant\n%q", tc.name, got, want)
			}
			// Fields are kept: unfolded, the input's header section is a
			// subsequence of the output's.
			gotHdr := string(unfold(b.Body[:bytes.Index(b.Body, []byte("\r\n\r\n"))+2]))
			for _, f := range strings.SplitAfter(string(unfold(norm[:bytes.Index(norm, []byte("\r\n\r\n"))+2])), "\r\n") {
				if f != "" && !strings.HasPrefix(f, "Content-Transfer-Encoding:") && !strings.Contains(gotHdr, strings.Join(strings.Fields(f), " ")) && !strings.Contains(gotHdr, f) {
					t.Errorf("Build(%s) lost header field %.60q", tc.name, f)
				}
			}
		})
	}
}

func BenchmarkBuildRaw(b *testing.B) {
	text := strings.Repeat(strings.Repeat("lorem ipsum ", 6)+"\r\n", 120) // about 8 KiB
	for _, bc := range []struct{ name, body string }{
		{"canonical", text},
		{"bare-lf", strings.ReplaceAll(text, "\r\n", "\n")},
		{"long-line", text + strings.Repeat("y", 1500) + "\r\n"},
	} {
		raw := []byte("From: s@example.com\r\nTo: r@example.org\r\nSubject: bench\r\nMessage-ID: <k@c.example>\r\nDate: x\r\n\r\n" + bc.body)
		in := Input{From: "s@example.com", To: []string{"r@example.org"}, Raw: raw}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, err := Build(in, Limits{}, testNow, testIDDomain); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestReencodeProperty builds random MIME trees with long lines, 8-bit
// text, dots and every transfer encoding, and checks that what Build
// accepts keeps the wire invariants and reads back as the input did.
func TestReencodeProperty(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	content := func() []byte {
		var b []byte
		for range r.IntN(4) + 1 {
			n := pick("0", "1", "76", "998", "999", "1000", "1500", "3000")
			l, _ := strconv.Atoi(n)
			for range l {
				b = append(b, pick("a", "b", " ", ".", "=", "é", "\xff", "\t", "-")...)
			}
			b = append(b, "\r\n"...)
		}
		return b
	}
	var entity func(depth int) string
	entity = func(depth int) string {
		if depth < 3 && r.IntN(3) == 0 {
			boundary := fmt.Sprintf("bd%d.%d", depth, r.IntN(1000))
			var b strings.Builder
			fmt.Fprintf(&b, "Content-Type: multipart/%s; boundary=%q\r\n\r\n", pick("mixed", "alternative"), boundary)
			if r.IntN(2) == 0 {
				b.Write(content())
			}
			for range r.IntN(3) + 1 {
				fmt.Fprintf(&b, "--%s\r\n%s\r\n", boundary, entity(depth+1))
			}
			fmt.Fprintf(&b, "--%s--\r\n", boundary)
			return b.String()
		}
		var h strings.Builder
		if ct := pick("", "text/plain", "text/plain; charset=utf-8", "text/html; charset=iso-8859-1", "application/octet-stream"); ct != "" {
			h.WriteString("Content-Type: " + ct + "\r\n")
		}
		body := content()
		switch cte := pick("", "7bit", "8bit", "quoted-printable", "base64"); cte {
		case "quoted-printable":
			var qp bytes.Buffer
			w := quotedprintable.NewWriter(&qp)
			_, _ = w.Write(body)
			_ = w.Close()
			body = qp.Bytes()
			if r.IntN(2) == 0 { // join soft line breaks: malformed, long lines
				body = bytes.ReplaceAll(body, []byte("=\r\n"), nil)
			}
			h.WriteString("Content-Transfer-Encoding: " + cte + "\r\n")
		case "base64":
			enc := base64.StdEncoding.EncodeToString(body)
			if r.IntN(2) == 0 {
				enc = regexp.MustCompile(".{76}").ReplaceAllString(enc, "$0\r\n")
			}
			body = []byte(enc + "\r\n")
			h.WriteString("Content-Transfer-Encoding: " + cte + "\r\n")
		case "":
		default:
			h.WriteString("Content-Transfer-Encoding: " + cte + "\r\n")
		}
		return h.String() + "\r\n" + string(body)
	}
	built, changed, compared := 0, 0, 0
	for i := range 400 {
		hdr := "From: s@example.com\r\nMessage-ID: <p@c.example>\r\nDate: x\r\nMIME-Version: 1.0\r\n"
		if i%4 == 0 {
			hdr += "Subject: Grüße\r\n"
		}
		raw := []byte(hdr + entity(0))
		b, err := Build(Input{From: "s@example.com", To: []string{"r@example.org"}, Raw: raw}, Limits{}, testNow, testIDDomain)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Build(%q) error = %v, want a *ValidationError", raw, err)
			}
			continue
		}
		built++
		checkWire(t, b.Body)
		if !bytes.HasSuffix(b.Body, raw) {
			changed++
		}
		got := leaves(t, b.Body)
		// go-message cannot read quoted-printable lines over 4 KiB (its
		// reader's buffer); Build can, and its output must be readable.
		if want, err := testenv.MIMELeaves(raw); err == nil {
			compared++
			if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
				t.Fatalf("Build(%q) =\n%q\nreads back as\n%q\nwant\n%q", raw, b.Body, got, want)
			}
		}
		if !b.SMTPUTF8 && hasLongLine(raw) && !isASCII(b.Body) {
			t.Fatalf("Build(%q) rewrote an ASCII-header message but left 8-bit octets:\n%q", raw, b.Body)
		}
	}
	t.Logf("%d of 400 random messages built, %d of them rewritten, %d compared with the input", built, changed, compared)
	if built < 300 || changed < 100 || compared < 200 {
		t.Errorf("built %d, rewrote %d, compared %d of 400; the generator no longer exercises the rewrite", built, changed, compared)
	}
}

func TestSevenBit(t *testing.T) {
	t.Parallel()
	ascii := []byte("From: a@example.org\r\nSubject: s\r\n\r\nplain\r\n")
	if got, err := SevenBit(ascii); err != nil || &got[0] != &ascii[0] {
		t.Fatalf("SevenBit(ASCII) = %q, %v; want the input itself", got, err)
	}

	single := []byte("From: a@example.org\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nCaf\xc3\xa9 cr\xc3\xa8me\r\n.\r\n")
	got, err := SevenBit(single)
	if err != nil {
		t.Fatal(err)
	}
	if !isASCII(got) || !bytes.Contains(got, []byte("Content-Transfer-Encoding: quoted-printable")) || !bytes.Contains(got, []byte("MIME-Version: 1.0")) {
		t.Fatalf("SevenBit(8-bit text) =\n%s\nwant 7-bit quoted-printable with MIME-Version", got)
	}
	e, err := message.Read(bytes.NewReader(got))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(e.Body)
	if err != nil || string(body) != "Caf\xc3\xa9 cr\xc3\xa8me\r\n.\r\n" {
		t.Fatalf("decoded body %q, %v; want the original text", body, err)
	}

	multi := []byte("From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" +
		"--b\r\nContent-Type: text/plain\r\n\r\nascii part\r\n" +
		"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xe9t\xe9\r\n" +
		"--b--\r\n")
	got, err = SevenBit(multi)
	if err != nil {
		t.Fatal(err)
	}
	if !isASCII(got) || !bytes.Contains(got, []byte("--b\r\nContent-Type: text/plain\r\n\r\nascii part\r\n")) || !bytes.Contains(got, []byte("=E9t=E9")) {
		t.Fatalf("SevenBit(multipart) =\n%s\nwant the ASCII part untouched and the 8-bit one quoted-printable", got)
	}

	if _, err := SevenBit([]byte("From: a@example.org\r\nSubject: caf\xc3\xa9\r\n\r\nx\r\n")); err == nil {
		t.Fatal("SevenBit accepted an 8-bit header section")
	}
}
