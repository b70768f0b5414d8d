package mx

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postflow/postflow/pkg/deliveryerr"
	"github.com/postflow/postflow/pkg/testenv"
)

// outcomeZone holds one domain per DNS outcome. Addresses are public unless
// a case is about the egress guard; they are never dialed.
const outcomeZone = `
$TTL 300
test.               IN SOA ns.test. admin.test. 1 7200 900 1209600 60

pref.test.          IN MX 20 b.pref.test.
pref.test.          IN MX 10 a.pref.test.
pref.test.          IN MX 30 c.pref.test.
a.pref.test.        IN A    11.0.0.1
a.pref.test.        IN AAAA 2a00::1
b.pref.test.        IN A    11.0.0.2
c.pref.test.        IN AAAA 2a00::3

alias.test.         IN CNAME pref.test.

aonly.test.         IN A    11.0.1.1
aaaaonly.test.      IN AAAA 2a00::101
noaddr-implicit.test. IN TXT "no address records at all"

nullmx.test.        IN MX 0 .
nullmx-mixed.test.  IN MX 0 .
nullmx-mixed.test.  IN MX 10 mx.nullmx-mixed.test.
mx.nullmx-mixed.test. IN A 11.0.2.1

noaddr.test.        IN MX 10 gone.noaddr.test.
noaddr.test.        IN MX 20 txtonly.noaddr.test.
noaddr.test.        IN A  11.0.3.1
txtonly.noaddr.test. IN TXT "no address"

partial.test.       IN MX 10 gone.partial.test.
partial.test.       IN MX 20 mx.partial.test.
mx.partial.test.    IN A  11.0.4.1

iptarget.test.      IN MX 10 11.0.5.1.

cnamed.test.        IN MX 10 mx.cnamed.test.
mx.cnamed.test.     IN CNAME real.cnamed.test.
real.cnamed.test.   IN A 11.0.6.1

private.test.       IN MX 10 mx.private.test.
mx.private.test.    IN A 127.0.0.1
mx.private.test.    IN AAAA ::ffff:10.0.0.1

mixedpriv.test.     IN MX 10 mx1.mixedpriv.test.
mixedpriv.test.     IN MX 20 mx2.mixedpriv.test.
mx1.mixedpriv.test. IN A 169.254.169.254
mx2.mixedpriv.test. IN A 11.0.7.2

dup.test.           IN MX 10 mx1.dup.test.
dup.test.           IN MX 20 mx2.dup.test.
dup.test.           IN MX 30 mx1.dup.test.
mx1.dup.test.       IN A 11.0.8.1
mx2.dup.test.       IN A 11.0.8.1
mx2.dup.test.       IN AAAA ::ffff:11.0.8.1

many.test.          IN MX 10 mx.many.test.
mx.many.test.       IN A 11.0.9.1
mx.many.test.       IN A 11.0.9.2
mx.many.test.       IN A 11.0.9.3
mx.many.test.       IN A 11.0.9.4
mx.many.test.       IN A 11.0.9.5
mx.many.test.       IN A 11.0.9.6
mx.many.test.       IN A 11.0.9.7

servfail.test.      IN MX 10 mx.servfail.test.
refused.test.       IN MX 10 mx.refused.test.
hostfail.test.      IN MX 10 mx.hostfail.test.
`

// target builds a Target for want lists.
func target(host, addrPort string, pref uint16) Target {
	return Target{Host: host, Addr: netip.MustParseAddrPort(addrPort), Preference: pref}
}

// wantErr describes an expected *deliveryerr.Error.
type wantErr struct {
	code     int
	enhanced string
	is       error // sentinel expected in the chain, if any
	message  string
}

// checkErr fails unless err is a *deliveryerr.Error matching want.
func checkErr(t *testing.T, input string, err error, want wantErr) {
	t.Helper()
	var de *deliveryerr.Error
	if !errors.As(err, &de) {
		t.Fatalf("Lookup(%q) error = %v (%T), want a *deliveryerr.Error %d %s", input, err, err, want.code, want.enhanced)
	}
	if de.Code != want.code || de.Enhanced != want.enhanced {
		t.Errorf("Lookup(%q) error = %q, want %d %s", input, de.Error(), want.code, want.enhanced)
	}
	if wantTemp := want.code/100 == 4; de.Temporary() != wantTemp {
		t.Errorf("Lookup(%q) error %q: Temporary() = %v, want %v", input, de.Error(), de.Temporary(), wantTemp)
	}
	if want.is != nil && !errors.Is(err, want.is) {
		t.Errorf("Lookup(%q) error = %q, want it to wrap %v", input, de.Error(), want.is)
	}
	if !strings.Contains(de.Message, want.message) {
		t.Errorf("Lookup(%q) message = %q, want it to contain %q", input, de.Message, want.message)
	}
}

// newResolver returns a Resolver using s, with cfg's other fields.
func newResolver(t *testing.T, s *testenv.DNSServer, cfg Config) *Resolver {
	t.Helper()
	cfg.Server = s.Addr()
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v) = %v", cfg, err)
	}
	return r
}

func TestLookupOutcomes(t *testing.T) {
	s := testenv.StartDNS(t, outcomeZone)
	s.SetRcode("servfail.test", dns.RcodeServerFailure)
	s.SetRcode("refused.test", dns.RcodeRefused)
	s.SetRcode("mx.hostfail.test", dns.RcodeServerFailure)

	tests := []struct {
		name   string
		domain string
		cfg    Config
		want   []Target
		err    *wantErr
	}{
		{
			name: "mx preference order, ipv4 before ipv6 per host", domain: "pref.test",
			want: []Target{
				target("a.pref.test", "11.0.0.1:25", 10),
				target("a.pref.test", "[2a00::1]:25", 10),
				target("b.pref.test", "11.0.0.2:25", 20),
				target("c.pref.test", "[2a00::3]:25", 30),
			},
		},
		{
			name: "upper case and trailing dot", domain: "PREF.Test.",
			want: []Target{
				target("a.pref.test", "11.0.0.1:25", 10),
				target("a.pref.test", "[2a00::1]:25", 10),
				target("b.pref.test", "11.0.0.2:25", 20),
				target("c.pref.test", "[2a00::3]:25", 30),
			},
		},
		{
			name: "custom port", domain: "aonly.test", cfg: Config{Port: 2525},
			want: []Target{target("aonly.test", "11.0.1.1:2525", 0)},
		},
		{
			name: "domain is a cname", domain: "alias.test", cfg: Config{MaxAddresses: 1},
			want: []Target{target("a.pref.test", "11.0.0.1:25", 10)},
		},
		{
			name: "implicit mx, a only", domain: "aonly.test",
			want: []Target{target("aonly.test", "11.0.1.1:25", 0)},
		},
		{
			name: "implicit mx, aaaa only", domain: "aaaaonly.test",
			want: []Target{target("aaaaonly.test", "[2a00::101]:25", 0)},
		},
		{
			name: "implicit mx without addresses", domain: "noaddr-implicit.test",
			err: &wantErr{550, "5.4.4", ErrNoAddresses, "no MX or address records"},
		},
		{
			name: "null mx", domain: "nullmx.test",
			err: &wantErr{556, "5.1.10", ErrNullMX, "null MX"},
		},
		{
			name: "null mx next to real mx is skipped", domain: "nullmx-mixed.test",
			want: []Target{target("mx.nullmx-mixed.test", "11.0.2.1:25", 10)},
		},
		{
			name: "nxdomain", domain: "missing.test",
			err: &wantErr{550, "5.1.2", ErrNXDomain, "domain does not exist"},
		},
		{
			name: "servfail", domain: "servfail.test",
			err: &wantErr{451, "4.4.3", nil, "DNS lookup"},
		},
		{
			name: "refused", domain: "refused.test",
			err: &wantErr{451, "4.4.3", nil, "DNS lookup"},
		},
		{
			name: "mx host lookup servfail", domain: "hostfail.test",
			err: &wantErr{451, "4.4.3", nil, "DNS lookup of the MX hosts"},
		},
		{
			name: "mx hosts without addresses, no fallback to domain a", domain: "noaddr.test",
			err: &wantErr{550, "5.4.4", ErrNoAddresses, "no addresses for MX hosts"},
		},
		{
			name: "mx host without addresses is skipped", domain: "partial.test",
			want: []Target{target("mx.partial.test", "11.0.4.1:25", 20)},
		},
		{
			name: "mx target written as an ip address is a name", domain: "iptarget.test",
			err: &wantErr{550, "5.4.4", ErrNoAddresses, "no addresses for MX hosts"},
		},
		{
			name: "cname'd mx target", domain: "cnamed.test",
			want: []Target{target("mx.cnamed.test", "11.0.6.1:25", 10)},
		},
		{
			name: "private addresses dropped", domain: "private.test",
			err: &wantErr{550, "5.4.4", ErrNonPublic, "non-public addresses"},
		},
		{
			name: "private addresses kept when allowed", domain: "private.test", cfg: Config{AllowPrivate: true},
			want: []Target{
				target("mx.private.test", "127.0.0.1:25", 10),
				target("mx.private.test", "10.0.0.1:25", 10),
			},
		},
		{
			name: "private host dropped, public host kept", domain: "mixedpriv.test",
			want: []Target{target("mx2.mixedpriv.test", "11.0.7.2:25", 20)},
		},
		{
			name: "duplicate hosts and addresses removed", domain: "dup.test",
			want: []Target{target("mx1.dup.test", "11.0.8.1:25", 10)},
		},
		{
			name: "default address cap", domain: "many.test",
			want: []Target{
				target("mx.many.test", "11.0.9.1:25", 10),
				target("mx.many.test", "11.0.9.2:25", 10),
				target("mx.many.test", "11.0.9.3:25", 10),
				target("mx.many.test", "11.0.9.4:25", 10),
				target("mx.many.test", "11.0.9.5:25", 10),
			},
		},
		{
			name: "configured address cap", domain: "many.test", cfg: Config{MaxAddresses: 2},
			want: []Target{
				target("mx.many.test", "11.0.9.1:25", 10),
				target("mx.many.test", "11.0.9.2:25", 10),
			},
		},
		{name: "port", domain: "pref.test:25", err: &wantErr{501, "5.1.3", ErrInvalidDomain, "invalid recipient domain"}},
		{name: "address literal", domain: "[11.0.0.1]", err: &wantErr{501, "5.1.3", ErrInvalidDomain, "invalid recipient domain"}},
		{name: "ipv6 literal", domain: "[IPv6:2a00::1]", err: &wantErr{501, "5.1.3", ErrInvalidDomain, "invalid recipient domain"}},
		{name: "empty", domain: "", err: &wantErr{501, "5.1.3", ErrInvalidDomain, "invalid recipient domain"}},
		{name: "empty label", domain: "pref..test", err: &wantErr{501, "5.1.3", ErrInvalidDomain, "invalid recipient domain"}},
		{name: "space", domain: "pref .test", err: &wantErr{501, "5.1.3", ErrInvalidDomain, "invalid recipient domain"}},
		{name: "crlf", domain: "pref.test\r\nRCPT", err: &wantErr{501, "5.1.3", ErrInvalidDomain, "invalid recipient domain"}},
		{name: "long label", domain: strings.Repeat("a", 64) + ".test", err: &wantErr{501, "5.1.3", ErrInvalidDomain, "invalid recipient domain"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newResolver(t, s, tc.cfg)
			got, err := r.Lookup(t.Context(), tc.domain)
			if tc.err != nil {
				if err == nil {
					t.Fatalf("Lookup(%q) = %v, want error %d %s", tc.domain, got, tc.err.code, tc.err.enhanced)
				}
				checkErr(t, tc.domain, err, *tc.err)
				return
			}
			if err != nil {
				t.Fatalf("Lookup(%q) error = %v, want %v", tc.domain, err, tc.want)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Lookup(%q) =\n  %v\nwant\n  %v", tc.domain, got, tc.want)
			}
		})
	}
}

func TestLookupNullMXMakesNoAddressQueries(t *testing.T) {
	s := testenv.StartDNS(t, "nullmx.test. IN MX 0 .\nnullmx.test. IN A 11.0.0.1\n")
	r := newResolver(t, s, Config{})
	_, err := r.Lookup(t.Context(), "nullmx.test")
	checkErr(t, "nullmx.test", err, wantErr{556, "5.1.10", ErrNullMX, "null MX"})
	if got := s.QueriesFor("nullmx.test", dns.TypeMX); got != 1 {
		t.Errorf("QueriesFor(nullmx.test, MX) = %d, want 1", got)
	}
	if got := s.Queries(); got != 1 {
		t.Errorf("Queries() = %d after a null MX lookup, want 1 (the MX query, no address queries)", got)
	}
}

func TestLookupEqualPreferenceShuffle(t *testing.T) {
	// MX TTL 0: every lookup queries and shuffles afresh.
	s := testenv.StartDNS(t, `
eq.test.     0 IN MX 10 mx1.eq.test.
eq.test.     0 IN MX 10 mx2.eq.test.
eq.test.     0 IN MX 20 backup.eq.test.
mx1.eq.test.    300 IN A 11.0.0.1
mx2.eq.test.    300 IN A 11.0.0.2
backup.eq.test. 300 IN A 11.0.0.3
`)
	r := newResolver(t, s, Config{})
	const trials = 200
	first := map[string]int{}
	for range trials {
		got, err := r.Lookup(t.Context(), "eq.test")
		if err != nil {
			t.Fatalf("Lookup(eq.test) error = %v", err)
		}
		if len(got) != 3 || got[2].Host != "backup.eq.test" {
			t.Fatalf("Lookup(eq.test) = %v, want 3 targets with backup.eq.test last", got)
		}
		first[got[0].Host]++
	}
	for _, host := range []string{"mx1.eq.test", "mx2.eq.test"} {
		if first[host] < trials*30/100 {
			t.Errorf("%s went first in %d of %d lookups, want ≥ 30%% (counts %v)", host, first[host], trials, first)
		}
	}
	if got := s.QueriesFor("eq.test", dns.TypeMX); got != trials {
		t.Errorf("QueriesFor(eq.test, MX) = %d, want %d (TTL 0 is not cached)", got, trials)
	}
}

func TestLookupTimeout(t *testing.T) {
	s := testenv.StartDNS(t, "slow.test. IN MX 10 mx.slow.test.\n")
	s.SetDrop("slow.test", true)

	tests := []struct {
		name     string
		timeout  time.Duration
		attempts int
		ctxLimit time.Duration // 0: no deadline on ctx
		queries  int
		budget   time.Duration
	}{
		{name: "retries then gives up", timeout: 100 * time.Millisecond, attempts: 2, queries: 2, budget: 200 * time.Millisecond},
		{name: "single attempt", timeout: 100 * time.Millisecond, attempts: 1, queries: 1, budget: 100 * time.Millisecond},
		{name: "ctx deadline wins", timeout: 5 * time.Second, attempts: 2, ctxLimit: 100 * time.Millisecond, queries: 1, budget: 100 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := s.QueriesFor("slow.test", dns.TypeMX)
			r := newResolver(t, s, Config{Timeout: tc.timeout, Attempts: tc.attempts})
			ctx := t.Context()
			if tc.ctxLimit > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.ctxLimit)
				defer cancel()
			}
			start := time.Now()
			_, err := r.Lookup(ctx, "slow.test")
			elapsed := time.Since(start)
			checkErr(t, "slow.test", err, wantErr{451, "4.4.3", nil, "DNS lookup"})
			// Generous slack for loaded CI machines; the point is that the
			// 5 s default or an unbounded wait is not hit.
			if elapsed < tc.budget*9/10 || elapsed > tc.budget+time.Second {
				t.Errorf("Lookup(slow.test) with Timeout %v × %d, ctx limit %v took %v, want about %v",
					tc.timeout, tc.attempts, tc.ctxLimit, elapsed, tc.budget)
			}
			if got := s.QueriesFor("slow.test", dns.TypeMX) - before; got != tc.queries {
				t.Errorf("MX queries sent = %d, want %d", got, tc.queries)
			}
		})
	}
}

func TestLookupCanceledContext(t *testing.T) {
	s := testenv.StartDNS(t, "pref.test. IN MX 10 mx.pref.test.\nmx.pref.test. IN A 11.0.0.1\n")
	r := newResolver(t, s, Config{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := r.Lookup(ctx, "pref.test")
	checkErr(t, "pref.test", err, wantErr{451, "4.4.3", context.Canceled, "DNS lookup"})
}

func TestLookupStaticRoutes(t *testing.T) {
	s := testenv.StartDNS(t, `
relay.test.     IN A    10.0.0.5
relay.test.     IN AAAA fd00::5
routed.test.    IN MX 10 mx.routed.test.
mx.routed.test. IN A 11.0.0.1
`)
	routes := map[string][]string{
		"SIM.Test.":   {"127.0.0.1:2525", "[::1]:2526", "127.0.0.1:2525"},
		"routed.test": {"relay.test:587", "192.168.1.1:25"},
		"gone.test":   {"nowhere.test:25"},
	}
	tests := []struct {
		domain  string
		want    []Target
		err     *wantErr
		queries int
	}{
		{
			domain: "sim.test",
			want: []Target{
				target("127.0.0.1", "127.0.0.1:2525", 0),
				target("::1", "[::1]:2526", 1),
			},
			queries: 0,
		},
		{
			domain: "ROUTED.test",
			want: []Target{
				target("relay.test", "10.0.0.5:587", 0),
				target("relay.test", "[fd00::5]:587", 0),
				target("192.168.1.1", "192.168.1.1:25", 1),
			},
			queries: 2, // relay.test A and AAAA; no MX query
		},
		{
			domain:  "gone.test",
			err:     &wantErr{451, "4.4.4", nil, "static route"},
			queries: 1, // nowhere.test A is NXDOMAIN, so no AAAA query
		},
	}
	for _, tc := range tests {
		t.Run(tc.domain, func(t *testing.T) {
			before := s.Queries()
			r := newResolver(t, s, Config{Routes: routes})
			got, err := r.Lookup(t.Context(), tc.domain)
			if tc.err != nil {
				checkErr(t, tc.domain, err, *tc.err)
			} else if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("Lookup(%q) = %v, %v; want %v, nil", tc.domain, got, err, tc.want)
			}
			if q := s.Queries() - before; q != tc.queries {
				t.Errorf("Lookup(%q) sent %d DNS queries, want %d", tc.domain, q, tc.queries)
			}
		})
	}
}

// TestStatic resolves single operator-chosen destinations (smarthosts) the
// way static routes are resolved: no egress guard, temporary failures.
func TestStatic(t *testing.T) {
	s := testenv.StartDNS(t, `
relay.test. IN A    10.0.0.5
relay.test. IN AAAA fd00::5
`)
	r := newResolver(t, s, Config{})
	got, err := r.Static(t.Context(), "relay.test:587")
	want := []Target{target("relay.test", "10.0.0.5:587", 0), target("relay.test", "[fd00::5]:587", 0)}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("Static(relay.test:587) = %v, %v; want %v", got, err, want)
	}
	if got, err := r.Static(t.Context(), "127.0.0.1:465"); err != nil || !slices.Equal(got, []Target{target("127.0.0.1", "127.0.0.1:465", 0)}) {
		t.Errorf("Static(127.0.0.1:465) = %v, %v; want the loopback literal, unguarded", got, err)
	}
	_, err = r.Static(t.Context(), "nowhere.test:25")
	checkErr(t, "nowhere.test", err, wantErr{451, "4.4.4", nil, "static route"})
	_, err = r.Static(t.Context(), "no-port")
	checkErr(t, "no-port", err, wantErr{451, "4.4.4", nil, "invalid static destination"})
}

// fakeClock is a settable clock for cache expiry.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestLookupCache(t *testing.T) {
	s := testenv.StartDNS(t, `
test.            3600 IN SOA ns.test. admin.test. 1 7200 900 1209600 30
cached.test.      300 IN MX 10 mx.cached.test.
mx.cached.test.   100 IN A 11.0.0.1
implicit.test.    200 IN A 11.0.0.2
`)
	s.SetRcode("flaky.test", dns.RcodeServerFailure)
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := newResolver(t, s, Config{Now: clock.Now})

	type counts struct{ mx, a, aaaa int }
	queries := func(domain, host string) counts {
		return counts{s.QueriesFor(domain, dns.TypeMX), s.QueriesFor(host, dns.TypeA), s.QueriesFor(host, dns.TypeAAAA)}
	}
	// Each step advances the clock, looks domain up and checks the
	// cumulative query counts.
	steps := []struct {
		name    string
		advance time.Duration
		domain  string
		host    string
		want    counts
	}{
		{"first lookup queries all", 0, "cached.test", "mx.cached.test", counts{1, 1, 1}},
		{"second lookup is cached", 0, "cached.test", "mx.cached.test", counts{1, 1, 1}},
		// AAAA is NODATA, cached for min(SOA TTL, MINIMUM) = 30 s.
		{"nodata expires first", 30 * time.Second, "cached.test", "mx.cached.test", counts{1, 1, 2}},
		{"just before the a ttl, nodata expired again", 69 * time.Second, "cached.test", "mx.cached.test", counts{1, 1, 3}},
		{"a ttl passed", time.Second, "cached.test", "mx.cached.test", counts{1, 2, 3}},
		{"mx ttl passed", 200 * time.Second, "cached.test", "mx.cached.test", counts{2, 3, 4}},
		{"implicit: nodata mx and a", 0, "implicit.test", "implicit.test", counts{1, 1, 1}},
		{"implicit cached", 29 * time.Second, "implicit.test", "implicit.test", counts{1, 1, 1}},
		{"implicit negative ttl passed", time.Second, "implicit.test", "implicit.test", counts{2, 1, 2}},
		{"nxdomain", 0, "missing.test", "missing.test", counts{1, 0, 0}},
		{"nxdomain cached", 29 * time.Second, "missing.test", "missing.test", counts{1, 0, 0}},
		{"nxdomain negative ttl passed", time.Second, "missing.test", "missing.test", counts{2, 0, 0}},
		{"servfail", 0, "flaky.test", "flaky.test", counts{1, 0, 0}},
		{"servfail not cached", 0, "flaky.test", "flaky.test", counts{2, 0, 0}},
	}
	for _, st := range steps {
		clock.Advance(st.advance)
		_, err := r.Lookup(t.Context(), st.domain)
		if err != nil && st.domain == "cached.test" {
			t.Fatalf("%s: Lookup(%q) error = %v", st.name, st.domain, err)
		}
		if got := queries(st.domain, st.host); got != st.want {
			t.Errorf("%s: after Lookup(%q), queries (MX, A, AAAA) = %+v, want %+v", st.name, st.domain, got, st.want)
		}
	}
}

func TestLookupSharesConcurrentQueries(t *testing.T) {
	s := testenv.StartDNS(t, "shared.test. IN MX 10 mx.shared.test.\nmx.shared.test. IN A 11.0.0.1\n")
	r := newResolver(t, s, Config{})
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Go(func() {
			if _, err := r.Lookup(t.Context(), "shared.test"); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent Lookup(shared.test) error = %v", err)
	}
	if got := s.QueriesFor("shared.test", dns.TypeMX); got != 1 {
		t.Errorf("QueriesFor(shared.test, MX) = %d after 50 concurrent lookups, want 1", got)
	}
}

func TestLookupTruncatedAnswerRetriesOverTCP(t *testing.T) {
	var zone strings.Builder
	for i := range 60 {
		fmt.Fprintf(&zone, "big.test. IN MX %d mail-exchanger-with-a-long-name-%02d.big.test.\n", i, i)
		fmt.Fprintf(&zone, "mail-exchanger-with-a-long-name-%02d.big.test. IN A 11.0.0.%d\n", i, i+1)
	}
	s := testenv.StartDNS(t, zone.String())

	r := newResolver(t, s, Config{})
	got, err := r.Lookup(t.Context(), "big.test")
	if err != nil || len(got) != DefaultMaxAddresses || got[0].Addr != netip.MustParseAddrPort("11.0.0.1:25") {
		t.Errorf("Lookup(big.test) = %v, %v; want %d targets starting at 11.0.0.1:25", got, err, DefaultMaxAddresses)
	}
	if q := s.QueriesFor("big.test", dns.TypeMX); q != 2 {
		t.Errorf("QueriesFor(big.test, MX) = %d, want 2 (UDP truncated, then TCP)", q)
	}

	// With one attempt there is no try left for TCP.
	r = newResolver(t, s, Config{Attempts: 1})
	_, err = r.Lookup(t.Context(), "big.test")
	checkErr(t, "big.test", err, wantErr{451, "4.4.3", nil, "DNS lookup"})
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; "" means success
	}{
		{name: "zero value", cfg: Config{}},
		{name: "explicit server", cfg: Config{Server: "192.0.2.53:53"}},
		{name: "server without port", cfg: Config{Server: "192.0.2.53"}, wantErr: "Server"},
		{name: "negative timeout", cfg: Config{Timeout: -time.Second}, wantErr: "Timeout"},
		{name: "negative attempts", cfg: Config{Attempts: -1}, wantErr: "Attempts"},
		{name: "negative max addresses", cfg: Config{MaxAddresses: -1}, wantErr: "MaxAddresses"},
		{name: "port out of range", cfg: Config{Port: 70000}, wantErr: "Port"},
		{name: "route without port", cfg: Config{Routes: map[string][]string{"a.test": {"127.0.0.1"}}}, wantErr: "route"},
		{name: "route port zero", cfg: Config{Routes: map[string][]string{"a.test": {"127.0.0.1:0"}}}, wantErr: "invalid port"},
		{name: "route bad host", cfg: Config{Routes: map[string][]string{"a.test": {"bad host:25"}}}, wantErr: "route"},
		{name: "route bad domain", cfg: Config{Routes: map[string][]string{"a.test:25": {"127.0.0.1:25"}}}, wantErr: "route"},
		{name: "route empty", cfg: Config{Routes: map[string][]string{"a.test": nil}}, wantErr: "no destinations"},
		{name: "all problems joined", cfg: Config{Attempts: -1, Port: -1}, wantErr: "Attempts"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := New(tc.cfg)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("New(%+v) error = %v, want nil", tc.cfg, err)
				}
				if r.cfg.Timeout != DefaultTimeout || r.cfg.Attempts != DefaultAttempts ||
					r.cfg.MaxAddresses != DefaultMaxAddresses || r.cfg.Port != DefaultPort || r.server == "" {
					t.Errorf("New(%+v) effective config = %+v (server %q), want defaults filled in", tc.cfg, r.cfg, r.server)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("New(%+v) error = %v, want one containing %q", tc.cfg, err, tc.wantErr)
			}
		})
	}
	if _, err := New(Config{Attempts: -1, Port: -1}); err == nil || !strings.Contains(err.Error(), "Port") {
		t.Errorf("New with two bad fields: error = %v, want both reported", err)
	}
}
