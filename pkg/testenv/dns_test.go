package testenv

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const dnsTestZone = `
example.com.             IN MX  10 mx1.example.com.
example.com.             IN MX  20 mx2.example.com.
mx1.example.com.         IN AAAA 2001:db8::1
mx2.example.com.         IN CNAME mx1.example.com.
dangling.example.com.    IN CNAME nowhere.example.com.
loop1.example.com.       IN CNAME loop2.example.com.
loop2.example.com.       IN CNAME loop1.example.com.
a.b.deep.example.com.    IN A   192.0.2.9
example.com.        3600 IN SOA ns.example.com. admin.example.com. 1 7200 900 1209600 300
mx1.example.com.     120 IN A   192.0.2.1
$TTL 45
$ORIGIN other.test.
@                        IN A   198.51.100.1
www                   30 IN A   198.51.100.2
`

// dnsExchange sends one query to addr over network and fails the test on a
// transport error.
func dnsExchange(t *testing.T, network, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

// dnsRRStrings renders records with the header's TTL and class, sorted.
func dnsRRStrings(rrs []dns.RR) []string {
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, strings.Join(strings.Fields(rr.String()), " "))
	}
	slices.Sort(out)
	return out
}

func TestDNSServerAnswers(t *testing.T) {
	s := StartDNS(t, dnsTestZone)
	soa := "example.com. 300 IN SOA ns.example.com. admin.example.com. 1 7200 900 1209600 300"
	tests := []struct {
		name      string
		qname     string
		qtype     uint16
		rcode     int
		answer    []string
		authority []string
	}{
		{
			name: "a with explicit ttl", qname: "mx1.example.com", qtype: dns.TypeA,
			answer: []string{"mx1.example.com. 120 IN A 192.0.2.1"},
		},
		{
			name: "aaaa with default ttl", qname: "MX1.Example.COM.", qtype: dns.TypeAAAA,
			answer: []string{"mx1.example.com. 60 IN AAAA 2001:db8::1"},
		},
		{
			name: "mx rrset", qname: "example.com", qtype: dns.TypeMX,
			answer: []string{"example.com. 60 IN MX 10 mx1.example.com.", "example.com. 60 IN MX 20 mx2.example.com."},
		},
		{
			name: "nodata carries soa", qname: "example.com", qtype: dns.TypeA,
			authority: []string{soa},
		},
		{
			name: "nxdomain carries soa", qname: "missing.example.com", qtype: dns.TypeA,
			rcode: dns.RcodeNameError, authority: []string{soa},
		},
		{
			name: "nxdomain outside any zone", qname: "nope.invalid", qtype: dns.TypeMX,
			rcode: dns.RcodeNameError,
		},
		{
			name: "empty non-terminal is nodata", qname: "b.deep.example.com", qtype: dns.TypeA,
			authority: []string{soa},
		},
		{
			name: "cname chased", qname: "mx2.example.com", qtype: dns.TypeA,
			answer: []string{"mx1.example.com. 120 IN A 192.0.2.1", "mx2.example.com. 60 IN CNAME mx1.example.com."},
		},
		{
			name: "cname itself", qname: "mx2.example.com", qtype: dns.TypeCNAME,
			answer: []string{"mx2.example.com. 60 IN CNAME mx1.example.com."},
		},
		{
			name: "cname to missing name", qname: "dangling.example.com", qtype: dns.TypeA,
			rcode:     dns.RcodeNameError,
			answer:    []string{"dangling.example.com. 60 IN CNAME nowhere.example.com."},
			authority: []string{soa},
		},
		{
			name: "cname loop", qname: "loop1.example.com", qtype: dns.TypeA,
			rcode: dns.RcodeServerFailure,
		},
		{
			name: "origin apex", qname: "other.test", qtype: dns.TypeA,
			answer: []string{"other.test. 45 IN A 198.51.100.1"},
		},
		{
			name: "origin relative name", qname: "www.other.test", qtype: dns.TypeA,
			answer: []string{"www.other.test. 30 IN A 198.51.100.2"},
		},
	}
	for _, tc := range tests {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(tc.name+"/"+network, func(t *testing.T) {
				t.Parallel()
				r := dnsExchange(t, network, s.Addr(), tc.qname, tc.qtype)
				q := fmt.Sprintf("%s %s", tc.qname, dns.TypeToString[tc.qtype])
				if r.Rcode != tc.rcode {
					t.Errorf("query %s: rcode = %s, want %s", q, dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
				}
				if !r.Authoritative {
					t.Errorf("query %s: AA bit not set", q)
				}
				if got, want := dnsRRStrings(r.Answer), dnsNormalize(tc.answer); !slices.Equal(got, want) {
					t.Errorf("query %s: answer =\n%s\nwant\n%s", q, strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
				if got, want := dnsRRStrings(r.Ns), tc.authority; !slices.Equal(got, dnsNormalize(want)) {
					t.Errorf("query %s: authority = %q, want %q", q, got, want)
				}
			})
		}
	}
}

// dnsNormalize sorts and collapses whitespace in rendered records.
func dnsNormalize(in []string) []string {
	out := make([]string, 0, len(in))
	for _, s := range in {
		out = append(out, strings.Join(strings.Fields(s), " "))
	}
	slices.Sort(out)
	return out
}

func TestDNSServerCountsAndOverrides(t *testing.T) {
	s := StartDNS(t, dnsTestZone)

	if r := dnsExchange(t, "udp", s.Addr(), "mx1.example.com", dns.TypeA); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("query mx1.example.com A: rcode = %s, want NOERROR", dns.RcodeToString[r.Rcode])
	}
	dnsExchange(t, "tcp", s.Addr(), "mx1.example.com", dns.TypeA)
	dnsExchange(t, "udp", s.Addr(), "mx1.example.com", dns.TypeAAAA)
	if got, want := s.QueriesFor("MX1.example.com.", dns.TypeA), 2; got != want {
		t.Errorf("QueriesFor(mx1.example.com, A) = %d, want %d", got, want)
	}
	if got, want := s.QueriesFor("mx1.example.com", dns.TypeAAAA), 1; got != want {
		t.Errorf("QueriesFor(mx1.example.com, AAAA) = %d, want %d", got, want)
	}
	if got, want := s.Queries(), 3; got != want {
		t.Errorf("Queries() = %d, want %d", got, want)
	}

	s.SetRcode("mx1.example.com", dns.RcodeServerFailure)
	if r := dnsExchange(t, "udp", s.Addr(), "mx1.example.com", dns.TypeA); r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
		t.Errorf("after SetRcode(SERVFAIL): rcode = %s with %d answers, want SERVFAIL with 0", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	s.SetRcode("mx1.example.com", dns.RcodeSuccess)
	if r := dnsExchange(t, "udp", s.Addr(), "mx1.example.com", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("after SetRcode(NOERROR): rcode = %s with %d answers, want NOERROR with 1", dns.RcodeToString[r.Rcode], len(r.Answer))
	}

	s.SetDrop("mx1.example.com", true)
	for _, network := range []string{"udp", "tcp"} {
		m := new(dns.Msg)
		m.SetQuestion("mx1.example.com.", dns.TypeA)
		c := &dns.Client{Net: network, Timeout: 200 * time.Millisecond}
		_, _, err := c.Exchange(m, s.Addr())
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("dropped query over %s: err = %v, want a timeout", network, err)
		}
	}
	if got, want := s.QueriesFor("mx1.example.com", dns.TypeA), 6; got != want {
		t.Errorf("QueriesFor(mx1.example.com, A) after drops = %d, want %d (dropped queries count)", got, want)
	}
	s.SetDrop("mx1.example.com", false)
	if r := dnsExchange(t, "udp", s.Addr(), "mx1.example.com", dns.TypeA); len(r.Answer) != 1 {
		t.Errorf("after SetDrop(false): %d answers, want 1", len(r.Answer))
	}

	s.Update("mx1.example.com. 30 IN A 203.0.113.5\n")
	r := dnsExchange(t, "udp", s.Addr(), "mx1.example.com", dns.TypeA)
	if got, want := dnsRRStrings(r.Answer), []string{"mx1.example.com. 30 IN A 203.0.113.5"}; !slices.Equal(got, want) {
		t.Errorf("after Update: answer = %q, want %q", got, want)
	}
	if r := dnsExchange(t, "udp", s.Addr(), "other.test", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("after Update: other.test A rcode = %s, want NXDOMAIN (old records gone)", dns.RcodeToString[r.Rcode])
	}
}

func TestDNSServerTruncatesUDP(t *testing.T) {
	var zone strings.Builder
	for i := range 60 {
		fmt.Fprintf(&zone, "big.test. IN MX %d mail-host-with-a-long-name-%02d.big.test.\n", i, i)
	}
	s := StartDNS(t, zone.String())

	udp := dnsExchange(t, "udp", s.Addr(), "big.test", dns.TypeMX)
	if !udp.Truncated || len(udp.Answer) >= 60 {
		t.Errorf("UDP query without EDNS0: TC = %v with %d answers, want TC set and fewer than 60", udp.Truncated, len(udp.Answer))
	}
	tcp := dnsExchange(t, "tcp", s.Addr(), "big.test", dns.TypeMX)
	if tcp.Truncated || len(tcp.Answer) != 60 {
		t.Errorf("TCP query: TC = %v with %d answers, want TC clear and 60", tcp.Truncated, len(tcp.Answer))
	}

	m := new(dns.Msg)
	m.SetQuestion("big.test.", dns.TypeMX)
	m.SetEdns0(8192, false)
	r, _, err := (&dns.Client{Net: "udp", Timeout: 5 * time.Second}).Exchange(m, s.Addr())
	if err != nil {
		t.Fatalf("UDP query with EDNS0 8192: %v", err)
	}
	if r.Truncated || len(r.Answer) != 60 {
		t.Errorf("UDP query with EDNS0 8192: TC = %v with %d answers, want TC clear and 60", r.Truncated, len(r.Answer))
	}
}

func TestStartDNSBadZone(t *testing.T) {
	ft := &dnsFatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		StartDNS(ft, "example.com. IN MX not-a-number host.\n")
	}()
	<-done
	if !ft.failed {
		t.Fatalf("StartDNS with an unparsable zone did not fail the test")
	}
}

// dnsFatalRecorder records Fatalf instead of failing the real test; Fatalf
// ends the calling goroutine as testing.T does.
type dnsFatalRecorder struct {
	testing.TB
	failed bool
}

func (r *dnsFatalRecorder) Fatalf(format string, args ...any) {
	r.failed = true
	r.Logf("(expected) "+format, args...)
	runtime.Goexit()
}

func (r *dnsFatalRecorder) Helper() {}
