// Package dkim adds DKIM signatures (RFC 6376) to outbound messages, one per
// signing key of the sender's domain, with RSA-SHA256 (RFC 8301) and
// Ed25519-SHA256 (RFC 8463).
//
// The worker signs just before SMTP, so private keys live only in worker
// memory: they are loaded from files by LoadKeys, never travel in queue
// payloads, and never appear in errors or logs (Key and the signers LoadKeys
// returns format as redacted text under fmt, log/slog and encoding/json).
//
// Every signature uses relaxed/relaxed canonicalisation (RFC 6376 §3.4),
// carries a t= timestamp and no l= body length (TESTPLAN §6: l= lets anyone
// append content under the signature), and over-signs From, To, Subject and
// Date (RFC 6376 §8.15). The signing domain d= is the From domain, so the
// signature aligns for DMARC (RFC 7489 §3.1.1).
//
// Signature verification, key publication in DNS and key rotation policy are
// out of scope.
package dkim

import (
	"bytes"
	"cmp"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"slices"
	"strings"

	msgauth "github.com/emersion/go-msgauth/dkim"
	"golang.org/x/net/idna"
)

// ErrMalformed is returned by Sign, wrapped, when the message has no header
// section that can be signed: no blank line ending the header, a line that
// is not a header field, not exactly one From field, or From mailboxes that
// do not name one domain. Such a message fails every attempt the same way,
// so callers should treat it as a permanent failure.
var ErrMalformed = errors.New("dkim: message cannot be signed")

// signedFields are the header fields a signature covers when present, in
// h= order: RFC 6376 §5.4.1's recommendations, the MIME fields that change
// how the body is read, and the RFC 8058 one-click unsubscribe pair (a
// receiver honours List-Unsubscribe-Post only when it is signed).
var signedFields = []string{
	"From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID",
	"In-Reply-To", "References", "MIME-Version", "Content-Type",
	"Content-Transfer-Encoding", "List-Unsubscribe", "List-Unsubscribe-Post",
}

// overSigned fields are listed in h= once more than they occur, so a copy
// added in transit (or the first copy of an absent one) breaks the signature
// instead of being shown to the reader unsigned (RFC 6376 §8.15).
var overSigned = map[string]bool{"from": true, "to": true, "subject": true, "date": true}

// Signer signs messages with the keys of their From domain. It is immutable
// after NewSigner and safe for concurrent use.
type Signer struct {
	byDomain map[string][]Key // A-label domain -> keys, RSA first, then by selector
}

// NewSigner returns a Signer for keys. A domain may have several keys (for
// example one RSA and one Ed25519, RFC 8463 §1); Sign then adds one
// signature per key. No keys at all is allowed: Sign then signs nothing.
//
// Each key needs a valid host name as Domain (an IDN is stored as its
// A-label), a selector of LDH labels (RFC 6376 §3.1), and a Signer whose
// public key is RSA of 2048 to 4096 bits or Ed25519; a (domain, selector)
// pair may appear only once. All problems are reported together, joined;
// each wraps ErrKeyName, ErrKeyType or ErrKeySize. Signers are wrapped so
// that printing the Signer's internals never shows key material.
func NewSigner(keys []Key) (*Signer, error) {
	s := &Signer{byDomain: make(map[string][]Key)}
	seen := make(map[string]bool)
	var errs []error
	for i, k := range keys {
		domain, err := checkKey(k)
		if err != nil {
			errs = append(errs, fmt.Errorf("key %d (%s): %w", i, k, err))
			continue
		}
		id := strings.ToLower(k.Selector) + "._domainkey." + domain
		if seen[id] {
			errs = append(errs, fmt.Errorf("key %d (%s): %w: selector %q listed twice for %s", i, k, ErrKeyName, k.Selector, domain))
			continue
		}
		seen[id] = true
		k.Domain = domain
		k.Signer = redact(k.Signer)
		s.byDomain[domain] = append(s.byDomain[domain], k)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for _, ks := range s.byDomain {
		// RSA goes on top: it is the one every verifier knows, and some
		// look only at the first signature.
		slices.SortFunc(ks, func(a, b Key) int {
			return cmp.Or(cmp.Compare(algOrder(a), algOrder(b)), cmp.Compare(a.Selector, b.Selector))
		})
	}
	return s, nil
}

// algOrder sorts RSA keys before Ed25519 keys.
func algOrder(k Key) int {
	if _, ok := k.Signer.Public().(*rsa.PublicKey); ok {
		return 0
	}
	return 1
}

// Domains returns the signing domains, as lower-case A-labels, sorted.
func (s *Signer) Domains() []string {
	out := make([]string, 0, len(s.byDomain))
	for d := range s.byDomain {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// Sign returns msg with one DKIM-Signature field prepended per key of the
// From domain. msg is a complete RFC 5322 message with CRLF line endings
// and a blank line after the header; it is not modified. The From domain is
// compared as a lower-case A-label, exactly: a key for example.com does not
// sign mail from news.example.com.
//
// When no key matches, Sign returns msg itself (same backing array, no copy)
// and a nil error. A message without a signable header gives an error
// wrapping ErrMalformed, whether or not a key would match. Any other error
// comes from a key's crypto.Signer (for example a remote KMS), names the key
// but never its material, and may be temporary.
func (s *Signer) Sign(msg []byte) ([]byte, error) {
	counts, from, err := scanHeader(msg)
	if err != nil {
		return nil, err
	}
	domain, err := fromDomain(from)
	if err != nil {
		return nil, err
	}
	keys := s.byDomain[domain]
	if len(keys) == 0 {
		return msg, nil
	}

	hkeys := headerKeys(counts)
	sigs := make([]string, 0, len(keys))
	size := len(msg)
	for _, k := range keys {
		sig, err := signOne(msg, k, hkeys)
		if err != nil {
			return nil, fmt.Errorf("dkim: signing with %s: %w", k, err)
		}
		sigs = append(sigs, sig)
		size += len(sig)
	}
	out := make([]byte, 0, size)
	for _, sig := range sigs {
		out = append(out, sig...)
	}
	return append(out, msg...), nil
}

// signOne computes one DKIM-Signature field, CRLF included.
func signOne(msg []byte, k Key, hkeys []string) (string, error) {
	ds, err := msgauth.NewSigner(&msgauth.SignOptions{
		Domain:                 k.Domain,
		Selector:               k.Selector,
		Signer:                 k.Signer,
		Hash:                   crypto.SHA256, // rsa-sha1 MUST NOT be used to sign (RFC 8301 §3.1)
		HeaderCanonicalization: msgauth.CanonicalizationRelaxed,
		BodyCanonicalization:   msgauth.CanonicalizationRelaxed,
		HeaderKeys:             hkeys,
	})
	if err != nil {
		return "", err
	}
	if _, err := ds.Write(msg); err != nil {
		return "", errors.Join(err, ds.Close())
	}
	if err := ds.Close(); err != nil {
		return "", err
	}
	return ds.Signature(), nil
}

// headerKeys builds h=: each signed field once per occurrence, and the
// over-signed ones once more.
func headerKeys(counts map[string]int) []string {
	var out []string
	for _, name := range signedFields {
		lower := strings.ToLower(name)
		n := counts[lower]
		if overSigned[lower] {
			n++
		}
		for range n {
			out = append(out, name)
		}
	}
	return out
}

// scanHeader reads msg's header section and returns how often each field
// name (lower-cased) occurs and the unfolded values of the From fields.
func scanHeader(msg []byte) (counts map[string]int, from []string, err error) {
	counts = make(map[string]int, 16)
	inFrom := false
	for rest := msg; ; {
		nl := bytes.IndexByte(rest, '\n')
		if nl < 0 {
			return nil, nil, fmt.Errorf("%w: no blank line ends the header section", ErrMalformed)
		}
		line := bytes.TrimSuffix(rest[:nl], []byte("\r"))
		rest = rest[nl+1:]
		switch {
		case len(line) == 0:
			return counts, from, nil
		case line[0] == ' ' || line[0] == '\t':
			if len(counts) == 0 {
				return nil, nil, fmt.Errorf("%w: header starts with a continuation line", ErrMalformed)
			}
			if inFrom {
				from[len(from)-1] += string(line)
			}
		default:
			colon := bytes.IndexByte(line, ':')
			name := bytes.TrimRight(line[:max(colon, 0)], " \t") // RFC 5322 §4.5 allows WSP before ':'
			if colon < 0 || len(name) == 0 {
				return nil, nil, fmt.Errorf("%w: header line without a field name", ErrMalformed)
			}
			lower := strings.ToLower(string(name))
			counts[lower]++
			inFrom = lower == "from"
			if inFrom {
				from = append(from, string(line[colon+1:]))
			}
		}
	}
}

// addressParser reads From fields. Encoded-word display names in any
// charset are passed through undecoded: only the address matters here, and
// an unknown charset must not make a message unsignable.
var addressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// fromDomain returns the lower-case A-label domain shared by the mailboxes
// of the single From field.
func fromDomain(from []string) (string, error) {
	if len(from) != 1 {
		return "", fmt.Errorf("%w: %d From fields, want 1 (RFC 5322 §3.6)", ErrMalformed, len(from))
	}
	addrs, err := addressParser.ParseList(from[0])
	if err != nil {
		return "", fmt.Errorf("%w: From: %w", ErrMalformed, err)
	}
	if len(addrs) == 0 {
		return "", fmt.Errorf("%w: From holds no mailbox", ErrMalformed)
	}
	var domain string
	for i, a := range addrs {
		at := strings.LastIndexByte(a.Address, '@')
		d, err := normalizeDomain(a.Address[at+1:])
		if err != nil {
			return "", fmt.Errorf("%w: From: %w", ErrMalformed, err)
		}
		if i > 0 && d != domain {
			// One d= cannot align with two From domains (RFC 7489 §6.6.1).
			return "", fmt.Errorf("%w: From mailboxes are in %s and %s", ErrMalformed, domain, d)
		}
		domain = d
	}
	return domain, nil
}

// normalizeDomain returns d as a lower-case A-label host name: LDH labels
// of 1 to 63 octets, at least two labels, 253 octets in all (RFC 1035
// §2.3.4, RFC 5321 §4.1.2). The UTS #46 lookup profile makes the U-label and
// A-label spellings of an IDN equal (TESTPLAN §6).
func normalizeDomain(d string) (string, error) {
	ascii, err := idna.Lookup.ToASCII(strings.TrimSuffix(d, "."))
	if err != nil {
		return "", fmt.Errorf("domain %q is not a host name: %w", d, err)
	}
	if !strings.Contains(ascii, ".") || len(ascii) > 253 || !ldhLabels(ascii) {
		return "", fmt.Errorf("domain %q is not a host name", d)
	}
	return ascii, nil
}

// ldhLabels reports whether s is dot-separated labels of letters, digits
// and inner hyphens, each 1 to 63 octets long.
func ldhLabels(s string) bool {
	for label := range strings.SplitSeq(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// checkKey validates k for NewSigner and returns its normalised domain.
func checkKey(k Key) (string, error) {
	domain, err := normalizeDomain(k.Domain)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrKeyName, err)
	}
	if k.Selector == "" || len(k.Selector) > 253 || !ldhLabels(k.Selector) {
		return "", fmt.Errorf("%w: selector %q is not LDH labels (RFC 6376 §3.1)", ErrKeyName, k.Selector)
	}
	if k.Signer == nil {
		return "", fmt.Errorf("%w: no signer", ErrKeyType)
	}
	if err := checkPublic(k.Signer.Public()); err != nil {
		return "", err
	}
	return domain, nil
}

// checkPublic accepts RSA keys of minRSABits to maxRSABits and Ed25519.
func checkPublic(pub crypto.PublicKey) error {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if bits := p.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return fmt.Errorf("%w: RSA key has %d bits", ErrKeySize, bits)
		}
		return nil
	case ed25519.PublicKey:
		return nil
	default:
		return fmt.Errorf("%w: %T", ErrKeyType, pub)
	}
}
