package main

import (
	"bytes"
	"net"
	"strconv"
	"sync/atomic"
)

// seqHeader carries the generator's sequence number of a message; runHeader
// names the run, so mail left over from another run counts as phantom.
const (
	seqHeader = "X-Loadtest-Seq"
	runHeader = "X-Loadtest-Run"
)

// sink is the SMTP server every system under test delivers to (see
// fastsink.go for the protocol side). It keeps per-message receipt counts
// and first-receipt times in preallocated arrays indexed by sequence
// number, so accepting a message costs one header scan and two atomic
// stores.
type sink struct {
	l    net.Listener
	addr *net.TCPAddr
	run  atomic.Pointer[string]

	counts   []atomic.Int32
	received []atomic.Int64 // unix nanoseconds of the first receipt
	total    atomic.Int64
	phantom  atomic.Int64
	active   atomic.Int64
	peak     atomic.Int64
	sessions atomic.Int64
}

func startSink(run string, capacity int) (*sink, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &sink{
		l:        l,
		addr:     l.Addr().(*net.TCPAddr),
		counts:   make([]atomic.Int32, capacity),
		received: make([]atomic.Int64, capacity),
	}
	s.run.Store(&run)
	go s.serveFast(l)
	return s, nil
}

// reset clears the counters between runs that share the sink.
func (s *sink) reset(run string) {
	s.run.Store(&run)
	for i := range s.counts {
		s.counts[i].Store(0)
		s.received[i].Store(0)
	}
	s.total.Store(0)
	s.phantom.Store(0)
	s.peak.Store(s.active.Load())
	s.sessions.Store(0)
}

func (s *sink) close() { _ = s.l.Close() }

// record counts one received message.
func (s *sink) record(data []byte, now int64) {
	s.total.Add(1)
	hdr := data
	if i := bytes.Index(data, []byte("\r\n\r\n")); i >= 0 {
		hdr = data[:i+2]
	}
	run, seqv := headerValue(hdr, runHeader), headerValue(hdr, seqHeader)
	if run == nil {
		// Campaign mail has no custom headers: its subject template
		// renders "loadtest <run> <seq>" (campaignSubject).
		if f := bytes.Fields(headerValue(hdr, "Subject")); len(f) == 3 && string(f[0]) == "loadtest" {
			run, seqv = f[1], f[2]
		}
	}
	if string(run) != *s.run.Load() {
		s.phantom.Add(1)
		return
	}
	seq, err := strconv.Atoi(string(seqv))
	if err != nil || seq < 0 || seq >= len(s.counts) {
		s.phantom.Add(1)
		return
	}
	if s.counts[seq].Add(1) == 1 {
		s.received[seq].Store(now)
	}
}

// headerValue returns the unfolded value of the first header named name in
// hdr (header section with CRLF line ends), or nil.
func headerValue(hdr []byte, name string) []byte {
	for len(hdr) > 0 {
		line := hdr
		if i := bytes.Index(hdr, []byte("\r\n")); i >= 0 {
			line, hdr = hdr[:i], hdr[i+2:]
		} else {
			hdr = nil
		}
		if len(line) > len(name) && line[len(name)] == ':' && bytes.EqualFold(line[:len(name)], []byte(name)) {
			return bytes.TrimSpace(line[len(name)+1:])
		}
	}
	return nil
}
