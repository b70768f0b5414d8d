package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-message/textproto"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postflow/postflow/pkg/mailmsg"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// TESTPLAN B9: line endings, dot stuffing and SMTP smuggling, end to end
// against a strict receiver.

var updateB9 = flag.Bool("update", false, "rewrite testdata/b9_corpus.txt from b9Corpus")

const b9CorpusFile = "testdata/b9_corpus.txt"

// b9Case is one corpus entry: a raw message submitted through Send and the
// API outcome it must get.
type b9Case struct {
	name   string // unique; also the recipient's local part and X-B9-Case
	accept bool
	raw    string
}

// b9Corpus generates the B9 corpus. testdata/b9_corpus.txt is its
// committed output (TestB9CorpusIsCurrent), and the file is what the
// end-to-end test reads.
func b9Corpus() []b9Case {
	var cases []b9Case
	add := func(name string, accept bool, raw string) {
		cases = append(cases, b9Case{name: name, accept: accept, raw: raw})
	}
	// hdr is a complete header section for case name with line ending eol,
	// extra fields (each ending in eol) last, and the blank line.
	hdr := func(name, eol string, extra ...string) string {
		return "X-B9-Case: " + name + eol +
			"From: B9 <b9@sender.test>" + eol +
			"To: <" + name + "@example.test>" + eol +
			"Subject: B9 " + name + eol +
			"Message-ID: <" + name + "@sender.test>" + eol +
			"Date: Thu, 26 Nov 2026 10:00:00 +0000" + eol +
			strings.Join(extra, "") + eol
	}
	// text returns n octets of prose, ending in a letter.
	text := func(n int) string {
		const p = "The quick brown fox jumps over the lazy dog, 0123456789. "
		s := strings.Repeat(p, n/len(p)+1)[:n]
		if n > 0 {
			s = s[:n-1] + "z"
		}
		return s
	}
	const mime = "MIME-Version: 1.0\r\n"

	// Dots: leading dots, lone "." lines, and dots next to every kind of
	// line ending.
	for _, d := range []struct{ name, body string }{
		{"leading", "first\r\n.hidden unless stuffed\r\nlast\r\n"},
		{"lone-crlf", "before\r\n.\r\nafter\r\n"},
		{"lone-lf", "before\n.\nafter\n"},
		{"lone-cr", "before\r.\rafter\r"},
		{"double", "before\r\n..\r\nafter\r\n"},
		{"triple", "before\r\n...\r\nafter\r\n"},
		{"dot-space", "before\r\n. \r\nafter\r\n"},
		{"dot-tab", "before\r\n.\t\r\nafter\r\n"},
		{"first-body-line", ".starts the body\r\nmore\r\n"},
		{"only-dot-no-eol", "."},
		{"only-dot-crlf", ".\r\n"},
		{"only-dot-lf", ".\n"},
		{"last-line-no-eol", "text\r\n."},
		{"last-line-lf", "text\n."},
		{"last-line-cr", "text\r."},
		{"ends-with-terminator", "text\r\n.\r\n"},
		{"many-lone-dots", strings.Repeat(".\r\n", 50)},
		{"alternating", ".\r\nx\r\n.\r\ny\r\n..\r\n"},
		{"dots-after-blank", "\r\n.\r\n\r\n.\r\n"},
		{"dot-words", ".com\r\n.net\r\n.org\r\n"},
	} {
		add("dot-"+d.name, true, hdr("dot-"+d.name, "\r\n")+d.body)
	}
	add("dot-header-field", true, hdr("dot-header-field", "\r\n", ".X-Dot: 1\r\n")+"body\r\n")
	add("dot-multipart", true, hdr("dot-multipart", "\r\n", mime, "Content-Type: multipart/mixed; boundary=dots\r\n")+
		".preamble\r\n--dots\r\nContent-Type: text/plain\r\n\r\n.\r\n..\r\n.x\r\n--dots\r\n\r\n.\r\n--dots--\r\n.\r\n")
	add("dot-lf-multipart", true, hdr("dot-lf-multipart", "\n", "MIME-Version: 1.0\n", "Content-Type: multipart/mixed; boundary=dots\n")+
		"--dots\nContent-Type: text/plain\n\n.\n..\n--dots--\n.\n")
	add("dot-base64-lines", true, hdr("dot-base64-lines", "\r\n", mime, "Content-Type: application/octet-stream\r\n", "Content-Transfer-Encoding: base64\r\n")+
		"Li4uLi4u\r\nLg==\r\n")

	// SMTP smuggling: end-of-data look-alikes followed by a second
	// transaction. A receiver that ended DATA early would see the payload
	// as commands and record an extra message "smuggled-<case>".
	seqs := []struct{ name, seq string }{
		{"lf-dot-lf", "\n.\n"},
		{"crlf-dot-cr", "\r\n.\r"},
		{"cr-dot-cr", "\r.\r"},
		{"lf-dot-crlf", "\n.\r\n"},
		{"crlf-dot-lf", "\r\n.\n"},
		{"cr-dot-crlf", "\r.\r\n"},
		{"lf-dot-cr", "\n.\r"},
		{"cr-dot-lf", "\r.\n"},
		{"crlf-dot-cr-crlf", "\r\n.\r\r\n"},
		{"crlf-dot-crlf", "\r\n.\r\n"},
		{"crlf-dotdot-crlf", "\r\n..\r\n"},
		{"lf-dotdot-lf", "\n..\n"},
	}
	payload := func(name, e string) string {
		return "MAIL FROM:<evil@attacker.test>" + e + "RCPT TO:<victim@example.test>" + e + "DATA" + e +
			"X-B9-Case: smuggled-" + name + e + "From: evil@attacker.test" + e + e + "smuggled" + e + "." + e
	}
	for _, sq := range seqs {
		for _, e := range []struct{ name, eol, tail string }{
			{"crlf", "\r\n", ""}, {"lf", "\n", ""}, {"cr-quit", "\r", "QUIT\r"},
		} {
			for _, pos := range []string{"mid", "end"} {
				name := fmt.Sprintf("smuggle-%s-%s-%s", sq.name, e.name, pos)
				body := "Hello" + sq.seq + payload(name, e.eol) + e.tail
				if pos == "mid" {
					body += "bye\r\n"
				}
				add(name, true, hdr(name, "\r\n")+body)
			}
		}
	}

	// Bare CR, bare LF and mixed line endings, in the body and in the
	// header section.
	for _, c := range []struct{ name, body string }{
		{"lf-only", "one\ntwo\nthree\n"},
		{"cr-only", "one\rtwo\rthree\r"},
		{"mixed", "one\r\ntwo\nthree\rfour\r\n"},
		{"cr-cr-lf", "one\r\r\ntwo\r\r\n"},
		{"lf-cr", "one\n\rtwo\n\r"},
		{"lf-lf-cr-cr", "one\n\n\r\rtwo"},
		{"cr-mid-line", "one\rtwo three\r\n"},
		{"lf-mid-line", "one\ntwo three\r\n"},
		{"cr-at-end", "text\r"},
		{"lf-at-end", "text\n"},
		{"cr-run", "a\r\r\r\r\rb\r\n"},
		{"lf-run", "a\n\n\n\n\nb\r\n"},
		{"crlf-cr-end", "text\r\n\r"},
		{"lf-crlf-end", "text\n\r\n"},
		{"cr-before-mail", "text\rMAIL FROM:<evil@attacker.test>\r\n"},
		{"lf-before-rcpt", "text\nRCPT TO:<victim@example.test>\n"},
	} {
		add("eol-"+c.name, true, hdr("eol-"+c.name, "\r\n")+c.body)
	}
	for _, e := range []struct{ name, eol string }{{"lf", "\n"}, {"cr", "\r"}} {
		name := "eol-header-" + e.name
		add(name, true, hdr(name, e.eol)+"body"+e.eol+"more"+e.eol)
	}
	for _, sep := range []struct{ name, sep string }{{"crlf-lf", "\r\n\n"}, {"lf-crlf", "\n\r\n"}, {"cr-cr", "\r\r"}, {"cr-crlf", "\r\r\n"}} {
		name := "eol-separator-" + sep.name
		h := hdr(name, "\r\n")
		add(name, true, h[:len(h)-4]+sep.sep+"body\r\n")
	}
	add("eol-header-continuation-cr", true, hdr("eol-header-continuation-cr", "\r\n", "X-Folded: a\r b\r\n")+"body\r\n")
	add("eol-header-continuation-lf", true, hdr("eol-header-continuation-lf", "\r\n", "X-Folded: a\n\tb\r\n")+"body\r\n")
	add("eol-header-bare-cr", false, hdr("eol-header-bare-cr", "\r\n", "X-Broken: a\rb\r\n")+"body\r\n")
	add("eol-header-bare-lf", false, hdr("eol-header-bare-lf", "\r\n", "X-Broken: a\nRCPT TO:<victim@example.test>\r\n")+"body\r\n")
	add("eol-multipart-lf", true, hdr("eol-multipart-lf", "\n", "MIME-Version: 1.0\n", "Content-Type: multipart/alternative; boundary=lf\n")+
		"--lf\nContent-Type: text/plain\n\nplain\rtext\n--lf\nContent-Type: text/html\n\n<p>html</p>\n--lf--\n")

	// Long lines: 998 octets is the limit and is sent as is; 999 and more
	// are re-encoded.
	for _, n := range []int{998, 999, 1000, 1500} {
		p := func(s string) string { return fmt.Sprintf("long-%d-%s", n, s) }
		add(p("plain"), true, hdr(p("plain"), "\r\n")+"short\r\n"+text(n)+"\r\nshort\r\n")
		add(p("7bit"), true, hdr(p("7bit"), "\r\n", mime, "Content-Type: text/plain; charset=us-ascii\r\n", "Content-Transfer-Encoding: 7bit\r\n")+text(n)+"\r\n")
		add(p("utf8"), true, hdr(p("utf8"), "\r\n", mime, "Content-Type: text/plain; charset=utf-8\r\n", "Content-Transfer-Encoding: 8bit\r\n")+
			strings.Repeat("ü", n/2)+strings.Repeat("x", n%2)+"\r\n")
		add(p("leading-dot"), true, hdr(p("leading-dot"), "\r\n")+"."+text(n-1)+"\r\n.\r\n")
		add(p("lf"), true, hdr(p("lf"), "\n")+"short\n"+text(n)+"\nshort\n")
		add(p("trailing-space"), true, hdr(p("trailing-space"), "\r\n")+text(n-3)+"   \r\n")
		add(p("no-eol"), true, hdr(p("no-eol"), "\r\n")+"short\r\n"+text(n))
		add(p("multipart-alt"), true, hdr(p("multipart-alt"), "\r\n", mime, "Content-Type: multipart/alternative; boundary=\"alt-b9\"\r\n")+
			"--alt-b9\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nsee the html part\r\n"+
			"--alt-b9\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>"+text(n-7)+"</p>\r\n--alt-b9--\r\n")
		add(p("multipart-mixed"), true, hdr(p("multipart-mixed"), "\r\n", mime, "Content-Type: multipart/mixed; boundary=mixed-b9\r\n")+
			"This is a multi-part message in MIME format.\r\n"+
			"--mixed-b9\r\nContent-Type: text/plain\r\n\r\n"+text(n)+"\r\n"+
			"--mixed-b9\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"+
			"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4\r\nOTo7PD0+P0BBQkNERUZHSElKS0xNTk9Q\r\n--mixed-b9--\r\n")
		add(p("qp"), true, hdr(p("qp"), "\r\n", mime, "Content-Type: text/plain; charset=utf-8\r\n", "Content-Transfer-Encoding: quoted-printable\r\n")+
			"caf=C3=A9 "+text(n-10)+"\r\n")
		b64 := base64.StdEncoding.EncodeToString([]byte(text(n)))[:n/4*4-4]
		add(p("base64"), true, hdr(p("base64"), "\r\n", mime, "Content-Type: application/octet-stream\r\n", "Content-Transfer-Encoding: base64\r\n")+
			b64+strings.Repeat(" ", n-len(b64))+"\r\n")
	}
	add("long-3000-plain", true, hdr("long-3000-plain", "\r\n")+text(3000)+"\r\n")
	add("long-10000-plain", true, hdr("long-10000-plain", "\r\n")+text(10000)+"\r\n")
	add("long-998-header", true, hdr("long-998-header", "\r\n", "X-Long: "+text(990)+"\r\n")+"body\r\n")
	for _, n := range []int{999, 1500, 3000} {
		name := fmt.Sprintf("long-%d-subject-folded", n)
		add(name, true, hdr(name, "\r\n", "X-Topic: "+text(n-9)+"\r\n")+"body\r\n")
	}
	add("long-999-header-folds-after-colon", true, hdr("long-999-header-folds-after-colon", "\r\n", "X-Token: "+strings.Repeat("t", 990)+"\r\n")+"body\r\n")
	for _, n := range []int{998, 999, 1500} {
		name := fmt.Sprintf("long-header-token-%d", n)
		add(name, false, hdr(name, "\r\n", "X-Token: "+strings.Repeat("t", n)+"\r\n")+"body\r\n")
	}
	add("long-part-header-folded", true, hdr("long-part-header-folded", "\r\n", mime, "Content-Type: multipart/mixed; boundary=ph\r\n")+
		"--ph\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\""+text(1500)+"\"\r\n\r\nbody\r\n--ph--\r\n")
	add("long-part-header-token", false, hdr("long-part-header-token", "\r\n", mime, "Content-Type: multipart/mixed; boundary=ph\r\n")+
		"--ph\r\nContent-Type: text/plain\r\nX-Token: "+strings.Repeat("t", 1500)+"\r\n\r\nbody\r\n--ph--\r\n")

	// 8-bit content, without long lines (sent as is) and with them
	// (rewritten to 7-bit).
	add("8bit-utf8-declared", true, hdr("8bit-utf8-declared", "\r\n", mime, "Content-Type: text/plain; charset=utf-8\r\n", "Content-Transfer-Encoding: 8bit\r\n")+"Grüße, 東京, ☕\r\n")
	add("8bit-utf8-undeclared", true, hdr("8bit-utf8-undeclared", "\r\n")+"Grüße without MIME\r\n")
	add("8bit-latin1", true, hdr("8bit-latin1", "\r\n", mime, "Content-Type: text/plain; charset=iso-8859-1\r\n", "Content-Transfer-Encoding: 8bit\r\n")+"Gr\xfc\xdfe\r\n")
	add("8bit-multipart", true, hdr("8bit-multipart", "\r\n", mime, "Content-Type: multipart/alternative; boundary=eb\r\n")+
		"--eb\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n--eb\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Grüße</p>\r\n--eb--\r\n")
	add("8bit-bare-lf", true, hdr("8bit-bare-lf", "\r\n", mime, "Content-Type: text/plain; charset=utf-8\r\n")+"Grüße\nÜber\r.\n")
	add("8bit-binary-attachment", true, hdr("8bit-binary-attachment", "\r\n", mime, "Content-Type: multipart/mixed; boundary=bin\r\n")+
		"--bin\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--bin\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\x80\x81\xfe\xff\r\n--bin--\r\n")
	add("8bit-in-qp-part", true, hdr("8bit-in-qp-part", "\r\n", mime, "Content-Type: text/plain; charset=utf-8\r\n", "Content-Transfer-Encoding: quoted-printable\r\n")+"raw Grüße =E2=98=95\r\n")
	add("8bit-long-line", true, hdr("8bit-long-line", "\r\n", mime, "Content-Type: text/plain; charset=utf-8\r\n")+"Grüße "+text(1500)+"\r\n")
	add("8bit-long-sibling", true, hdr("8bit-long-sibling", "\r\n", mime, "Content-Type: multipart/alternative; boundary=sib\r\n")+
		"--sib\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n--sib\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>"+text(1500)+"</p>\r\n--sib--\r\n")
	add("8bit-long-latin1", true, hdr("8bit-long-latin1", "\r\n")+"\xe9t\xe9 "+text(1200)+"\r\n")

	// UTF-8 header fields: the message needs SMTPUTF8 and its body is left
	// 8-bit even when a long line is re-encoded.
	utf8Hdr := func(name string, extra ...string) string {
		return strings.Replace(hdr(name, "\r\n", extra...), "Subject: B9 ", "Subject: B9 Grüße ", 1)
	}
	add("utf8hdr-subject", true, utf8Hdr("utf8hdr-subject")+"ascii body\r\n")
	add("utf8hdr-display-name", true, strings.Replace(hdr("utf8hdr-display-name", "\r\n"), "From: B9 ", "From: Zoë B9 ", 1)+"body\r\n")
	add("utf8hdr-8bit-body", true, utf8Hdr("utf8hdr-8bit-body", mime, "Content-Type: text/plain; charset=utf-8\r\n")+"Grüße, 東京\r\n")
	add("utf8hdr-custom-field", true, hdr("utf8hdr-custom-field", "\r\n", "X-Note: 東京 ☕\r\n")+"body\r\n")
	add("utf8hdr-long-line", true, utf8Hdr("utf8hdr-long-line", mime, "Content-Type: text/plain; charset=utf-8\r\n")+"Grüße "+text(1500)+"\r\n")
	add("utf8hdr-long-sibling", true, utf8Hdr("utf8hdr-long-sibling", mime, "Content-Type: multipart/alternative; boundary=sib\r\n")+
		"--sib\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n--sib\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>"+text(1500)+"</p>\r\n--sib--\r\n")
	add("utf8hdr-folded-long", true, hdr("utf8hdr-folded-long", "\r\n", "X-Topic: "+strings.Repeat("Grüße ", 250)+"\r\n")+"body\r\n")
	add("utf8hdr-lf-endings", true, strings.ReplaceAll(utf8Hdr("utf8hdr-lf-endings"), "\r\n", "\n")+"body\n.\nend\n")

	// NUL is refused at the API wherever it is.
	add("nul-body", false, hdr("nul-body", "\r\n")+"a\x00b\r\n")
	add("nul-header", false, hdr("nul-header", "\r\n", "X-Nul: a\x00b\r\n")+"body\r\n")
	add("nul-at-end", false, hdr("nul-at-end", "\r\n")+"body\r\n\x00")
	add("nul-after-terminator", false, hdr("nul-after-terminator", "\r\n")+"body\r\n.\r\n\x00MAIL FROM:<evil@attacker.test>\r\n")
	add("nul-in-part", false, hdr("nul-in-part", "\r\n", mime, "Content-Type: multipart/mixed; boundary=n\r\n")+"--n\r\n\r\n\x00\r\n--n--\r\n")
	add("nul-long-line", false, hdr("nul-long-line", "\r\n")+text(1500)+"\x00\r\n")

	// Odd shapes.
	add("misc-empty-body", true, hdr("misc-empty-body", "\r\n"))
	h := hdr("misc-header-only", "\r\n")
	add("misc-header-only", true, h[:len(h)-4])
	add("misc-no-final-eol", true, hdr("misc-no-final-eol", "\r\n")+"body")
	var many strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&many, "line %d\r\n", i)
	}
	add("misc-many-short-lines", true, hdr("misc-many-short-lines", "\r\n")+many.String())
	add("misc-rfc822-attachment", true, hdr("misc-rfc822-attachment", "\r\n", mime, "Content-Type: multipart/mixed; boundary=outer\r\n")+
		"--outer\r\nContent-Type: text/plain\r\n\r\nforwarded\r\n--outer\r\nContent-Type: message/rfc822\r\n\r\n"+
		"From: inner@sender.test\r\nSubject: inner\r\n\r\n.\r\n"+text(1500)+"\n.\n"+payload("misc-rfc822-attachment-inner", "\r\n")+"--outer--\r\n")
	add("misc-nested-smuggle", true, hdr("misc-nested-smuggle", "\r\n", mime, "Content-Type: multipart/mixed; boundary=l1\r\n")+
		"--l1\r\nContent-Type: multipart/alternative; boundary=l2\r\n\r\n--l2\r\nContent-Type: text/plain\r\n\r\ndeep\r.\r"+payload("misc-nested-smuggle", "\r")+
		"\r\n--l2\r\nContent-Type: text/html\r\n\r\n<p>"+text(2000)+"</p>\r\n--l2--\r\n--l1--\r\n")
	return cases
}

// formatB9Corpus renders cases in the corpus file format.
func formatB9Corpus(cases []b9Case) []byte {
	var b bytes.Buffer
	b.WriteString(`# TESTPLAN B9 corpus: dot stuffing, SMTP smuggling end-of-data look-alikes,
# bare CR and LF, long lines, 8-bit content, UTF-8 headers and NUL.
#
# Generated by b9Corpus in b9_test.go; regenerate with
#   go test ./services/postflow -run TestB9CorpusIsCurrent -update
# TestB9StrictSink reads this file.
#
# One case per line: the case name (also the recipient's local part and the
# X-B9-Case field), the outcome Send must give (accept, or reject with
# INVALID_ARGUMENT on field raw), and the raw message as a Go string literal.
`)
	for _, c := range cases {
		outcome := "reject"
		if c.accept {
			outcome = "accept"
		}
		fmt.Fprintf(&b, "%s %s %s\n", c.name, outcome, strconv.Quote(c.raw))
	}
	return b.Bytes()
}

// readB9Corpus parses the corpus file.
func readB9Corpus(t *testing.T) []b9Case {
	t.Helper()
	data, err := os.ReadFile(b9CorpusFile)
	if err != nil {
		t.Fatalf("read corpus: %v (generate it with -update)", err)
	}
	var cases []b9Case
	seen := map[string]bool{}
	for i, line := range strings.Split(string(data), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, ok1 := strings.Cut(line, " ")
		outcome, quoted, ok2 := strings.Cut(rest, " ")
		raw, err := strconv.Unquote(quoted)
		if !ok1 || !ok2 || err != nil || (outcome != "accept" && outcome != "reject") || seen[name] {
			t.Fatalf("%s:%d: malformed or duplicate case %.60q (%v)", b9CorpusFile, i+1, line, err)
		}
		seen[name] = true
		cases = append(cases, b9Case{name: name, accept: outcome == "accept", raw: raw})
	}
	return cases
}

func TestB9CorpusIsCurrent(t *testing.T) {
	want := formatB9Corpus(b9Corpus())
	if *updateB9 {
		if err := os.MkdirAll(filepath.Dir(b9CorpusFile), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(b9CorpusFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(b9CorpusFile)
	if err != nil {
		t.Fatalf("read corpus: %v (generate it with -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from b9Corpus; run go test ./services/postflow -run TestB9CorpusIsCurrent -update and review the diff", b9CorpusFile)
	}
	if n := len(b9Corpus()); n < 200 {
		t.Errorf("corpus has %d cases, TESTPLAN B9 wants at least 200", n)
	}
}

// TestB9StrictSink is TESTPLAN B9: every corpus case goes through the real
// Send API and the worker to a strict receiver, which refuses any bare CR
// or LF and ends DATA only at <CRLF>.<CRLF>. Accepted cases must arrive
// exactly once each, with nothing smuggled in, no bare CR or LF and no line
// over 998 octets on the wire, reading back as submitted; NUL and
// unfoldable header lines are refused at the API with nothing queued.
//
// It runs twice: against a receiver offering 8BITMIME and SMTPUTF8, and
// against a 7-bit one offering neither (TESTPLAN B9's "8-bit content
// without 8BITMIME" and "UTF-8 headers without SMTPUTF8"). The 7-bit one
// must get no 8-bit octet at all: 8-bit bodies arrive converted to
// quoted-printable, and messages that need SMTPUTF8 bounce with 5.6.7.
func TestB9StrictSink(t *testing.T) {
	t.Run("8BITMIME receiver", func(t *testing.T) { testB9StrictSink(t, false) })
	t.Run("7-bit receiver", func(t *testing.T) { testB9StrictSink(t, true) })
}

func testB9StrictSink(t *testing.T, sevenBit bool) {
	cases := readB9Corpus(t)
	sink := startStrictSink(t, sevenBit)
	s := startStack(t, testenv.SinkScript{}, func(c *serveConfig) { c.SMTPPort = sink.port() })
	// needsUTF8 reports a case whose header needs SMTPUTF8: a 7-bit
	// receiver cannot take it.
	needsUTF8 := func(c b9Case) bool {
		n := mailmsg.NormalizeCRLF([]byte(c.raw))
		return !b9IsASCII(n[:max(bytes.Index(n, []byte("\r\n\r\n")), 0)])
	}
	deliverable := func(c b9Case) bool { return c.accept && !(sevenBit && needsUTF8(c)) }

	type outcome struct {
		id  string
		err error
	}
	results := make([]outcome, len(cases))
	var wg sync.WaitGroup
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := s.mail.Send(ctx, &postflowv1.SendRequest{
					From: "b9@sender.test", To: []string{cases[i].name + "@example.test"}, Raw: []byte(cases[i].raw),
				})
				cancel()
				results[i] = outcome{id: resp.GetMessageId(), err: err}
			}
		})
	}
	for i := range cases {
		next <- i
	}
	close(next)
	wg.Wait()

	accepted := 0
	for i, c := range cases {
		switch r := results[i]; {
		case c.accept && r.err != nil:
			t.Errorf("%s: Send = %v, want accepted", c.name, r.err)
		case c.accept:
			accepted++
		case r.err == nil:
			t.Errorf("%s: Send accepted it (%s), want INVALID_ARGUMENT on raw", c.name, r.id)
		default:
			st := status.Convert(r.err)
			if st.Code() != codes.InvalidArgument || !hasFieldViolation(st, "raw") {
				t.Errorf("%s: Send = %v, want INVALID_ARGUMENT naming field raw", c.name, r.err)
			}
		}
	}
	rejected := len(cases) - accepted
	if t.Failed() {
		t.FailNow()
	}

	want := 0
	for _, c := range cases {
		if deliverable(c) {
			want++
		}
	}
	if !eventually(25*time.Second, func() bool { return sink.received() >= want }) {
		t.Fatalf("strict sink received %d messages and refused %d; want %d", sink.received(), sink.refused(), want)
	}
	s.waitQueueEmpty(10 * time.Second)
	for i, c := range cases {
		if !c.accept {
			continue
		}
		st := s.waitFinal(results[i].id, 5*time.Second)
		r := st.GetRecipients()[0]
		if deliverable(c) && r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
			t.Errorf("%s: state %v (last reply %v), want DELIVERED", c.name, r.GetState(), r.GetLastReply())
		}
		if !deliverable(c) && (r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED || r.GetLastReply().GetEnhancedCode() != "5.6.7") {
			t.Errorf("%s: state %v (last reply %v), want BOUNCED 5.6.7: the receiver has no SMTPUTF8", c.name, r.GetState(), r.GetLastReply())
		}
	}

	// Nothing was queued for the refused cases: every job OUTBOUND ever
	// held belongs to an accepted one (one recipient domain each).
	stream, err := s.stream.Stream(context.Background(), queue.OutboundStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq != uint64(accepted) {
		t.Errorf("OUTBOUND received %d jobs, want %d (one per accepted case, none for the %d refused)", info.State.LastSeq, accepted, rejected)
	}

	// The receiver's view: one message per accepted case and nothing else.
	msgs := sink.messages()
	byCase := map[string]strictMsg{}
	for _, m := range msgs {
		name := b9CaseOf(m.data)
		if _, dup := byCase[name]; dup || name == "" || strings.HasPrefix(name, "smuggled") {
			t.Errorf("strict sink received an unexpected message (case %q, duplicate %v): %.200q", name, dup, m.data)
		}
		byCase[name] = m
	}
	if len(msgs) != want || sink.refused() != 0 {
		t.Errorf("strict sink received %d messages and refused %d, want exactly %d and 0", len(msgs), sink.refused(), want)
	}
	w := sink.wire()
	if w.bareCR != 0 || w.bareLF != 0 || w.longLines != 0 {
		t.Errorf("wire capture (%d octets): %d bare CR, %d bare LF, %d lines over 998 octets; want 0, 0, 0", w.octets, w.bareCR, w.bareLF, w.longLines)
	}
	if n := sink.eightBitWithoutParam(); n != 0 {
		t.Errorf("%d messages with 8-bit octets were sent without BODY=8BITMIME or SMTPUTF8", n)
	}

	identical, rewritten := 0, 0
	for _, c := range cases {
		if !deliverable(c) {
			continue
		}
		m, ok := byCase[c.name]
		if !ok {
			t.Errorf("%s: not received by the strict sink", c.name)
			continue
		}
		if m.from != "b9@sender.test" || len(m.to) != 1 || m.to[0] != c.name+"@example.test" {
			t.Errorf("%s: envelope %s -> %v, want b9@sender.test -> [%s@example.test]", c.name, m.from, m.to, c.name)
		}
		submitted := mailmsg.NormalizeCRLF([]byte(c.raw))
		if !bytes.HasSuffix(submitted, []byte("\r\n")) {
			submitted = append(submitted, '\r', '\n')
		}
		// Every case has its own Message-ID and Date, so nothing is added:
		// without a long line the message arrives octet for octet.
		// A 7-bit receiver gets 8-bit bodies converted.
		if !b9HasLongLine(submitted) && !(sevenBit && !b9IsASCII(submitted)) {
			identical++
			if !bytes.Equal(m.data, submitted) {
				t.Errorf("%s: received\n%.300q\nwant the submitted message, line endings normalised:\n%.300q", c.name, m.data, submitted)
			}
			continue
		}
		rewritten++
		// Rewritten for a long line, a message that does not need
		// SMTPUTF8 (ASCII header) is made 7-bit throughout.
		if hdrEnd := bytes.Index(submitted, []byte("\r\n\r\n")); (sevenBit || b9IsASCII(submitted[:max(hdrEnd, 0)])) && !b9IsASCII(m.data) {
			t.Errorf("%s: re-encoded message with an ASCII header still holds 8-bit octets: %.300q", c.name, m.data)
		}
		got, err := testenv.MIMELeaves(m.data)
		if err != nil {
			t.Errorf("%s: received message does not parse: %v", c.name, err)
			continue
		}
		want, err := testenv.MIMELeaves(submitted)
		if err != nil {
			t.Fatalf("%s: submitted message does not parse: %v", c.name, err)
		}
		if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
			t.Errorf("%s: received message reads as\n%.400q\nwant\n%.400q", c.name, got, want)
		}
	}
	t.Logf("B9 (7-bit receiver %v): %d cases, %d accepted (%d octet-identical, %d re-encoded, %d bounced for SMTPUTF8), %d refused at the API; sink received %d, wire %d octets over %d sessions",
		sevenBit, len(cases), accepted, identical, rewritten, accepted-want, rejected, len(msgs), w.octets, w.sessions)
}

// hasFieldViolation reports whether st carries a BadRequest violation on field.
func hasFieldViolation(st *status.Status, field string) bool {
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == field {
					return true
				}
			}
		}
	}
	return false
}

// b9CaseOf returns a message's X-B9-Case field.
func b9CaseOf(data []byte) string {
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(data)))
	if err != nil {
		return ""
	}
	return h.Get("X-B9-Case")
}

func b9HasLongLine(b []byte) bool {
	for _, line := range bytes.Split(b, []byte("\r\n")) {
		if len(line) > 998 {
			return true
		}
	}
	return false
}

// strictSink is a raw-TCP ESMTP receiver that is strict where go-smtp is
// tolerant. It offers PIPELINING, SIZE and (unless sevenBit) 8BITMIME and SMTPUTF8, and speaks
// EHLO, HELO, MAIL, RCPT, DATA, RSET, NOOP and QUIT. A command line with a
// bare CR or LF gets 500 5.5.2; DATA ends only at <CRLF>.<CRLF>, and a
// message holding a bare CR or LF, or a line over 998 octets (the stuffing
// dot aside), gets 550 5.6.0 and is counted, not recorded. Every octet
// received is captured per session.
type strictSink struct {
	ln net.Listener
	wg sync.WaitGroup

	mu        sync.Mutex
	conns     map[net.Conn]bool
	captures  []*bytes.Buffer
	msgs      []strictMsg
	refusals  int // commands and messages refused for bare CR/LF or length
	eightBare int // 8-bit messages without BODY=8BITMIME or SMTPUTF8
	// sevenBit makes the sink offer neither 8BITMIME nor SMTPUTF8, so
	// that every 8-bit message counts in eightBare.
	sevenBit bool
}

// strictMsg is one message the strict sink accepted.
type strictMsg struct {
	from string
	to   []string
	data []byte // dot-stuffing undone, the terminating ".\r\n" removed
}

func startStrictSink(t *testing.T, sevenBit bool) *strictSink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &strictSink{ln: ln, conns: map[net.Conn]bool{}, sevenBit: sevenBit}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = true
			capture := &bytes.Buffer{}
			s.captures = append(s.captures, capture)
			s.mu.Unlock()
			s.wg.Go(func() { s.serve(c, capture) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *strictSink) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// captureWriter appends what a session reads to its capture, under the
// sink's lock so the test may read captures at any time.
type captureWriter struct {
	s   *strictSink
	buf *bytes.Buffer
}

func (w captureWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.buf.Write(p)
}

func (s *strictSink) serve(c net.Conn, capture *bytes.Buffer) {
	defer func() {
		_ = c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	r := bufio.NewReader(io.TeeReader(c, captureWriter{s, capture}))
	w := bufio.NewWriter(c)
	reply := func(lines ...string) bool {
		for _, l := range lines {
			_, _ = w.WriteString(l + "\r\n")
		}
		return w.Flush() == nil
	}
	refuse := func() {
		s.mu.Lock()
		s.refusals++
		s.mu.Unlock()
	}
	if !reply("220 strict.test ESMTP strict sink") {
		return
	}
	var from string
	var rcpts []string
	inTx, eightBitOK := false, false
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		if !bytes.HasSuffix(line, []byte("\r\n")) || bytes.IndexByte(line[:len(line)-2], '\r') >= 0 {
			refuse()
			reply("500 5.5.2 bare CR or LF in command")
			continue
		}
		cmd := string(line[:len(line)-2])
		verb, arg, _ := strings.Cut(cmd, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			inTx, rcpts = false, nil
			if s.sevenBit {
				reply("250-strict.test", "250-PIPELINING", "250 SIZE 52428800")
				continue
			}
			reply("250-strict.test", "250-PIPELINING", "250-8BITMIME", "250-SMTPUTF8", "250 SIZE 52428800")
		case "HELO":
			inTx, rcpts = false, nil
			reply("250 strict.test")
		case "MAIL":
			addr, params, ok := smtpPathArg(arg, "FROM:")
			if inTx || !ok {
				reply("503 5.5.1 bad sequence or syntax")
				continue
			}
			up := strings.ToUpper(params)
			from, rcpts, inTx = addr, nil, true
			eightBitOK = !s.sevenBit && (strings.Contains(up, "BODY=8BITMIME") || strings.Contains(up, "SMTPUTF8"))
			reply("250 2.1.0 ok")
		case "RCPT":
			addr, _, ok := smtpPathArg(arg, "TO:")
			if !inTx || !ok {
				reply("503 5.5.1 bad sequence or syntax")
				continue
			}
			rcpts = append(rcpts, addr)
			reply("250 2.1.5 ok")
		case "DATA":
			if !inTx || len(rcpts) == 0 {
				reply("503 5.5.1 no valid recipients")
				continue
			}
			if !reply("354 end with <CRLF>.<CRLF>") {
				return
			}
			data, bad, ok := readStrictData(r)
			if !ok {
				return
			}
			switch {
			case bad != "":
				refuse()
				reply("550 5.6.0 " + bad)
			default:
				s.mu.Lock()
				s.msgs = append(s.msgs, strictMsg{from: from, to: rcpts, data: data})
				if !eightBitOK && !b9IsASCII(data) {
					s.eightBare++
				}
				s.mu.Unlock()
				reply("250 2.0.0 accepted")
			}
			inTx, rcpts = false, nil
		case "RSET":
			inTx, rcpts = false, nil
			reply("250 2.0.0 ok")
		case "NOOP":
			reply("250 2.0.0 ok")
		case "QUIT":
			reply("221 2.0.0 bye")
			return
		default:
			reply("500 5.5.1 unknown command")
		}
	}
}

// smtpPathArg parses "FROM:<addr> params" (or "TO:…").
func smtpPathArg(arg, prefix string) (addr, params string, ok bool) {
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return "", "", false
	}
	rest := strings.TrimSpace(arg[len(prefix):])
	if !strings.HasPrefix(rest, "<") {
		return "", "", false
	}
	end := strings.IndexByte(rest, '>')
	if end < 0 {
		return "", "", false
	}
	return rest[1:end], strings.TrimSpace(rest[end+1:]), true
}

// readStrictData reads message content after 354 up to a line ".\r\n" that
// follows a CRLF (or starts the content), undoing dot-stuffing. bad says
// why the content must be refused: a bare CR or LF, or a line over 998
// octets. ok is false if the connection ended first.
func readStrictData(r *bufio.Reader) (data []byte, bad string, ok bool) {
	var buf bytes.Buffer
	afterCRLF := true
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return nil, "", false
		}
		if afterCRLF && string(line) == ".\r\n" {
			return buf.Bytes(), bad, true
		}
		crlf := bytes.HasSuffix(line, []byte("\r\n"))
		if bad == "" && (!crlf || bytes.IndexByte(line[:len(line)-2], '\r') >= 0) {
			bad = "bare CR or LF in message"
		}
		if afterCRLF && len(line) > 0 && line[0] == '.' {
			line = line[1:]
		}
		if bad == "" && len(bytes.TrimSuffix(line, []byte("\r\n"))) > 998 {
			bad = "line over 998 octets"
		}
		buf.Write(line)
		afterCRLF = crlf
	}
}

func b9IsASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

func (s *strictSink) received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

func (s *strictSink) refused() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refusals
}

func (s *strictSink) eightBitWithoutParam() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eightBare
}

func (s *strictSink) messages() []strictMsg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]strictMsg(nil), s.msgs...)
}

// wireStats summarises every session's capture.
type wireStats struct {
	sessions, octets          int
	bareCR, bareLF, longLines int
}

// wire counts, over every octet received, CRs not followed by LF, LFs not
// preceded by CR, and lines over 998 octets without their CRLF, not
// counting a leading dot, which is dot-stuffing (RFC 5321 §4.5.3.1.6).
func (s *strictSink) wire() wireStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	var w wireStats
	for _, c := range s.captures {
		b := c.Bytes()
		w.sessions++
		w.octets += len(b)
		for i, x := range b {
			switch {
			case x == '\r' && (i+1 == len(b) || b[i+1] != '\n'):
				w.bareCR++
			case x == '\n' && (i == 0 || b[i-1] != '\r'):
				w.bareLF++
			}
		}
		for _, line := range bytes.Split(b, []byte("\r\n")) {
			n := len(line)
			if n > 0 && line[0] == '.' {
				n--
			}
			if n > 998 {
				w.longLines++
			}
		}
	}
	return w
}

// TestB9StrictSinkIsStrict checks the checker: the strict sink refuses bare
// CR and LF, ends DATA only at <CRLF>.<CRLF>, undoes dot-stuffing and
// counts what it sees on the wire.
func TestB9StrictSinkIsStrict(t *testing.T) {
	sink := startStrictSink(t, false)
	c, err := net.Dial("tcp", sink.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	expect := func(send, wantCode string) {
		t.Helper()
		if send != "" {
			if _, err := io.WriteString(c, send); err != nil {
				t.Fatal(err)
			}
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("after %q: %v", send, err)
			}
			if len(line) < 4 || line[3] != '-' {
				if !strings.HasPrefix(line, wantCode) {
					t.Fatalf("after %.60q: reply %q, want %s", send, line, wantCode)
				}
				return
			}
		}
	}
	expect("", "220")
	expect("EHLO client.test\r\n", "250")
	expect("NOOP\n", "500")
	tx := "MAIL FROM:<a@sender.test> BODY=8BITMIME\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
	expect(tx, "250")
	expect("", "250")
	expect("", "354")
	// Bare LF around the dot does not end DATA, and the message is refused.
	expect("Subject: one\r\n\r\nx\n.\nMAIL FROM:<evil@attacker.test>\r\nrest\r\n.\r\n", "550")
	expect(tx, "250")
	expect("", "250")
	expect("", "354")
	expect("Subject: two\r\n\r\n..stuffed\r\nline\r.\r\n\r\n.\r\n", "550")
	expect(tx, "250")
	expect("", "250")
	expect("", "354")
	expect("Subject: three\r\n\r\n..stuffed\r\n.\r\n", "250")
	expect("QUIT\r\n", "221")

	msgs := sink.messages()
	if len(msgs) != 1 || string(msgs[0].data) != "Subject: three\r\n\r\n.stuffed\r\n" {
		t.Fatalf("sink recorded %q, want only the third message, unstuffed", msgs)
	}
	if sink.refused() != 3 {
		t.Errorf("sink refused %d, want 3 (a command and two messages)", sink.refused())
	}
	if w := sink.wire(); w.bareCR != 1 || w.bareLF != 3 {
		t.Errorf("wire: %d bare CR, %d bare LF; want 1 and 3", w.bareCR, w.bareLF)
	}
}
