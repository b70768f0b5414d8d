package unsubscribe

import (
	"errors"
	"math"
	"strings"
	"testing"
)

var (
	secret      = []byte("0123456789abcdef0123456789abcdef")
	otherSecret = []byte("another secret of enough length!")
)

const msgID = "abcdefghijklmnopqrstuvwx"

func mustSigner(t testing.TB, secret []byte, previous ...[]byte) *Signer {
	t.Helper()
	s, err := NewSigner(secret, previous...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func typical() Subject {
	return Subject{Tenant: "acme", Address: "alice@example.com", CampaignID: msgID, MessageID: msgID, Index: 7}
}

func TestTokenRoundTrip(t *testing.T) {
	s := mustSigner(t, secret)
	for _, sub := range []Subject{
		typical(),
		{Tenant: "acme", Address: "bob@example.com", MessageID: msgID},                                      // no campaign
		{Tenant: "acme", Address: "bob@example.com", CampaignID: "spring-2026", MessageID: msgID, Index: 1}, // campaign differs
		{Tenant: "t", Address: "x@y", MessageID: "NOT-a-message-id", CampaignID: "ABCDEFGHIJKLMNOPQRSTUVWX"},
		{Tenant: "t", Address: "x@y", MessageID: "ABCDEFGHIJKLMNOPQRSTUVWX"}, // upper case: not packed, kept as is
		{Tenant: "t/=_-", Address: `"odd <local>"@example.com`, Index: math.MaxInt},
		{Tenant: "t", Address: "ünïcode@exämple.com", Index: math.MinInt},
		{},
	} {
		tok := s.Token(sub)
		if strings.Trim(tok, "abcdefghijklmnopqrstuvwxyz234567") != "" {
			t.Errorf("Token(%+v) = %q: not lower-case base32", sub, tok)
		}
		for _, in := range []string{tok, strings.ToUpper(tok), mixCase(tok)} {
			got, err := s.Parse(in)
			if err != nil || got != sub {
				t.Errorf("Parse(Token(%+v)) = %+v, %v", sub, got, err)
			}
		}
	}
}

func mixCase(s string) string {
	b := []byte(s)
	for i := 0; i < len(b); i += 2 {
		if 'a' <= b[i] && b[i] <= 'z' {
			b[i] -= 'a' - 'A'
		}
	}
	return string(b)
}

// TestTokenSize pins the size of a typical token, which goes in every
// campaign message.
func TestTokenSize(t *testing.T) {
	s := mustSigner(t, secret)
	tok := s.Token(typical())
	t.Logf("typical token: %d characters", len(tok))
	if len(tok) > 110 {
		t.Errorf("typical token is %d characters, want at most 110", len(tok))
	}
	long := typical()
	long.Address = strings.Repeat("a", 64) + "@" + strings.Repeat("b", 189) // 254 octets, RFC 5321's most
	long.Tenant = strings.Repeat("t", 64)
	long.CampaignID = strings.Repeat("c", 64)
	if n := len(s.Token(long)); n > MaxTokenLen {
		t.Errorf("token for the longest address is %d characters, over MaxTokenLen %d", n, MaxTokenLen)
	}
}

// TestTokenTampering changes every character of a token to every other
// character of the alphabet; none may parse.
func TestTokenTampering(t *testing.T) {
	s := mustSigner(t, secret)
	tok := s.Token(typical())
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	for i := 0; i < len(tok); i++ {
		for _, c := range alphabet + "-_=+/ .0189" {
			if byte(c) == tok[i] {
				continue
			}
			bad := tok[:i] + string(c) + tok[i+1:]
			if sub, err := s.Parse(bad); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse with character %d changed to %q = %+v, %v; want ErrInvalid", i, c, sub, err)
			}
		}
	}
	for _, bad := range []string{
		"", tok[:len(tok)-1], tok[1:], tok + "a", tok + tok, "a", strings.Repeat("a", MaxTokenLen+1),
		s.MailtoToken(msgID, 7), // a mailto token is not a token
	} {
		if _, err := s.Parse(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestTokenOtherSecret(t *testing.T) {
	s := mustSigner(t, secret)
	other := mustSigner(t, otherSecret)
	if _, err := s.Parse(other.Token(typical())); !errors.Is(err, ErrInvalid) {
		t.Errorf("token of another secret: %v, want ErrInvalid", err)
	}
	if _, _, err := s.ParseMailto(other.MailtoToken(msgID, 1)); !errors.Is(err, ErrInvalid) {
		t.Errorf("mailto token of another secret: %v, want ErrInvalid", err)
	}
}

func TestSecretRotation(t *testing.T) {
	old := mustSigner(t, otherSecret)
	rotated := mustSigner(t, secret, otherSecret)
	if got, err := rotated.Parse(old.Token(typical())); err != nil || got != typical() {
		t.Errorf("token of the previous secret: %+v, %v", got, err)
	}
	if id, i, err := rotated.ParseMailto(old.MailtoToken(msgID, 3)); err != nil || id != msgID || i != 3 {
		t.Errorf("mailto token of the previous secret: %q %d %v", id, i, err)
	}
	// New tokens are made with the new secret only.
	if _, err := old.Parse(rotated.Token(typical())); !errors.Is(err, ErrInvalid) {
		t.Errorf("a new token verified under the old secret alone: %v", err)
	}
	if rotated.Token(typical()) != mustSigner(t, secret).Token(typical()) {
		t.Error("the rotated signer does not sign with its first secret")
	}
}

func TestNewSignerRefuses(t *testing.T) {
	if _, err := NewSigner([]byte("fifteen bytes!!")); err == nil {
		t.Error("15-byte secret accepted")
	}
	if _, err := NewSigner(nil); err == nil {
		t.Error("nil secret accepted")
	}
	if _, err := NewSigner(secret, []byte("short")); err == nil {
		t.Error("short previous secret accepted")
	}
	// The Signer keeps its own copy of the secret.
	key := append([]byte(nil), secret...)
	s := mustSigner(t, key)
	tok := s.Token(typical())
	key[0] ^= 1
	if _, err := s.Parse(tok); err != nil {
		t.Errorf("changing the caller's slice changed the Signer: %v", err)
	}
}

func TestMailtoToken(t *testing.T) {
	s := mustSigner(t, secret)
	for _, idx := range []int{0, 1, 127, 128, 1 << 20, math.MaxInt32, math.MaxInt} {
		tok := s.MailtoToken(msgID, idx)
		if tok == "" || len(tok) > MaxMailtoTokenLen || len(MailtoPrefix+tok) > 64 {
			t.Fatalf("MailtoToken(%d) = %q (%d characters), want 1..%d", idx, tok, len(tok), MaxMailtoTokenLen)
		}
		if strings.Trim(tok, "abcdefghijklmnopqrstuvwxyz234567") != "" {
			t.Errorf("MailtoToken(%d) = %q: not lower-case base32", idx, tok)
		}
		for _, in := range []string{tok, strings.ToUpper(tok), mixCase(tok)} {
			id, i, err := s.ParseMailto(in)
			if err != nil || id != msgID || i != idx {
				t.Errorf("ParseMailto(%q) = %q, %d, %v; want %q, %d", in, id, i, err, msgID, idx)
			}
		}
	}
	if n := len(s.MailtoToken(msgID, 999)); n != 47 {
		t.Errorf("mailto token for a 3-digit index is %d characters, want 47", n)
	}
	// Message ids are accepted in any case and come back in lower case.
	if id, _, err := s.ParseMailto(s.MailtoToken(strings.ToUpper(msgID), 2)); err != nil || id != msgID {
		t.Errorf("upper-case message id: %q, %v", id, err)
	}
	for _, bad := range []struct {
		id  string
		idx int
	}{{msgID, -1}, {"short", 1}, {msgID + "a", 1}, {"abcdefghijklmnopqrstuvw1", 1}, {"", 0}} {
		if tok := s.MailtoToken(bad.id, bad.idx); tok != "" {
			t.Errorf("MailtoToken(%q, %d) = %q, want \"\"", bad.id, bad.idx, tok)
		}
	}
}

func TestMailtoTampering(t *testing.T) {
	s := mustSigner(t, secret)
	tok := s.MailtoToken(msgID, 42)
	for i := 0; i < len(tok); i++ {
		for _, c := range "abcdefghijklmnopqrstuvwxyz234567-+" {
			if byte(c) == tok[i] {
				continue
			}
			bad := tok[:i] + string(c) + tok[i+1:]
			if _, _, err := s.ParseMailto(bad); !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseMailto with character %d changed to %q: %v, want ErrInvalid", i, c, err)
			}
		}
	}
	for _, bad := range []string{"", tok[:len(tok)-1], tok + "a", MailtoPrefix + tok, s.Token(typical())} {
		if _, _, err := s.ParseMailto(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseMailto(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

// FuzzParse feeds arbitrary strings to both parsers: they must not panic,
// and whatever they accept must be exactly what the Signer makes for the
// result (so no second spelling of a token verifies).
func FuzzParse(f *testing.F) {
	s := mustSigner(f, secret)
	f.Add(s.Token(typical()))
	f.Add(strings.ToUpper(s.Token(Subject{Tenant: "t", Address: "a@b", CampaignID: "c", MessageID: "m", Index: -3})))
	f.Add(s.MailtoToken(msgID, 5))
	f.Add("")
	f.Add("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
	f.Fuzz(func(t *testing.T, tok string) {
		if sub, err := s.Parse(tok); err == nil {
			if again := s.Token(sub); again != strings.ToLower(tok) {
				t.Fatalf("Parse(%q) accepted a token Token spells %q", tok, again)
			}
		} else if !errors.Is(err, ErrInvalid) {
			t.Fatalf("Parse(%q): error %v is not ErrInvalid", tok, err)
		}
		if id, i, err := s.ParseMailto(tok); err == nil {
			if again := s.MailtoToken(id, i); again != strings.ToLower(tok) {
				t.Fatalf("ParseMailto(%q) accepted a token MailtoToken spells %q", tok, again)
			}
		} else if !errors.Is(err, ErrInvalid) {
			t.Fatalf("ParseMailto(%q): error %v is not ErrInvalid", tok, err)
		}
	})
}

// FuzzRoundTrip checks that every Subject whose token is within
// MaxTokenLen comes back unchanged.
func FuzzRoundTrip(f *testing.F) {
	s := mustSigner(f, secret)
	f.Add("acme", "alice@example.com", msgID, msgID, 7)
	f.Add("", "", "", "", -1)
	f.Add("t", "x@y", "c", strings.ToUpper(msgID), math.MaxInt)
	f.Fuzz(func(t *testing.T, tenant, addr, campaign, message string, idx int) {
		sub := Subject{Tenant: tenant, Address: addr, CampaignID: campaign, MessageID: message, Index: idx}
		tok := s.Token(sub)
		got, err := s.Parse(tok)
		if len(tok) > MaxTokenLen {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("token of %d characters parsed: %v", len(tok), err)
			}
			return
		}
		if err != nil || got != sub {
			t.Fatalf("Parse(Token(%+v)) = %+v, %v", sub, got, err)
		}
	})
}
