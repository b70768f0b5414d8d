package dkim

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	msgauth "github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"

	"github.com/postflow/postflow/pkg/testenv"
)

// testKeySet holds keys generated once per test binary: RSA generation
// costs tens of milliseconds per key.
type testKeySet struct {
	rsa, rsa2, rsaWeak *rsa.PrivateKey
	ed, ed2            ed25519.PrivateKey
	ec                 *ecdsa.PrivateKey
}

var testKeys = sync.OnceValues(func() (*testKeySet, error) {
	var ks testKeySet
	var err error
	if ks.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		return nil, err
	}
	if ks.rsa2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		return nil, err
	}
	if ks.rsaWeak, err = rsa.GenerateKey(rand.Reader, 1024); err != nil {
		return nil, err
	}
	if _, ks.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
		return nil, err
	}
	if _, ks.ed2, err = ed25519.GenerateKey(rand.Reader); err != nil {
		return nil, err
	}
	if ks.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	return &ks, nil
})

func keySet(t testing.TB) *testKeySet {
	t.Helper()
	ks, err := testKeys()
	if err != nil {
		t.Fatalf("generating test keys: %v", err)
	}
	return ks
}

// zoneFor renders the DKIM key records of keys as RFC 1035 master-file
// text, splitting TXT data into 255-octet character-strings (RFC 1035
// §3.3.14, RFC 6376 §3.6.2.2).
func zoneFor(t testing.TB, keys []Key) string {
	t.Helper()
	var b strings.Builder
	for _, k := range keys {
		var kind string
		var p []byte
		switch pub := k.Signer.Public().(type) {
		case *rsa.PublicKey:
			der, err := x509.MarshalPKIXPublicKey(pub)
			if err != nil {
				t.Fatalf("marshal public key of %s: %v", k, err)
			}
			kind, p = "rsa", der
		case ed25519.PublicKey:
			kind, p = "ed25519", pub // RFC 8463 §4.2: the raw key, not SPKI
		default:
			t.Fatalf("zoneFor: %s: unsupported key", k)
		}
		txt := "v=DKIM1; k=" + kind + "; p=" + base64.StdEncoding.EncodeToString(p)
		fmt.Fprintf(&b, "%s._domainkey.%s. 300 IN TXT", k.Selector, k.Domain)
		for len(txt) > 0 {
			n := min(len(txt), 255)
			fmt.Fprintf(&b, " %q", txt[:n])
			txt = txt[n:]
		}
		b.WriteString("\n")
	}
	return b.String()
}

// dnsLookupTXT returns a LookupTXT for go-msgauth that asks the DNS server at
// addr over UDP, retrying over TCP on truncation, and joins each record's
// character-strings as net.LookupTXT does.
func dnsLookupTXT(addr string) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
		var r *dns.Msg
		for _, network := range []string{"udp", "tcp"} {
			c := &dns.Client{Net: network, Timeout: 5 * time.Second}
			var err error
			if r, _, err = c.Exchange(q, addr); err != nil {
				return nil, err
			}
			if !r.Truncated {
				break
			}
		}
		if r.Rcode != dns.RcodeSuccess {
			return nil, fmt.Errorf("TXT %s: %s", name, dns.RcodeToString[r.Rcode])
		}
		var out []string
		for _, rr := range r.Answer {
			if txt, ok := rr.(*dns.TXT); ok {
				out = append(out, strings.Join(txt.Txt, ""))
			}
		}
		return out, nil
	}
}

// verify runs go-msgauth's verifier against the test DNS server.
func verify(t testing.TB, msg []byte, lookup func(string) ([]string, error)) []*msgauth.Verification {
	t.Helper()
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(msg), &msgauth.VerifyOptions{LookupTXT: lookup})
	if err != nil {
		t.Fatalf("VerifyWithOptions: %v", err)
	}
	return vs
}

// signatureTags returns the tags of each DKIM-Signature field in msg, top
// first, with folding whitespace removed.
func signatureTags(t testing.TB, msg []byte) []map[string]string {
	t.Helper()
	head, _, ok := bytes.Cut(msg, []byte("\r\n\r\n"))
	if !ok {
		t.Fatalf("signed message has no header/body separator")
	}
	unfolded := strings.ReplaceAll(string(head), "\r\n ", " ")
	unfolded = strings.ReplaceAll(unfolded, "\r\n\t", " ")
	var out []map[string]string
	for line := range strings.SplitSeq(unfolded, "\r\n") {
		name, value, _ := strings.Cut(line, ":")
		if !strings.EqualFold(name, "DKIM-Signature") {
			continue
		}
		tags := make(map[string]string)
		for tag := range strings.SplitSeq(strings.Join(strings.Fields(value), ""), ";") {
			if k, v, ok := strings.Cut(tag, "="); ok {
				tags[k] = v
			}
		}
		out = append(out, tags)
	}
	return out
}

const baseMsg = "From: Alice <alice@Example.COM>\r\n" +
	"To: Bob <bob@example.net>\r\n" +
	"Subject: Hello\r\n" +
	"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n" +
	"Message-ID: <1@example.com>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"X-Mailer: postflow\r\n" +
	"\r\n" +
	"Hello Bob,\r\n" +
	"this is the body.\r\n"

// signingKeys returns one RSA and one Ed25519 key per domain.
func signingKeys(t testing.TB, domains ...string) []Key {
	ks := keySet(t)
	var keys []Key
	for _, d := range domains {
		keys = append(keys,
			Key{Domain: d, Selector: "ed1", Signer: ks.ed},
			Key{Domain: d, Selector: "rsa1", Signer: ks.rsa},
		)
	}
	return keys
}

func TestSignVerifies(t *testing.T) {
	t.Parallel()
	keys := signingKeys(t, "example.com", "bücher.example")
	signer, err := NewSigner(keys)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	zoneKeys := slices.Clone(keys)
	for i := range zoneKeys {
		zoneKeys[i].Domain, _ = normalizeDomain(zoneKeys[i].Domain)
	}
	srv := testenv.StartDNS(t, zoneFor(t, zoneKeys))
	lookup := dnsLookupTXT(srv.Addr())

	tests := []struct {
		name   string
		msg    string
		domain string
		wantH  string
	}{
		{
			name:   "basic headers, over-signed",
			msg:    baseMsg,
			domain: "example.com",
			wantH:  "from:from:to:to:subject:subject:date:date:message-id:mime-version:content-type",
		},
		{
			name: "list-unsubscribe pair",
			msg: strings.Replace(baseMsg, "X-Mailer", "List-Unsubscribe: <https://example.com/u/1>\r\n"+
				"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nX-Mailer", 1),
			domain: "example.com",
			wantH: "from:from:to:to:subject:subject:date:date:message-id:mime-version:content-type:" +
				"list-unsubscribe:list-unsubscribe-post",
		},
		{
			name: "folded headers, cc, reply-to, transfer encoding",
			msg: "from: alice@example.com\r\n" +
				"Reply-To: help@example.com\r\n" +
				"To: a@example.net,\r\n\tb@example.net\r\n" +
				"Cc: c@example.net\r\n" +
				"Subject: a long\r\n subject\r\n" +
				"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n" +
				"Content-Transfer-Encoding: 7bit\r\n" +
				"\r\n" +
				"body  with   spaces \r\n\r\n\r\n",
			domain: "example.com",
			wantH:  "from:from:reply-to:to:to:cc:subject:subject:date:date:content-transfer-encoding",
		},
		{
			name:   "absent To and Date are still listed once",
			msg:    "From: alice@example.com\r\nSubject: hi\r\n\r\nbody\r\n",
			domain: "example.com",
			wantH:  "from:from:to:subject:subject:date",
		},
		{
			name:   "IDN From in U-label form signs with the A-label",
			msg:    strings.Replace(baseMsg, "alice@Example.COM", "alice@Bücher.example", 1),
			domain: "xn--bcher-kva.example",
			wantH:  "from:from:to:to:subject:subject:date:date:message-id:mime-version:content-type",
		},
		{
			name:   "IDN From in A-label form",
			msg:    strings.Replace(baseMsg, "alice@Example.COM", "alice@XN--BCHER-KVA.example", 1),
			domain: "xn--bcher-kva.example",
			wantH:  "from:from:to:to:subject:subject:date:date:message-id:mime-version:content-type",
		},
		{
			name:   "two mailboxes in one domain",
			msg:    strings.Replace(baseMsg, "Alice <alice@Example.COM>", "alice@example.com, carol@EXAMPLE.com", 1),
			domain: "example.com",
			wantH:  "from:from:to:to:subject:subject:date:date:message-id:mime-version:content-type",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := []byte(tc.msg)
			out, err := signer.Sign(in)
			if err != nil {
				t.Fatalf("Sign(%q) error: %v", tc.msg, err)
			}
			if string(in) != tc.msg {
				t.Errorf("Sign modified its input")
			}
			if !bytes.HasSuffix(out, in) {
				t.Errorf("Sign output does not end with the original message:\n%s", out)
			}
			if !bytes.HasPrefix(out, []byte("DKIM-Signature:")) {
				t.Errorf("Sign output does not start with DKIM-Signature:\n%s", out)
			}

			tags := signatureTags(t, out)
			if len(tags) != 2 {
				t.Fatalf("got %d DKIM-Signature fields, want 2:\n%s", len(tags), out)
			}
			wantAlgs := []string{"rsa-sha256", "ed25519-sha256"} // RSA on top
			for i, tg := range tags {
				checks := []struct{ tag, got, want string }{
					{"a", tg["a"], wantAlgs[i]},
					{"c", tg["c"], "relaxed/relaxed"},
					{"d", tg["d"], tc.domain},
					{"h", strings.ToLower(tg["h"]), tc.wantH},
					{"v", tg["v"], "1"},
				}
				for _, c := range checks {
					if c.got != c.want {
						t.Errorf("signature %d: %s=%q, want %q", i, c.tag, c.got, c.want)
					}
				}
				if _, ok := tg["l"]; ok {
					t.Errorf("signature %d has an l= tag: %v", i, tg)
				}
				if _, ok := tg["t"]; !ok {
					t.Errorf("signature %d has no t= tag: %v", i, tg)
				}
			}

			vs := verify(t, out, lookup)
			if len(vs) != 2 {
				t.Fatalf("got %d verifications, want 2", len(vs))
			}
			for i, v := range vs {
				if v.Err != nil {
					t.Errorf("verification %d (d=%s): %v\nmessage:\n%s", i, v.Domain, v.Err, out)
				}
				if v.Domain != tc.domain {
					t.Errorf("verification %d: d=%q, want %q", i, v.Domain, tc.domain)
				}
			}
		})
	}
}

func TestSignTampering(t *testing.T) {
	t.Parallel()
	keys := signingKeys(t, "example.com")
	signer, err := NewSigner(keys)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	srv := testenv.StartDNS(t, zoneFor(t, keys))
	lookup := dnsLookupTXT(srv.Addr())
	signed, err := signer.Sign([]byte(baseMsg))
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	endOfHeader := func(m []byte, field string) []byte {
		i := bytes.Index(m, []byte("\r\n\r\n"))
		return slices.Concat(m[:i+2], []byte(field), m[i+2:])
	}

	tests := []struct {
		name     string
		mutate   func([]byte) []byte
		wantPass bool
	}{
		{"unchanged", func(m []byte) []byte { return m }, true},
		{"unsigned header added", func(m []byte) []byte { return endOfHeader(m, "X-Tracking: 1\r\n") }, true},
		{"whitespace in a header value (relaxed)", func(m []byte) []byte {
			return bytes.Replace(m, []byte("Subject: Hello"), []byte("Subject:   Hello  "), 1)
		}, true},
		{"subject changed", func(m []byte) []byte {
			return bytes.Replace(m, []byte("Subject: Hello"), []byte("Subject: Hellp"), 1)
		}, false},
		{"second From on top", func(m []byte) []byte {
			return slices.Concat([]byte("From: Mallory <ceo@example.com>\r\n"), m)
		}, false},
		{"second From at end of header", func(m []byte) []byte { return endOfHeader(m, "From: ceo@example.com\r\n") }, false},
		{"second Subject on top", func(m []byte) []byte {
			return slices.Concat([]byte("Subject: Urgent\r\n"), m)
		}, false},
		{"second Date on top", func(m []byte) []byte {
			return slices.Concat([]byte("Date: Tue, 03 Mar 2026 10:00:00 +0000\r\n"), m)
		}, false},
		{"second To on top", func(m []byte) []byte {
			return slices.Concat([]byte("To: victim@example.net\r\n"), m)
		}, false},
		{"body altered", func(m []byte) []byte {
			return bytes.Replace(m, []byte("this is the body"), []byte("this is the bodY"), 1)
		}, false},
		{"body appended (no l= tag)", func(m []byte) []byte {
			return append(slices.Clone(m), "Click https://evil.example\r\n"...)
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			msg := tc.mutate(slices.Clone(signed))
			vs := verify(t, msg, lookup)
			if len(vs) != 2 {
				t.Fatalf("got %d verifications, want 2", len(vs))
			}
			for i, v := range vs {
				if pass := v.Err == nil; pass != tc.wantPass {
					t.Errorf("%s: verification %d passed=%v (err %v), want passed=%v", tc.name, i, pass, v.Err, tc.wantPass)
				}
			}
		})
	}
}

func TestSignNoKeyReturnsInput(t *testing.T) {
	t.Parallel()
	withKeys, err := NewSigner(signingKeys(t, "example.com"))
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	empty, err := NewSigner(nil)
	if err != nil {
		t.Fatalf("NewSigner(nil): %v", err)
	}
	tests := []struct {
		name   string
		signer *Signer
		msg    string
	}{
		{"other domain", withKeys, strings.Replace(baseMsg, "Example.COM", "example.org", 1)},
		{"subdomain of a key domain", withKeys, strings.Replace(baseMsg, "Example.COM", "news.example.com", 1)},
		{"no keys at all", empty, baseMsg},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := []byte(tc.msg)
			out, err := tc.signer.Sign(in)
			if err != nil {
				t.Fatalf("Sign error: %v", err)
			}
			if len(out) != len(in) || cap(out) != cap(in) || unsafe.SliceData(out) != unsafe.SliceData(in) {
				t.Errorf("Sign(%q) returned a different slice (len %d cap %d), want the input itself (len %d cap %d)",
					tc.msg, len(out), cap(out), len(in), cap(in))
			}
		})
	}
}

func TestSignMalformed(t *testing.T) {
	t.Parallel()
	signer, err := NewSigner(signingKeys(t, "example.com"))
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	tests := []struct {
		name string
		msg  string
	}{
		{"no From", "To: b@example.net\r\n\r\nbody\r\n"},
		{"two From fields", "From: a@example.com\r\nFrom: b@example.com\r\n\r\nbody\r\n"},
		{"From without address", "From: undisclosed\r\n\r\nbody\r\n"},
		{"From group without mailbox", "From: group:;\r\n\r\nbody\r\n"},
		{"From in two domains", "From: a@example.com, b@example.org\r\n\r\nbody\r\n"},
		{"From address literal", "From: a@[192.0.2.1]\r\n\r\nbody\r\n"},
		{"no blank line after header", "From: a@example.com\r\nSubject: x\r\n"},
		{"continuation line first", " folded\r\nFrom: a@example.com\r\n\r\nbody\r\n"},
		{"line without colon", "From: a@example.com\r\nnot a header\r\n\r\nbody\r\n"},
		{"empty message", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, err := signer.Sign([]byte(tc.msg))
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("Sign(%q) = %q, %v; want error wrapping ErrMalformed", tc.msg, out, err)
			}
		})
	}
}

func TestNewSignerValidates(t *testing.T) {
	t.Parallel()
	ks := keySet(t)
	ecSigner := crypto.Signer(ks.ec)
	tests := []struct {
		name    string
		keys    []Key
		wantErr []error // each must be wrapped; nil means success
		domains []string
	}{
		{
			name:    "rsa and ed25519 for one domain, IDN normalised",
			keys:    []Key{{"Example.COM", "rsa1", ks.rsa}, {"example.com", "ed1", ks.ed}, {"bücher.example", "s", ks.ed2}},
			domains: []string{"example.com", "xn--bcher-kva.example"},
		},
		{name: "no keys", keys: nil, domains: []string{}},
		{name: "rsa 1024 rejected", keys: []Key{{"example.com", "s", ks.rsaWeak}}, wantErr: []error{ErrKeySize}},
		{name: "ecdsa rejected", keys: []Key{{"example.com", "s", ecSigner}}, wantErr: []error{ErrKeyType}},
		{name: "nil signer", keys: []Key{{"example.com", "s", nil}}, wantErr: []error{ErrKeyType}},
		{name: "bad selector", keys: []Key{{"example.com", "s_1", ks.ed}}, wantErr: []error{ErrKeyName}},
		{name: "empty selector", keys: []Key{{"example.com", "", ks.ed}}, wantErr: []error{ErrKeyName}},
		{name: "single-label domain", keys: []Key{{"localhost", "s", ks.ed}}, wantErr: []error{ErrKeyName}},
		{name: "duplicate selector", keys: []Key{{"example.com", "S1", ks.ed}, {"EXAMPLE.com", "s1", ks.rsa}}, wantErr: []error{ErrKeyName}},
		{
			name:    "all problems reported together",
			keys:    []Key{{"example.com", "a", ks.rsaWeak}, {"example.com", "b", ecSigner}, {"x", "c", ks.ed}},
			wantErr: []error{ErrKeySize, ErrKeyType, ErrKeyName},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, err := NewSigner(tc.keys)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("NewSigner(%v) error: %v", tc.keys, err)
				}
				if got := s.Domains(); !slices.Equal(got, tc.domains) {
					t.Errorf("NewSigner(%v).Domains() = %q, want %q", tc.keys, got, tc.domains)
				}
				return
			}
			for _, want := range tc.wantErr {
				if !errors.Is(err, want) {
					t.Errorf("NewSigner(%v) error = %v, want it to wrap %v", tc.keys, err, want)
				}
			}
		})
	}
}

// benchMsg is a 2 KiB message: a typical header and a text body.
func benchMsg() []byte {
	head := "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: Your receipt\r\n" +
		"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMessage-ID: <r1@example.com>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nList-Unsubscribe: <https://example.com/u/1>\r\n" +
		"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
	line := "Thank you for your order. Your items will ship within two days.\r\n"
	var b strings.Builder
	b.WriteString(head)
	for b.Len()+len(line) <= 2048 {
		b.WriteString(line)
	}
	return []byte(b.String())
}

func BenchmarkSign(b *testing.B) {
	ks := keySet(b)
	msg := benchMsg()
	benches := []struct {
		name   string
		signer crypto.Signer
	}{
		{"rsa-2048", ks.rsa},
		{"ed25519", ks.ed},
	}
	for _, bc := range benches {
		b.Run(bc.name, func(b *testing.B) {
			s, err := NewSigner([]Key{{Domain: "example.com", Selector: "s1", Signer: bc.signer}})
			if err != nil {
				b.Fatalf("NewSigner: %v", err)
			}
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Sign(msg); err != nil {
					b.Fatalf("Sign: %v", err)
				}
			}
		})
	}
}
