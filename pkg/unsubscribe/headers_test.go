package unsubscribe

import (
	"net/mail"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

func TestHeaders(t *testing.T) {
	s := mustSigner(t, secret)
	sub := typical()
	lu, lup, err := Headers(s, "https://Mail.Example.com/", "Bounces.Example.NET.", sub)
	if err != nil {
		t.Fatal(err)
	}
	want := "<https://mail.example.com/u/" + s.Token(sub) + ">, <mailto:u+" + s.MailtoToken(msgID, 7) + "@bounces.example.net?subject=unsubscribe>"
	if lu != want {
		t.Errorf("List-Unsubscribe =\n %q\nwant\n %q", lu, want)
	}
	if lup != "List-Unsubscribe=One-Click" {
		t.Errorf("List-Unsubscribe-Post = %q", lup)
	}

	// RFC 2369 §2: a comma-separated list of angle-bracketed URIs; RFC 8058
	// §3.1: exactly one of them https, carrying the token.
	m := regexp.MustCompile(`^<([^<>\s,]+)>(?:, <([^<>\s,]+)>)*$`).FindStringSubmatch(lu)
	if m == nil {
		t.Fatalf("List-Unsubscribe %q is not a list of <URI>", lu)
	}
	uris := strings.Split(strings.Trim(lu, "<>"), ">, <")
	if len(uris) != 2 {
		t.Fatalf("URIs %q, want https and mailto", uris)
	}
	hu, err := url.Parse(uris[0])
	if err != nil || hu.Scheme != "https" || hu.Host != "mail.example.com" || hu.Path != "/u/"+s.Token(sub) {
		t.Errorf("https URI %q: %+v %v", uris[0], hu, err)
	}
	if got, err := s.Parse(strings.TrimPrefix(hu.Path, "/u/")); err != nil || got != sub {
		t.Errorf("the https URI's token names %+v, %v", got, err)
	}
	mu, err := url.Parse(uris[1])
	if err != nil || mu.Scheme != "mailto" || mu.Query().Get("subject") != "unsubscribe" {
		t.Fatalf("mailto URI %q: %+v %v", uris[1], mu, err)
	}
	addr, err := mail.ParseAddress(mu.Opaque)
	if err != nil {
		t.Fatalf("mailto address %q: %v", mu.Opaque, err)
	}
	local, domain, _ := strings.Cut(addr.Address, "@")
	if domain != "bounces.example.net" || len(local) > 64 || !strings.HasPrefix(local, MailtoPrefix) {
		t.Errorf("mailto address %q", addr.Address)
	}
	if id, i, err := s.ParseMailto(strings.TrimPrefix(local, MailtoPrefix)); err != nil || id != sub.MessageID || i != sub.Index {
		t.Errorf("the mailto token names %q %d, %v", id, i, err)
	}
	for _, v := range []string{lu, lup} {
		if len(v) > MaxHeaderValue || strings.ContainsFunc(v, func(r rune) bool { return r < ' ' || r > '~' }) {
			t.Errorf("header value %q: not one line of printable ASCII within %d octets", v, MaxHeaderValue)
		}
	}
}

func TestHeadersWithoutMailto(t *testing.T) {
	s := mustSigner(t, secret)
	sub := typical()
	sub.MessageID = "not a message id" // only the mailto form needs one
	lu, _, err := Headers(s, "https://example.com/mail/", "", sub)
	if err != nil {
		t.Fatal(err)
	}
	if want := "<https://example.com/mail/u/" + s.Token(sub) + ">"; lu != want {
		t.Errorf("List-Unsubscribe = %q, want %q", lu, want)
	}
}

func TestHeadersRefusesSubjects(t *testing.T) {
	s := mustSigner(t, secret)
	l, err := NewLinks(s, "https://mail.example.com", "bounces.example.net", Options{})
	if err != nil {
		t.Fatal(err)
	}
	long := typical()
	long.Address = strings.Repeat("a", 600) + "@example.com"
	for name, sub := range map[string]Subject{
		"no tenant":        {Address: "a@b", MessageID: msgID},
		"no address":       {Tenant: "t", MessageID: msgID},
		"negative index":   {Tenant: "t", Address: "a@b", MessageID: msgID, Index: -1},
		"bad message id":   {Tenant: "t", Address: "a@b", MessageID: "spring-2026"},
		"token over bound": long,
	} {
		if lu, _, err := l.Headers(sub); err == nil {
			t.Errorf("%s: Headers = %q, want an error", name, lu)
		}
	}
}

func TestBaseURLValidation(t *testing.T) {
	s := mustSigner(t, secret)
	for _, tc := range []struct {
		base      string
		allowHTTP bool
		want      string // the URI prefix; "" for refused
	}{
		{"https://mail.example.com", false, "https://mail.example.com/u/"},
		{"https://Mail.Example.COM/", false, "https://mail.example.com/u/"},
		{"https://mail.example.com:8443", false, "https://mail.example.com:8443/u/"},
		{"https://example.com/a/b-c_d.e~f/", false, "https://example.com/a/b-c_d.e~f/u/"},
		{"https://[2001:db8::1]:443", false, "https://[2001:db8::1]:443/u/"},
		{"HTTPS://mail.example.com", false, "https://mail.example.com/u/"},
		{"http://127.0.0.1:8080", true, "http://127.0.0.1:8080/u/"},
		{"http://mail.example.com", false, ""}, // RFC 8058 §3.1: https
		{"ftp://mail.example.com", true, ""},
		{"mailto:u@example.com", false, ""},
		{"mail.example.com", false, ""},
		{"//mail.example.com", false, ""},
		{"https://", false, ""},
		{"https:///path", false, ""},
		{"https://mail.example.com/?x=1", false, ""},
		{"https://mail.example.com/?", false, ""},
		{"https://mail.example.com/#top", false, ""},
		{"https://mail.example.com/#", false, ""},
		{"https://user:pw@mail.example.com", false, ""},
		{"https://mail.example.com/a b", false, ""},
		{"https://mail.example.com/a,b", false, ""},
		{"https://mail.example.com/a%2Cb", false, ""},
		{"https://mail.example.com/<x>", false, ""},
		{"https://exämple.com", false, ""},
		{"https://a,b.example.com", false, ""},
		{"https://mail.example.com:x", false, ""},
		{" https://mail.example.com", false, ""},
		{"https://mail.example.com\r\nX: y", false, ""},
		{"", false, ""},
	} {
		l, err := NewLinks(s, tc.base, "", Options{AllowHTTP: tc.allowHTTP})
		if tc.want == "" {
			if err == nil {
				t.Errorf("base URL %q (AllowHTTP %v) accepted", tc.base, tc.allowHTTP)
			}
			continue
		}
		if err != nil {
			t.Errorf("base URL %q (AllowHTTP %v): %v", tc.base, tc.allowHTTP, err)
			continue
		}
		lu, _, err := l.Headers(typical())
		if want := "<" + tc.want + s.Token(typical()) + ">"; err != nil || lu != want {
			t.Errorf("base URL %q: List-Unsubscribe %q, %v; want %q", tc.base, lu, err, want)
		}
	}
	// The package-level Headers never allows http.
	if _, _, err := Headers(s, "http://127.0.0.1:8080", "", typical()); err == nil {
		t.Error("Headers accepted an http base URL")
	}
}

func TestMailDomainValidation(t *testing.T) {
	s := mustSigner(t, secret)
	for _, d := range []string{"bounces.example.net", "Bounces.Example.NET.", "localhost", "xn--exmple-cua.com", "a-b.c"} {
		if _, err := NewLinks(s, "https://m.example", d, Options{}); err != nil {
			t.Errorf("mail domain %q: %v", d, err)
		}
	}
	for _, d := range []string{".", "a..b", "-a.com", "a-.com", "exämple.com", "a b.com", "a@b.com", "a_b.com", strings.Repeat("a", 64) + ".com", strings.Repeat("a.", 127) + "com"} {
		if _, err := NewLinks(s, "https://m.example", d, Options{}); err == nil {
			t.Errorf("mail domain %q accepted", d)
		}
	}
	if _, err := NewLinks(nil, "https://m.example", "", Options{}); err == nil {
		t.Error("nil Signer accepted")
	}
}
