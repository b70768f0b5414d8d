package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// shapingZone adds the shaping tests' domains to the e2e zone.
const shapingZone = zone + `
slow.test.        60 IN MX 10 mx.slow.test.
mx.slow.test.     60 IN A  127.0.0.1
narrow.test.      60 IN MX 10 mx.narrow.test.
mx.narrow.test.   60 IN A  127.0.0.1
`

// withShaping writes a shaping file and returns a stackOpt that uses it.
func withShaping(t *testing.T, doc string) stackOpt {
	t.Helper()
	path := filepath.Join(t.TempDir(), "shaping.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(c *serveConfig) { c.ShapingFile = path }
}

// sendMany submits n one-recipient messages to local parts prefix0..n-1 at
// domain, from 16 goroutines, and fails the test on any error.
func (s *stack) sendMany(t *testing.T, prefix, domain string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	var failed atomic.Value
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				_, err := s.mail.Send(ctx, &postflowv1.SendRequest{
					From: "me@sender.test", To: []string{fmt.Sprintf("%s%d@%s", prefix, i, domain)}, Subject: "s", Text: "t",
				})
				cancel()
				if err != nil {
					failed.Store(err)
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatalf("Send: %v", err)
	}
}

// countTo counts the messages the sink received for domain.
func countTo(sink *testenv.SMTPSink, domain string) int {
	n := 0
	for _, m := range sink.Messages() {
		for _, to := range m.To {
			if strings.HasSuffix(to, "@"+domain) {
				n++
			}
		}
	}
	return n
}

// deliveries is how many times the workers' consumer has handed out a job,
// redeliveries included: every fetch, whether it ends in a send or a nak.
func (s *stack) deliveries(t *testing.T) uint64 {
	t.Helper()
	c, err := s.stream.Consumer(context.Background(), queue.OutboundStream, queue.WorkerConsumer)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.Delivered.Consumer
}

// TestConnectionLimitNeverExceeded: a destination limited to 3 connections
// never has more than 3 sessions open at the receiver, idle pooled ones
// included, while 300 messages go out as fast as the worker can.
func TestConnectionLimitNeverExceeded(t *testing.T) {
	s := startStack(t, testenv.SinkScript{}, withShaping(t, `
defaults: {rate: unlimited}
destinations:
  - {name: narrow, domains: [narrow.test], connections: 3}
`))
	s.dns.Update(shapingZone)
	s.sendMany(t, "n", "narrow.test", 300)
	if !eventually(60*time.Second, func() bool { return countTo(s.sink, "narrow.test") == 300 }) {
		t.Fatalf("sink received %d of 300", countTo(s.sink, "narrow.test"))
	}
	if got := s.sink.MaxConcurrentSessions(); got > 3 || got < 1 {
		t.Fatalf("at most %d sessions were open at once, want 1..3", got)
	}
}

// TestThrottledDestinationDoesNotBlockOthers is the head-of-line
// test: with 20,000 jobs queued for a destination limited to 10/s, 1,000
// messages to an unlimited domain take at most twice as long as on an idle
// system. Meanwhile the throttled jobs are not spun: the consumer hands out
// jobs at no more than twice the allowed rate.
func TestThrottledDestinationDoesNotBlockOthers(t *testing.T) {
	const backlog, n, rate = 20000, 1000, 10
	s := startStack(t, testenv.SinkScript{}, withShaping(t, `
defaults: {rate: unlimited}
destinations:
  - {name: slow, domains: [slow.test], rate: "10/s"}
`))
	s.dns.Update(shapingZone)

	timeRun := func(prefix string) time.Duration {
		start := time.Now()
		before := countTo(s.sink, "other.test")
		s.sendMany(t, prefix, "other.test", n)
		t.Logf("%s: sent in %v, %d delivered by then", prefix, time.Since(start), countTo(s.sink, "other.test")-before)
		if !eventually(60*time.Second, func() bool { return countTo(s.sink, "other.test") == before+n }) {
			t.Fatalf("%s: sink received %d of %d", prefix, countTo(s.sink, "other.test")-before, n)
		}
		return time.Since(start)
	}
	idle := timeRun("idle")

	s.sendMany(t, "slow", "slow.test", backlog)
	c, _ := s.stream.Consumer(context.Background(), queue.OutboundStream, queue.WorkerConsumer)
	ci, _ := c.Info(context.Background())
	t.Logf("after the backlog was queued: %d jobs not yet fetched, %d fetched", ci.NumPending, ci.Delivered.Consumer)
	busy := timeRun("busy")
	t.Logf("1,000 messages: %v on an idle system, %v with %d throttled jobs queued", idle, busy, backlog)
	if busy > 2*idle {
		t.Errorf("with the throttled backlog queued the unlimited domain took %v, more than twice the idle %v", busy, idle)
	}

	// Once every throttled job has been looked at once, jobs come back
	// only at their reserved slots.
	const window = 3 * time.Second
	if !eventually(30*time.Second, func() bool {
		d0, sent0 := s.deliveries(t), countTo(s.sink, "slow.test")
		time.Sleep(window) //nolint:forbidigo // a measurement window, not a wait for a condition
		fetched := float64(s.deliveries(t)-d0) / window.Seconds()
		sent := float64(countTo(s.sink, "slow.test")-sent0) / window.Seconds()
		t.Logf("steady state: %.1f fetches/s, %.1f sends/s to slow.test", fetched, sent)
		return fetched <= 2*rate && sent <= rate*1.1
	}) {
		t.Fatalf("the throttled destination is fetched more than %d times a second, or sent faster than %d/s", 2*rate, rate)
	}
}
