package mailmsg

import (
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Length limits on addresses. The RFC 5321 limits are the ones every SMTP
// server must accept, so longer addresses are not deliverable reliably.
const (
	maxLocalOctets  = 64  // RFC 5321 §4.5.3.1.1
	maxDomainOctets = 255 // RFC 5321 §4.5.3.1.2
	maxPathOctets   = 256 // RFC 5321 §4.5.3.1.3, counting the angle brackets
	maxLabelOctets  = 63  // RFC 1035 §2.3.4
	// maxAddressInput bounds the whole input, display name included, to one
	// header line (RFC 5322 §2.1.1) so parsing work stays small.
	maxAddressInput = 998
)

// Address is one mailbox that passed ParseAddress.
type Address struct {
	// Name is the decoded display name, possibly empty.
	Name string
	// Addr is the mailbox as used on the wire, "local@domain": the local part
	// quoted only when it is not a dot-atom, and the domain in lower-case
	// A-label (ASCII) form. It is at most 254 octets.
	Addr string
	// Local is the local part's value, unquoted; it may hold non-ASCII
	// characters (RFC 6531), which then require SMTPUTF8.
	Local string
	// Domain is the lower-case A-label form of the domain.
	Domain string
}

// needsSMTPUTF8 reports whether delivering to or from a is only possible
// with the SMTPUTF8 extension (RFC 6531).
func (a Address) needsSMTPUTF8() bool { return !isASCII(a.Local) }

// key identifies a mailbox for duplicate detection: domains compare
// case-insensitively (they are lower-cased already), local parts exactly
// (RFC 5321 §2.4).
func (a Address) key() string { return a.Local + "@" + a.Domain }

// ParseAddress parses s as an RFC 5322 name-addr ("Name <local@domain>") or
// addr-spec ("local@domain") and then applies RFC 5321 Mailbox rules, so
// the result is safe both in a header and in MAIL FROM / RCPT TO.
//
// It refuses: invalid UTF-8; control characters anywhere (CR, LF, NUL, TAB,
// DEL and C1), including inside RFC 2047 encoded display names; group
// syntax, source routes ("@a:b@c") and ports (any ':' outside quotes);
// unbalanced quotes; local parts that are empty, longer than 64 octets, or
// hold '%', '!' or '@' (routing and relay tricks); address literals
// ("[1.2.3.4]"); domains that are not LDH host names with at least one dot,
// with an all-numeric top label, with a label over 63 octets or over 255
// octets in all; and paths over 256 octets.
//
// A non-ASCII domain is converted to its A-label with the IDNA2008 / UTS #46
// lookup profile, so the U-label and A-label forms of one domain give the
// same Address. The returned error's text is suitable as a FieldError
// description.
func ParseAddress(s string) (Address, error) {
	if len(s) > maxAddressInput {
		return Address{}, fmt.Errorf("address is %d octets, limit %d", len(s), maxAddressInput)
	}
	if err := checkText(s, false); err != nil {
		return Address{}, err
	}
	if err := checkQuotesAndColons(s); err != nil {
		return Address{}, err
	}
	pa, err := mail.ParseAddress(s)
	if err != nil {
		return Address{}, fmt.Errorf("invalid address syntax: %w", err)
	}
	// Encoded words are decoded by net/mail, so the decoded name can hold
	// what the raw input could not.
	if err := checkText(pa.Name, false); err != nil {
		return Address{}, fmt.Errorf("display name: %w", err)
	}
	at := strings.LastIndexByte(pa.Address, '@')
	if at < 0 {
		return Address{}, errors.New("address has no '@'")
	}
	local, domain := pa.Address[:at], pa.Address[at+1:]

	wireLocal, err := checkLocal(local)
	if err != nil {
		return Address{}, err
	}
	asciiDomain, err := normalizeDomain(domain)
	if err != nil {
		return Address{}, err
	}
	addr := wireLocal + "@" + asciiDomain
	if n := len(addr) + 2; n > maxPathOctets {
		return Address{}, fmt.Errorf("path <%s> is %d octets, limit %d", addr, n, maxPathOctets)
	}
	return Address{Name: pa.Name, Addr: addr, Local: local, Domain: asciiDomain}, nil
}

// checkText rejects invalid UTF-8 and control characters (C0, DEL, C1),
// naming the injection vectors CR, LF and NUL explicitly. TAB passes only
// when allowTab is set.
func checkText(s string, allowTab bool) error {
	if !utf8.ValidString(s) {
		return errors.New("invalid UTF-8")
	}
	for _, r := range s {
		switch {
		case r == '\r':
			return errors.New("contains CR")
		case r == '\n':
			return errors.New("contains LF")
		case r == 0:
			return errors.New("contains NUL")
		case r == '\t' && allowTab:
		case unicode.IsControl(r):
			return fmt.Errorf("contains control character %U", r)
		}
	}
	return nil
}

// checkQuotesAndColons scans s outside quoted strings. A ':' there can only
// be group syntax, a source route or a port, none of which is a mailbox.
func checkQuotesAndColons(s string) error {
	inQuote := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case inQuote && c == '\\':
			i++ // quoted-pair: the next octet is literal
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == ':':
			return errors.New("':' outside quotes (group syntax, source routes and ports are refused)")
		}
	}
	if inQuote {
		return errors.New("unbalanced quotes")
	}
	return nil
}

// checkLocal validates an unquoted local-part value and returns its wire
// form: as is when it is a Dot-string, otherwise as a Quoted-string
// (RFC 5321 §4.1.2, extended to UTF-8 by RFC 6531).
func checkLocal(local string) (string, error) {
	if local == "" {
		return "", errors.New("local part is empty")
	}
	if err := checkText(local, false); err != nil {
		return "", fmt.Errorf("local part: %w", err)
	}
	// '%' and '!' are old source-routing syntaxes and '@' inside a quoted
	// local part is a relay trick; none belongs in an outbound address.
	if i := strings.IndexAny(local, "%!@"); i >= 0 {
		return "", fmt.Errorf("local part contains %q", local[i])
	}
	wire := local
	if !isDotString(local) {
		var b strings.Builder
		b.WriteByte('"')
		for _, r := range local {
			if r == '"' || r == '\\' {
				b.WriteByte('\\')
			}
			b.WriteRune(r)
		}
		b.WriteByte('"')
		wire = b.String()
	}
	if len(wire) > maxLocalOctets {
		return "", fmt.Errorf("local part is %d octets, limit %d", len(wire), maxLocalOctets)
	}
	return wire, nil
}

// isDotString reports whether s is Atom *("." Atom) with RFC 6531 UTF-8.
func isDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		if r != '.' && !isAtext(r) {
			return false
		}
	}
	return true
}

func isAtext(r rune) bool {
	switch {
	case r >= utf8.RuneSelf:
		return true
	case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		return true
	}
	return strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", r)
}

// normalizeDomain returns the lower-case A-label form of domain, or an error
// when it is not a host name SMTP can route to.
func normalizeDomain(domain string) (string, error) {
	if domain == "" {
		return "", errors.New("domain is empty")
	}
	if domain[0] == '[' {
		return "", errors.New("address literals are not accepted")
	}
	if len(domain) > maxDomainOctets {
		return "", fmt.Errorf("domain is %d octets, limit %d", len(domain), maxDomainOctets)
	}
	// Running ASCII names through the lookup profile too lower-cases them and
	// validates any "xn--" labels, so both spellings of an IDN agree.
	ascii, err := idna.Lookup.ToASCII(domain)
	if err != nil {
		return "", fmt.Errorf("domain %q is not a valid host name: %w", domain, err)
	}
	if err := checkHostname(ascii); err != nil {
		return "", err
	}
	return ascii, nil
}

// checkHostname enforces RFC 5321 Domain syntax (LDH labels, RFC 1035
// lengths) on an ASCII name, plus at least one dot and a top-level label
// that is not all digits, so dotted-quad IPs are refused without brackets
// too.
func checkHostname(d string) error {
	if len(d) > maxDomainOctets {
		return fmt.Errorf("domain is %d octets, limit %d", len(d), maxDomainOctets)
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return fmt.Errorf("domain %q has no dot", d)
	}
	for _, l := range labels {
		if l == "" {
			return fmt.Errorf("domain %q has an empty label", d)
		}
		if len(l) > maxLabelOctets {
			return fmt.Errorf("domain label is %d octets, limit %d", len(l), maxLabelOctets)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("domain label %q starts or ends with '-'", l)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return fmt.Errorf("domain label %q holds %s; only letters, digits and '-' are allowed", l, describeOctet(c))
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Errorf("domain %q has an all-numeric top-level label", d)
	}
	return nil
}

// isASCII reports whether s holds only 7-bit bytes.
func isASCII[T string | []byte](s T) bool {
	// Eight bytes per step: bodies of 100 KiB pass through here.
	for len(s) >= 8 {
		if (s[0]|s[1]|s[2]|s[3]|s[4]|s[5]|s[6]|s[7])&0x80 != 0 {
			return false
		}
		s = s[8:]
	}
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// SenderDomain returns the domain of from (a From value) in A-label form,
// for the right side of generated Message-IDs. For a From that does not
// parse it returns the placeholder "postflow.invalid": Build refuses such a
// message anyway, naming from.
func SenderDomain(from string) string {
	if a, err := ParseAddress(from); err == nil {
		return a.Domain
	}
	return "postflow.invalid"
}
