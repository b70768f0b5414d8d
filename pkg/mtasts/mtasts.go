// Package mtasts discovers, fetches, caches and matches SMTP MTA Strict
// Transport Security policies (RFC 8461) for recipient domains.
//
// Cache.Get looks up a domain's _mta-sts TXT record, fetches the policy
// from https://mta-sts.<domain>/.well-known/mta-sts.txt when the record
// announces an id it has not cached, and keeps each policy for its max_age,
// so that a cached policy still applies while an attacker strips the TXT
// record or blocks the fetch. The policy host is resolved through the
// caller's Resolver and checked by the egress guard (package egress), and
// the checked address is the one dialed. Policy.Match tells whether an MX
// host name is one the policy allows.
//
// Applying a policy is the caller's job: in enforce mode, deliver only to
// matching MX hosts over STARTTLS with a PKIX-valid certificate for the MX
// name, deferring otherwise (RFC 8461 §4, §5); in testing mode, only report.
// Before failing a message permanently under an enforce policy, call Get
// again: it re-reads the TXT record, which is the check for a newer policy
// that RFC 8461 §5.1 requires.
//
// The package implements neither SMTP TLS Reporting (RFC 8460) nor DNSSEC
// or DANE (RFC 7672). A policy is refetched only when its id changes or it
// has expired, never in the background ahead of expiry as RFC 8461 §10.2
// recommends, so a policy can lapse if an attacker blocks discovery when
// it expires. The cache is in memory and per process.
package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/postflow/postflow/pkg/egress"
)

// Defaults and limits.
const (
	// DefaultPort is the HTTPS port of policy hosts (RFC 8461 §3.3).
	DefaultPort = 443
	// DefaultTimeout bounds one whole policy fetch, from resolving the
	// policy host to reading the body: the one minute RFC 8461 §3.3
	// suggests, which policy hosts are asked to answer within. A caller that
	// cannot wait that long bounds Get with its ctx instead.
	DefaultTimeout = time.Minute
	// MaxPolicySize caps the policy body: the 64 kilobytes RFC 8461 §3.3
	// suggests and asks policy hosts to stay within.
	MaxPolicySize = 64 << 10
	// FailureBackoff is how long a failed fetch is not retried for the same
	// domain and policy id: RFC 8461 §3.3 asks for five minutes or longer,
	// so that cascading failures do not pile onto the policy host.
	FailureBackoff = 5 * time.Minute
)

const (
	// wellKnownPath is the policy's path on the policy host (RFC 8461 §3.3).
	wellKnownPath = "/.well-known/mta-sts.txt"
	// connectTimeout bounds the TCP connect to one address of the policy
	// host, so that one black-holed address does not use up the whole fetch
	// timeout before the next is tried.
	connectTimeout = 10 * time.Second
	// cacheLimit bounds the number of cached policies and remembered
	// failures: recipient domains are chosen by senders. Beyond it expired
	// entries are swept and then arbitrary ones evicted down to 90%.
	cacheLimit = 100_000
)

// Sentinel errors, found with errors.Is in the errors Get returns.
var (
	// ErrFetch: the policy could not be fetched over HTTPS or did not parse.
	ErrFetch = errors.New("mtasts: policy fetch failed")
	// ErrNonPublic: every address of the policy host was refused by the
	// egress guard, so nothing was dialed. Get's error wraps ErrFetch too.
	ErrNonPublic = errors.New("mtasts: policy host resolves only to non-public addresses")
	// ErrBackoff: a fetch of this policy id failed recently and is not
	// tried again until FailureBackoff has passed; the error also wraps
	// that failure. Callers may log it more quietly than a fresh failure.
	ErrBackoff = errors.New("mtasts: backing off after a failed fetch")
)

// Resolver is the DNS that a Cache needs; *mx.Resolver satisfies it.
type Resolver interface {
	// TXT returns the TXT records of name, each record's character-strings
	// concatenated. NXDOMAIN and NODATA return nil, nil; any other failure
	// returns an error. Get calls TXT every time, so implementations are
	// expected to cache answers for their DNS TTL.
	TXT(ctx context.Context, name string) ([]string, error)
	// Addrs returns the addresses of host without filtering them: the Cache
	// applies the egress guard itself. It may return addresses together
	// with an error (a partial answer); the addresses are then used.
	Addrs(ctx context.Context, host string) ([]netip.Addr, error)
}

// Config configures a Cache. Every zero field but Resolver takes the default
// documented on it.
type Config struct {
	// Resolver answers the TXT and address queries. Required.
	Resolver Resolver
	// RootCAs verifies policy hosts' certificates; nil means the system
	// roots.
	RootCAs *x509.CertPool
	// Port is the HTTPS port of policy hosts; zero means DefaultPort. Only
	// tests have a reason to change it.
	Port int
	// AllowPrivate keeps policy host addresses that the egress guard
	// rejects (loopback, private, link-local, ...). Leave it false in
	// production: the domains are chosen by senders, and mta-sts.<domain>
	// can point at internal services.
	AllowPrivate bool
	// Timeout bounds one policy fetch; zero means DefaultTimeout.
	Timeout time.Duration
	// Now is the clock for policy expiry and fetch back-off; nil means
	// time.Now.
	Now func() time.Time
}

// Cache fetches and caches MTA-STS policies. It is safe for concurrent use.
// Create it with New.
type Cache struct {
	cfg    Config
	dialer net.Dialer

	mu       sync.Mutex
	policies map[string]*Policy    // by domain; expired entries removed on sight
	failures map[string]failure    // by domain: the last failed fetch
	flights  map[flightKey]*flight // fetches in progress
}

// failure is a failed fetch, remembered to back off (RFC 8461 §3.3).
type failure struct {
	id    string
	until time.Time
	err   error
}

// New returns a Cache for cfg. It returns an error, joining every problem
// found, when Resolver is nil or a field is negative or out of range.
func New(cfg Config) (*Cache, error) {
	var errs []error
	if cfg.Resolver == nil {
		errs = append(errs, errors.New("mtasts: Resolver is required"))
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		errs = append(errs, fmt.Errorf("mtasts: Port %d is out of range", cfg.Port))
	}
	if cfg.Timeout < 0 {
		errs = append(errs, fmt.Errorf("mtasts: Timeout %v is negative", cfg.Timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Cache{
		cfg:      cfg,
		dialer:   net.Dialer{Timeout: connectTimeout},
		policies: make(map[string]*Policy),
		failures: make(map[string]failure),
		flights:  make(map[flightKey]*flight),
	}, nil
}

// Get returns the MTA-STS policy that applies to mail for domain, following
// RFC 8461 §3.3 and §5.1. domain is matched case-insensitively and may end
// with a dot.
//
// Get looks up the TXT record _mta-sts.<domain> on every call, relying on
// the Resolver's cache to keep that cheap. A valid record (exactly one
// record starting "v=STSv1;", with an id; RFC 8461 §3.1) whose id equals
// that of the unexpired cached policy returns the cached policy. Any other
// valid record makes Get fetch the policy over HTTPS and cache it until its
// max_age has passed. The fetch follows no redirects, accepts only status
// 200 with media type text/plain and a body of at most MaxPolicySize, and
// verifies the certificate against RootCAs for the name mta-sts.<domain>.
// Concurrent Gets that need the same fetch share it; the fetch runs on none
// of their contexts, is bounded by Timeout, and is abandoned when every
// waiting caller's ctx has ended. After a failed fetch, Gets for the same
// domain and id within FailureBackoff return that failure again without
// fetching.
//
// The results are:
//   - p, nil: the policy to apply, whatever its Mode (enforce, testing or
//     none; what each means is the caller's decision). It is the freshly
//     fetched policy, or the unexpired cached one when the id is unchanged
//     or when the TXT record is missing or its lookup failed, or the fetch
//     failed: RFC 8461 §3.3 says a cached policy still applies then.
//   - nil, nil: the domain has no valid MTA-STS record and no policy is
//     cached; deliver as without MTA-STS.
//   - nil, err: discovery failed and no policy is cached: the TXT lookup
//     failed (err wraps the Resolver's error), the fetch failed (err wraps
//     ErrFetch, and ErrNonPublic or ErrInvalidPolicy where they apply), ctx
//     ended, or domain is malformed. RFC 8461 §3.3 says to deliver as
//     though the domain had no policy, so callers log err and do that.
//
// A policy and an error are never returned together.
func (c *Cache) Get(ctx context.Context, domain string) (*Policy, error) {
	d, err := normalizeDomain(domain)
	if err != nil {
		return nil, err
	}
	txts, err := c.cfg.Resolver.TXT(ctx, "_mta-sts."+d)
	if err != nil {
		if p := c.cached(d); p != nil {
			return p, nil
		}
		return nil, fmt.Errorf("mtasts: %s: TXT lookup: %w", d, err)
	}
	id := recordID(txts)
	cached := c.cached(d)
	if id == "" || cached != nil && cached.ID == id {
		return cached, nil
	}
	p, err := c.fetchShared(ctx, d, id)
	if err != nil {
		// Look again: a concurrent fetch for another id may have stored a
		// policy meanwhile.
		if p := c.cached(d); p != nil {
			return p, nil
		}
		return nil, err
	}
	return p, nil
}

// normalizeDomain lower-cases domain, strips one trailing dot and checks it
// is a DNS name short enough for mta-sts.<domain> and _mta-sts.<domain>.
func normalizeDomain(domain string) (string, error) {
	d := strings.TrimSuffix(strings.ToLower(domain), ".")
	if d == "" || len(d) > 253-len("_mta-sts.") {
		return "", fmt.Errorf("mtasts: invalid domain %q: length %d", domain, len(d))
	}
	for label := range strings.SplitSeq(d, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("mtasts: invalid domain %q: bad label length", domain)
		}
		for _, ch := range []byte(label) {
			if !('a' <= ch && ch <= 'z' || '0' <= ch && ch <= '9' || ch == '-' || ch == '_') {
				return "", fmt.Errorf("mtasts: invalid domain %q: character %q", domain, ch)
			}
		}
	}
	return d, nil
}

// recordID returns the id of the MTA-STS TXT record among txts, or "" when
// there is no usable record: records not starting with "v=STSv1" and ";"
// are ignored, and none, several or one that does not follow the grammar
// of RFC 8461 §3.1 all mean no record. Whitespace before the first ";" is
// accepted, as the grammar's delimiter allows it (erratum 6285). An id
// given twice takes its first value (RFC 8461 §3.2).
func recordID(txts []string) string {
	var rec string
	n := 0
	for _, t := range txts {
		rest, ok := strings.CutPrefix(t, "v=STSv1")
		if ok && strings.HasPrefix(strings.TrimLeft(rest, " \t"), ";") {
			rec = rest
			n++
		}
	}
	if n != 1 {
		return ""
	}
	fields := strings.Split(rec, ";")[1:]
	id := ""
	for i, f := range fields {
		f = strings.Trim(f, " \t")
		if f == "" {
			if i == len(fields)-1 {
				continue // a trailing delimiter
			}
			return ""
		}
		name, value, ok := strings.Cut(f, "=")
		if !ok || !validExtName(name) || !validExtValue(value) {
			return ""
		}
		if name == "id" && id == "" {
			if !validID(value) {
				return ""
			}
			id = value
		}
	}
	return id
}

// validExtName reports whether s is an sts-ext-name: a letter or digit,
// then up to 31 letters, digits, '_', '-' or '.'.
func validExtName(s string) bool {
	if s == "" || len(s) > 32 || !isAlnum(s[0]) {
		return false
	}
	for _, ch := range []byte(s[1:]) {
		if !isAlnum(ch) && ch != '_' && ch != '-' && ch != '.' {
			return false
		}
	}
	return true
}

// validExtValue reports whether s is an sts-ext-value: printable ASCII
// other than space, '=' and ';'.
func validExtValue(s string) bool {
	if s == "" {
		return false
	}
	for _, ch := range []byte(s) {
		if ch < 0x21 || ch > 0x7e || ch == '=' || ch == ';' {
			return false
		}
	}
	return true
}

// validID reports whether s is an sts-id value: 1 to 32 letters or digits.
func validID(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, ch := range []byte(s) {
		if !isAlnum(ch) {
			return false
		}
	}
	return true
}

func isAlnum(ch byte) bool {
	return 'a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z' || '0' <= ch && ch <= '9'
}

// cached returns the unexpired cached policy for d, or nil.
func (c *Cache) cached(d string) *Policy {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cachedLocked(d)
}

// cachedLocked is cached for callers holding c.mu.
func (c *Cache) cachedLocked(d string) *Policy {
	p := c.policies[d]
	if p == nil {
		return nil
	}
	if !c.cfg.Now().Before(p.Expires()) {
		delete(c.policies, d)
		return nil
	}
	return p
}

// flightKey identifies a fetch: the domain and the id it was announced
// under.
type flightKey struct {
	domain string
	id     string
}

// flight is one fetch shared by the Gets waiting for it. policy and err are
// written before done is closed; waiters is guarded by Cache.mu.
type flight struct {
	done    chan struct{}
	cancel  context.CancelFunc
	waiters int
	policy  *Policy
	err     error
}

// fetchShared returns the policy of d fetched under id, joining a fetch
// already in progress or starting one, unless a recent failure for the same
// id says to back off.
func (c *Cache) fetchShared(ctx context.Context, d, id string) (*Policy, error) {
	key := flightKey{domain: d, id: id}
	c.mu.Lock()
	if f, ok := c.failures[d]; ok && f.id == id && c.cfg.Now().Before(f.until) {
		c.mu.Unlock()
		return nil, fmt.Errorf("mtasts: %s: not fetching policy id %s again before %s: %w: %w",
			d, id, f.until.Format(time.RFC3339), ErrBackoff, f.err)
	}
	// A flight for key may have stored its policy and left since Get
	// looked at the cache; fetching again would repeat it.
	if p := c.cachedLocked(d); p != nil && p.ID == id {
		c.mu.Unlock()
		return p, nil
	}
	fl := c.flights[key]
	if fl == nil || fl.waiters == 0 {
		// No flight, or one that every caller has left and that is being
		// cancelled: start afresh.
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		fl = &flight{done: make(chan struct{}), cancel: cancel}
		c.flights[key] = fl
		go c.fly(fctx, key, fl)
	}
	fl.waiters++
	c.mu.Unlock()

	select {
	case <-fl.done:
		return fl.policy, fl.err
	case <-ctx.Done():
		c.mu.Lock()
		fl.waiters--
		if fl.waiters == 0 {
			fl.cancel()
		}
		c.mu.Unlock()
		return nil, fmt.Errorf("mtasts: %s: waiting for the policy fetch: %w", d, context.Cause(ctx))
	}
}

// fly runs the fetch for fl, caches the policy or remembers the failure,
// and releases the waiters. A fetch cancelled because every caller left is
// not a failure of the policy host and is not remembered.
func (c *Cache) fly(ctx context.Context, key flightKey, fl *flight) {
	defer fl.cancel()
	fctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	fl.policy, fl.err = c.fetch(fctx, key.domain, key.id)
	cancel()

	c.mu.Lock()
	switch {
	case fl.err == nil:
		c.storeLocked(key.domain, fl.policy)
		delete(c.failures, key.domain)
	case ctx.Err() == nil:
		c.failLocked(key.domain, failure{id: key.id, until: c.cfg.Now().Add(FailureBackoff), err: fl.err})
	}
	if c.flights[key] == fl {
		delete(c.flights, key)
	}
	c.mu.Unlock()
	close(fl.done)
}

// storeLocked caches p for d, making room first if the cache is full.
func (c *Cache) storeLocked(d string, p *Policy) {
	if len(c.policies) >= cacheLimit {
		now := c.cfg.Now()
		for k, q := range c.policies {
			if !now.Before(q.Expires()) {
				delete(c.policies, k)
			}
		}
		for k := range c.policies {
			if len(c.policies) < cacheLimit*9/10 {
				break
			}
			delete(c.policies, k)
		}
	}
	c.policies[d] = p
}

// failLocked remembers f for d, making room first if the map is full.
func (c *Cache) failLocked(d string, f failure) {
	if len(c.failures) >= cacheLimit {
		now := c.cfg.Now()
		for k, g := range c.failures {
			if !now.Before(g.until) {
				delete(c.failures, k)
			}
		}
		for k := range c.failures {
			if len(c.failures) < cacheLimit*9/10 {
				break
			}
			delete(c.failures, k)
		}
	}
	c.failures[d] = f
}

// fetch resolves mta-sts.<d>, applies the egress guard, and fetches and
// parses the policy from the checked addresses. Every error wraps ErrFetch.
func (c *Cache) fetch(ctx context.Context, d, id string) (*Policy, error) {
	host := "mta-sts." + d
	addrs, err := c.hostAddrs(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrFetch, d, err)
	}

	u := url.URL{Scheme: "https", Host: host, Path: wellKnownPath}
	if c.cfg.Port != DefaultPort {
		u.Host = net.JoinHostPort(host, strconv.Itoa(c.cfg.Port))
	}
	body, err := c.get(ctx, u.String(), host, addrs)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrFetch, u.String(), err)
	}
	p, err := Parse(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrFetch, u.String(), err)
	}
	p.ID = id
	p.Fetched = c.cfg.Now()
	return p, nil
}

// hostAddrs returns the addresses of host that may be dialed.
func (c *Cache) hostAddrs(ctx context.Context, host string) ([]netip.Addr, error) {
	addrs, err := c.cfg.Resolver.Addrs(ctx, host)
	if len(addrs) == 0 {
		if err != nil {
			return nil, fmt.Errorf("resolving %s: %w", host, err)
		}
		return nil, fmt.Errorf("%s has no A or AAAA records", host)
	}
	if c.cfg.AllowPrivate {
		return addrs, nil
	}
	var (
		allowed []netip.Addr
		dropped []string
	)
	for _, a := range addrs {
		if egress.Allowed(a) {
			allowed = append(allowed, a)
		} else {
			dropped = append(dropped, fmt.Sprintf("%s: %s", a, egress.Reason(a)))
		}
	}
	if len(allowed) == 0 {
		return nil, fmt.Errorf("%w: %s: %s; not dialed", ErrNonPublic, host, strings.Join(dropped, "; "))
	}
	return allowed, nil
}

// get performs the HTTPS GET of rawURL on one of addrs, with SNI and
// certificate verification for serverName, and returns the body.
func (c *Cache) get(ctx context.Context, rawURL, serverName string, addrs []netip.Addr) ([]byte, error) {
	transport := &http.Transport{
		// No Proxy: the connection must go to a checked address.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return c.dial(ctx, addrs)
		},
		TLSClientConfig: &tls.Config{
			ServerName: serverName,
			RootCAs:    c.cfg.RootCAs,
		},
		// One request per fetch, so no connection is worth keeping.
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: MaxPolicySize,
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{
		Transport: transport,
		// RFC 8461 §3.3: redirects MUST NOT be followed. The 3xx response
		// is returned and refused below for its status.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()

	if resp.StatusCode != http.StatusOK {
		if loc := resp.Header.Get("Location"); loc != "" {
			return nil, fmt.Errorf("status %s, redirect to %q not followed", resp.Status, loc)
		}
		return nil, fmt.Errorf("status %s, want 200", resp.Status)
	}
	ct := resp.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "text/plain" {
		return nil, fmt.Errorf("media type %q, want text/plain", ct)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("reading body: %w", err)
	}
	if len(body) > MaxPolicySize {
		return nil, fmt.Errorf("body exceeds %d bytes", MaxPolicySize)
	}
	return body, nil
}

// dial connects to the first of addrs that answers, on the policy port. It
// dials the addresses the egress guard checked and never resolves a name.
func (c *Cache) dial(ctx context.Context, addrs []netip.Addr) (net.Conn, error) {
	var errs []error
	for _, a := range addrs {
		conn, err := c.dialer.DialContext(ctx, "tcp", netip.AddrPortFrom(a, uint16(c.cfg.Port)).String())
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}
