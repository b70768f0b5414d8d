package main

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// dropInData is a TCP proxy in front of an SMTP server that, on its first
// connection only, closes both sides once the client has started sending
// the body after a 354, without forwarding the final dot: the server never
// sees the message and the client never gets a reply.
type dropInData struct {
	ln      net.Listener
	target  string
	conns   atomic.Int32
	dropped atomic.Bool
	wg      sync.WaitGroup
}

func startDropInData(t *testing.T, target string) *dropInData {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dropInData{ln: ln, target: target}
	var mu sync.Mutex
	var open []net.Conn
	track := func(c net.Conn) {
		mu.Lock()
		open = append(open, c)
		mu.Unlock()
	}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			track(c)
			track(up)
			first := p.conns.Add(1) == 1
			p.wg.Go(func() { p.pipe(c, up, first) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range open {
			_ = c.Close()
		}
		mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *dropInData) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// pipe copies both ways; on the first connection it watches for the 354
// and cuts the session during the body that follows.
func (p *dropInData) pipe(client, server net.Conn, first bool) {
	defer func() { _ = client.Close(); _ = server.Close() }()
	var got354 atomic.Bool
	p.wg.Go(func() {
		buf := make([]byte, 4096)
		for {
			n, err := server.Read(buf)
			if n > 0 {
				if first && bytes.Contains(buf[:n], []byte("354 ")) {
					got354.Store(true)
				}
				if _, werr := client.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				_ = client.Close()
				return
			}
		}
	})
	buf := make([]byte, 4096)
	for {
		n, err := client.Read(buf)
		if n > 0 && first && got354.Load() {
			// Part of the body went out; the dot never will.
			p.dropped.Store(true)
			return
		}
		if n > 0 {
			if _, werr := server.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				_ = server.Close()
			}
			return
		}
	}
}

// TestB7DeferThenDeliver is TESTPLAN B7: a 421 at the banner, a greylisting
// 451 4.7.1 and a connection dropped during DATA with no reply each defer
// every recipient of the message (none bounced), which are then delivered
// once on the retry, no sooner than the configured backoff allows.
func TestB7DeferThenDeliver(t *testing.T) {
	const backoff = 300 * time.Millisecond
	for _, tc := range []struct {
		name    string
		script  func(first func() bool) testenv.SinkScript
		proxied bool
	}{
		{"421 at the banner", func(first func() bool) testenv.SinkScript {
			return testenv.SinkScript{Greet: func() *smtp.SMTPError {
				if first() {
					return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "too busy, try later"}
				}
				return nil
			}}
		}, false},
		{"451 4.7.1 greylisting", func(first func() bool) testenv.SinkScript {
			return testenv.SinkScript{Mail: func(string) *smtp.SMTPError {
				if first() {
					return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted, come back later"}
				}
				return nil
			}}
		}, false},
		{"connection dropped in DATA", func(func() bool) testenv.SinkScript { return testenv.SinkScript{} }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			sink := testenv.StartSMTPSink(t, tc.script(func() bool { return calls.Add(1) == 1 }))
			port := int(sink.Addr().Port())
			var proxy *dropInData
			if tc.proxied {
				proxy = startDropInData(t, sink.Addr().String())
				port = proxy.port()
			}
			s := startStack(t, testenv.SinkScript{}, func(c *serveConfig) {
				c.SMTPPort = port
				c.RetryMin, c.RetryMax = backoff, backoff
			})
			resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"a@example.test", "b@example.test"}, Subject: "s", Text: "t"})
			st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
			for _, r := range st.GetRecipients() {
				if r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED || r.GetAttempts() != 2 {
					t.Fatalf("%s: %v after %d attempts (%v), want DELIVERED on the second", r.GetRecipient(), r.GetState(), r.GetAttempts(), r.GetLastReply())
				}
				evs := r.GetEvents()
				if len(evs) != 3 || evs[1].GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED {
					t.Fatalf("%s: events %v, want queued, deferred, delivered", r.GetRecipient(), evs)
				}
				// ±20% jitter, never below half the floor: 0.8 × backoff is
				// the least the schedule may wait.
				if gap := evs[2].GetTime().AsTime().Sub(evs[1].GetTime().AsTime()); gap < backoff*8/10 {
					t.Errorf("%s: retried %v after the deferral, want at least %v", r.GetRecipient(), gap, backoff*8/10)
				}
			}
			if msgs := sink.Messages(); len(msgs) != 1 || len(msgs[0].To) != 2 {
				t.Fatalf("sink got %d messages, want 1 carrying both recipients", len(msgs))
			}
			if proxy != nil && !proxy.dropped.Load() {
				t.Fatal("the proxy never cut a session during DATA")
			}
		})
	}
}
