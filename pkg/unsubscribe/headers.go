package unsubscribe

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

const (
	// PostValue is the List-Unsubscribe-Post value (RFC 8058 §3.1), and the
	// body of the one-click POST (RFC 8058 §3.2).
	PostValue = "List-Unsubscribe=One-Click"

	// Path is where Handler serves, under the base URL: BASE + Path + TOKEN.
	Path = "/u/"

	// MaxHeaderValue bounds the List-Unsubscribe value Headers returns:
	// RFC 5322's 998 octets less "List-Unsubscribe: ", so that the field
	// fits one line and never depends on folding, which URIs would not
	// survive.
	MaxHeaderValue = 998 - len("List-Unsubscribe: ")

	// mailtoSubject is the subject the mailto URI asks for; its receiver
	// acts on the address, not the subject.
	mailtoSubject = "unsubscribe"
)

// Options adjusts NewLinks.
type Options struct {
	// AllowHTTP accepts an http:// base URL. RFC 8058 §3.1 requires https,
	// so this is only for tests against a plain-HTTP loopback listener.
	AllowHTTP bool
}

// Links makes the header values for a validated base URL and mail domain.
// Build one at start-up, so that a bad configuration fails there rather
// than on every message. It is safe for concurrent use.
type Links struct {
	signer     *Signer
	base       string // scheme://host[:port][/path], no trailing slash
	mailDomain string // lower case, no trailing dot; "" for no mailto
}

// NewLinks validates baseURL and mailDomain and returns Links for them.
//
// baseURL is where Handler is reachable, e.g. "https://mail.example.com" or
// "https://example.com/mail" (the caller then mounts Handler under /mail
// with http.StripPrefix). It must be https (http only with
// opts.AllowHTTP), absolute, in ASCII, with a host, and without user
// information, query or fragment; its path may use only letters, digits and
// "-._~/". A trailing slash is dropped.
//
// mailDomain is the domain of the mailto address, whose mail reaches the
// unsubscribe receiver (normally the bounce domain); it must be an ASCII
// (A-label) host name. Empty means no mailto URI.
func NewLinks(s *Signer, baseURL, mailDomain string, opts Options) (*Links, error) {
	if s == nil {
		return nil, errors.New("unsubscribe: nil Signer")
	}
	base, err := checkBaseURL(baseURL, opts.AllowHTTP)
	if err != nil {
		return nil, err
	}
	domain, err := checkMailDomain(mailDomain)
	if err != nil {
		return nil, err
	}
	return &Links{signer: s, base: base, mailDomain: domain}, nil
}

func checkBaseURL(raw string, allowHTTP bool) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("unsubscribe: base URL %q: %s", raw, why)
	}
	for i := 0; i < len(raw); i++ {
		if c := raw[i]; c <= ' ' || c >= 0x7f {
			return bad("only printable ASCII without spaces is allowed")
		}
	}
	if strings.ContainsAny(raw, "?#") {
		return bad("a query or fragment is not allowed")
	}
	if strings.Contains(raw, "%") {
		return bad("percent-encoding is not allowed")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return bad(err.Error())
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && allowHTTP:
	default:
		return bad("the scheme must be https (RFC 8058 §3.1)")
	}
	if u.Opaque != "" || u.Host == "" {
		return bad("a host is required")
	}
	if u.User != nil {
		return bad("user information is not allowed")
	}
	for i := 0; i < len(u.Host); i++ {
		c := u.Host[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-.:[]", c) >= 0) {
			return bad("the host may use only letters, digits and -.:[]")
		}
	}
	path := strings.TrimSuffix(u.Path, "/")
	for i := 0; i < len(path); i++ {
		c := path[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~/", c) >= 0) {
			return bad("the path may use only letters, digits and -._~/")
		}
	}
	return u.Scheme + "://" + strings.ToLower(u.Host) + path, nil
}

func checkMailDomain(d string) (string, error) {
	if d == "" {
		return "", nil
	}
	d = strings.ToLower(strings.TrimSuffix(d, "."))
	if d == "" || len(d) > 253 {
		return "", fmt.Errorf("unsubscribe: mail domain %q: bad length", d)
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", fmt.Errorf("unsubscribe: mail domain %q: bad label %q", d, label)
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return "", fmt.Errorf("unsubscribe: mail domain %q: only ASCII letters, digits and - are allowed (use the A-label form)", d)
			}
		}
	}
	return d, nil
}

// Headers returns the header values for one recipient:
//
//	List-Unsubscribe: <BASE/u/TOKEN>, <mailto:u+SHORT@DOMAIN?subject=unsubscribe>
//	List-Unsubscribe-Post: List-Unsubscribe=One-Click
//
// The https URI comes first, and is the one RFC 8058 receivers POST to; the
// mailto URI is left out when the Links have no mail domain. sub must name
// a tenant and an address and have a non-negative index; with a mail
// domain, sub.MessageID must be a message id (24 characters of [a-z2-7]).
// Headers fails rather than return a value over MaxHeaderValue.
func (l *Links) Headers(sub Subject) (listUnsubscribe, listUnsubscribePost string, err error) {
	if sub.Tenant == "" || sub.Address == "" {
		return "", "", errors.New("unsubscribe: the subject needs a tenant and an address")
	}
	if sub.Index < 0 {
		return "", "", fmt.Errorf("unsubscribe: negative recipient index %d", sub.Index)
	}
	token := l.signer.Token(sub)
	if len(token) > MaxTokenLen {
		return "", "", fmt.Errorf("unsubscribe: token of %d characters, over %d: subject fields too long", len(token), MaxTokenLen)
	}
	v := "<" + l.base + Path + token + ">"
	if l.mailDomain != "" {
		short := l.signer.MailtoToken(sub.MessageID, sub.Index)
		if short == "" {
			return "", "", fmt.Errorf("unsubscribe: message id %q is not 24 characters of [a-z2-7], as the mailto token needs", sub.MessageID)
		}
		v += ", <mailto:" + MailtoPrefix + short + "@" + l.mailDomain + "?subject=" + mailtoSubject + ">"
	}
	if len(v) > MaxHeaderValue {
		return "", "", fmt.Errorf("unsubscribe: List-Unsubscribe of %d octets, over %d", len(v), MaxHeaderValue)
	}
	return v, PostValue, nil
}

// Headers is NewLinks with default Options followed by Links.Headers, for
// callers that make one message; callers that make many should keep a
// Links.
func Headers(s *Signer, baseURL, mailDomain string, sub Subject) (listUnsubscribe, listUnsubscribePost string, err error) {
	l, err := NewLinks(s, baseURL, mailDomain, Options{})
	if err != nil {
		return "", "", err
	}
	return l.Headers(sub)
}
