// Package mx turns a recipient domain into the ordered list of SMTP delivery
// targets (MX host name, IP address and port) that the delivery client tries
// in turn, following RFC 5321 §5.1: MX records sorted by preference with ties
// shuffled, the implicit MX (the domain's own A/AAAA records) when there is
// no MX, and the null MX of RFC 7505, which means the domain accepts no mail.
//
// It talks to one recursive DNS server with its own stub resolver
// (github.com/miekg/dns), so that NXDOMAIN, NODATA, SERVFAIL and timeouts are
// told apart, and caches answers for their TTL. Every resolved address goes
// through the egress guard (package egress) unless the operator allows
// private destinations, and every failure is a *deliveryerr.Error whose class
// says whether to retry. Dialing, and trying the targets in order, belong to
// the caller.
package mx

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/postflow/postflow/pkg/deliveryerr"
	"github.com/postflow/postflow/pkg/egress"
)

// Defaults for Config fields left at zero.
const (
	// DefaultTimeout bounds one DNS query attempt. Five seconds is the
	// resolv.conf(5) default per-try timeout.
	DefaultTimeout = 5 * time.Second
	// DefaultAttempts is the number of tries per query, as resolv.conf(5)'s
	// "attempts" (which defaults to 2).
	DefaultAttempts = 2
	// DefaultMaxAddresses caps the targets returned, as Postfix's
	// smtp_mx_address_limit (5) does: enough to get past a few dead hosts
	// without turning one delivery into a scan of a large MX set.
	DefaultMaxAddresses = 5
	// DefaultPort is the SMTP relay port (RFC 5321 §4.5.4.2).
	DefaultPort = 25
)

const (
	// fallbackServer is used when resolv.conf is missing or lists no
	// nameserver, as the glibc stub resolver does.
	fallbackServer = "127.0.0.1:53"
	// ednsUDPSize is the EDNS0 buffer size recommended by DNS Flag Day 2020:
	// it avoids IP fragmentation, and larger answers come back over TCP.
	ednsUDPSize = 1232
	// negativeTTLDefault applies to NXDOMAIN and NODATA answers without an
	// SOA to take the negative TTL from (RFC 2308 §5).
	negativeTTLDefault = 60 * time.Second
	// negativeTTLMax caps negative caching so that a domain that has just
	// been fixed is not refused for long (Unbound's cache-max-negative-ttl).
	negativeTTLMax = time.Hour
	// positiveTTLMax caps positive caching (Unbound's cache-max-ttl).
	positiveTTLMax = 24 * time.Hour
	// maxCNAMEChain bounds CNAME chasing in an answer section.
	maxCNAMEChain = 8
	// cacheLimit bounds the cache; beyond it expired entries are swept and,
	// if that is not enough, arbitrary entries evicted.
	cacheLimit = 100_000
)

// Sentinel causes, found with errors.Is in the Err of the *deliveryerr.Error
// that Lookup returns.
var (
	// ErrInvalidDomain: the domain is syntactically unusable, or is an
	// address literal or carries a port (501 5.1.3).
	ErrInvalidDomain = errors.New("mx: invalid recipient domain")
	// ErrNXDomain: the domain does not exist (550 5.1.2).
	ErrNXDomain = errors.New("mx: domain does not exist (NXDOMAIN)")
	// ErrNullMX: the domain publishes a null MX, RFC 7505 (556 5.1.10).
	ErrNullMX = errors.New("mx: domain publishes a null MX")
	// ErrNoAddresses: no MX host (or, for the implicit MX, the domain
	// itself) has an A or AAAA record (550 5.4.4).
	ErrNoAddresses = errors.New("mx: no addresses for MX hosts")
	// ErrNonPublic: the MX hosts have addresses, but the egress guard
	// dropped all of them (550 5.4.4).
	ErrNonPublic = errors.New("mx: MX hosts resolve only to non-public addresses")
)

// Config configures a Resolver. The zero value is usable: every zero field
// takes the default documented on it.
type Config struct {
	// Server is the recursive DNS server, as host:port. Empty means the
	// first nameserver in /etc/resolv.conf, or 127.0.0.1:53 when there is
	// none.
	Server string
	// Timeout bounds one query attempt; zero means DefaultTimeout.
	Timeout time.Duration
	// Attempts is the number of tries per query, counting the retry over
	// TCP after a truncated UDP answer; zero means DefaultAttempts.
	Attempts int
	// MaxAddresses caps the number of targets Lookup returns; zero means
	// DefaultMaxAddresses.
	MaxAddresses int
	// Port is the destination port of MX targets; zero means DefaultPort.
	Port int
	// AllowPrivate keeps addresses the egress guard rejects (loopback,
	// private, link-local, ...). Leave it false in production: recipient
	// domains are chosen by senders, and their MX records can point at
	// internal services.
	AllowPrivate bool
	// Routes are static routes, from a recipient domain (matched exactly,
	// case-insensitively) to an ordered list of "host:port" destinations,
	// where host is an IP literal or a name resolved with A/AAAA. They
	// replace the MX lookup and are exempt from the egress guard, because
	// the operator chose them (for example a mailbox simulator on
	// 127.0.0.1).
	Routes map[string][]string
	// Now is the clock for cache expiry; nil means time.Now.
	Now func() time.Time
}

// Target is one place to deliver to.
type Target struct {
	// Host is the MX host name, lower case and without the trailing dot,
	// for TLS SNI, certificate and MTA-STS checks, and status reports. For
	// the implicit MX it is the recipient domain; for a static route it is
	// the route's host as configured (possibly an IP literal).
	Host string
	// Addr is the checked address to dial. Dial it rather than Host, so that
	// a second resolution cannot bypass the egress guard.
	Addr netip.AddrPort
	// Preference is the MX preference, 0 for the implicit MX; for a static
	// route it is the destination's position in the configured list.
	Preference uint16
}

// Resolver looks up delivery targets. It is safe for concurrent use. Create
// it with New.
type Resolver struct {
	cfg    Config
	server string
	routes map[string][]route
	udp    *dns.Client
	tcp    *dns.Client

	mu      sync.Mutex
	cache   map[cacheKey]cacheEntry
	flights map[cacheKey]*flight
}

// route is one parsed static route destination.
type route struct {
	host string
	addr netip.Addr // valid when host is an IP literal
	port uint16
}

// New returns a Resolver for cfg. It returns an error, joining every problem
// found, when a field is negative or out of range, Server is not host:port,
// or a static route is malformed.
func New(cfg Config) (*Resolver, error) {
	var errs []error
	if cfg.Timeout < 0 {
		errs = append(errs, fmt.Errorf("mx: Timeout %v is negative", cfg.Timeout))
	}
	if cfg.Attempts < 0 {
		errs = append(errs, fmt.Errorf("mx: Attempts %d is negative", cfg.Attempts))
	}
	if cfg.MaxAddresses < 0 {
		errs = append(errs, fmt.Errorf("mx: MaxAddresses %d is negative", cfg.MaxAddresses))
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		errs = append(errs, fmt.Errorf("mx: Port %d is out of range", cfg.Port))
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Attempts == 0 {
		cfg.Attempts = DefaultAttempts
	}
	if cfg.MaxAddresses == 0 {
		cfg.MaxAddresses = DefaultMaxAddresses
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}

	server := cfg.Server
	if server == "" {
		server = systemServer()
	}
	if _, _, err := net.SplitHostPort(server); err != nil {
		errs = append(errs, fmt.Errorf("mx: Server %q: %w", server, err))
	}

	routes := make(map[string][]route, len(cfg.Routes))
	for domain, dests := range cfg.Routes {
		key, err := normalizeDomain(domain)
		if err != nil {
			errs = append(errs, fmt.Errorf("mx: route for %q: %w", domain, err))
			continue
		}
		if len(dests) == 0 {
			errs = append(errs, fmt.Errorf("mx: route for %q has no destinations", domain))
		}
		for _, dest := range dests {
			rt, err := parseRoute(dest)
			if err != nil {
				errs = append(errs, fmt.Errorf("mx: route for %q: %w", domain, err))
				continue
			}
			routes[key] = append(routes[key], rt)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	return &Resolver{
		cfg:     cfg,
		server:  server,
		routes:  routes,
		udp:     &dns.Client{Net: "udp", Timeout: cfg.Timeout},
		tcp:     &dns.Client{Net: "tcp", Timeout: cfg.Timeout},
		cache:   make(map[cacheKey]cacheEntry),
		flights: make(map[cacheKey]*flight),
	}, nil
}

// systemServer returns the first nameserver of /etc/resolv.conf as
// host:port, or fallbackServer.
func systemServer() string {
	conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil || len(conf.Servers) == 0 {
		return fallbackServer
	}
	return net.JoinHostPort(conf.Servers[0], conf.Port)
}

// parseRoute parses one "host:port" static route destination.
func parseRoute(dest string) (route, error) {
	host, portStr, err := net.SplitHostPort(dest)
	if err != nil {
		return route{}, fmt.Errorf("destination %q: %w", dest, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return route{}, fmt.Errorf("destination %q: invalid port %q", dest, portStr)
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		return route{host: host, addr: addr.Unmap(), port: uint16(port)}, nil
	}
	name, err := normalizeDomain(host)
	if err != nil {
		return route{}, fmt.Errorf("destination %q: %w", dest, err)
	}
	return route{host: name, port: uint16(port)}, nil
}

// Lookup returns the delivery targets for domain, best first: MX hosts by
// ascending preference, equal preferences in random order, and for each host
// its IPv4 addresses and then its IPv6 addresses. Addresses are unique and
// at most MaxAddresses are returned. The domain is matched case-insensitively
// and may end with a dot. Static routes, when one matches, are returned
// without any MX lookup.
//
// Lookup makes up to 1 + 2×(MX hosts) queries, each bounded by Attempts ×
// Timeout; bound the whole with ctx. An MX host name is always resolved as a
// name, even if it looks like an IP address (RFC 5321 §5.1 requires a domain
// name there); such a host normally has no addresses and is skipped.
//
// The error, when not nil, is a *deliveryerr.Error:
//   - 501 5.1.3 (ErrInvalidDomain): the domain is malformed, an address
//     literal or carries a port.
//   - 550 5.1.2 (ErrNXDomain): the domain does not exist.
//   - 556 5.1.10 (ErrNullMX): the domain has a null MX (RFC 7505); no
//     address is looked up.
//   - 550 5.4.4 (ErrNoAddresses): no MX host has an address. When MX
//     records exist, the domain's own A/AAAA records are not used.
//   - 550 5.4.4 (ErrNonPublic): every address was dropped by the egress
//     guard, so nothing will be dialed.
//   - 451 4.4.3: SERVFAIL, REFUSED, timeout, network failure or ctx ended;
//     the cause is in Err. A host lookup failing this way makes the result
//     temporary only when no other host produced a target.
//   - 451 4.4.4: a static route yields no address (operator error, kept
//     temporary so that fixing the route releases the mail).
func (r *Resolver) Lookup(ctx context.Context, domain string) ([]Target, error) {
	d, err := normalizeDomain(domain)
	if err != nil {
		return nil, deliveryerr.Permanent(501, "5.1.3", "invalid recipient domain", fmt.Errorf("%q: %w", domain, err))
	}
	if routes, ok := r.routes[d]; ok {
		return r.routeTargets(ctx, d, routes)
	}
	hosts, implicit, err := r.mxHosts(ctx, d)
	if err != nil {
		return nil, err
	}
	return r.mxTargets(ctx, d, hosts, implicit)
}

// normalizeDomain lower-cases domain, strips one trailing dot and checks it
// is a plausible DNS name in A-label form (RFC 1035 §2.3.4 length limits;
// letters, digits, '-' and '_'). Internationalised names must be converted
// to A-labels (RFC 5890) by the caller.
func normalizeDomain(domain string) (string, error) {
	d := strings.TrimSuffix(strings.ToLower(domain), ".")
	if strings.ContainsAny(d, ":[") {
		return "", fmt.Errorf("%w: address literals and ports are not accepted", ErrInvalidDomain)
	}
	if d == "" || len(d) > 253 {
		return "", fmt.Errorf("%w: length %d", ErrInvalidDomain, len(d))
	}
	for label := range strings.SplitSeq(d, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("%w: bad label length in %q", ErrInvalidDomain, d)
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("%w: character %q in %q", ErrInvalidDomain, c, d)
			}
		}
	}
	return d, nil
}

// mxHost is one MX host name (no trailing dot) and its preference.
type mxHost struct {
	name string
	pref uint16
}

// mxHosts returns the MX hosts of d in delivery order, or the implicit MX
// (d itself, implicit true) when d has no MX records.
func (r *Resolver) mxHosts(ctx context.Context, d string) (hosts []mxHost, implicit bool, err error) {
	res, err := r.query(ctx, dns.Fqdn(d), dns.TypeMX)
	if err != nil {
		return nil, false, deliveryerr.Temporary(451, "4.4.3", "DNS lookup of the recipient domain failed", err)
	}
	if res.nxdomain {
		return nil, false, deliveryerr.Permanent(550, "5.1.2", "domain does not exist", fmt.Errorf("%w: %s", ErrNXDomain, d))
	}
	if len(res.rrs) == 0 {
		return []mxHost{{name: d, pref: 0}}, true, nil
	}

	for _, rr := range res.rrs {
		mx, ok := rr.(*dns.MX)
		if !ok {
			continue
		}
		name := strings.TrimSuffix(strings.ToLower(mx.Mx), ".")
		// RFC 7505 §3: "." is the null MX. Next to real MX records it is a
		// publishing error and can only be skipped.
		if name == "" {
			continue
		}
		hosts = append(hosts, mxHost{name: name, pref: mx.Preference})
	}
	if len(hosts) == 0 {
		return nil, false, deliveryerr.Permanent(556, "5.1.10", "recipient domain does not accept mail (null MX)", fmt.Errorf("%w: %s", ErrNullMX, d))
	}
	// RFC 5321 §5.1: equal preferences are tried in random order to spread
	// load; shuffle first, then a stable sort keeps the shuffle within ties.
	rand.Shuffle(len(hosts), func(i, j int) { hosts[i], hosts[j] = hosts[j], hosts[i] })
	slices.SortStableFunc(hosts, func(a, b mxHost) int { return int(a.pref) - int(b.pref) })
	seen := make(map[string]bool, len(hosts))
	hosts = slices.DeleteFunc(hosts, func(h mxHost) bool {
		dup := seen[h.name]
		seen[h.name] = true
		return dup
	})
	return hosts, false, nil
}

// mxTargets resolves hosts in order into at most MaxAddresses targets,
// applying the egress guard.
func (r *Resolver) mxTargets(ctx context.Context, d string, hosts []mxHost, implicit bool) ([]Target, error) {
	var (
		targets []Target
		seen    = make(map[netip.Addr]bool)
		dropped []string
		tempErr error
	)
	for _, h := range hosts {
		if len(targets) >= r.cfg.MaxAddresses {
			break
		}
		addrs, err := r.hostAddrs(ctx, h.name)
		if err != nil {
			if ctx.Err() != nil {
				return nil, deliveryerr.Temporary(451, "4.4.3", "DNS lookup of the MX hosts failed", err)
			}
			tempErr = cmp.Or(tempErr, err)
		}
		for _, a := range addrs {
			if !r.cfg.AllowPrivate && !egress.Allowed(a) {
				dropped = append(dropped, fmt.Sprintf("%s %s: %s", h.name, a, egress.Reason(a)))
				continue
			}
			if seen[a] {
				continue
			}
			seen[a] = true
			targets = append(targets, Target{Host: h.name, Addr: netip.AddrPortFrom(a, uint16(r.cfg.Port)), Preference: h.pref})
			if len(targets) >= r.cfg.MaxAddresses {
				break
			}
		}
	}
	switch {
	case len(targets) > 0:
		return targets, nil
	case tempErr != nil:
		return nil, deliveryerr.Temporary(451, "4.4.3", "DNS lookup of the MX hosts failed", tempErr)
	case len(dropped) > 0:
		return nil, deliveryerr.Permanent(550, "5.4.4", "MX hosts resolve only to non-public addresses; not dialed",
			fmt.Errorf("%w: %s: %s", ErrNonPublic, d, strings.Join(dropped, "; ")))
	case implicit:
		return nil, deliveryerr.Permanent(550, "5.4.4", "no MX or address records for domain", fmt.Errorf("%w: %s has no MX, A or AAAA records", ErrNoAddresses, d))
	default:
		return nil, deliveryerr.Permanent(550, "5.4.4", "no addresses for MX hosts", fmt.Errorf("%w: %s", ErrNoAddresses, d))
	}
}

// Static resolves one operator-chosen destination, "host:port" with host an
// IP literal or a name, as a static route is resolved: its A and AAAA
// addresses, at most MaxAddresses, exempt from the egress guard. Failures
// are temporary (4.4.3, 4.4.4): the fix is the operator's. A smarthost is
// resolved this way.
func (r *Resolver) Static(ctx context.Context, dest string) ([]Target, error) {
	rt, err := parseRoute(dest)
	if err != nil {
		return nil, deliveryerr.Temporary(451, "4.4.4", "invalid static destination", fmt.Errorf("mx: %w", err))
	}
	return r.routeTargets(ctx, dest, []route{rt})
}

// routeTargets resolves a static route without the egress guard.
func (r *Resolver) routeTargets(ctx context.Context, d string, routes []route) ([]Target, error) {
	var (
		targets []Target
		seen    = make(map[netip.AddrPort]bool)
		tempErr error
	)
	for i, rt := range routes {
		addrs := []netip.Addr{rt.addr}
		if !rt.addr.IsValid() {
			var err error
			addrs, err = r.hostAddrs(ctx, rt.host)
			if err != nil {
				if ctx.Err() != nil {
					return nil, deliveryerr.Temporary(451, "4.4.3", "DNS lookup of the static route failed", err)
				}
				tempErr = cmp.Or(tempErr, err)
			}
		}
		for _, a := range addrs {
			ap := netip.AddrPortFrom(a, rt.port)
			if seen[ap] {
				continue
			}
			seen[ap] = true
			targets = append(targets, Target{Host: rt.host, Addr: ap, Preference: uint16(min(i, 65535))})
			if len(targets) >= r.cfg.MaxAddresses {
				return targets, nil
			}
		}
	}
	switch {
	case len(targets) > 0:
		return targets, nil
	case tempErr != nil:
		return nil, deliveryerr.Temporary(451, "4.4.3", "DNS lookup of the static route failed", tempErr)
	default:
		return nil, deliveryerr.Temporary(451, "4.4.4", "static route has no addresses", fmt.Errorf("mx: static route for %s: no host has A or AAAA records", d))
	}
}

// hostAddrs returns host's IPv4 then IPv6 addresses. On a temporary failure
// of either query it returns what the other produced along with the error.
func (r *Resolver) hostAddrs(ctx context.Context, host string) ([]netip.Addr, error) {
	fqdn := dns.Fqdn(host)
	var addrs []netip.Addr
	res4, err4 := r.query(ctx, fqdn, dns.TypeA)
	if err4 == nil {
		if res4.nxdomain {
			// The name does not exist, so it has no AAAA either.
			return nil, nil
		}
		for _, rr := range res4.rrs {
			if rec, ok := rr.(*dns.A); ok {
				if a, ok := netip.AddrFromSlice(rec.A.To4()); ok {
					addrs = append(addrs, a)
				}
			}
		}
	} else if ctx.Err() != nil {
		return nil, err4
	}
	res6, err6 := r.query(ctx, fqdn, dns.TypeAAAA)
	if err6 == nil {
		for _, rr := range res6.rrs {
			if rec, ok := rr.(*dns.AAAA); ok {
				if a, ok := netip.AddrFromSlice(rec.AAAA.To16()); ok {
					// A mapped IPv4 address is an IPv4 destination:
					// unmapping lets it deduplicate against the A record.
					addrs = append(addrs, a.Unmap())
				}
			}
		}
	}
	return addrs, errors.Join(err4, err6)
}

// cacheKey identifies a query: a canonical FQDN and a type.
type cacheKey struct {
	name  string
	qtype uint16
}

// result is the usable content of an answer. rrs holds the records of the
// queried type at the end of any CNAME chain; nxdomain false with no rrs is
// NODATA.
type result struct {
	nxdomain bool
	rrs      []dns.RR
	ttl      time.Duration
}

type cacheEntry struct {
	res     result
	expires time.Time
}

// query answers (name, qtype) from the cache or the server. Concurrent
// queries for the same key share one exchange. The exchange does not run on
// any one caller's ctx, so that a caller giving up does not fail the others;
// it is cancelled when the last waiting caller has gone, and is bounded by
// Attempts × Timeout in any case. Errors are temporary failures and are not
// cached.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) (result, error) {
	key := cacheKey{name: dns.CanonicalName(name), qtype: qtype}
	if res, ok := r.cached(key); ok {
		return res, nil
	}

	r.mu.Lock()
	// Look again under the lock: a flight for key may have stored its
	// answer and left between the check above and now, and starting a
	// second exchange would repeat the query it just made.
	if res, ok := r.cachedLocked(key); ok {
		r.mu.Unlock()
		return res, nil
	}
	c := r.flights[key]
	if c == nil || c.waiters == 0 {
		// No flight, or one whose callers all left and which is being
		// cancelled: start afresh.
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c = &flight{done: make(chan struct{}), cancel: cancel}
		r.flights[key] = c
		go r.fly(fctx, key, c)
	}
	c.waiters++
	r.mu.Unlock()

	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		r.mu.Lock()
		c.waiters--
		if c.waiters == 0 {
			c.cancel()
		}
		r.mu.Unlock()
		return result{}, fmt.Errorf("mx: query %s %s: %w", name, dns.TypeToString[qtype], context.Cause(ctx))
	}
}

// flight is one exchange shared by the callers waiting for it. res and err
// are written before done is closed; waiters is guarded by Resolver.mu.
type flight struct {
	done    chan struct{}
	cancel  context.CancelFunc
	waiters int
	res     result
	err     error
}

// fly runs the exchange for c, caches a successful result and releases the
// waiters.
func (r *Resolver) fly(ctx context.Context, key cacheKey, c *flight) {
	defer c.cancel()
	c.res, c.err = r.exchange(ctx, key.name, key.qtype)
	if c.err == nil {
		r.store(key, c.res)
	}
	r.mu.Lock()
	if r.flights[key] == c {
		delete(r.flights, key)
	}
	r.mu.Unlock()
	close(c.done)
}

// rcodeError is an answer with an rcode other than NOERROR and NXDOMAIN.
type rcodeError struct {
	name  string
	qtype uint16
	rcode int
}

func (e *rcodeError) Error() string {
	return fmt.Sprintf("mx: query %s %s: server answered %s", e.name, dns.TypeToString[e.qtype], dns.RcodeToString[e.rcode])
}

// exchange sends the query, retrying on errors and switching to TCP after a
// truncated answer, for at most Attempts tries of Timeout each.
func (r *Resolver) exchange(ctx context.Context, name string, qtype uint16) (result, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.SetEdns0(ednsUDPSize, false)

	client := r.udp
	var errs []error
	for range r.cfg.Attempts {
		m.Id = dns.Id()
		actx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
		resp, _, err := client.ExchangeContext(actx, m, r.server)
		cancel()
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("mx: query %s %s over %s to %s: %w", name, dns.TypeToString[qtype], client.Net, r.server, err))
		case resp.Truncated && client == r.udp:
			errs = append(errs, fmt.Errorf("mx: query %s %s: truncated UDP answer", name, dns.TypeToString[qtype]))
			client = r.tcp
		case len(resp.Question) != 1 || !strings.EqualFold(resp.Question[0].Name, name) || resp.Question[0].Qtype != qtype:
			errs = append(errs, fmt.Errorf("mx: query %s %s: answer is for another question", name, dns.TypeToString[qtype]))
		default:
			return parseAnswer(name, qtype, resp)
		}
	}
	return result{}, errors.Join(errs...)
}

// parseAnswer extracts the records of qtype for name from resp, following
// CNAMEs in the answer section, and the TTL to cache the result for.
func parseAnswer(name string, qtype uint16, resp *dns.Msg) (result, error) {
	if resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
		return result{}, &rcodeError{name: name, qtype: qtype, rcode: resp.Rcode}
	}
	ttl := positiveTTLMax
	owner := name
	for range maxCNAMEChain {
		if qtype == dns.TypeCNAME {
			break
		}
		var next *dns.CNAME
		for _, rr := range resp.Answer {
			if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, owner) {
				next = c
				break
			}
		}
		if next == nil {
			break
		}
		ttl = min(ttl, time.Duration(next.Hdr.Ttl)*time.Second)
		owner = next.Target
	}
	var rrs []dns.RR
	for _, rr := range resp.Answer {
		if rr.Header().Rrtype == qtype && strings.EqualFold(rr.Header().Name, owner) {
			rrs = append(rrs, rr)
			ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
		}
	}
	if len(rrs) > 0 {
		return result{rrs: rrs, ttl: ttl}, nil
	}
	return result{nxdomain: resp.Rcode == dns.RcodeNameError, ttl: negativeTTL(resp)}, nil
}

// negativeTTL is the caching time of an NXDOMAIN or NODATA answer: the
// smaller of the SOA's TTL and MINIMUM fields (RFC 2308 §5), capped.
func negativeTTL(resp *dns.Msg) time.Duration {
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(time.Duration(min(soa.Hdr.Ttl, soa.Minttl))*time.Second, negativeTTLMax)
		}
	}
	return negativeTTLDefault
}

// cached returns the unexpired cache entry for key.
func (r *Resolver) cached(key cacheKey) (result, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cachedLocked(key)
}

// cachedLocked is cached for callers holding r.mu.
func (r *Resolver) cachedLocked(key cacheKey) (result, bool) {
	e, ok := r.cache[key]
	if !ok {
		return result{}, false
	}
	if !r.cfg.Now().Before(e.expires) {
		delete(r.cache, key)
		return result{}, false
	}
	return e.res, true
}

// store caches res for its TTL; a zero TTL is not cached.
func (r *Resolver) store(key cacheKey, res result) {
	if res.ttl <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.cfg.Now()
	if len(r.cache) >= cacheLimit {
		for k, e := range r.cache {
			if !now.Before(e.expires) {
				delete(r.cache, k)
			}
		}
		for k := range r.cache {
			if len(r.cache) < cacheLimit {
				break
			}
			delete(r.cache, k)
		}
	}
	r.cache[key] = cacheEntry{res: res, expires: now.Add(res.ttl)}
}
