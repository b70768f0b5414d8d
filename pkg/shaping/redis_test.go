package shaping

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postflow/postflow/pkg/testenv"
)

// Every test starts its own redis-server (a few milliseconds), so that
// tests may stop it and run in parallel. Each Redis limiter has its own
// client: separate clients are separate workers.

// newTestRedis returns a limiter on srv with fast heartbeats and retries
// and, unless cfg has one, a Memory fallback.
func newTestRedis(t testing.TB, srv *testenv.Redis, cfg RedisConfig) *Redis {
	t.Helper()
	if cfg.Fallback == nil {
		cfg.Fallback = NewMemory(MemoryConfig{Adaptive: cfg.Adaptive})
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 100 * time.Millisecond
	}
	if cfg.Retry == 0 {
		cfg.Retry = 50 * time.Millisecond
	}
	r, err := NewRedis(srv.Client(t), cfg)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// redisWaitFor polls cond every 10ms until it holds, failing the test
// after timeout.
func redisWaitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		<-tick.C
	}
}

// redisLogRecorder is a slog handler that keeps the messages.
type redisLogRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (h *redisLogRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *redisLogRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *redisLogRecorder) WithGroup(string) slog.Handler            { return h }
func (h *redisLogRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	return nil
}

func (h *redisLogRecorder) count(prefix string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// TestRedisReserveRateAcrossWorkers hammers one destination from three
// workers: the grants within the run never exceed GCRA's bound, Burst +
// rate × window, and come close to it (the limiter does not just refuse).
func TestRedisReserveRateAcrossWorkers(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	dest := Destination{Name: "gcra.test", Limits: Limits{Rate: Rate{N: 200, Per: time.Second}, Burst: 10}}
	workers := []*Redis{newTestRedis(t, srv, RedisConfig{}), newTestRedis(t, srv, RedisConfig{}), newTestRedis(t, srv, RedisConfig{})}

	const run = time.Second
	var granted, refused atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for _, w := range workers {
		for range 4 {
			wg.Go(func() {
				for time.Since(start) < run {
					ok, _, err := w.Reserve(t.Context(), dest, "")
					if err != nil {
						t.Errorf("Reserve: %v", err)
						return
					}
					if ok {
						granted.Add(1)
					} else {
						refused.Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	window := time.Since(start)

	bound := float64(dest.Limits.Burst) + dest.Limits.Rate.PerSecond()*window.Seconds()
	got := float64(granted.Load())
	t.Logf("%d granted, %d refused in %v; bound %.1f", granted.Load(), refused.Load(), window, bound)
	if got > bound {
		t.Errorf("granted %v in %v, want <= Burst + rate×window = %.1f", got, window, bound)
	}
	if low := 0.7 * (float64(dest.Limits.Burst) + dest.Limits.Rate.PerSecond()*run.Seconds()); got < low {
		t.Errorf("granted %v in %v, want >= %.1f: the limiter refuses more than the rate requires", got, window, low)
	}
	if w := workers[0].Stats(); w.FallbackSwitches != 0 {
		t.Errorf("Stats = %+v, want no switch to the fallback", w)
	}
	// A refusal without a job takes no reservation.
	keys, err := srv.Client(t).Keys(t.Context(), "*:r:*").Result()
	if err != nil || len(keys) != 0 {
		t.Errorf("reservation keys = %v, %v; want none", keys, err)
	}
}

// TestRedisReservationsAcrossWorkers: jobs held back come back at their
// slot, as a worker's NakWithDelay would bring them, and are granted then,
// every time; the messages sent stay within the rate.
func TestRedisReservationsAcrossWorkers(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	dest := Destination{Name: "resv.test", Limits: Limits{Rate: Rate{N: 100, Per: time.Second}, Burst: 5}}
	workers := []*Redis{newTestRedis(t, srv, RedisConfig{}), newTestRedis(t, srv, RedisConfig{}), newTestRedis(t, srv, RedisConfig{})}

	const run = time.Second
	var sent, heldBack atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i, w := range workers {
		for g := range 4 {
			wg.Go(func() {
				for n := 0; time.Since(start) < run; n++ {
					job := fmt.Sprintf("job-%d-%d-%d", i, g, n)
					ok, at, err := w.Reserve(t.Context(), dest, job)
					if err != nil {
						t.Errorf("Reserve(%s): %v", job, err)
						return
					}
					if !ok {
						heldBack.Add(1)
						// Pacing, as the queue's NakWithDelay: the job
						// comes back at its slot, not before.
						<-time.After(time.Until(at))
						ok, at2, err := w.Reserve(t.Context(), dest, job)
						if err != nil || !ok {
							t.Errorf("Reserve(%s) at its slot %v = %v, %v, %v; want granted", job, at, ok, at2, err)
							return
						}
					}
					sent.Add(1)
				}
			})
		}
	}
	wg.Wait()
	window := time.Since(start)
	// A reservation may be claimed up to reserveEarly before its slot.
	bound := float64(dest.Limits.Burst) + dest.Limits.Rate.PerSecond()*(window+reserveEarly).Seconds()
	t.Logf("%d sent (%d held back first) in %v; bound %.1f", sent.Load(), heldBack.Load(), window, bound)
	if got := float64(sent.Load()); got > bound {
		t.Errorf("sent %v in %v, want <= %.1f", got, window, bound)
	}
	if heldBack.Load() == 0 {
		t.Errorf("no job was held back: the test did not load the limiter")
	}
}

// TestRedisReservation follows three jobs at 1 message per 300ms: a job
// held back keeps its slot when it asks early, is granted at its slot, and
// a later job's slot comes after it.
func TestRedisReservation(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	const every = 300 * time.Millisecond
	dest := Destination{Name: "slots.test", Limits: Limits{Rate: Rate{N: 1, Per: every}}}
	w1, w2 := newTestRedis(t, srv, RedisConfig{}), newTestRedis(t, srv, RedisConfig{})
	ctx := t.Context()

	if ok, _, err := w1.Reserve(ctx, dest, "a"); err != nil || !ok {
		t.Fatalf("Reserve(a) = %v, %v; want granted", ok, err)
	}
	ok, atB, err := w1.Reserve(ctx, dest, "b")
	if err != nil || ok {
		t.Fatalf("Reserve(b) = %v, %v; want held back", ok, err)
	}
	if d := time.Until(atB); d < every-50*time.Millisecond || d > every+10*time.Millisecond {
		t.Errorf("Reserve(b): slot in %v, want about %v", d, every)
	}
	ok, atC, err := w2.Reserve(ctx, dest, "c")
	if err != nil || ok {
		t.Fatalf("Reserve(c) = %v, %v; want held back", ok, err)
	}
	if d := atC.Sub(atB); d < every-10*time.Millisecond || d > every+10*time.Millisecond {
		t.Errorf("slot(c) - slot(b) = %v, want %v", d, every)
	}

	// b asks again and again before its slot, from either worker: it
	// keeps its slot and takes no other, until it is granted.
	var grantedAt time.Time
	redisWaitFor(t, 5*time.Second, "b granted", func() bool {
		ok, at, err := w2.Reserve(ctx, dest, "b")
		if err != nil {
			t.Fatalf("Reserve(b): %v", err)
		}
		if ok {
			grantedAt = time.Now()
			return true
		}
		if d := at.Sub(atB); d < -10*time.Millisecond || d > 10*time.Millisecond {
			t.Fatalf("Reserve(b) early: slot %v, want its first slot %v", at, atB)
		}
		return false
	})
	if early := atB.Sub(grantedAt); early > reserveEarly+5*time.Millisecond {
		t.Errorf("b granted %v before its slot, want at most %v", early, reserveEarly)
	}

	// c's slot was kept for it: c is granted at it, and a's next message
	// goes after c.
	<-time.After(time.Until(atC)) // pacing: the job comes back at its slot
	if ok, _, err := w1.Reserve(ctx, dest, "c"); err != nil || !ok {
		t.Errorf("Reserve(c) at its slot = %v, %v; want granted", ok, err)
	}
	ok, atA, err := w1.Reserve(ctx, dest, "a")
	if err != nil || ok {
		t.Fatalf("Reserve(a) again = %v, %v; want held back", ok, err)
	}
	if !atA.After(atC) {
		t.Errorf("slot(a) = %v, want after slot(c) = %v", atA, atC)
	}
}

// TestRedisReserveSkewedClock: the decision uses Redis TIME; at comes back
// in the caller's clock, however far off it is.
func TestRedisReserveSkewedClock(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	skewed := func() time.Time { return time.Now().Add(time.Hour) }
	dest := Destination{Name: "skew.test", Limits: Limits{Rate: Rate{N: 10, Per: time.Second}}}
	fast := newTestRedis(t, srv, RedisConfig{Now: skewed})
	right := newTestRedis(t, srv, RedisConfig{})

	if ok, _, err := right.Reserve(t.Context(), dest, "1"); err != nil || !ok {
		t.Fatalf("Reserve(1) = %v, %v; want granted", ok, err)
	}
	ok, at, err := fast.Reserve(t.Context(), dest, "2")
	if err != nil || ok {
		t.Fatalf("Reserve(2) on a clock an hour fast = %v, %v; want held back", ok, err)
	}
	if d := at.Sub(skewed()); d <= 0 || d > 100*time.Millisecond {
		t.Errorf("Reserve(2): at = its clock + %v, want within (0, 100ms]", d)
	}
}

func TestRedisUnlimited(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	w := newTestRedis(t, srv, RedisConfig{})
	dest := Destination{Name: "free.test"}
	for i := range 1000 {
		if ok, _, err := w.Reserve(t.Context(), dest, fmt.Sprint(i)); err != nil || !ok {
			t.Fatalf("Reserve #%d on an unlimited rate = %v, %v; want granted", i, ok, err)
		}
	}
	for i := range 100 {
		l, ok, err := w.Acquire(t.Context(), dest, time.Minute)
		if err != nil || !ok {
			t.Fatalf("Acquire #%d without a connection limit = %v, %v; want a lease", i, ok, err)
		}
		if err := l.Renew(t.Context(), time.Minute); err != nil {
			t.Errorf("Renew: %v", err)
		}
		if err := l.Release(t.Context()); err != nil {
			t.Errorf("Release: %v", err)
		}
	}
	// Nothing to share: no round trip, no key.
	if keys, err := srv.Client(t).Keys(t.Context(), "*{free.test}*").Result(); err != nil || len(keys) != 0 {
		t.Errorf("keys of an unlimited destination = %v, %v; want none", keys, err)
	}
}

// TestRedisConnectionLimit: 30 goroutines on three workers never hold more
// than the 3 connections allowed.
func TestRedisConnectionLimit(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	const limit = 3
	dest := Destination{Name: "conn.test", Limits: Limits{Connections: limit}}
	workers := []*Redis{newTestRedis(t, srv, RedisConfig{}), newTestRedis(t, srv, RedisConfig{}), newTestRedis(t, srv, RedisConfig{})}

	var cur, peak, sessions, busy atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(time.Second)
	for i := range 30 {
		w := workers[i%len(workers)]
		wg.Go(func() {
			for time.Now().Before(deadline) {
				l, ok, err := w.Acquire(t.Context(), dest, 5*time.Second)
				if err != nil {
					t.Errorf("Acquire: %v", err)
					return
				}
				if !ok {
					busy.Add(1)
					continue
				}
				n := cur.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				sessions.Add(1)
				// Pacing: a session holds its slot for a moment, so
				// that sessions overlap.
				<-time.After(time.Millisecond)
				cur.Add(-1)
				if err := l.Release(t.Context()); err != nil {
					t.Errorf("Release: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d sessions, %d refusals, peak %d", sessions.Load(), busy.Load(), peak.Load())
	if p := peak.Load(); p > limit {
		t.Errorf("peak concurrent sessions = %d, want <= %d", p, limit)
	}
	if p := peak.Load(); p < limit {
		t.Errorf("peak concurrent sessions = %d, want %d: the test did not load the limiter", p, limit)
	}
	if n, err := srv.Client(t).ZCard(t.Context(), "postflow:shaping:{conn.test}:conn").Result(); err != nil || n != 0 {
		t.Errorf("leases left = %d, %v; want 0", n, err)
	}
}

// TestRedisLeases: leases renew, release idempotently, and expire, and an
// expired lease's slot goes to another worker.
func TestRedisLeases(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	dest := Destination{Name: "lease.test", Limits: Limits{Connections: 1}}
	w1, w2 := newTestRedis(t, srv, RedisConfig{}), newTestRedis(t, srv, RedisConfig{})
	ctx := t.Context()
	client := srv.Client(t)
	key := "postflow:shaping:{lease.test}:conn"

	// Release frees the slot at once; releasing again is harmless.
	l, ok, err := w1.Acquire(ctx, dest, time.Minute)
	if err != nil || !ok {
		t.Fatalf("Acquire = %v, %v; want a lease", ok, err)
	}
	if _, ok, err := w2.Acquire(ctx, dest, time.Minute); err != nil || ok {
		t.Fatalf("Acquire with the slot held = %v, %v; want refused", ok, err)
	}
	for i := range 2 {
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Release #%d: %v", i+1, err)
		}
	}
	if err := l.Renew(ctx, time.Minute); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("Renew after Release = %v, want ErrLeaseLost", err)
	}

	// Renew moves the expiry to ttl from now.
	l, ok, err = w2.Acquire(ctx, dest, time.Second)
	if err != nil || !ok {
		t.Fatalf("Acquire after Release = %v, %v; want a lease", ok, err)
	}
	before := redisExpiries(t, client, key)
	if err := l.Renew(ctx, time.Hour); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	after := redisExpiries(t, client, key)
	if len(before) != 1 || len(after) != 1 || after[0]-before[0] < 3590e3 {
		t.Errorf("lease expiry %v ms, renewed for an hour: %v ms; want about an hour later", before, after)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}

	// A lease neither renewed nor released expires, and its slot goes to
	// someone else; the lost lease cannot be renewed.
	const ttl = 150 * time.Millisecond
	lost, ok, err := w1.Acquire(ctx, dest, ttl)
	if err != nil || !ok {
		t.Fatalf("Acquire = %v, %v; want a lease", ok, err)
	}
	took := time.Now()
	redisWaitFor(t, 5*time.Second, "expired lease reclaimed", func() bool {
		_, ok, err := w2.Acquire(ctx, dest, time.Minute)
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		return ok
	})
	if d := time.Since(took); d < ttl-10*time.Millisecond {
		t.Errorf("slot reclaimed %v after it was leased for %v, want after the ttl", d, ttl)
	}
	if err := lost.Renew(ctx, time.Minute); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("Renew of an expired lease = %v, want ErrLeaseLost", err)
	}
	if err := lost.Release(ctx); err != nil {
		t.Errorf("Release of an expired lease = %v, want nil", err)
	}
}

// redisExpiries returns the scores of a sorted set.
func redisExpiries(t *testing.T, c *redis.Client, key string) []float64 {
	t.Helper()
	zs, err := c.ZRangeWithScores(t.Context(), key, 0, -1).Result()
	if err != nil {
		t.Fatalf("ZRANGE %s: %v", key, err)
	}
	out := make([]float64, len(zs))
	for i, z := range zs {
		out[i] = z.Score
	}
	return out
}

// TestRedisAdaptiveShared: a cut reported by one worker slows every worker
// and shows in their Status; a second report within Debounce does not cut
// again.
func TestRedisAdaptiveShared(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	a := Adaptive{Cut: 0.5, Floor: 0.1, Debounce: time.Hour, Hold: time.Hour, Step: 0.1, StepEvery: time.Hour}
	logs := &redisLogRecorder{}
	w1 := newTestRedis(t, srv, RedisConfig{Adaptive: a, Logger: slog.New(logs)})
	w2 := newTestRedis(t, srv, RedisConfig{Adaptive: a})
	ctx := t.Context()
	dest := Destination{Name: "adapt.test", Limits: Limits{Rate: Rate{N: 10, Per: time.Second}}}

	if ok, _, err := w2.Reserve(ctx, dest, "0"); err != nil || !ok {
		t.Fatalf("Reserve(0) = %v, %v; want granted", ok, err)
	}
	for i := range 2 {
		if err := w1.Throttled(ctx, dest, "421 4.7.0 slow down"); err != nil {
			t.Fatalf("Throttled #%d: %v", i+1, err)
		}
	}
	if s := w1.Stats(); s.Throttles != 2 || s.Cuts != 1 {
		t.Errorf("Stats = %+v, want 2 throttles, 1 cut (debounced)", s)
	}
	if n := logs.count("shaping: rate cut"); n != 1 {
		t.Errorf("%d rate cut log lines, want 1", n)
	}

	// The other worker spaces messages at 200ms instead of 100ms.
	_, at1, err := w2.Reserve(ctx, dest, "1")
	if err != nil {
		t.Fatal(err)
	}
	_, at2, err := w2.Reserve(ctx, dest, "2")
	if err != nil {
		t.Fatal(err)
	}
	if d := at2.Sub(at1); d < 195*time.Millisecond || d > 205*time.Millisecond {
		t.Errorf("spacing after a cut to 0.5 = %v, want 200ms", d)
	}

	st, err := w2.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if len(st) != 1 {
		t.Fatalf("Status = %+v, want one destination", st)
	}
	got := st[0]
	if got.Name != dest.Name || got.Factor != 0.5 || got.Configured != dest.Limits.Rate ||
		got.Current != (Rate{N: 10, Per: 2 * time.Second}) || time.Since(got.LastThrottled).Abs() > time.Second {
		t.Errorf("Status = %+v, want factor 0.5, 10/s configured, 10/2s current, throttled just now", got)
	}
}

// TestRedisAdaptiveFactorMatchesGo checks the Lua factor against
// Adaptive.Factor on a state written directly: a cut to 0.5, two and a half
// steps into the recovery.
func TestRedisAdaptiveFactorMatchesGo(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	a := Adaptive{Cut: 0.5, Floor: 0.1, Debounce: time.Minute, Hold: time.Minute, Step: 0.1, StepEvery: time.Minute}
	w := newTestRedis(t, srv, RedisConfig{Adaptive: a})
	client := srv.Client(t)
	ctx := t.Context()
	dest := Destination{Name: "factor.test", Limits: Limits{Rate: Rate{N: 10, Per: time.Second}}}

	now, err := client.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	cutAt := now.Add(-(a.Hold + 5*a.StepEvery/2))
	if err := client.HSet(ctx, "postflow:shaping:{factor.test}:adapt", "f", "0.5", "at", cutAt.UnixMicro()).Err(); err != nil {
		t.Fatal(err)
	}
	want := a.Factor(0.5, cutAt, now) // 0.7
	if math.Abs(want-0.7) > 1e-9 {
		t.Fatalf("Adaptive.Factor = %v, want 0.7", want)
	}

	if ok, _, err := w.Reserve(ctx, dest, "0"); err != nil || !ok {
		t.Fatalf("Reserve(0) = %v, %v", ok, err)
	}
	_, at1, _ := w.Reserve(ctx, dest, "1")
	_, at2, _ := w.Reserve(ctx, dest, "2")
	wantGap := time.Duration(float64(100*time.Millisecond) / want)
	if d := at2.Sub(at1); (d - wantGap).Abs() > 2*time.Millisecond {
		t.Errorf("spacing at factor %v = %v, want %v", want, d, wantGap)
	}
	st, err := w.Status(ctx)
	if err != nil || len(st) != 1 || math.Abs(st[0].Factor-want) > 1e-9 {
		t.Errorf("Status = %+v, %v; want factor %v", st, err, want)
	}
}

// TestRedisAdaptiveRecovers: the factor climbs back to 1 by Step after
// Hold, never going down meanwhile.
func TestRedisAdaptiveRecovers(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	a := Adaptive{Cut: 0.5, Floor: 0.1, Debounce: 10 * time.Millisecond, Hold: 100 * time.Millisecond, Step: 0.25, StepEvery: 100 * time.Millisecond}
	w := newTestRedis(t, srv, RedisConfig{Adaptive: a})
	ctx := t.Context()
	dest := Destination{Name: "recover.test", Limits: Limits{Rate: Rate{N: 10, Per: time.Second}}}
	if _, _, err := w.Reserve(ctx, dest, ""); err != nil {
		t.Fatal(err)
	}
	if err := w.Throttled(ctx, dest, "421"); err != nil {
		t.Fatal(err)
	}
	seen := map[float64]bool{}
	last := 0.0
	redisWaitFor(t, 5*time.Second, "factor back to 1", func() bool {
		st, err := w.Status(ctx)
		if err != nil || len(st) != 1 {
			t.Fatalf("Status = %+v, %v", st, err)
		}
		f := st[0].Factor
		if f < last {
			t.Fatalf("factor went down from %v to %v while recovering", last, f)
		}
		last = f
		seen[f] = true
		return f == 1
	})
	if !seen[0.5] || !seen[0.75] {
		t.Errorf("factors seen %v, want 0.5 and 0.75 on the way to 1", seen)
	}
}

// TestRedisScriptFlush: after SCRIPT FLUSH the next call of every kind
// works (EVALSHA gets NOSCRIPT, EVAL runs and caches the script again),
// without an error and without the fallback.
func TestRedisScriptFlush(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	w := newTestRedis(t, srv, RedisConfig{})
	client := srv.Client(t)
	ctx := t.Context()
	dest := Destination{Name: "flush.test", Limits: Limits{Rate: Rate{N: 1000, Per: time.Second}, Burst: 100, Connections: 2}}

	use := func() {
		t.Helper()
		if ok, _, err := w.Reserve(ctx, dest, "j"); err != nil || !ok {
			t.Fatalf("Reserve = %v, %v; want granted", ok, err)
		}
		l, ok, err := w.Acquire(ctx, dest, time.Minute)
		if err != nil || !ok {
			t.Fatalf("Acquire = %v, %v; want a lease", ok, err)
		}
		if err := l.Renew(ctx, time.Minute); err != nil {
			t.Fatalf("Renew: %v", err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if err := w.Throttled(ctx, dest, "421"); err != nil {
			t.Fatalf("Throttled: %v", err)
		}
		if _, err := w.Status(ctx); err != nil {
			t.Fatalf("Status: %v", err)
		}
	}
	use()
	if err := client.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if ex, err := client.ScriptExists(ctx, reserveScript.Hash()).Result(); err != nil || ex[0] {
		t.Fatalf("SCRIPT EXISTS after SCRIPT FLUSH = %v, %v; want false", ex, err)
	}
	use()
	ex, err := client.ScriptExists(ctx, reserveScript.Hash(), acquireScript.Hash(), throttleScript.Hash()).Result()
	if err != nil || !ex[0] || !ex[1] || !ex[2] {
		t.Errorf("SCRIPT EXISTS after the next calls = %v, %v; want cached again", ex, err)
	}
	if s := w.Stats(); s.FallbackSwitches != 0 || s.FallbackDecisions != 0 {
		t.Errorf("Stats = %+v, want no fallback", s)
	}
}

// TestRedisScriptErrorIsNotAnOutage: a reply saying the request is wrong
// is returned, not taken for Redis being down.
func TestRedisScriptErrorIsNotAnOutage(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	w := newTestRedis(t, srv, RedisConfig{})
	dest := Destination{Name: "wrong.test", Limits: Limits{Rate: Rate{N: 1, Per: time.Second}}}
	if err := srv.Client(t).HSet(t.Context(), "postflow:shaping:{wrong.test}:tat", "x", "1").Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.Reserve(t.Context(), dest, "j"); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Errorf("Reserve on a TAT key of the wrong type = %v, want a WRONGTYPE error", err)
	}
	if s := w.Stats(); s.Fallback || s.FallbackSwitches != 0 {
		t.Errorf("Stats = %+v, want no fallback", s)
	}
	if _, _, err := w.Reserve(t.Context(), Destination{Limits: dest.Limits}, "j"); err == nil {
		t.Errorf("Reserve for a destination without a name = nil error, want one")
	}
}

func TestRedisUnavailable(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = client.Close() })
	// reply returns the error of a real server reply carrying text.
	reply := func(text string) error {
		err := client.Eval(t.Context(), "return redis.error_reply(ARGV[1])", nil, text).Err()
		if err == nil {
			t.Fatalf("no error for %q", text)
		}
		return err
	}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"EOF", io.EOF, true},
		{"refused", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, true},
		{"timeout", context.DeadlineExceeded, true},
		{"closed client", redis.ErrClosed, true},
		{"pool timeout", redis.ErrPoolTimeout, true},
		{"wrapped EOF", fmt.Errorf("x: %w", io.EOF), true},
		{"READONLY", reply("READONLY You can't write against a read only replica."), true},
		{"LOADING", reply("LOADING Redis is loading the dataset in memory"), true},
		{"MASTERDOWN", reply("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."), true},
		{"CLUSTERDOWN", reply("CLUSTERDOWN The cluster is down"), true},
		{"TRYAGAIN", reply("TRYAGAIN Multiple keys request during rehashing of slot"), true},
		{"OOM", reply("OOM command not allowed when used memory > 'maxmemory'."), true},
		{"BUSY", reply("BUSY Redis is busy running a script."), true},
		{"WRONGTYPE", reply("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
		{"script error", reply("ERR user_script:1: Script attempted to access nonexistent global variable"), false},
		{"redis.Nil", redis.Nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := redisUnavailable(tc.err); got != tc.want {
				t.Errorf("redisUnavailable(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestFallbackLimits(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		lim     Limits
		workers int
		want    Limits
	}{
		{"three workers", Limits{Rate: Rate{N: 300, Per: time.Second}, Burst: 9, Connections: 3, MessagesPerConnection: 100, RecipientsPerTransaction: 50}, 3,
			Limits{Rate: Rate{N: 300, Per: 3 * time.Second}, Burst: 3, Connections: 1, MessagesPerConnection: 100, RecipientsPerTransaction: 50}},
		{"one worker", Limits{Rate: Rate{N: 5, Per: time.Second}, Burst: 2, Connections: 4}, 1,
			Limits{Rate: Rate{N: 5, Per: time.Second}, Burst: 2, Connections: 4}},
		{"no worker seen counts as one", Limits{Rate: Rate{N: 5, Per: time.Second}, Connections: 4}, 0,
			Limits{Rate: Rate{N: 5, Per: time.Second}, Burst: 1, Connections: 4}},
		{"more workers than the rate: never zero", Limits{Rate: Rate{N: 5, Per: time.Second}, Connections: 2}, 10,
			Limits{Rate: Rate{N: 5, Per: 10 * time.Second}, Burst: 1, Connections: 1}},
		{"connections rounded down", Limits{Connections: 5}, 2, Limits{Connections: 2}},
		{"unlimited stays unlimited", Limits{}, 4, Limits{}},
		{"no overflow", Limits{Rate: Rate{N: 1, Per: math.MaxInt64 / 2}}, 3, Limits{Rate: Rate{N: 1, Per: math.MaxInt64}, Burst: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := FallbackLimits(tc.lim, tc.workers); got != tc.want {
				t.Errorf("FallbackLimits(%+v, %d) = %+v, want %+v", tc.lim, tc.workers, got, tc.want)
			}
		})
	}
}

// TestRedisOutage (TESTPLAN A14): with Redis stopped every decision goes
// to the fallback at a third of the limits (three live workers), never
// unlimited, the switch logged and counted once; with Redis back on the
// same port, every worker returns to it by itself.
func TestRedisOutage(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	ctx := t.Context()
	logs := &redisLogRecorder{}
	dest := Destination{Name: "outage.test", Limits: Limits{Rate: Rate{N: 300, Per: time.Second}, Burst: 9, Connections: 3}}
	fallback := NewMemory(MemoryConfig{})
	workers := []*Redis{
		newTestRedis(t, srv, RedisConfig{Fallback: fallback, Logger: slog.New(logs)}),
		newTestRedis(t, srv, RedisConfig{}),
		newTestRedis(t, srv, RedisConfig{}),
	}
	w := workers[0]
	redisWaitFor(t, 5*time.Second, "3 live workers", func() bool {
		for _, w := range workers {
			if w.Stats().LiveWorkers != 3 {
				return false
			}
		}
		return true
	})
	held, ok, err := w.Acquire(ctx, dest, time.Minute)
	if err != nil || !ok {
		t.Fatalf("Acquire = %v, %v", ok, err)
	}

	srv.Stop()
	// The first call finds Redis gone (within Timeout) and switches.
	if _, _, err := w.Reserve(ctx, dest, ""); err != nil {
		t.Fatalf("Reserve as Redis goes down: %v", err)
	}
	if s := w.Stats(); !s.Fallback {
		t.Fatalf("Stats after a failed call = %+v, want on the fallback", s)
	}

	// Hammer the fallback: a third of 300/s with a third of the burst.
	var granted int
	start := time.Now()
	for time.Since(start) < 500*time.Millisecond {
		ok, _, err := w.Reserve(ctx, dest, "")
		if err != nil {
			t.Fatalf("Reserve with Redis down: %v", err)
		}
		if ok {
			granted++
		}
	}
	window := time.Since(start)
	share := FallbackLimits(dest.Limits, 3)
	bound := float64(share.Burst) + share.Rate.PerSecond()*window.Seconds()
	t.Logf("fallback: %d granted in %v; bound %.1f", granted, window, bound)
	if float64(granted) > bound {
		t.Errorf("granted %d in %v with Redis down, want <= %.1f (a third of the limit)", granted, window, bound)
	}
	if float64(granted) < bound/2 {
		t.Errorf("granted %d in %v with Redis down, want about %.1f: the fallback refuses more than its share requires", granted, window, bound)
	}
	if ps := share.Rate.PerSecond(); share.Rate.Unlimited() || ps > dest.Limits.Rate.PerSecond()/3 {
		t.Errorf("fallback rate %v (%v/s), want at most %v/s", share.Rate, ps, dest.Limits.Rate.PerSecond()/3)
	}
	st, err := w.Status(ctx)
	if err != nil || len(st) != 1 || st[0].Configured != share.Rate {
		t.Errorf("Status with Redis down = %+v, %v; want the fallback's, at %v", st, err, share.Rate)
	}

	// One connection each: 3 / 3 workers. Fallback leases go back to the
	// fallback; the Redis lease cannot be renewed meanwhile.
	l, ok, err := w.Acquire(ctx, dest, time.Minute)
	if err != nil || !ok {
		t.Fatalf("Acquire with Redis down = %v, %v; want a lease", ok, err)
	}
	if _, ok, err := w.Acquire(ctx, dest, time.Minute); err != nil || ok {
		t.Errorf("second Acquire with Redis down = %v, %v; want refused (1 connection per worker)", ok, err)
	}
	if err := l.Release(ctx); err != nil {
		t.Errorf("Release to the fallback: %v", err)
	}
	if _, ok, err := w.Acquire(ctx, dest, time.Minute); err != nil || !ok {
		t.Errorf("Acquire after Release with Redis down = %v, %v; want a lease", ok, err)
	}
	if err := held.Renew(ctx, time.Minute); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Renew of a Redis lease with Redis down = %v, want ErrUnavailable", err)
	}
	if err := w.Throttled(ctx, dest, "421"); err != nil {
		t.Errorf("Throttled with Redis down: %v", err)
	}

	s := w.Stats()
	if !s.Fallback || s.FallbackSwitches != 1 || s.FallbackDecisions < uint64(granted) || s.LiveWorkers != 3 {
		t.Errorf("Stats with Redis down = %+v, want on the fallback, switched once, 3 live workers", s)
	}
	if n := logs.count("shaping: redis unreachable"); n != 1 {
		t.Errorf("%d switch-to-fallback log lines, want 1", n)
	}

	srv.Start(t)
	redisWaitFor(t, 10*time.Second, "every worker back on Redis", func() bool {
		for _, w := range workers {
			if w.Stats().Fallback {
				return false
			}
		}
		return true
	})
	if ok, _, err := w.Reserve(ctx, dest, "after"); err != nil || !ok {
		t.Errorf("Reserve after recovery = %v, %v; want granted", ok, err)
	}
	if n, err := srv.Client(t).Exists(ctx, "postflow:shaping:{outage.test}:tat").Result(); err != nil || n != 1 {
		t.Errorf("TAT key after recovery: %d, %v; want decisions in Redis again", n, err)
	}
	s = w.Stats()
	if s.Fallback || s.FallbackSwitches != 1 || s.Recoveries != 1 {
		t.Errorf("Stats after recovery = %+v, want on Redis, 1 switch, 1 recovery", s)
	}
	if n := logs.count("shaping: redis reachable again"); n != 1 {
		t.Errorf("%d back-to-Redis log lines, want 1", n)
	}
}

// TestRedisDownAtStart: a worker started while Redis is unreachable limits
// locally at once, dividing by AssumedWorkers, and joins Redis when it
// comes up.
func TestRedisDownAtStart(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	srv.Stop()
	fallback := NewMemory(MemoryConfig{})
	w := newTestRedis(t, srv, RedisConfig{Fallback: fallback, AssumedWorkers: 2})
	dest := Destination{Name: "start.test", Limits: Limits{Rate: Rate{N: 10, Per: time.Second}, Connections: 4}}
	if s := w.Stats(); !s.Fallback || s.LiveWorkers != 2 || s.FallbackSwitches != 1 {
		t.Fatalf("Stats with Redis down at start = %+v, want on the fallback, 2 workers assumed", s)
	}
	if ok, _, err := w.Reserve(t.Context(), dest, "j"); err != nil || !ok {
		t.Fatalf("Reserve = %v, %v; want granted by the fallback", ok, err)
	}
	st, err := fallback.Status(t.Context())
	if err != nil || len(st) != 1 || st[0].Configured != (Rate{N: 10, Per: 2 * time.Second}) {
		t.Errorf("fallback Status = %+v, %v; want 10 per 2s", st, err)
	}
	srv.Start(t)
	redisWaitFor(t, 10*time.Second, "back on Redis", func() bool { return !w.Stats().Fallback })
	if s := w.Stats(); s.LiveWorkers != 1 {
		t.Errorf("Stats = %+v, want 1 live worker", s)
	}
}

// TestRedisStatusAndKeys: Status lists each destination in use with its
// connections; every key of a destination carries its hash tag, and a job
// key that matches the SCAN pattern is not taken for a destination.
func TestRedisStatusAndKeys(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	w1, w2 := newTestRedis(t, srv, RedisConfig{}), newTestRedis(t, srv, RedisConfig{})
	ctx := t.Context()
	a := Destination{Name: "a.test", Limits: Limits{Rate: Rate{N: 1, Per: time.Minute}, Connections: 5}}
	b := Destination{Name: "b.test", Limits: Limits{Rate: Rate{N: 2, Per: time.Second}, Connections: 2}}
	for _, d := range []Destination{a, b} {
		if _, _, err := w1.Reserve(ctx, d, "first"); err != nil {
			t.Fatal(err)
		}
	}
	// Held back: a reservation key ending in ":meta".
	if ok, _, err := w1.Reserve(ctx, a, "evil:meta"); err != nil || ok {
		t.Fatalf("Reserve(evil:meta) = %v, %v; want held back", ok, err)
	}
	for range 2 {
		if _, ok, err := w2.Acquire(ctx, a, time.Minute); err != nil || !ok {
			t.Fatalf("Acquire = %v, %v", ok, err)
		}
	}
	if err := w2.Throttled(ctx, b, "421"); err != nil {
		t.Fatal(err)
	}

	st, err := w2.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if len(st) != 2 || st[0].Name != "a.test" || st[1].Name != "b.test" {
		t.Fatalf("Status = %+v, want a.test and b.test", st)
	}
	if st[0].Configured != a.Limits.Rate || st[0].Current != a.Limits.Rate || st[0].Factor != 1 || st[0].ConnectionsInUse != 2 || !st[0].LastThrottled.IsZero() {
		t.Errorf("Status(a) = %+v, want 1/min, factor 1, 2 connections, never throttled", st[0])
	}
	if st[1].Factor != 0.5 || st[1].Current != (Rate{N: 2, Per: 2 * time.Second}) || st[1].ConnectionsInUse != 0 {
		t.Errorf("Status(b) = %+v, want factor 0.5, 2/2s, no connection", st[1])
	}

	keys, err := srv.Client(t).Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k != "postflow:shaping:workers" && !strings.HasPrefix(k, "postflow:shaping:{a.test}:") && !strings.HasPrefix(k, "postflow:shaping:{b.test}:") {
			t.Errorf("key %q: want postflow:shaping:{<destination>}:...", k)
		}
	}
}

func TestNewRedisConfig(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	client := srv.Client(t)
	fb := NewMemory(MemoryConfig{})
	tests := []struct {
		name string
		cfg  RedisConfig
		want string // in the error; "" for none
	}{
		{"defaults", RedisConfig{Fallback: fb}, ""},
		{"no fallback", RedisConfig{}, "no fallback"},
		{"braces in prefix", RedisConfig{Fallback: fb, Prefix: "p{x}"}, "prefix"},
		{"cut above 1", RedisConfig{Fallback: fb, Adaptive: Adaptive{Cut: 2}}, "cut"},
		{"negative timeout", RedisConfig{Fallback: fb, Timeout: -1}, "negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRedis(client, tc.cfg)
			if r != nil {
				t.Cleanup(func() { _ = r.Close() })
			}
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("NewRedis(%+v) = %v, want no error", tc.cfg, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("NewRedis(%+v) = %v, want an error about %q", tc.cfg, err, tc.want)
			}
		})
	}
}

// TestRedisClose: a closed worker leaves the liveness set at once.
func TestRedisClose(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	w1, w2 := newTestRedis(t, srv, RedisConfig{}), newTestRedis(t, srv, RedisConfig{})
	redisWaitFor(t, 5*time.Second, "2 live workers", func() bool { return w1.Stats().LiveWorkers == 2 })
	if err := w2.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := w2.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	redisWaitFor(t, 5*time.Second, "1 live worker", func() bool { return w1.Stats().LiveWorkers == 1 })
}

// TestRedisCluster runs every script against a one-node Redis Cluster,
// which refuses keys of different slots in one command (CROSSSLOT) as a
// larger cluster would, and lists destinations through ForEachMaster.
func TestRedisCluster(t *testing.T) {
	t.Parallel()
	client := startRedisCluster(t)
	w, err := NewRedis(client, RedisConfig{Fallback: NewMemory(MemoryConfig{}), Heartbeat: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	ctx := t.Context()
	dest := Destination{Name: "cluster.test", Limits: Limits{Rate: Rate{N: 1, Per: time.Minute}, Connections: 2}}

	if ok, _, err := w.Reserve(ctx, dest, "a"); err != nil || !ok {
		t.Fatalf("Reserve(a) = %v, %v; want granted", ok, err)
	}
	if ok, _, err := w.Reserve(ctx, dest, "b"); err != nil || ok {
		t.Fatalf("Reserve(b) = %v, %v; want held back", ok, err)
	}
	l, ok, err := w.Acquire(ctx, dest, time.Minute)
	if err != nil || !ok {
		t.Fatalf("Acquire = %v, %v", ok, err)
	}
	if err := l.Renew(ctx, time.Minute); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if err := w.Throttled(ctx, dest, "421"); err != nil {
		t.Fatalf("Throttled: %v", err)
	}
	st, err := w.Status(ctx)
	if err != nil || len(st) != 1 || st[0].Name != dest.Name || st[0].ConnectionsInUse != 1 || st[0].Factor != 0.5 {
		t.Errorf("Status = %+v, %v; want cluster.test, 1 connection, factor 0.5", st, err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if s := w.Stats(); s.FallbackSwitches != 0 || s.LiveWorkers != 1 {
		t.Errorf("Stats = %+v, want on Redis, 1 live worker", s)
	}
	// The check has teeth: keys of two destinations in one script fail.
	err = throttleScript.Run(ctx, client, []string{"p:{a}:adapt", "p:{b}:adapt"}, 0.5, 0.1, 0, 0, 0.1, 1, "x").Err()
	if err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Errorf("a script over two destinations' keys = %v, want CROSSSLOT", err)
	}
}

// startRedisCluster starts redis-server in cluster mode on a free loopback
// port, gives it every slot, and returns a cluster client for it.
// TODO: move into pkg/testenv next to StartRedis.
func startRedisCluster(t *testing.T) *redis.ClusterClient {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found on PATH (run `make test`, which installs it): %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	_ = l.Close()
	dir := t.TempDir()
	cmd := exec.Command(path, "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
		"--dir", dir, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"))
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := net.JoinHostPort("127.0.0.1", port)
	node := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer func() { _ = node.Close() }()
	redisWaitFor(t, 10*time.Second, "cluster node answers", func() bool { return node.Ping(t.Context()).Err() == nil })
	if err := node.Do(t.Context(), "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatalf("CLUSTER ADDSLOTSRANGE: %v", err)
	}
	redisWaitFor(t, 10*time.Second, "cluster state ok", func() bool {
		info, err := node.ClusterInfo(t.Context()).Result()
		return err == nil && strings.Contains(info, "cluster_state:ok")
	})
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{addr}})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestNewRedisAuthError: Redis answering with an error at start (here a
// password the client lacks) is a configuration problem, returned at once
// rather than hidden behind the fallback.
func TestNewRedisAuthError(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	if err := srv.Client(t).ConfigSet(t.Context(), "requirepass", "secret").Err(); err != nil {
		t.Fatal(err)
	}
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	r, err := NewRedis(client, RedisConfig{Fallback: NewMemory(MemoryConfig{})})
	if err == nil {
		_ = r.Close()
		t.Fatal("NewRedis without the password = nil error, want NOAUTH")
	}
	if !redis.IsAuthError(err) {
		t.Errorf("NewRedis without the password = %v, want an auth error", err)
	}
}

// TestRedisCutVoidsReservations is TestMemoryCutVoidsReservations on Redis.
func TestRedisCutVoidsReservations(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	a := Adaptive{Cut: 0.5, Floor: 0.1, Debounce: time.Second, Hold: time.Hour, Step: 0.1, StepEvery: time.Hour}
	w := newTestRedis(t, srv, RedisConfig{Adaptive: a})
	ctx := t.Context()
	dest := Destination{Name: "cut.test", Limits: Limits{Rate: Rate{N: 10, Per: time.Second}}}
	if ok, _, err := w.Reserve(ctx, dest, "first"); err != nil || !ok {
		t.Fatalf("Reserve(first) = %v, %v; want granted", ok, err)
	}
	_, old, err := w.Reserve(ctx, dest, "0")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Throttled(ctx, dest, "421"); err != nil {
		t.Fatal(err)
	}
	// Job 0's old slot is void: asking again gets a slot in the new
	// schedule, which restarted at the cut, not the old one.
	ok, at, err := w.Reserve(ctx, dest, "0")
	if err != nil {
		t.Fatal(err)
	}
	if !ok && at.Equal(old) {
		t.Fatalf("job 0 still holds its pre-cut slot %v", old)
	}
	_, at1, err := w.Reserve(ctx, dest, "1")
	if err != nil {
		t.Fatal(err)
	}
	_, at2, err := w.Reserve(ctx, dest, "2")
	if err != nil {
		t.Fatal(err)
	}
	if d := at2.Sub(at1); d < 195*time.Millisecond || d > 205*time.Millisecond {
		t.Errorf("spacing after the cut = %v, want 200ms", d)
	}
}
