package testenv

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// dnsDefaultTTL is the TTL of records before any $TTL or explicit TTL, so
// that tests exercising caches get a finite, short lifetime.
const dnsDefaultTTL = 60

// dnsMaxChain bounds CNAME chasing so that a looping zone terminates.
const dnsMaxChain = 8

// DNSServer is an authoritative DNS server for a test zone, listening on
// UDP and TCP on the same 127.0.0.1 port. Its methods are safe for concurrent
// use, including while queries are being served.
type DNSServer struct {
	t    testing.TB
	addr string

	mu      sync.Mutex
	records map[string][]dns.RR // owner (canonical FQDN) -> records
	queries int
	perKey  map[dnsQueryKey]int
	rcodes  map[string]int
	drops   map[string]bool
}

type dnsQueryKey struct {
	name  string
	qtype uint16
}

// StartDNS starts a DNSServer serving the records in zone, which is RFC 1035
// master-file text. Names are relative to the root unless the text sets
// $ORIGIN. A record without a TTL takes the $TTL in force or else, as in
// RFC 1035 §5.1, the TTL of the previous record; before either, 60 seconds.
// The server stops when
// the test ends. StartDNS fails the test if the zone does not parse or the
// server cannot listen.
func StartDNS(t testing.TB, zone string) *DNSServer {
	t.Helper()
	s := &DNSServer{
		t:       t,
		records: dnsParseZone(t, zone),
		perKey:  make(map[dnsQueryKey]int),
		rcodes:  make(map[string]int),
		drops:   make(map[string]bool),
	}
	pc, ln := dnsListen(t)
	s.addr = pc.LocalAddr().String()

	handler := dns.HandlerFunc(s.serve)
	servers := []*dns.Server{
		{PacketConn: pc, Handler: handler},
		{Listener: ln, Handler: handler},
	}
	var (
		wg      sync.WaitGroup
		running []*dns.Server
	)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, srv := range running {
			if err := srv.ShutdownContext(ctx); err != nil {
				t.Errorf("testenv: stopping DNS server on %s: %v", s.addr, err)
			}
		}
		wg.Wait()
	})
	for _, srv := range servers {
		started := make(chan struct{})
		failed := make(chan error, 1)
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.ActivateAndServe(); err != nil {
				failed <- err
			}
		}()
		select {
		case <-started:
			running = append(running, srv)
		case err := <-failed:
			t.Fatalf("testenv: DNS server on %s: %v", s.addr, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("testenv: DNS server on %s did not start within 10s", s.addr)
		}
	}
	return s
}

// dnsListen opens a UDP socket on a kernel-chosen loopback port and a TCP
// listener on the same port, retrying when the TCP port is already taken.
func dnsListen(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testenv: DNS server: listen udp: %v", err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		lastErr = err
		_ = pc.Close()
	}
	t.Fatalf("testenv: DNS server: no port free for both UDP and TCP: %v", lastErr)
	return nil, nil
}

// dnsParseZone parses master-file text into records keyed by owner name.
func dnsParseZone(t testing.TB, zone string) map[string][]dns.RR {
	t.Helper()
	zp := dns.NewZoneParser(strings.NewReader(zone), ".", "testzone")
	zp.SetDefaultTTL(dnsDefaultTTL)
	records := make(map[string][]dns.RR)
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		name := dns.CanonicalName(rr.Header().Name)
		rr.Header().Name = name
		records[name] = append(records[name], rr)
	}
	if err := zp.Err(); err != nil {
		t.Fatalf("testenv: DNS zone does not parse: %v", err)
	}
	return records
}

// Addr returns the host:port the server listens on, for UDP and TCP alike.
func (s *DNSServer) Addr() string { return s.addr }

// Queries returns the number of queries received so far over UDP and TCP,
// including those answered with a forced rcode or dropped.
func (s *DNSServer) Queries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries
}

// QueriesFor returns the number of queries received so far for name (case
// and trailing dot do not matter) and qtype (dns.TypeA, ...), counted as
// Queries counts them.
func (s *DNSServer) QueriesFor(name string, qtype uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.perKey[dnsQueryKey{dns.CanonicalName(name), qtype}]
}

// SetRcode makes every query for name, of any type, get rcode (for example
// dns.RcodeServerFailure) and no records. dns.RcodeSuccess restores normal
// answers.
func (s *DNSServer) SetRcode(name string, rcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name = dns.CanonicalName(name)
	if rcode == dns.RcodeSuccess {
		delete(s.rcodes, name)
		return
	}
	s.rcodes[name] = rcode
}

// SetDrop makes the server read and count but never answer queries for name
// when drop is true, so that clients time out; false restores answers.
func (s *DNSServer) SetDrop(name string, drop bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name = dns.CanonicalName(name)
	if drop {
		s.drops[name] = true
		return
	}
	delete(s.drops, name)
}

// Update replaces all records with those in zone, parsed as StartDNS parses
// it. Query counters, rcode overrides and drops are kept. Like StartDNS it
// fails the test on a parse error, so call it from the test's goroutine.
func (s *DNSServer) Update(zone string) {
	s.t.Helper()
	records := dnsParseZone(s.t, zone)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records = records
}

// serve answers one query.
func (s *DNSServer) serve(w dns.ResponseWriter, req *dns.Msg) {
	resp, ok := s.answer(req)
	if !ok {
		return
	}
	if _, isUDP := w.RemoteAddr().(*net.UDPAddr); isUDP {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = max(int(opt.UDPSize()), dns.MinMsgSize)
		}
		resp.Truncate(size)
	}
	if err := w.WriteMsg(resp); err != nil && !errors.Is(err, net.ErrClosed) {
		s.t.Logf("testenv: DNS server on %s: write reply: %v", s.addr, err)
	}
}

// answer builds the reply to req; ok is false when the query is dropped.
func (s *DNSServer) answer(req *dns.Msg) (resp *dns.Msg, ok bool) {
	resp = new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(4096, false)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.queries++
	if len(req.Question) != 1 {
		resp.Rcode = dns.RcodeFormatError
		return resp, true
	}
	q := req.Question[0]
	name := dns.CanonicalName(q.Name)
	s.perKey[dnsQueryKey{name, q.Qtype}]++
	if s.drops[name] {
		return nil, false
	}
	if rcode, forced := s.rcodes[name]; forced {
		resp.Rcode = rcode
		return resp, true
	}

	// Chase CNAMEs within the zone the way an authoritative server does:
	// the chain goes into the answer section, followed by the records of
	// the final name, and the rcode describes the final name.
	for range dnsMaxChain {
		rrs := s.records[name]
		if len(rrs) == 0 && !s.dnsHasDescendant(name) {
			resp.Rcode = dns.RcodeNameError
			s.dnsAddSOA(resp, name)
			return resp, true
		}
		var cname *dns.CNAME
		found := false
		for _, rr := range rrs {
			if q.Qtype == dns.TypeANY || rr.Header().Rrtype == q.Qtype {
				resp.Answer = append(resp.Answer, dns.Copy(rr))
				found = true
			}
			if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
		}
		if found || cname == nil {
			if !found {
				s.dnsAddSOA(resp, name)
			}
			return resp, true
		}
		resp.Answer = append(resp.Answer, dns.Copy(cname))
		name = dns.CanonicalName(cname.Target)
	}
	// The chain is longer than dnsMaxChain: a real server would stop too.
	resp.Answer = nil
	resp.Rcode = dns.RcodeServerFailure
	return resp, true
}

// dnsHasDescendant reports whether some owner name lies below name, which
// makes name an empty non-terminal: it exists, with no records (RFC 8020).
func (s *DNSServer) dnsHasDescendant(name string) bool {
	suffix := "." + name
	if name == "." {
		suffix = "."
	}
	for owner := range s.records {
		if owner != name && strings.HasSuffix(owner, suffix) {
			return true
		}
	}
	return false
}

// dnsAddSOA puts the SOA of the closest enclosing zone, if the zone text has
// one, into the authority section of a negative answer, with its TTL lowered
// to the SOA minimum as RFC 2308 §3 requires.
func (s *DNSServer) dnsAddSOA(resp *dns.Msg, name string) {
	for {
		for _, rr := range s.records[name] {
			if soa, ok := rr.(*dns.SOA); ok {
				soa = dns.Copy(soa).(*dns.SOA)
				soa.Hdr.Ttl = min(soa.Hdr.Ttl, soa.Minttl)
				resp.Ns = append(resp.Ns, soa)
				return
			}
		}
		if name == "." {
			return
		}
		_, name, _ = strings.Cut(name, ".")
		if name == "" {
			name = "."
		}
	}
}
