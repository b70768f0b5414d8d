package mtasts

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// MaxMaxAge is the largest max_age a policy may declare, about one year
// (RFC 8461 §3.2).
const MaxMaxAge = 31557600 * time.Second

// ErrInvalidPolicy is wrapped by every error Parse returns, and so by Get's
// error when a fetched policy file does not parse.
var ErrInvalidPolicy = errors.New("mtasts: invalid policy")

// Mode is a policy's mode (RFC 8461 §5). Its values are the words of the
// policy file.
type Mode string

// The modes of RFC 8461 §5.
const (
	// ModeEnforce: deliver only to MX hosts that match the policy and
	// present a valid certificate over STARTTLS; defer otherwise.
	ModeEnforce Mode = "enforce"
	// ModeTesting: deliver as without a policy, and report (RFC 8460)
	// what enforce would have refused.
	ModeTesting Mode = "testing"
	// ModeNone: the domain has withdrawn its policy (RFC 8461 §8.3).
	ModeNone Mode = "none"
)

// Policy is an MTA-STS policy. Policies that Get returns are shared with
// the cache and with other callers: treat them as read-only.
type Policy struct {
	// ID is the id of the TXT record the policy was fetched under; empty
	// when the policy comes from Parse.
	ID string
	// Mode says what to do with MX hosts that fail validation.
	Mode Mode
	// MX holds the mx patterns in file order, lower case and without a
	// trailing dot: host names, or "*." followed by a domain.
	MX []string
	// MaxAge is how long the policy may be cached after Fetched.
	MaxAge time.Duration
	// Fetched is when the policy was fetched; zero when it comes from
	// Parse.
	Fetched time.Time
}

// Expires returns the instant from which the policy may no longer be
// applied: Fetched plus MaxAge (RFC 8461 §3.2, "from the last policy fetch
// time").
func (p *Policy) Expires() time.Time {
	return p.Fetched.Add(p.MaxAge)
}

// Match reports whether host, an MX host name, matches one of the policy's
// mx patterns (RFC 8461 §4.1). Matching ignores case and a trailing dot. A
// pattern "*.example.com" matches exactly one label in place of the "*":
// "mx1.example.com", but neither "example.com" nor "a.b.example.com".
// Match does not look at Mode.
func (p *Policy) Match(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "" {
		return false
	}
	for _, pat := range p.MX {
		if suffix, ok := strings.CutPrefix(pat, "*"); ok {
			label, found := strings.CutSuffix(h, suffix)
			if found && label != "" && !strings.Contains(label, ".") {
				return true
			}
			continue
		}
		if h == pat {
			return true
		}
	}
	return false
}

// Parse parses an MTA-STS policy file (RFC 8461 §3.2). The returned
// Policy's ID and Fetched are left for the caller to set.
//
// Lines end in LF or CRLF. Field names are case-sensitive, as the RFC's
// grammar says; whitespace around names and values is ignored, and so are
// blank lines and a leading byte order mark, which the grammar does not
// allow but which cost nothing to accept. Unknown fields are ignored. A
// field other than mx that appears more than once takes its first value
// (RFC 8461 §3.2).
//
// The error wraps ErrInvalidPolicy and names the problem: a line without a
// colon, a version other than STSv1, an unknown mode, a max_age that is not
// a number of seconds from 0 to 31557600, a malformed mx pattern, or a
// missing version, mode, max_age, or mx (required unless the mode is
// none).
func Parse(b []byte) (*Policy, error) {
	b = bytes.TrimPrefix(b, []byte("\uFEFF"))
	var (
		p                                 Policy
		seenVersion, seenMode, seenMaxAge bool
	)
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("%w: line %d: no colon in %q", ErrInvalidPolicy, i+1, line)
		}
		key, value = strings.Trim(key, " \t"), strings.Trim(value, " \t")
		switch key {
		case "version":
			if seenVersion {
				continue
			}
			seenVersion = true
			if value != "STSv1" {
				return nil, fmt.Errorf("%w: line %d: version %q, want STSv1", ErrInvalidPolicy, i+1, value)
			}
		case "mode":
			if seenMode {
				continue
			}
			seenMode = true
			switch m := Mode(value); m {
			case ModeEnforce, ModeTesting, ModeNone:
				p.Mode = m
			default:
				return nil, fmt.Errorf("%w: line %d: mode %q, want enforce, testing or none", ErrInvalidPolicy, i+1, value)
			}
		case "max_age":
			if seenMaxAge {
				continue
			}
			seenMaxAge = true
			age, err := parseMaxAge(value)
			if err != nil {
				return nil, fmt.Errorf("%w: line %d: %w", ErrInvalidPolicy, i+1, err)
			}
			p.MaxAge = age
		case "mx":
			pat, err := parseMXPattern(value)
			if err != nil {
				return nil, fmt.Errorf("%w: line %d: %w", ErrInvalidPolicy, i+1, err)
			}
			p.MX = append(p.MX, pat)
		}
	}
	var missing []string
	if !seenVersion {
		missing = append(missing, "version")
	}
	if !seenMode {
		missing = append(missing, "mode")
	}
	if !seenMaxAge {
		missing = append(missing, "max_age")
	}
	if seenMode && p.Mode != ModeNone && len(p.MX) == 0 {
		missing = append(missing, fmt.Sprintf("mx (required in mode %s)", p.Mode))
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: missing %s", ErrInvalidPolicy, strings.Join(missing, ", "))
	}
	return &p, nil
}

// parseMaxAge parses a max_age value: 1 to 10 digits (RFC 8461 §3.2),
// at most MaxMaxAge in seconds.
func parseMaxAge(value string) (time.Duration, error) {
	if value == "" || len(value) > 10 || strings.Trim(value, "0123456789") != "" {
		return 0, fmt.Errorf("max_age %q is not a number of seconds", value)
	}
	secs, err := strconv.ParseInt(value, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("max_age %q: %w", value, err)
	}
	age := time.Duration(secs) * time.Second
	if age > MaxMaxAge {
		return 0, fmt.Errorf("max_age %d exceeds the maximum of %d", secs, int64(MaxMaxAge/time.Second))
	}
	return age, nil
}

// parseMXPattern checks an mx value, ["*."] Domain (RFC 8461 §3.2), and
// returns it in lower case without a trailing dot. Labels may hold letters,
// digits, '-' and '_'; the underscore is outside RFC 5321's Domain but is
// accepted rather than turning the whole policy down over it.
func parseMXPattern(value string) (string, error) {
	pat := strings.TrimSuffix(strings.ToLower(value), ".")
	name := strings.TrimPrefix(pat, "*.")
	if name == "" || len(name) > 253 {
		return "", fmt.Errorf("mx %q is not a host name or *.domain", value)
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("mx %q: bad label length", value)
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("mx %q: character %q is not allowed (a '*' may only be the whole left-most label)", value, c)
			}
		}
	}
	return pat, nil
}
