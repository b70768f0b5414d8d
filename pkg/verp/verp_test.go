package verp

import (
	"errors"
	"strings"
	"testing"
)

var secret = []byte("0123456789abcdef0123")

func TestRoundTrip(t *testing.T) {
	s, err := New(secret, "Bounces.Example.NET.")
	if err != nil {
		t.Fatal(err)
	}
	rp := s.ReturnPath("abcdefghijklmnopqrstuvwx", 7)
	if !strings.HasPrefix(rp, "b+abcdefghijklmnopqrstuvwx-7-") || !strings.HasSuffix(rp, "@bounces.example.net") {
		t.Fatalf("return path %q", rp)
	}
	if local := rp[:strings.IndexByte(rp, '@')]; len(local) > 64 {
		t.Fatalf("local part %d octets, over RFC 5321's 64", len(local))
	}
	for _, in := range []string{rp, strings.ToUpper(rp), "<" + rp + ">", " " + rp} {
		id, idx, err := s.Parse(in)
		if err != nil || id != "abcdefghijklmnopqrstuvwx" || idx != 7 {
			t.Errorf("Parse(%q) = %q, %d, %v", in, id, idx, err)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	s, _ := New(secret, "bounces.example.net")
	other, _ := New([]byte("another secret of enough length"), "bounces.example.net")
	good := s.ReturnPath("abcdefghijklmnopqrstuvwx", 3)
	local := good[:strings.IndexByte(good, '@')]
	flip := "a"
	if strings.HasSuffix(local, "a") {
		flip = "b"
	}
	for _, tc := range []struct {
		addr string
		want error
	}{
		{"someone@bounces.example.net", ErrNotVERP},
		{local + "@example.net", ErrNotVERP},
		{local + "@sub.bounces.example.net", ErrNotVERP},
		{"b+abcdefghijklmnopqrstuvwx-3@bounces.example.net", ErrNotVERP},
		{"b+abcdefghijklmnopqrstuvwx-03-" + local[len(local)-16:] + "@bounces.example.net", ErrNotVERP},
		{"b+abcdefghijklmnopqrstuvwx-x-aaaa@bounces.example.net", ErrNotVERP},
		{strings.Replace(good, "-3-", "-4-", 1), ErrForged},               // another recipient
		{strings.Replace(good, "abcdefghij", "bbcdefghij", 1), ErrForged}, // another message
		{other.ReturnPath("abcdefghijklmnopqrstuvwx", 3), ErrForged},      // another secret
		{local[:len(local)-1] + flip + "@bounces.example.net", ErrForged}, // mangled mac
		{local[:len(local)-2] + "@bounces.example.net", ErrForged},        // truncated mac
	} {
		if _, _, err := s.Parse(tc.addr); !errors.Is(err, tc.want) {
			t.Errorf("Parse(%q) = %v, want %v", tc.addr, err, tc.want)
		}
	}
}

func TestFind(t *testing.T) {
	s, _ := New(secret, "bounces.example.net")
	rp := s.ReturnPath("abcdefghijklmnopqrstuvwx", 0)
	id, idx, ok := s.Find("postmaster@example.com", "", rp)
	if !ok || id != "abcdefghijklmnopqrstuvwx" || idx != 0 {
		t.Fatalf("Find = %q %d %v", id, idx, ok)
	}
	if _, _, ok := s.Find("x@y", "b+zz-1-zz@bounces.example.net"); ok {
		t.Fatal("Find accepted no valid return path")
	}
}

func TestNewRefuses(t *testing.T) {
	if _, err := New([]byte("short"), "b.example"); err == nil {
		t.Error("short secret accepted")
	}
	for _, d := range []string{"", "a@b", "a b"} {
		if _, err := New(secret, d); err == nil {
			t.Errorf("domain %q accepted", d)
		}
	}
}
