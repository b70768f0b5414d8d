package mailmsg

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestParseAddressValid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want Address
	}{
		{"addr-spec", "user@example.com", Address{Addr: "user@example.com", Local: "user", Domain: "example.com"}},
		{"angle only", "<user@example.com>", Address{Addr: "user@example.com", Local: "user", Domain: "example.com"}},
		{"name-addr", "Jane Doe <jane@example.com>", Address{Name: "Jane Doe", Addr: "jane@example.com", Local: "jane", Domain: "example.com"}},
		{"quoted name", `"Doe, Jane" <jane@example.com>`, Address{Name: "Doe, Jane", Addr: "jane@example.com", Local: "jane", Domain: "example.com"}},
		{"domain lower-cased, local kept", "Jane.Doe@EXAMPLE.Com", Address{Addr: "Jane.Doe@example.com", Local: "Jane.Doe", Domain: "example.com"}},
		{"surrounding space", "  user@example.com ", Address{Addr: "user@example.com", Local: "user", Domain: "example.com"}},
		{"atext specials", "a+b#$&'*/=?^_`{|}~-c@example.com", Address{Addr: "a+b#$&'*/=?^_`{|}~-c@example.com", Local: "a+b#$&'*/=?^_`{|}~-c", Domain: "example.com"}},
		{"quoted local needing quotes", `"john doe"@example.com`, Address{Addr: `"john doe"@example.com`, Local: "john doe", Domain: "example.com"}},
		{"quoted local that is a dot-atom", `"john"@example.com`, Address{Addr: "john@example.com", Local: "john", Domain: "example.com"}},
		{"quoted local with escaped quote", `"a\"b"@example.com`, Address{Addr: `"a\"b"@example.com`, Local: `a"b`, Domain: "example.com"}},
		{"idn domain to a-label", "user@Bücher.de", Address{Addr: "user@xn--bcher-kva.de", Local: "user", Domain: "xn--bcher-kva.de"}},
		{"a-label kept", "user@XN--BCHER-KVA.de", Address{Addr: "user@xn--bcher-kva.de", Local: "user", Domain: "xn--bcher-kva.de"}},
		{"utf-8 local part", "Zoë <zoë@example.com>", Address{Name: "Zoë", Addr: "zoë@example.com", Local: "zoë", Domain: "example.com"}},
		{"rfc 2047 name decoded", "=?utf-8?q?J=C3=BCrgen?= <j@example.com>", Address{Name: "Jürgen", Addr: "j@example.com", Local: "j", Domain: "example.com"}},
		{"hyphen and digits", "x@mail-1.a1.example", Address{Addr: "x@mail-1.a1.example", Local: "x", Domain: "mail-1.a1.example"}},
		{"64-octet local", strings.Repeat("l", 64) + "@example.com", Address{Addr: strings.Repeat("l", 64) + "@example.com", Local: strings.Repeat("l", 64), Domain: "example.com"}},
		{"63-octet label", "a@" + strings.Repeat("d", 63) + ".com", Address{Addr: "a@" + strings.Repeat("d", 63) + ".com", Local: "a", Domain: strings.Repeat("d", 63) + ".com"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseAddress(tc.in)
			if err != nil {
				t.Fatalf("ParseAddress(%q) error = %v, want %+v", tc.in, err, tc.want)
			}
			if got != tc.want {
				t.Errorf("ParseAddress(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseAddressIDNFormsCompareEqual(t *testing.T) {
	t.Parallel()
	u, err := ParseAddress("a@bücher.de")
	if err != nil {
		t.Fatal(err)
	}
	a, err := ParseAddress("a@xn--bcher-kva.de")
	if err != nil {
		t.Fatal(err)
	}
	if u.key() != a.key() || u.Addr != a.Addr {
		t.Errorf("U-label %+v and A-label %+v differ", u, a)
	}
}

func TestParseAddressInvalid(t *testing.T) {
	t.Parallel()
	longDomain := strings.Repeat(strings.Repeat("d", 60)+".", 5) + "com" // 308 octets
	tests := []struct {
		name    string
		in      string
		wantErr string // substring of the error
	}{
		{"empty", "", "invalid address syntax"},
		{"no at", "user.example.com", "invalid address syntax"},
		{"cr", "user\r@example.com", "CR"},
		{"lf", "user@example.com\n", "LF"},
		{"crlf in name", "Eve\r\nBcc: x@y.com <e@example.com>", "CR"},
		{"nul", "us\x00er@example.com", "NUL"},
		{"tab", "Eve\t<e@example.com>", "control character"},
		{"del", "Eve\x7f <e@example.com>", "control character"},
		{"c1 control", "Eve\u0085 <e@example.com>", "control character"},
		{"encoded crlf in name", "=?utf-8?q?Eve=0D=0ABcc=3A_x=40y.com?= <e@example.com>", "display name: contains CR"},
		{"encoded nul in name", "=?utf-8?q?Eve=00?= <e@example.com>", "display name: contains NUL"},
		{"invalid utf-8", "us\xffer@example.com", "invalid UTF-8"},
		{"invalid utf-8 in name", "\xc3\x28 <e@example.com>", "invalid UTF-8"},
		{"local too long", strings.Repeat("l", 65) + "@example.com", "local part is 65 octets"},
		{"quoted local too long once quoted", `"` + strings.Repeat("l", 62) + ` "@example.com`, "local part is 65 octets"},
		{"domain too long", "a@" + longDomain, "domain is 308 octets"},
		{"label too long", "a@" + strings.Repeat("d", 64) + ".com", "label"},
		{"path too long", strings.Repeat("l", 64) + "@" + strings.Repeat(strings.Repeat("d", 60)+".", 3) + "example.com", "path"},
		{"ipv4 literal", "a@[192.0.2.1]", "address literals"},
		{"ipv6 literal", "a@[IPv6:2001:db8::1]", "':'"},
		{"bare ipv4", "a@192.0.2.1", "all-numeric"},
		{"port", "a@example.com:25", "':'"},
		{"port in angle", "<a@example.com:2525>", "':'"},
		{"source route", "@relay.example:a@example.com", "':'"},
		{"source route in angle", "<@relay.example,@r2.example:a@example.com>", "':'"},
		{"group", "undisclosed: a@example.com;", "':'"},
		{"percent routing", "a%b.example@example.com", `'%'`},
		{"bang routing", "b.example!a@example.com", `'!'`},
		{"quoted at", `"a@b.example"@example.com`, `'@'`},
		{"unbalanced quote", `"abc@example.com`, "unbalanced quotes"},
		{"unbalanced quote in name", `"Eve <e@example.com>`, "unbalanced quotes"},
		{"stray quote", `a"b@example.com`, "unbalanced quotes"},
		{"no dot", "a@localhost", "no dot"},
		{"trailing dot", "a@example.com.", "invalid address syntax"},
		{"double dot domain", "a@example..com", "invalid address syntax"},
		{"underscore", "a@ex_ample.com", "not a valid host name"},
		{"leading hyphen", "a@-example.com", "-"},
		{"double dot local", "a..b@example.com", "invalid address syntax"},
		{"empty quoted local", `""@example.com`, "invalid address syntax"},
		{"two addresses", "a@example.com, b@example.com", "invalid address syntax"},
		{"bad punycode", "a@xn--zz.example", "not a valid host name"},
		{"too long input", strings.Repeat("N", 990) + " <a@example.com>", "address is"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseAddress(tc.in)
			if err == nil {
				t.Fatalf("ParseAddress(%q) = %+v, want error containing %q", tc.in, got, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseAddress(%q) error = %q, want it to contain %q", tc.in, err, tc.wantErr)
			}
		})
	}
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{
		"user@example.com", "Jane <jane@example.com>", `"john doe"@example.com`, `"a\"b"@example.com`,
		"zoë@bücher.de", "=?utf-8?q?J=C3=BCrgen?= <j@example.com>", "=?utf-8?q?a=0D=0Ab?= <x@example.com>",
		"a@[127.0.0.1]", "a@example.com:25", "@a.example:b@example.com", "a%b@example.com", "a!b@example.com",
		`"abc@example.com`, "g: a@example.com;", "a@example.com (comment)", "a@xn--bcher-kva.de", "a@1.2.3.4",
		"a\r\n@example.com", "\x00", "\xff@example.com", `"\\"@example.com`, `""@example.com`, "<>", "a@b@c.com",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
		if err != nil {
			return
		}
		if n := len(a.Addr) + 2; n > maxPathOctets {
			t.Fatalf("ParseAddress(%q).Addr = %q: path %d octets", s, a.Addr, n)
		}
		if strings.ContainsFunc(a.Name+a.Addr, unicode.IsControl) || !utf8.ValidString(a.Name+a.Addr) {
			t.Fatalf("ParseAddress(%q) = %+v: control character or invalid UTF-8", s, a)
		}
		if !isASCII(a.Domain) || strings.ToLower(a.Domain) != a.Domain || a.Addr != a.Addr[:len(a.Addr)-len(a.Domain)]+a.Domain {
			t.Fatalf("ParseAddress(%q) = %+v: domain not lower-case ASCII at the end of Addr", s, a)
		}
		if strings.ContainsAny(a.Local, "%!@") {
			t.Fatalf("ParseAddress(%q) = %+v: routing character in local part", s, a)
		}
		// Addr is canonical: parsing it again is a fixed point.
		again, err := ParseAddress(a.Addr)
		if err != nil {
			t.Fatalf("ParseAddress(%q).Addr = %q does not parse again: %v", s, a.Addr, err)
		}
		if again.Addr != a.Addr || again.Local != a.Local || again.Domain != a.Domain {
			t.Fatalf("ParseAddress(%q) = %+v, but ParseAddress(%q) = %+v", s, a, a.Addr, again)
		}
	})
}
