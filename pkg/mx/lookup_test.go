package mx

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postflow/postflow/pkg/testenv"
)

// lookupZone serves TXT and address records for TXT and Addrs. Addresses
// are never dialed.
const lookupZone = `
$TTL 300
test.                  IN SOA ns.test. admin.test. 1 7200 900 1209600 60

_mta-sts.one.test.     IN TXT "v=STSv1; id=20240101"
_mta-sts.split.test.   IN TXT "v=STSv1; " "id=split" ";"
multi.test.            IN TXT "first"
multi.test.            IN TXT "second" " part"
empty.test.            IN TXT ""
_mta-sts.alias.test.   IN CNAME _mta-sts.one.test.
notxt.test.            IN A 11.0.0.1

both.test.             IN AAAA 2a00::1
both.test.             IN A 11.0.0.2
both.test.             IN A 11.0.0.3
v4.test.               IN A 11.0.0.4
v6.test.               IN AAAA 2a00::5
private.test.          IN A 127.0.0.1
private.test.          IN AAAA ::1
cname.test.            IN CNAME both.test.
mapped.test.           IN AAAA ::ffff:11.0.0.6

servfail.test.         IN TXT "never served"
half.test.             IN A 11.0.0.7
`

func TestTXT(t *testing.T) {
	s := testenv.StartDNS(t, lookupZone)
	s.SetRcode("servfail.test", dns.RcodeServerFailure)
	r := newResolver(t, s, Config{})

	tests := []struct {
		name    string
		input   string
		want    []string
		wantErr bool
		wantIs  error // sentinel expected in the error chain, if any
	}{
		{name: "one record", input: "_mta-sts.one.test", want: []string{"v=STSv1; id=20240101"}},
		{name: "upper case and trailing dot", input: "_MTA-STS.One.Test.", want: []string{"v=STSv1; id=20240101"}},
		{name: "strings of one record concatenated", input: "_mta-sts.split.test", want: []string{"v=STSv1; id=split;"}},
		{name: "several records", input: "multi.test", want: []string{"first", "second part"}},
		{name: "empty string", input: "empty.test", want: []string{""}},
		{name: "cname followed", input: "_mta-sts.alias.test", want: []string{"v=STSv1; id=20240101"}},
		{name: "nodata", input: "notxt.test", want: nil},
		{name: "nxdomain", input: "_mta-sts.missing.test", want: nil},
		{name: "servfail", input: "servfail.test", wantErr: true},
		{name: "malformed name", input: "bad..test", wantErr: true, wantIs: ErrInvalidDomain},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.TXT(t.Context(), tc.input)
			checkLookupErr(t, "TXT", tc.input, err, tc.wantErr, tc.wantIs)
			if !slices.Equal(got, tc.want) {
				t.Errorf("TXT(%q) = %q, want %q", tc.input, got, tc.want)
			}
		})
	}
}

func TestTXTCache(t *testing.T) {
	s := testenv.StartDNS(t, lookupZone)
	s.SetRcode("servfail.test", dns.RcodeServerFailure)
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := newResolver(t, s, Config{Now: clock.Now})

	// Each step advances the clock, looks name up and checks the
	// cumulative TXT query count for name.
	steps := []struct {
		name    string
		advance time.Duration
		input   string
		want    int
	}{
		{"first lookup queries", 0, "_mta-sts.one.test", 1},
		{"second lookup is cached", 299 * time.Second, "_mta-sts.one.test", 1},
		{"ttl passed", time.Second, "_mta-sts.one.test", 2},
		{"nxdomain", 0, "_mta-sts.missing.test", 1},
		{"nxdomain cached for the soa minimum", 59 * time.Second, "_mta-sts.missing.test", 1},
		{"negative ttl passed", time.Second, "_mta-sts.missing.test", 2},
		{"servfail", 0, "servfail.test", 1},
		{"servfail not cached", 0, "servfail.test", 2},
	}
	for _, st := range steps {
		clock.Advance(st.advance)
		_, _ = r.TXT(t.Context(), st.input)
		if got := s.QueriesFor(st.input, dns.TypeTXT); got != st.want {
			t.Errorf("%s: after TXT(%q), TXT queries = %d, want %d", st.name, st.input, got, st.want)
		}
	}
}

func TestAddrs(t *testing.T) {
	s := testenv.StartDNS(t, lookupZone)
	s.SetRcode("servfail.test", dns.RcodeServerFailure)
	r := newResolver(t, s, Config{})

	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range ss {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	tests := []struct {
		name    string
		input   string
		want    []netip.Addr
		wantErr bool
		wantIs  error // sentinel expected in the error chain, if any
	}{
		{name: "ipv4 before ipv6", input: "both.test", want: addrs("11.0.0.2", "11.0.0.3", "2a00::1")},
		{name: "upper case and trailing dot", input: "BOTH.test.", want: addrs("11.0.0.2", "11.0.0.3", "2a00::1")},
		{name: "a only", input: "v4.test", want: addrs("11.0.0.4")},
		{name: "aaaa only", input: "v6.test", want: addrs("2a00::5")},
		{name: "private addresses are not filtered", input: "private.test", want: addrs("127.0.0.1", "::1")},
		{name: "cname followed", input: "cname.test", want: addrs("11.0.0.2", "11.0.0.3", "2a00::1")},
		{name: "mapped ipv4 unmapped", input: "mapped.test", want: addrs("11.0.0.6")},
		{name: "no address records", input: "multi.test", want: nil},
		{name: "nxdomain", input: "missing.test", want: nil},
		{name: "servfail", input: "servfail.test", wantErr: true},
		{name: "malformed host", input: "[11.0.0.1]", wantErr: true, wantIs: ErrInvalidDomain},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Addrs(t.Context(), tc.input)
			checkLookupErr(t, "Addrs", tc.input, err, tc.wantErr, tc.wantIs)
			if !slices.Equal(got, tc.want) {
				t.Errorf("Addrs(%q) = %v, want %v", tc.input, got, tc.want)
			}
		})
	}
}

func TestAddrsPartialAnswer(t *testing.T) {
	s := testenv.StartDNS(t, lookupZone)
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := newResolver(t, s, Config{Attempts: 1, Timeout: 200 * time.Millisecond, Now: clock.Now})
	want := []netip.Addr{netip.MustParseAddr("11.0.0.7")}
	if got, err := r.Addrs(t.Context(), "half.test"); err != nil || !slices.Equal(got, want) {
		t.Fatalf("Addrs(half.test) = %v, %v; want %v, nil", got, err, want)
	}
	// The A answer stays cached for its 300 s TTL while the AAAA NODATA
	// expires after the SOA minimum (60 s); with the server now silent, the
	// AAAA query times out.
	clock.Advance(60 * time.Second)
	s.SetDrop("half.test", true)
	got, err := r.Addrs(t.Context(), "half.test")
	if err == nil || !slices.Equal(got, want) {
		t.Errorf("Addrs(half.test) with AAAA timing out = %v, %v; want %v and an error", got, err, want)
	}
}

// checkLookupErr fails unless err is non-nil exactly when wantErr is set
// and, if wantIs is not nil, wraps wantIs.
func checkLookupErr(t *testing.T, fn, input string, err error, wantErr bool, wantIs error) {
	t.Helper()
	switch {
	case !wantErr && err != nil:
		t.Errorf("%s(%q) error = %v, want nil", fn, input, err)
	case wantErr && err == nil:
		t.Errorf("%s(%q) error = nil, want an error", fn, input)
	case wantIs != nil && !errors.Is(err, wantIs):
		t.Errorf("%s(%q) error = %v, want it to wrap %v", fn, input, err, wantIs)
	}
}
