package main

import (
	"net"
	"strings"

	"github.com/miekg/dns"
)

// dnsStub answers every MX query with one MX host and every A query for that
// host with 127.0.0.1, so that any recipient domain routes to the sink.
type dnsStub struct {
	udp, tcp *dns.Server
	addr     string
}

const stubMX = "mx.sink.loadtest.test."

func startDNSStub() (*dnsStub, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		_ = pc.Close()
		return nil, err
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		for _, q := range req.Question {
			switch {
			case q.Qtype == dns.TypeMX:
				m.Answer = append(m.Answer, &dns.MX{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: 3600}, Preference: 10, Mx: stubMX})
			case q.Qtype == dns.TypeA && strings.EqualFold(q.Name, stubMX):
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3600}, A: net.IPv4(127, 0, 0, 1)})
			}
		}
		_ = w.WriteMsg(m)
	})
	s := &dnsStub{udp: &dns.Server{PacketConn: pc, Handler: h}, tcp: &dns.Server{Listener: l, Handler: h}, addr: pc.LocalAddr().String()}
	go func() { _ = s.udp.ActivateAndServe() }()
	go func() { _ = s.tcp.ActivateAndServe() }()
	return s, nil
}

func (s *dnsStub) close() {
	_ = s.udp.Shutdown()
	_ = s.tcp.Shutdown()
}
