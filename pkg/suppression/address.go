package suppression

import (
	"encoding/base64"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// maxAddressOctets is the longest usable address (RFC 5321 §4.5.3.1.3: a
// 256-octet path minus its angle brackets), measured on the normalized form.
const maxAddressOctets = 254

// Normalize returns the canonical form of addr used as its key: surrounding
// white space trimmed, lower-cased as a whole (SES and other providers treat
// addresses case-insensitively, local part included), and the domain in
// IDNA A-label form, so that "user@Bücher.de" and "user@xn--bcher-kva.de"
// (the form pkg/mailmsg gives recipients) are one entry.
//
// It returns an error wrapping ErrInvalidAddress for anything that is not a
// plausible addr-spec: empty; invalid UTF-8; white space or control
// characters inside; no '@'; an empty local part or domain; an '@' in an
// unquoted local part; a domain the IDNA lookup profile refuses (so no
// address literals); more than 254 octets once normalized.
func Normalize(addr string) (string, error) {
	s := strings.TrimSpace(addr)
	if s == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidAddress)
	}
	if !utf8.ValidString(s) {
		return "", fmt.Errorf("%w %q: invalid UTF-8", ErrInvalidAddress, addr)
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return "", fmt.Errorf("%w %q: contains %U", ErrInvalidAddress, addr, r)
		}
	}
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return "", fmt.Errorf("%w %q: no '@'", ErrInvalidAddress, addr)
	}
	local, domain := s[:at], s[at+1:]
	if local == "" {
		return "", fmt.Errorf("%w %q: empty local part", ErrInvalidAddress, addr)
	}
	if domain == "" {
		return "", fmt.Errorf("%w %q: empty domain", ErrInvalidAddress, addr)
	}
	if strings.IndexByte(local, '@') >= 0 && !quoted(local) {
		return "", fmt.Errorf("%w %q: '@' in an unquoted local part", ErrInvalidAddress, addr)
	}
	// The lookup profile lower-cases and maps U-labels to A-labels, and
	// validates any "xn--" label, so both spellings of an IDN agree.
	ascii, err := idna.Lookup.ToASCII(domain)
	if err != nil {
		return "", fmt.Errorf("%w %q: domain: %w", ErrInvalidAddress, addr, err)
	}
	norm := strings.ToLower(local) + "@" + ascii
	if len(norm) > maxAddressOctets {
		return "", fmt.Errorf("%w: %d octets, limit %d", ErrInvalidAddress, len(norm), maxAddressOctets)
	}
	return norm, nil
}

// quoted reports whether local is a quoted-string, in which '@' is legal.
func quoted(local string) bool {
	return len(local) >= 2 && local[0] == '"' && local[len(local)-1] == '"'
}

// checkTenant accepts a tenant usable as one token of a KV key: non-empty
// and made only of the characters KV keys allow other than '.', the token
// separator. That also excludes the wildcards '*' and '>' and white space.
func checkTenant(tenant string) error {
	if tenant == "" {
		return fmt.Errorf("%w: empty", ErrInvalidTenant)
	}
	for i := 0; i < len(tenant); i++ {
		c := tenant[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '/' || c == '=') {
			return fmt.Errorf("%w %q: only letters, digits and -_/= are allowed", ErrInvalidTenant, tenant)
		}
	}
	return nil
}

// keyEncoding maps a normalized address to a KV-legal key token
// ([-_A-Za-z0-9]) reversibly.
var keyEncoding = base64.RawURLEncoding

// key returns the KV key of tenant's entry for the normalized address norm.
func key(tenant, norm string) string {
	return tenant + "." + keyEncoding.EncodeToString([]byte(norm))
}

// keyFor validates tenant and addr and returns addr's normalized form and key.
func keyFor(tenant, addr string) (norm, k string, err error) {
	if err := checkTenant(tenant); err != nil {
		return "", "", err
	}
	norm, err = Normalize(addr)
	if err != nil {
		return "", "", err
	}
	return norm, key(tenant, norm), nil
}
