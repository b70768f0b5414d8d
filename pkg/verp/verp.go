// Package verp makes and checks the VERP return paths of outgoing mail
// (variable envelope return path: a distinct MAIL FROM per recipient), so
// that an asynchronous bounce names the message and recipient it is about
// without parsing its body.
//
// A return path is b+<message id>-<recipient index>-<mac>@<bounce domain>.
// The mac is a truncated HMAC-SHA256 over the message id and index under a
// secret shared by the worker and bounce roles: without the secret nobody
// can make a return path that parses, so forged bounces cannot suppress or
// bounce arbitrary recipients. The local part is at most 48 octets of
// lower-case letters, digits, '+' and '-', within RFC 5321's 64 and safe
// from case-folding and quoting by relays.
package verp

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Prefix starts every VERP local part.
const Prefix = "b+"

// MinSecret is the shortest secret New accepts, in bytes.
const MinSecret = 16

// macBytes is the HMAC truncation: 80 bits is far beyond what an attacker
// can guess through a mail server's RCPT replies.
const macBytes = 10

var (
	// ErrNotVERP means the address is not one of our return paths: another
	// local part, or another domain.
	ErrNotVERP = errors.New("verp: not a return path of the bounce domain")
	// ErrForged means the address has the return-path form but its mac does
	// not verify.
	ErrForged = errors.New("verp: return path does not verify")
)

var macEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Signer makes and checks return paths for one bounce domain.
type Signer struct {
	key    []byte
	domain string // lower case
}

// New returns a Signer for domain, keyed with secret.
func New(secret []byte, domain string) (*Signer, error) {
	if len(secret) < MinSecret {
		return nil, fmt.Errorf("verp: secret is %d bytes, at least %d required", len(secret), MinSecret)
	}
	domain = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(domain), "."))
	if domain == "" || strings.ContainsAny(domain, "@ \t\r\n<>") {
		return nil, fmt.Errorf("verp: bad bounce domain %q", domain)
	}
	return &Signer{key: append([]byte(nil), secret...), domain: domain}, nil
}

// Domain returns the bounce domain, in lower case.
func (s *Signer) Domain() string { return s.domain }

// ReturnPath returns the return path for one recipient of a message.
func (s *Signer) ReturnPath(messageID string, index int) string {
	return s.LocalPart(messageID, index) + "@" + s.domain
}

// LocalPart returns ReturnPath's local part.
func (s *Signer) LocalPart(messageID string, index int) string {
	idx := strconv.Itoa(index)
	return Prefix + messageID + "-" + idx + "-" + s.mac(messageID, idx)
}

func (s *Signer) mac(messageID, index string) string {
	h := hmac.New(sha256.New, s.key)
	h.Write([]byte("postflow-verp\x00" + messageID + "\x00" + index))
	return strings.ToLower(macEncoding.EncodeToString(h.Sum(nil)[:macBytes]))
}

// Parse checks addr, a return path as it came back (any case, angle
// brackets allowed), and returns the message id and recipient index it
// names. It returns ErrNotVERP for an address that is not a return path
// of the bounce domain, and ErrForged for one whose mac does not verify.
func (s *Signer) Parse(addr string) (messageID string, index int, err error) {
	addr = strings.ToLower(strings.Trim(strings.TrimSpace(addr), "<>"))
	at := strings.LastIndexByte(addr, '@')
	if at < 0 || addr[at+1:] != s.domain {
		return "", 0, ErrNotVERP
	}
	return s.ParseLocal(addr[:at])
}

// ParseLocal is Parse for a local part alone, the domain already checked.
func (s *Signer) ParseLocal(local string) (messageID string, index int, err error) {
	local = strings.ToLower(local)
	rest, ok := strings.CutPrefix(local, Prefix)
	if !ok {
		return "", 0, ErrNotVERP
	}
	parts := strings.Split(rest, "-")
	if len(parts) != 3 || parts[0] == "" {
		return "", 0, ErrNotVERP
	}
	n, err := strconv.Atoi(parts[1])
	if err != nil || n < 0 || strconv.Itoa(n) != parts[1] {
		return "", 0, ErrNotVERP
	}
	if !hmac.Equal([]byte(parts[2]), []byte(s.mac(parts[0], parts[1]))) {
		return "", 0, ErrForged
	}
	return parts[0], n, nil
}

// Find returns the first of addrs that is a valid return path, with the
// message id and index it names; ok is false when none is.
func (s *Signer) Find(addrs ...string) (messageID string, index int, ok bool) {
	for _, a := range addrs {
		if id, i, err := s.Parse(a); err == nil {
			return id, i, true
		}
	}
	return "", 0, false
}
