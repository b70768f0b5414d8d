package smtpout

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postflow/postflow/pkg/testenv"
)

// newPoolClient returns a Client that is closed when the test ends.
func newPoolClient(t testing.TB, cfg Config) *Client {
	t.Helper()
	c := New(cfg)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// deliverOK delivers one message to a fresh recipient and fails the test
// unless it was delivered.
func deliverOK(t testing.TB, c *Client, targets []Target, rcpt string) Result {
	t.Helper()
	res := c.Deliver(context.Background(), targets, env(rcpt), []byte(testBody))
	if r := res.Recipients[0]; !r.Delivered {
		t.Fatalf("Deliver to %s: %+v, want delivered", rcpt, r)
	}
	return res
}

func TestReuseSequentialSessions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		maxIdle      int
		maxMessages  int
		targetCap    int // Target.MaxMessages
		messages     int
		wantSessions int
	}{
		{"default cap", 0, 0, 0, 100, 1},
		{"cap 10", 0, 10, 0, 35, 4},
		{"cap 1", 0, 1, 0, 5, 5},
		{"reuse off", -1, 0, 0, 5, 5},
		{"target cap 20 over config cap 100", 0, 100, 20, 45, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := testenv.StartSMTPSink(t, testenv.SinkScript{})
			cfg := testConfig()
			cfg.MaxIdlePerHost = tc.maxIdle
			cfg.MaxMessagesPerConn = tc.maxMessages
			c := newPoolClient(t, cfg)
			target := sinkTarget(sink)
			target.MaxMessages = tc.targetCap
			for i := range tc.messages {
				deliverOK(t, c, []Target{target}, fmt.Sprintf("r%d@example.net", i))
			}
			if got := sink.Sessions(); got != tc.wantSessions {
				t.Fatalf("%d messages with MaxIdlePerHost %d, MaxMessagesPerConn %d: sink sessions = %d, want %d",
					tc.messages, tc.maxIdle, tc.maxMessages, got, tc.wantSessions)
			}
			if got := sink.Count(); got != tc.messages {
				t.Fatalf("sink count = %d, want %d", got, tc.messages)
			}
		})
	}
}

func TestReuseConcurrent(t *testing.T) {
	t.Parallel()
	const goroutines, perGoroutine = 50, 20
	tests := []struct {
		name        string
		maxIdle     int
		maxSessions int // bound on sink sessions; 0 for none
	}{
		// With room for every session nothing is ever closed, so a new one
		// is dialled only while all the others are busy.
		{"room for all", goroutines, goroutines},
		{"small pool", 4, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := testenv.StartSMTPSink(t, testenv.SinkScript{})
			cfg := testConfig()
			cfg.MaxIdlePerHost = tc.maxIdle
			cfg.MaxMessagesPerConn = goroutines * perGoroutine
			c := newPoolClient(t, cfg)
			var wg sync.WaitGroup
			errs := make(chan string, goroutines*perGoroutine)
			for g := range goroutines {
				wg.Go(func() {
					for m := range perGoroutine {
						rcpt := fmt.Sprintf("g%d-m%d@example.net", g, m)
						res := c.Deliver(context.Background(), []Target{sinkTarget(sink)}, env(rcpt), []byte(testBody))
						if r := res.Recipients[0]; !r.Delivered {
							errs <- fmt.Sprintf("%s: %+v", rcpt, r)
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for e := range errs {
				t.Errorf("not delivered: %s", e)
			}
			seen := make(map[string]int)
			for _, m := range sink.Messages() {
				for _, to := range m.To {
					seen[to]++
				}
			}
			for g := range goroutines {
				for m := range perGoroutine {
					rcpt := fmt.Sprintf("g%d-m%d@example.net", g, m)
					if seen[rcpt] != 1 {
						t.Errorf("sink got %s %d times, want once", rcpt, seen[rcpt])
					}
				}
			}
			if len(seen) != goroutines*perGoroutine {
				t.Errorf("sink got %d distinct recipients, want %d", len(seen), goroutines*perGoroutine)
			}
			if got := sink.Sessions(); tc.maxSessions > 0 && got > tc.maxSessions {
				t.Errorf("sink sessions = %d, want <= %d", got, tc.maxSessions)
			}
			if got := c.idleLen(); got > tc.maxIdle || got == 0 {
				t.Errorf("idle sessions after the run = %d, want 1..%d", got, tc.maxIdle)
			}
		})
	}
}

// fakeClock is a settable clock for idle expiry.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

func TestReuseIdleTimeout(t *testing.T) {
	t.Parallel()
	const idle = 30 * time.Second
	tests := []struct {
		name         string
		wait         time.Duration
		wantSessions int
	}{
		{"just before expiry", idle - time.Second, 1},
		{"at expiry", idle, 2},
		{"long after", time.Hour, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := testenv.StartSMTPSink(t, testenv.SinkScript{})
			cfg := testConfig()
			cfg.IdleTimeout = idle
			c := newPoolClient(t, cfg)
			clock := &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
			c.now = clock.Now
			deliverOK(t, c, []Target{sinkTarget(sink)}, "a@example.net")
			clock.Advance(tc.wait)
			deliverOK(t, c, []Target{sinkTarget(sink)}, "b@example.net")
			if got := sink.Sessions(); got != tc.wantSessions {
				t.Fatalf("second message %v after the first: sink sessions = %d, want %d", tc.wait, got, tc.wantSessions)
			}
			if got := c.idleLen(); got != 1 {
				t.Fatalf("idle sessions = %d, want 1 (an expired one is closed)", got)
			}
		})
	}
}

// TestReuseExpirySweepsOtherTargets checks that an idle session expires
// when the Client is used for another target, not only its own.
func TestReuseExpirySweepsOtherTargets(t *testing.T) {
	t.Parallel()
	srv := startMultiServer(t, smtpReply)
	other := testenv.StartSMTPSink(t, testenv.SinkScript{})
	c := newPoolClient(t, testConfig())
	clock := &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	c.now = clock.Now
	deliverOK(t, c, []Target{srv.target}, "a@example.net")
	clock.Advance(c.cfg.IdleTimeout)
	deliverOK(t, c, []Target{sinkTarget(other)}, "b@example.net")
	srv.waitEnded(t, 1)
	if got := c.idleLen(); got != 1 {
		t.Fatalf("idle sessions = %d, want 1 (the other target's)", got)
	}
}

// multiServer is a scripted SMTP server on loopback that accepts any number
// of connections, for the behaviours of real servers between messages that
// the sink cannot script: closing idle sessions, refusing RSET.
type multiServer struct {
	target   Target
	accepted atomic.Int32
	ended    chan struct{} // one value per connection that ended
}

// startMultiServer runs reply for each command line (CRLF trimmed) of each
// connection; n counts the connection's commands from 0. reply returns
// false to close the connection.
func startMultiServer(t *testing.T, reply func(n int, cmd string, conn net.Conn, r *bufio.Reader) bool) *multiServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &multiServer{
		target: Target{Host: "multi.test", Addr: l.Addr().(*net.TCPAddr).AddrPort()},
		ended:  make(chan struct{}, 1000),
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			srv.accepted.Add(1)
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			wg.Go(func() {
				defer func() { srv.ended <- struct{}{} }()
				defer func() { _ = conn.Close() }()
				_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
				r := bufio.NewReader(conn)
				_, _ = io.WriteString(conn, "220 multi.test ESMTP\r\n")
				for n := 0; ; n++ {
					line, err := r.ReadString('\n')
					if err != nil || !reply(n, strings.TrimRight(line, "\r\n"), conn, r) {
						return
					}
				}
			})
		}
	})
	return srv
}

// waitEnded waits until n connections have ended.
func (s *multiServer) waitEnded(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		select {
		case <-s.ended:
		case <-time.After(10 * time.Second):
			t.Fatalf("server saw %d of %d connections end within 10s", i, n)
		}
	}
}

// smtpReply answers like a minimal server that accepts everything.
func smtpReply(_ int, cmd string, conn net.Conn, r *bufio.Reader) bool {
	if cmd == "DATA" {
		_, _ = io.WriteString(conn, "354 go ahead\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return false
			}
			if line == ".\r\n" {
				break
			}
		}
		_, _ = io.WriteString(conn, "250 2.0.0 queued\r\n")
		return true
	}
	return basicReply(cmd, conn)
}

func TestReuseRecoversFromDeadIdleSession(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		reply func(n int, cmd string, conn net.Conn, r *bufio.Reader) bool
	}{
		{"closed after one message", func(n int, cmd string, conn net.Conn, r *bufio.Reader) bool {
			ok := smtpReply(n, cmd, conn, r)
			return ok && cmd != "DATA"
		}},
		{"421 then closed after one message", func(n int, cmd string, conn net.Conn, r *bufio.Reader) bool {
			ok := smtpReply(n, cmd, conn, r)
			if cmd == "DATA" {
				_, _ = io.WriteString(conn, "421 4.4.2 idle timeout\r\n")
				return false
			}
			return ok
		}},
		{"RSET refused", func(n int, cmd string, conn net.Conn, r *bufio.Reader) bool {
			if cmd == "RSET" {
				_, _ = io.WriteString(conn, "502 5.5.1 not implemented\r\n")
				return true
			}
			return smtpReply(n, cmd, conn, r)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startMultiServer(t, tc.reply)
			c := newPoolClient(t, testConfig())
			const messages = 3
			for i := range messages {
				// One target only: a dead idle session must not use up a
				// MaxSessions attempt or reach the recipient as an error.
				deliverOK(t, c, []Target{srv.target}, fmt.Sprintf("r%d@example.net", i))
			}
			if got := srv.accepted.Load(); got != messages {
				t.Fatalf("server accepted %d connections for %d messages, want %d", got, messages, messages)
			}
		})
	}
}

func TestReuseAfterOutcome(t *testing.T) {
	t.Parallel()
	reply := func(code int, ec smtp.EnhancedCode) *smtp.SMTPError {
		return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: "scripted"}
	}
	// Each script misbehaves on its first call only; the second message is
	// then delivered, over the first session if it was kept.
	tests := []struct {
		name         string
		script       func(first func() bool, release <-chan struct{}) testenv.SinkScript
		dataTimeout  time.Duration
		wantSessions int
	}{
		{"delivered", func(func() bool, <-chan struct{}) testenv.SinkScript { return testenv.SinkScript{} }, 0, 1},
		{"554 after dot", func(first func() bool, _ <-chan struct{}) testenv.SinkScript {
			return testenv.SinkScript{Data: func([]string, []byte) *smtp.SMTPError {
				if first() {
					return reply(554, smtp.EnhancedCode{5, 6, 0})
				}
				return nil
			}}
		}, 0, 1},
		{"421 after dot", func(first func() bool, _ <-chan struct{}) testenv.SinkScript {
			return testenv.SinkScript{Data: func([]string, []byte) *smtp.SMTPError {
				if first() {
					return reply(421, smtp.EnhancedCode{4, 3, 2})
				}
				return nil
			}}
		}, 0, 2},
		{"550 at MAIL", func(first func() bool, _ <-chan struct{}) testenv.SinkScript {
			return testenv.SinkScript{Mail: func(string) *smtp.SMTPError {
				if first() {
					return reply(550, smtp.EnhancedCode{5, 7, 1})
				}
				return nil
			}}
		}, 0, 1},
		{"421 at MAIL", func(first func() bool, _ <-chan struct{}) testenv.SinkScript {
			return testenv.SinkScript{Mail: func(string) *smtp.SMTPError {
				if first() {
					return reply(421, smtp.EnhancedCode{4, 3, 2})
				}
				return nil
			}}
		}, 0, 2},
		{"all RCPT refused", func(first func() bool, _ <-chan struct{}) testenv.SinkScript {
			return testenv.SinkScript{Rcpt: func(string, int) *smtp.SMTPError {
				if first() {
					return reply(550, smtp.EnhancedCode{5, 1, 1})
				}
				return nil
			}}
		}, 0, 1},
		{"421 at RCPT", func(first func() bool, _ <-chan struct{}) testenv.SinkScript {
			return testenv.SinkScript{Rcpt: func(string, int) *smtp.SMTPError {
				if first() {
					return reply(421, smtp.EnhancedCode{4, 3, 2})
				}
				return nil
			}}
		}, 0, 2},
		{"no reply after dot", func(first func() bool, release <-chan struct{}) testenv.SinkScript {
			return testenv.SinkScript{Data: func([]string, []byte) *smtp.SMTPError {
				if first() {
					<-release
				}
				return nil
			}}
		}, 300 * time.Millisecond, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var calls atomic.Int32
			release := make(chan struct{})
			sink := testenv.StartSMTPSink(t, tc.script(func() bool { return calls.Add(1) == 1 }, release))
			// Registered after the sink, so it runs first and frees a
			// blocked script before the sink waits for its sessions.
			t.Cleanup(func() { close(release) })
			cfg := testConfig()
			if tc.dataTimeout > 0 {
				cfg.DataTimeout = tc.dataTimeout
			}
			c := newPoolClient(t, cfg)
			first := c.Deliver(context.Background(), []Target{sinkTarget(sink)}, env("a@example.net"), []byte(testBody))
			deliverOK(t, c, []Target{sinkTarget(sink)}, "b@example.net")
			if got := sink.Sessions(); got != tc.wantSessions {
				t.Fatalf("after %s (first result %+v): sink sessions = %d, want %d", tc.name, first.Recipients[0], got, tc.wantSessions)
			}
		})
	}
}

// TestReuseCancelledContextSparesPooledSession checks that the ctx of an
// earlier call no longer controls the session once it is idle.
func TestReuseCancelledContextSparesPooledSession(t *testing.T) {
	t.Parallel()
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{})
	c := newPoolClient(t, testConfig())
	ctx, cancel := context.WithCancel(context.Background())
	res := c.Deliver(ctx, []Target{sinkTarget(sink)}, env("a@example.net"), []byte(testBody))
	cancel()
	if !res.Recipients[0].Delivered {
		t.Fatalf("first message: %+v, want delivered", res.Recipients[0])
	}
	deliverOK(t, c, []Target{sinkTarget(sink)}, "b@example.net")
	if got := sink.Sessions(); got != 1 {
		t.Fatalf("sink sessions = %d, want 1: cancelling the first call's ctx closed the idle session", got)
	}
}

// TestReuseCancelledContextDoesNotDrainPool checks that a call whose ctx has
// already ended leaves the idle sessions alone.
func TestReuseCancelledContextDoesNotDrainPool(t *testing.T) {
	t.Parallel()
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{})
	c := newPoolClient(t, testConfig())
	deliverOK(t, c, []Target{sinkTarget(sink)}, "a@example.net")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res := c.Deliver(ctx, []Target{sinkTarget(sink)}, env("b@example.net"), []byte(testBody))
	checkErr(t, "cancelled", res.Recipients[0], true, 451, "4.4.1")
	deliverOK(t, c, []Target{sinkTarget(sink)}, "c@example.net")
	if got := sink.Sessions(); got != 1 {
		t.Fatalf("sink sessions = %d, want 1", got)
	}
}

func TestReuseSTARTTLS(t *testing.T) {
	t.Parallel()
	cert, pool := selfSigned(t)
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	cfg := testConfig()
	cfg.TLSConfig = &tls.Config{RootCAs: pool}
	c := newPoolClient(t, cfg)
	mx := Target{Host: "mx.test", Addr: sink.Addr()}
	other := Target{Host: "other.test", Addr: sink.Addr()}
	tests := []struct {
		target       Target
		wantVerified bool
		wantSessions int
	}{
		{mx, true, 1},
		{mx, true, 1},
		// Same address, other name: a session set up for mx.test must not
		// carry it.
		{other, false, 2},
		{mx, true, 2},
		{other, false, 2},
	}
	for i, tc := range tests {
		res := deliverOK(t, c, []Target{tc.target}, fmt.Sprintf("r%d@example.net", i))
		if res.TLS.Version != "TLS 1.3" || res.TLS.Cipher == "" || res.TLS.Verified != tc.wantVerified {
			t.Fatalf("message %d via %s: TLS = %+v, want TLS 1.3 with a cipher and Verified %v", i, tc.target.Host, res.TLS, tc.wantVerified)
		}
		if got := sink.Sessions(); got != tc.wantSessions {
			t.Fatalf("message %d via %s: sink sessions = %d, want %d", i, tc.target.Host, got, tc.wantSessions)
		}
	}
}

func TestReuseNotAfterSTARTTLSRefused(t *testing.T) {
	t.Parallel()
	srv := startMultiServer(t, func(n int, cmd string, conn net.Conn, r *bufio.Reader) bool {
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			_, _ = io.WriteString(conn, "250-multi.test\r\n250-8BITMIME\r\n250 STARTTLS\r\n")
		case cmd == "STARTTLS":
			_, _ = io.WriteString(conn, "454 4.7.0 TLS not available\r\n")
		default:
			return smtpReply(n, cmd, conn, r)
		}
		return true
	})
	c := newPoolClient(t, testConfig())
	deliverOK(t, c, []Target{srv.target}, "a@example.net")
	deliverOK(t, c, []Target{srv.target}, "b@example.net")
	if got := srv.accepted.Load(); got != 2 {
		t.Fatalf("server accepted %d connections, want 2: a plain-text fallback session must not be reused", got)
	}
}

func TestClientClose(t *testing.T) {
	t.Parallel()
	const parallel = 3
	// Hold every session at DATA until all are there, so that they end up
	// idle side by side.
	var atData atomic.Int32
	allThere := make(chan struct{})
	srv := startMultiServer(t, func(n int, cmd string, conn net.Conn, r *bufio.Reader) bool {
		if cmd == "DATA" {
			if atData.Add(1) == parallel {
				close(allThere)
			}
			select {
			case <-allThere:
			case <-time.After(10 * time.Second):
				return false
			}
		}
		return smtpReply(n, cmd, conn, r)
	})
	c := New(testConfig())
	var wg sync.WaitGroup
	for i := range parallel {
		wg.Go(func() { deliverOK(t, c, []Target{srv.target}, fmt.Sprintf("r%d@example.net", i)) })
	}
	wg.Wait()
	if got := c.idleLen(); got != parallel {
		t.Fatalf("idle sessions = %d, want %d", got, parallel)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	srv.waitEnded(t, parallel)
	if got := c.idleLen(); got != 0 {
		t.Fatalf("idle sessions after Close = %d, want 0", got)
	}

	// A closed Client still delivers but keeps nothing.
	deliverOK(t, c, []Target{srv.target}, "late@example.net")
	srv.waitEnded(t, 1)
	if got := c.idleLen(); got != 0 {
		t.Fatalf("idle sessions after a delivery on a closed Client = %d, want 0", got)
	}
}

func TestConfigValidateReuse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"reuse off", Config{MaxIdlePerHost: -1}, true},
		{"negative idle timeout", Config{IdleTimeout: -time.Second}, false},
		{"negative messages per connection", Config{MaxMessagesPerConn: -1}, false},
	}
	for _, tc := range tests {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
	c := New(Config{})
	if c.cfg.MaxIdlePerHost != DefaultMaxIdlePerHost || c.cfg.IdleTimeout != DefaultIdleTimeout ||
		c.cfg.MaxMessagesPerConn != DefaultMaxMessagesPerConn {
		t.Fatalf("defaults: MaxIdlePerHost %d, IdleTimeout %v, MaxMessagesPerConn %d; want %d, %v, %d",
			c.cfg.MaxIdlePerHost, c.cfg.IdleTimeout, c.cfg.MaxMessagesPerConn,
			DefaultMaxIdlePerHost, DefaultIdleTimeout, DefaultMaxMessagesPerConn)
	}
	if c.cfg.IdleTimeout >= 5*time.Minute {
		t.Fatalf("IdleTimeout %v, want below the RFC 5321 §4.5.3.2.7 server timeout of 5m", c.cfg.IdleTimeout)
	}
}

func BenchmarkDeliverReuse(b *testing.B)   { benchmarkDeliver(b, 0) }
func BenchmarkDeliverNoReuse(b *testing.B) { benchmarkDeliver(b, -1) }

// benchmarkDeliver sends 2 KiB messages one after another to a sink, in
// plain text and over STARTTLS.
func benchmarkDeliver(b *testing.B, maxIdle int) {
	body := []byte("Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 62)+"\r\n", 2048/64))
	cert, pool := selfSigned(b)
	for _, mode := range []string{"plain", "starttls"} {
		b.Run(mode, func(b *testing.B) {
			script := testenv.SinkScript{}
			if mode == "starttls" {
				script.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
			}
			sink := testenv.StartSMTPSink(b, script)
			cfg := testConfig()
			cfg.MaxIdlePerHost = maxIdle
			cfg.TLSConfig = &tls.Config{RootCAs: pool}
			c := newPoolClient(b, cfg)
			targets := []Target{sinkTarget(sink)}
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				res := c.Deliver(context.Background(), targets, env("a@example.net"), body)
				if !res.Recipients[0].Delivered {
					b.Fatalf("Deliver: %+v", res.Recipients[0])
				}
			}
			b.ReportMetric(float64(sink.Sessions())/float64(b.N), "sessions/op")
		})
	}
}
