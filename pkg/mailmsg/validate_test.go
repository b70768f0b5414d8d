package mailmsg

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

var testNow = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

const testIDDomain = "mail.postflow.example"

func validInput() Input {
	return Input{
		From:    "Sender <sender@example.com>",
		To:      []string{"rcpt@example.org"},
		Subject: "Hello",
		Text:    "Hi there",
	}
}

func validRaw() []byte {
	return []byte("From: sender@example.com\r\nTo: rcpt@example.org\r\nSubject: raw\r\n\r\nbody\r\n")
}

func addrs(n int, domain string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("r%d@%s", i, domain)
	}
	return out
}

func nested(depth int) string {
	var b strings.Builder
	b.WriteString("From: sender@example.com\r\nMIME-Version: 1.0\r\n")
	for i := 0; i < depth; i++ {
		fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i)
	}
	b.WriteString("Content-Type: text/plain\r\n\r\nx\r\n")
	for i := depth - 1; i >= 0; i-- {
		fmt.Fprintf(&b, "--b%d--\r\n", i)
	}
	return b.String()
}

// TestBuildRejects covers every D1 request kind (TESTPLAN.md) that this
// package owns. The base input is valid, so each case must produce exactly
// one violation, on the named proto field.
func TestBuildRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		mutate    func(in *Input)
		lim       Limits
		wantField string
		wantDesc  string // substring of the description
	}{
		// CR, LF or NUL in From, To, Subject, display names, header values.
		{"cr in from", func(in *Input) { in.From = "sender\r@example.com" }, Limits{}, "from", "CR"},
		{"lf in from display name", func(in *Input) { in.From = "Eve\nBcc: all@example.net <sender@example.com>" }, Limits{}, "from", "LF"},
		{"nul in to", func(in *Input) { in.To = []string{"a@example.org", "r\x00@example.org"} }, Limits{}, "to[1]", "NUL"},
		{"crlf in to display name", func(in *Input) { in.To = []string{"Bob\r\n <rcpt@example.org>"} }, Limits{}, "to[0]", "CR"},
		{"encoded crlf in cc display name", func(in *Input) { in.Cc = []string{"=?utf-8?q?Bob=0D=0AX-Evil=3A_1?= <c@example.org>"} }, Limits{}, "cc[0]", "display name: contains CR"},
		{"lf in reply_to", func(in *Input) { in.ReplyTo = []string{"r@example.org\n"} }, Limits{}, "reply_to[0]", "LF"},
		{"cr in subject", func(in *Input) { in.Subject = "Hi\rBcc: x@example.net" }, Limits{}, "subject", "CR"},
		{"lf in subject", func(in *Input) { in.Subject = "Hi\nBcc: x@example.net" }, Limits{}, "subject", "LF"},
		{"nul in subject", func(in *Input) { in.Subject = "Hi\x00" }, Limits{}, "subject", "NUL"},
		{"control in subject", func(in *Input) { in.Subject = "Hi\x1b[31m" }, Limits{}, "subject", "control character"},
		{"crlf in header value", func(in *Input) { in.Headers = []Header{{"X-A", "1"}, {"X-B", "v\r\nBcc: x@example.net"}} }, Limits{}, "headers[1].value", "CR"},
		{"lf in header value", func(in *Input) { in.Headers = []Header{{"X-A", "v\nX-B: 2"}} }, Limits{}, "headers[0].value", "LF"},
		{"nul in header value", func(in *Input) { in.Headers = []Header{{"X-A", "v\x00"}} }, Limits{}, "headers[0].value", "NUL"},
		// Header names with spaces or colons.
		{"space in header name", func(in *Input) { in.Headers = []Header{{"X Campaign", "1"}} }, Limits{}, "headers[0].name", "printable"},
		{"colon in header name", func(in *Input) { in.Headers = []Header{{"X-Campaign:", "1"}} }, Limits{}, "headers[0].name", "':'"},
		{"lf in header name", func(in *Input) { in.Headers = []Header{{"X-A\nBcc", "1"}} }, Limits{}, "headers[0].name", "0x0A"},
		{"non-ascii header name", func(in *Input) { in.Headers = []Header{{"X-Ü", "1"}} }, Limits{}, "headers[0].name", "0xC3"},
		{"empty header name", func(in *Input) { in.Headers = []Header{{"", "1"}} }, Limits{}, "headers[0].name", "empty"},
		{"header name too long", func(in *Input) { in.Headers = []Header{{"X-" + strings.Repeat("a", 80), "1"}} }, Limits{}, "headers[0].name", "limit 64"},
		// Invalid UTF-8.
		{"invalid utf-8 in from", func(in *Input) { in.From = "S\xff <sender@example.com>" }, Limits{}, "from", "invalid UTF-8"},
		{"invalid utf-8 in bcc", func(in *Input) { in.Bcc = []string{"b\xc3@example.org"} }, Limits{}, "bcc[0]", "invalid UTF-8"},
		{"invalid utf-8 in subject", func(in *Input) { in.Subject = "\xc3\x28" }, Limits{}, "subject", "invalid UTF-8"},
		{"invalid utf-8 in text", func(in *Input) { in.Text = "a\xffb" }, Limits{}, "text", "invalid UTF-8"},
		{"invalid utf-8 in html", func(in *Input) { in.HTML = "<p>\xff</p>" }, Limits{}, "html", "invalid UTF-8"},
		{"invalid utf-8 in header value", func(in *Input) { in.Headers = []Header{{"X-A", "\xed\xa0\x80"}} }, Limits{}, "headers[0].value", "invalid UTF-8"},
		{"nul in text", func(in *Input) { in.Text = "a\x00b" }, Limits{}, "text", "NUL"},
		// Length limits 64/255/256.
		{"local part over 64", func(in *Input) { in.To = []string{strings.Repeat("l", 65) + "@example.org"} }, Limits{}, "to[0]", "local part is 65 octets"},
		{"domain over 255", func(in *Input) { in.Cc = []string{"a@" + strings.Repeat(strings.Repeat("d", 62)+".", 5) + "org"} }, Limits{}, "cc[0]", "domain is 318 octets, limit 255"},
		{"path over 256", func(in *Input) {
			in.From = strings.Repeat("l", 64) + "@" + strings.Repeat(strings.Repeat("d", 60)+".", 3) + "example.com"
		}, Limits{}, "from", "path"},
		// Address literals, ports, source routes, % and ! routing, quotes.
		{"address literal", func(in *Input) { in.To = []string{"a@[127.0.0.1]"} }, Limits{}, "to[0]", "address literals"},
		{"bare ip domain", func(in *Input) { in.To = []string{"a@169.254.169.254"} }, Limits{}, "to[0]", "all-numeric"},
		{"port in domain", func(in *Input) { in.Bcc = []string{"a@example.org:25"} }, Limits{}, "bcc[0]", "':'"},
		{"source route", func(in *Input) { in.To = []string{"<@relay.example:a@example.org>"} }, Limits{}, "to[0]", "':'"},
		{"percent routing", func(in *Input) { in.To = []string{"a%victim.example@example.org"} }, Limits{}, "to[0]", "'%'"},
		{"bang routing", func(in *Input) { in.Cc = []string{"victim.example!a@example.org"} }, Limits{}, "cc[0]", "'!'"},
		{"quoted at", func(in *Input) { in.To = []string{`"a@victim.example"@example.org`} }, Limits{}, "to[0]", "'@'"},
		{"unbalanced quotes", func(in *Input) { in.From = `"Sender <sender@example.com>` }, Limits{}, "from", "unbalanced quotes"},
		{"group syntax", func(in *Input) { in.To = []string{"list: a@example.org;"} }, Limits{}, "to[0]", "':'"},
		{"no dot in domain", func(in *Input) { in.To = []string{"root@localhost"} }, Limits{}, "to[0]", "no dot"},
		// Recipients: none, too many, duplicates.
		{"missing from", func(in *Input) { in.From = "" }, Limits{}, "from", "required"},
		{"no recipients", func(in *Input) { in.To = nil }, Limits{}, "to", "at least one recipient"},
		{"too many recipients default", func(in *Input) { in.To = addrs(30, "to.example"); in.Bcc = addrs(21, "bcc.example") }, Limits{}, "bcc", "51 across to, cc and bcc, limit 50"},
		{"too many recipients custom limit", func(in *Input) { in.To = addrs(3, "to.example") }, Limits{MaxRecipients: 2}, "to", "limit 2"},
		{"duplicate to cc case-insensitive domain", func(in *Input) { in.Cc = []string{"Other Name <rcpt@EXAMPLE.org>"} }, Limits{}, "cc[0]", "duplicates to[0]"},
		{"duplicate via idn forms", func(in *Input) { in.To = []string{"a@bücher.de"}; in.Bcc = []string{"a@xn--bcher-kva.de"} }, Limits{}, "bcc[0]", "duplicates to[0]"},
		{"duplicate within to", func(in *Input) { in.To = []string{"a@example.org", "b@example.org", "a@example.org"} }, Limits{}, "to[2]", "duplicates to[0]"},
		// Oversized message, too many or too-large headers, MIME too deep.
		{"oversized text", func(in *Input) { in.Text = strings.Repeat("a", 2000) }, Limits{MaxMessageBytes: 1000}, "text", "limit 1000"},
		{"oversized html", func(in *Input) { in.HTML = strings.Repeat("a", 2000) }, Limits{MaxMessageBytes: 1000}, "html", "limit 1000"},
		{"oversized once built", func(in *Input) { in.Text = strings.Repeat("é", 300) }, Limits{MaxMessageBytes: 1000}, "text", "once built"},
		{"oversized raw", func(in *Input) {
			*in = Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: append(validRaw(), strings.Repeat("x\r\n", 400)...)}
		}, Limits{MaxMessageBytes: 1000}, "raw", "limit 1000"},
		{"too many headers", func(in *Input) {
			for i := range 51 {
				in.Headers = append(in.Headers, Header{fmt.Sprintf("X-H%d", i), "v"})
			}
		}, Limits{}, "headers", "51, limit 50"},
		{"header value too long", func(in *Input) { in.Headers = []Header{{"X-A", strings.Repeat("v", 999)}} }, Limits{}, "headers[0].value", "limit 998"},
		{"encoded subject too long", func(in *Input) { in.Subject = strings.Repeat("é", 200) }, Limits{}, "subject", "once encoded"},
		{"raw mime nested too deep", func(in *Input) {
			*in = Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: []byte(nested(25))}
		}, Limits{}, "raw", "nested"},
		{"raw invalid base64", func(in *Input) {
			*in = Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: []byte("From: sender@example.com\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!notbase64***\r\n")}
		}, Limits{}, "raw", "base64"},
		// A long body line is re-encoded (reencode_test.go); a header line
		// with nowhere to fold is refused.
		{"raw header line over 998 without whitespace", func(in *Input) {
			*in = Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: append([]byte("X-Long: "+strings.Repeat("x", 998)+"\r\n"), validRaw()...)}
		}, Limits{}, "raw", "header line 1 is 1006 octets with no whitespace to fold it at, limit 998"},
		{"raw re-encoded over the size limit", func(in *Input) {
			*in = Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: append(validRaw(), strings.Repeat("\xff", 1000)...)}
		}, Limits{MaxMessageBytes: 2000}, "raw", "once built, limit 2000"},
		// Bcc used as a header; reserved headers.
		{"bcc header", func(in *Input) { in.Headers = []Header{{"Bcc", "x@example.net"}} }, Limits{}, "headers[0].name", "not allowed"},
		{"dkim-signature header", func(in *Input) { in.Headers = []Header{{"X-A", "1"}, {"DKIM-Signature", "v=1"}} }, Limits{}, "headers[1].name", "not allowed"},
		{"received header", func(in *Input) { in.Headers = []Header{{"received", "from x"}} }, Limits{}, "headers[0].name", "not allowed"},
		{"return-path header", func(in *Input) { in.Headers = []Header{{"Return-Path", "<x@example.net>"}} }, Limits{}, "headers[0].name", "not allowed"},
		{"authentication-results header", func(in *Input) { in.Headers = []Header{{"Authentication-Results", "pass"}} }, Limits{}, "headers[0].name", "not allowed"},
		{"arc header", func(in *Input) { in.Headers = []Header{{"ARC-Seal", "i=1"}} }, Limits{}, "headers[0].name", "not allowed"},
		{"sender header", func(in *Input) { in.Headers = []Header{{"SENDER", "x@example.net"}} }, Limits{}, "headers[0].name", "not allowed"},
		{"content-type header", func(in *Input) { in.Headers = []Header{{"content-type", "text/html"}} }, Limits{}, "headers[0].name", "not allowed"},
		{"message-id header", func(in *Input) { in.Headers = []Header{{"Message-ID", "<x@y>"}} }, Limits{}, "headers[0].name", "not allowed"},
		{"raw bcc header", func(in *Input) {
			*in = Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: []byte("From: sender@example.com\r\nBcc: hidden@example.net\r\n\r\nx\r\n")}
		}, Limits{}, "raw", "Bcc"},
		{"raw dkim header", func(in *Input) {
			*in = Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: []byte("DKIM-Signature: v=1\r\nFrom: sender@example.com\r\n\r\nx\r\n")}
		}, Limits{}, "raw", "Dkim-Signature"},
		// Structured content and raw exclusivity.
		{"no body", func(in *Input) { in.Text = "" }, Limits{}, "text", "at least one of text and html"},
		{"raw with subject", func(in *Input) { in.Raw = validRaw(); in.Text = "" }, Limits{}, "subject", "must be empty when raw is set"},
		{"raw with text", func(in *Input) { in.Raw = validRaw(); in.Subject = "" }, Limits{}, "text", "must be empty when raw is set"},
		{"raw with html", func(in *Input) { in.Raw = validRaw(); in.Subject, in.Text, in.HTML = "", "", "<p>" }, Limits{}, "html", "must be empty when raw is set"},
		{"raw with headers", func(in *Input) {
			in.Raw = validRaw()
			in.Subject, in.Text = "", ""
			in.Headers = []Header{{"X-A", "1"}}
		}, Limits{}, "headers", "must be empty when raw is set"},
		{"raw with reply_to", func(in *Input) {
			in.Raw = validRaw()
			in.Subject, in.Text = "", ""
			in.ReplyTo = []string{"r@example.org"}
		}, Limits{}, "reply_to", "must be empty when raw is set"},
		{"raw without from header", func(in *Input) {
			*in = Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: []byte("Subject: x\r\n\r\nbody")}
		}, Limits{}, "raw", "no From header"},
		{"raw two from headers", func(in *Input) {
			*in = Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: []byte("From: a@example.com\r\nFrom: b@example.com\r\n\r\nbody")}
		}, Limits{}, "raw", "2 From headers"},
		{"raw not a message", func(in *Input) {
			*in = Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: []byte("hello world\r\n\r\nbody")}
		}, Limits{}, "raw", "malformed header section"},
		{"raw no header section", func(in *Input) {
			*in = Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: []byte("\r\nbody")}
		}, Limits{}, "raw", "no header section"},
		{"raw with nul", func(in *Input) {
			*in = Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: append(validRaw(), 0)}
		}, Limits{}, "raw", "NUL"},
		{"raw malformed from header", func(in *Input) {
			*in = Input{From: "sender@example.com", To: []string{"r@example.org"}, Raw: []byte("From: <<<\r\n\r\nbody")}
		}, Limits{}, "raw", "malformed From"},
		// Tags, metadata, idempotency key.
		{"too many tags", func(in *Input) { in.Tags = strings.Split("a,b,c,d,e,f,g,h,i,j,k", ",") }, Limits{}, "tags", "11, limit 10"},
		{"bad tag char", func(in *Input) { in.Tags = []string{"ok", "no spaces"} }, Limits{}, "tags[1]", "0x20"},
		{"empty tag", func(in *Input) { in.Tags = []string{""} }, Limits{}, "tags[0]", "1 to 64"},
		{"long tag", func(in *Input) { in.Tags = []string{strings.Repeat("t", 65)} }, Limits{}, "tags[0]", "1 to 64"},
		{"too many metadata keys", func(in *Input) {
			in.Metadata = map[string]string{}
			for i := range 11 {
				in.Metadata[fmt.Sprint(i)] = "v"
			}
		}, Limits{}, "metadata", "11, limit 10"},
		{"long metadata key", func(in *Input) { in.Metadata = map[string]string{strings.Repeat("k", 65): "v"} }, Limits{}, "metadata", "1 to 64"},
		{"long metadata value", func(in *Input) { in.Metadata = map[string]string{"k": strings.Repeat("é", 257)} }, Limits{}, "metadata", "257 characters, limit 256"},
		{"invalid utf-8 metadata value", func(in *Input) { in.Metadata = map[string]string{"k": "\xff"} }, Limits{}, "metadata", "invalid UTF-8"},
		{"long idempotency key", func(in *Input) { in.IdempotencyKey = strings.Repeat("k", 256) }, Limits{}, "idempotency_key", "256 characters, limit 255"},
		{"idempotency key with space", func(in *Input) { in.IdempotencyKey = "a b" }, Limits{}, "idempotency_key", "0x20"},
		{"idempotency key non-ascii", func(in *Input) { in.IdempotencyKey = "clé" }, Limits{}, "idempotency_key", "0xC3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := validInput()
			tc.mutate(&in)
			b, err := Build(in, tc.lim, testNow, testIDDomain)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Build(%s) = %v, %v; want *ValidationError on %q", tc.name, b != nil, err, tc.wantField)
			}
			if len(ve.Violations) != 1 {
				t.Fatalf("Build(%s) violations = %v, want exactly one on %q", tc.name, ve.Violations, tc.wantField)
			}
			got := ve.Violations[0]
			if got.Field != tc.wantField || !strings.Contains(got.Description, tc.wantDesc) {
				t.Errorf("Build(%s) violation = %q, want field %q with description containing %q", tc.name, got, tc.wantField, tc.wantDesc)
			}
		})
	}
}

func TestBuildCollectsAllViolations(t *testing.T) {
	t.Parallel()
	in := Input{
		From:           "bad",
		To:             []string{"ok@example.org", "a@[1.2.3.4]"},
		Cc:             []string{"ok@EXAMPLE.org"},
		Subject:        "x\ny",
		Headers:        []Header{{"Bcc", "x@example.net"}, {"X-Ok", "v\x00"}},
		Tags:           []string{"bad tag"},
		IdempotencyKey: "\x01",
	}
	_, err := Build(in, Limits{}, testNow, testIDDomain)
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Build() error = %v, want *ValidationError", err)
	}
	var got []string
	for _, v := range ve.Violations {
		got = append(got, v.Field)
	}
	want := []string{"from", "to[1]", "cc[0]", "text", "subject", "headers[0].name", "headers[1].value", "tags[0]", "idempotency_key"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("Build() violation fields = %v, want %v", got, want)
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "invalid message: from: ") || !strings.Contains(msg, "; to[1]: address literals") {
		t.Errorf("ValidationError.Error() = %q, want all violations joined", msg)
	}
}

func TestBuildInternalErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		now      time.Time
		idDomain string
	}{
		{"zero time", time.Time{}, testIDDomain},
		{"empty message-id domain", testNow, ""},
		{"literal message-id domain", testNow, "[127.0.0.1]"},
		{"message-id domain without dot", testNow, "localhost"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Build(validInput(), Limits{}, tc.now, tc.idDomain)
			var ve *ValidationError
			if err == nil || errors.As(err, &ve) {
				t.Errorf("Build(now=%v, domain=%q) error = %v, want a non-validation error", tc.now, tc.idDomain, err)
			}
		})
	}
}

func TestFieldErrorFormat(t *testing.T) {
	t.Parallel()
	if got, want := (FieldError{Field: "to[2]", Description: "contains CR"}).Error(), "to[2]: contains CR"; got != want {
		t.Errorf("FieldError.Error() = %q, want %q", got, want)
	}
}
