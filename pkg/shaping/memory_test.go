package shaping

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memClock is a fake clock that moves only when told.
type memClock struct {
	mu sync.Mutex
	t  time.Time
}

func newMemClock() *memClock { return &memClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *memClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *memClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestMemory(clk *memClock) *Memory {
	return NewMemory(MemoryConfig{Now: clk.Now})
}

func memDestination(name string, r Rate, burst, conns int) Destination {
	return Destination{Name: name, Limits: Limits{Rate: r, Burst: burst, Connections: conns}}
}

// reserve calls m.Reserve and fails the test on an error.
func reserve(t *testing.T, m *Memory, d Destination, job string) (bool, time.Time) {
	t.Helper()
	ok, at, err := m.Reserve(context.Background(), d, job)
	if err != nil {
		t.Fatalf("Reserve(%s, %q): %v", d.Name, job, err)
	}
	return ok, at
}

func TestMemoryReserveBurstThenSpacing(t *testing.T) {
	tests := []struct {
		name  string
		rate  Rate
		burst int
	}{
		{"10/s burst 1", Rate{N: 10, Per: time.Second}, 1},
		{"10/s burst 0 means 1", Rate{N: 10, Per: time.Second}, 0},
		{"20/s burst 3", Rate{N: 20, Per: time.Second}, 3},
		{"5000/h burst 10", Rate{N: 5000, Per: time.Hour}, 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newMemClock()
			m := newTestMemory(clk)
			d := memDestination("d", tc.rate, tc.burst, 0)
			t0 := clk.Now()
			burst := max(tc.burst, 1)
			const extra = 6
			for i := range burst + extra {
				ok, at := reserve(t, m, d, fmt.Sprintf("job%d", i))
				if i < burst {
					if !ok || !at.Equal(t0) {
						t.Fatalf("call %d at one instant = (%v, %v), want (true, now): within the burst of %d", i, ok, at.Sub(t0), burst)
					}
					continue
				}
				want := t0.Add(time.Duration(i-burst+1) * tc.rate.Interval())
				if ok || !at.Equal(want) {
					t.Fatalf("call %d = (%v, now+%v), want (false, now+%v): slots spaced by the interval %v",
						i, ok, at.Sub(t0), want.Sub(t0), tc.rate.Interval())
				}
			}
		})
	}
}

func TestMemoryReservedJobGrantedAtItsSlotWithoutANewOne(t *testing.T) {
	clk := newMemClock()
	m := newTestMemory(clk)
	d := memDestination("d", Rate{N: 10, Per: time.Second}, 1, 0) // 100ms apart
	t0 := clk.Now()
	if ok, _ := reserve(t, m, d, "a"); !ok {
		t.Fatal("first Reserve refused")
	}
	ok, slotB := reserve(t, m, d, "b")
	if ok || !slotB.Equal(t0.Add(100*time.Millisecond)) {
		t.Fatalf("Reserve(b) = (%v, now+%v), want (false, now+100ms)", ok, slotB.Sub(t0))
	}
	// Asking again before the slot returns the same slot and takes none.
	if ok, at := reserve(t, m, d, "b"); ok || !at.Equal(slotB) {
		t.Fatalf("Reserve(b) again = (%v, now+%v), want (false, now+100ms)", ok, at.Sub(t0))
	}
	if ok, at := reserve(t, m, d, "c"); ok || !at.Equal(t0.Add(200*time.Millisecond)) {
		t.Fatalf("Reserve(c) = (%v, now+%v), want (false, now+200ms): b's repeat took a slot", ok, at.Sub(t0))
	}
	// More than reserveEarly before its slot: still held back.
	clk.Add(100*time.Millisecond - reserveEarly - time.Millisecond)
	if ok, at := reserve(t, m, d, "b"); ok || !at.Equal(slotB) {
		t.Fatalf("Reserve(b) %v before its slot = (%v, %v), want (false, slot)", reserveEarly+time.Millisecond, ok, at.Sub(t0))
	}
	// Within reserveEarly of its slot: granted.
	clk.Add(time.Millisecond)
	if ok, _ := reserve(t, m, d, "b"); !ok {
		t.Fatalf("Reserve(b) %v before its slot refused", reserveEarly)
	}
	// The grant took no slot: the next new job follows c.
	if ok, at := reserve(t, m, d, "d"); ok || !at.Equal(t0.Add(300*time.Millisecond)) {
		t.Fatalf("Reserve(d) = (%v, t0+%v), want (false, t0+300ms)", ok, at.Sub(t0))
	}
	// A claimed reservation is gone: b is a new job now.
	if ok, at := reserve(t, m, d, "b"); ok || !at.Equal(t0.Add(400*time.Millisecond)) {
		t.Fatalf("Reserve(b) after its grant = (%v, t0+%v), want (false, t0+400ms)", ok, at.Sub(t0))
	}
}

func TestMemoryReservationsArePerJob(t *testing.T) {
	clk := newMemClock()
	m := newTestMemory(clk)
	d := memDestination("d", Rate{N: 1, Per: time.Second}, 1, 0)
	t0 := clk.Now()
	reserve(t, m, d, "first")
	_, slotA := reserve(t, m, d, "a")
	_, slotB := reserve(t, m, d, "b")
	clk.Add(slotA.Sub(t0))
	if ok, at := reserve(t, m, d, "b"); ok || !at.Equal(slotB) {
		t.Fatalf("Reserve(b) at a's slot = (%v, t0+%v), want (false, t0+%v): b must not use a's slot", ok, at.Sub(t0), slotB.Sub(t0))
	}
	if ok, at := reserve(t, m, d, "stranger"); ok || !at.After(slotB) {
		t.Fatalf("Reserve(stranger) at a's slot = (%v, t0+%v), want a slot after b's", ok, at.Sub(t0))
	}
	if ok, _ := reserve(t, m, d, "a"); !ok {
		t.Fatal("Reserve(a) at its slot refused")
	}
}

func TestMemoryReservationExpires(t *testing.T) {
	clk := newMemClock()
	m := newTestMemory(clk)
	d := memDestination("d", Rate{N: 1, Per: time.Second}, 1, 0)
	reserve(t, m, d, "first")
	_, slot := reserve(t, m, d, "late")
	clk.Add(slot.Sub(clk.Now()) + reservationTTL)
	// The reservation is forgotten and the job decided afresh: the
	// destination has been idle, so it goes now.
	if ok, _ := reserve(t, m, d, "late"); !ok {
		t.Fatal("a job returning after its reservation expired was refused on an idle destination")
	}
	m.mu.Lock()
	md := m.dests["d"]
	m.mu.Unlock()
	md.mu.Lock()
	defer md.mu.Unlock()
	if n := len(md.reserved); n != 0 {
		t.Fatalf("%d reservations left, want 0", n)
	}
}

func TestMemoryReserveUnlimited(t *testing.T) {
	for _, r := range []Rate{{}, {N: 0, Per: time.Second}, {N: 5, Per: 0}} {
		m := newTestMemory(newMemClock())
		d := memDestination("d", r, 0, 0)
		for i := range 1000 {
			if ok, _ := reserve(t, m, d, fmt.Sprint(i)); !ok {
				t.Fatalf("Reserve #%d with rate %+v refused, want always ok", i, r)
			}
		}
	}
}

func TestMemoryReserveWithoutJobTakesNoSlot(t *testing.T) {
	clk := newMemClock()
	m := newTestMemory(clk)
	d := memDestination("d", Rate{N: 10, Per: time.Second}, 1, 0)
	t0 := clk.Now()
	if ok, _ := reserve(t, m, d, ""); !ok {
		t.Fatal("first Reserve without a job refused")
	}
	for range 3 {
		if ok, at := reserve(t, m, d, ""); ok || !at.Equal(t0.Add(100*time.Millisecond)) {
			t.Fatalf("Reserve without a job = (%v, t0+%v), want (false, t0+100ms) every time", ok, at.Sub(t0))
		}
	}
	if ok, at := reserve(t, m, d, "job"); ok || !at.Equal(t0.Add(100*time.Millisecond)) {
		t.Fatalf("Reserve(job) = (%v, t0+%v), want (false, t0+100ms)", ok, at.Sub(t0))
	}
}

func TestMemoryDestinationsAreIndependent(t *testing.T) {
	m := newTestMemory(newMemClock())
	slow := memDestination("slow", Rate{N: 1, Per: time.Hour}, 1, 1)
	fast := memDestination("fast", Rate{N: 1, Per: time.Hour}, 1, 1)
	reserve(t, m, slow, "a")
	if ok, _ := reserve(t, m, slow, "b"); ok {
		t.Fatal("slow: second Reserve within the hour granted")
	}
	if ok, _ := reserve(t, m, fast, "a"); !ok {
		t.Fatal("fast refused because slow is exhausted")
	}
	if _, ok, _ := m.Acquire(context.Background(), slow, time.Minute); !ok {
		t.Fatal("slow: Acquire refused")
	}
	if _, ok, _ := m.Acquire(context.Background(), fast, time.Minute); !ok {
		t.Fatal("fast: Acquire refused because slow's only slot is held")
	}
}

func TestMemoryConnectionCapUnderConcurrency(t *testing.T) {
	const limit, workers, rounds = 3, 50, 20
	m := newTestMemory(newMemClock())
	d := memDestination("d", Rate{}, 0, limit)
	var cur, peak atomic.Int32
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			ctx := context.Background()
			for range rounds {
				var lease Lease
				for {
					l, ok, err := m.Acquire(ctx, d, time.Hour)
					if err != nil {
						t.Error(err)
						return
					}
					if ok {
						lease = l
						break
					}
					runtime.Gosched()
				}
				n := cur.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				cur.Add(-1)
				if err := lease.Release(ctx); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if got := peak.Load(); got > limit {
		t.Fatalf("peak concurrent leases = %d, want <= %d", got, limit)
	}
	st, _ := m.Status(context.Background())
	if len(st) != 1 || st[0].ConnectionsInUse != 0 {
		t.Fatalf("Status after every release = %+v, want d with 0 connections in use", st)
	}
}

func TestMemoryExpiredLeasesComeBack(t *testing.T) {
	clk := newMemClock()
	m := newTestMemory(clk)
	ctx := context.Background()
	d := memDestination("d", Rate{}, 0, 1)
	dead, ok, err := m.Acquire(ctx, d, 10*time.Second)
	if err != nil || !ok {
		t.Fatalf("Acquire = (%v, %v)", ok, err)
	}
	clk.Add(10*time.Second - time.Nanosecond)
	if _, ok, _ := m.Acquire(ctx, d, 10*time.Second); ok {
		t.Fatal("Acquire granted while the only lease is still live")
	}
	clk.Add(time.Nanosecond)
	if _, ok, _ := m.Acquire(ctx, d, 10*time.Second); !ok {
		t.Fatal("Acquire refused after the only lease expired")
	}
	if err := dead.Renew(ctx, 10*time.Second); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Renew of an expired lease = %v, want ErrLeaseLost", err)
	}
	if err := dead.Release(ctx); err != nil {
		t.Fatalf("Release of an expired lease = %v, want nil", err)
	}
	if _, ok, _ := m.Acquire(ctx, d, 10*time.Second); ok {
		t.Fatal("releasing an expired lease freed the slot its successor holds")
	}
}

func TestMemoryReleaseIsIdempotent(t *testing.T) {
	m := newTestMemory(newMemClock())
	ctx := context.Background()
	d := memDestination("d", Rate{}, 0, 2)
	a, _, _ := m.Acquire(ctx, d, time.Minute)
	if _, ok, _ := m.Acquire(ctx, d, time.Minute); !ok {
		t.Fatal("second Acquire refused with 2 slots")
	}
	for range 3 {
		if err := a.Release(ctx); err != nil {
			t.Fatalf("Release = %v", err)
		}
	}
	if _, ok, _ := m.Acquire(ctx, d, time.Minute); !ok {
		t.Fatal("Acquire refused after a release")
	}
	if _, ok, _ := m.Acquire(ctx, d, time.Minute); ok {
		t.Fatal("Acquire granted a third slot: a repeated Release freed more than one")
	}
	if err := a.Renew(ctx, time.Minute); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Renew after Release = %v, want ErrLeaseLost", err)
	}
}

func TestMemoryRenewExtends(t *testing.T) {
	clk := newMemClock()
	m := newTestMemory(clk)
	ctx := context.Background()
	d := memDestination("d", Rate{}, 0, 1)
	l, _, _ := m.Acquire(ctx, d, 10*time.Second)
	clk.Add(8 * time.Second)
	if err := l.Renew(ctx, 10*time.Second); err != nil {
		t.Fatalf("Renew = %v", err)
	}
	clk.Add(9 * time.Second) // 17s: past the first ttl, within the renewed one
	if _, ok, _ := m.Acquire(ctx, d, time.Second); ok {
		t.Fatal("Acquire granted at 17s: the lease renewed at 8s for 10s was dropped")
	}
	clk.Add(time.Second) // 18s
	if _, ok, _ := m.Acquire(ctx, d, time.Second); !ok {
		t.Fatal("Acquire refused at 18s: the renewed lease should have expired")
	}
}

func TestMemoryUnlimitedConnections(t *testing.T) {
	m := newTestMemory(newMemClock())
	ctx := context.Background()
	d := memDestination("d", Rate{}, 0, 0)
	for range 100 {
		l, ok, err := m.Acquire(ctx, d, 0) // no ttl needed: nothing is held
		if err != nil || !ok {
			t.Fatalf("Acquire without a connection limit = (%v, %v), want ok", ok, err)
		}
		if err := l.Renew(ctx, time.Second); err != nil {
			t.Fatal(err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMemoryAcquireRejectsBadTTL(t *testing.T) {
	m := newTestMemory(newMemClock())
	ctx := context.Background()
	d := memDestination("d", Rate{}, 0, 1)
	if _, _, err := m.Acquire(ctx, d, 0); err == nil {
		t.Fatal("Acquire with ttl 0 succeeded")
	}
	l, _, _ := m.Acquire(ctx, d, time.Second)
	if err := l.Renew(ctx, -time.Second); err == nil {
		t.Fatal("Renew with a negative ttl succeeded")
	}
}

// factorOf returns the destination's factor from Status.
func factorOf(t *testing.T, m *Memory, name string) DestinationStatus {
	t.Helper()
	st, err := m.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("Status has no %s: %+v", name, st)
	return DestinationStatus{}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestMemoryThrottledHalvesTheRate(t *testing.T) {
	clk := newMemClock()
	m := newTestMemory(clk)
	ctx := context.Background()
	d := memDestination("d", Rate{N: 10, Per: time.Second}, 1, 0)
	if err := m.Throttled(ctx, d, "421 4.7.0 try again later"); err != nil {
		t.Fatal(err)
	}
	st := factorOf(t, m, "d")
	if !near(st.Factor, 0.5) || st.Current != (Rate{N: 10, Per: 2 * time.Second}) || st.Configured != d.Limits.Rate {
		t.Fatalf("after one cut: factor %v, current %+v, configured %+v; want 0.5, 10 per 2s, 10 per 1s", st.Factor, st.Current, st.Configured)
	}
	t0 := clk.Now()
	reserve(t, m, d, "a")
	if ok, at := reserve(t, m, d, "b"); ok || at.Sub(t0) != 200*time.Millisecond {
		t.Fatalf("Reserve after the cut = (%v, now+%v), want (false, now+200ms): half the rate", ok, at.Sub(t0))
	}
}

func TestMemoryThrottledDebounceFloorAndRecovery(t *testing.T) {
	clk := newMemClock()
	a := Adaptive{Cut: 0.5, Floor: 0.1, Debounce: 10 * time.Second, Hold: time.Minute, Step: 0.1, StepEvery: time.Minute}
	m := NewMemory(MemoryConfig{Now: clk.Now, Adaptive: a})
	ctx := context.Background()
	d := memDestination("d", Rate{N: 100, Per: time.Second}, 1, 0)
	steps := []struct {
		advance time.Duration
		cut     bool
		want    float64
		why     string
	}{
		{0, true, 0.5, "first cut halves"},
		{5 * time.Second, true, 0.5, "second reply within Debounce is ignored"},
		{5 * time.Second, true, 0.25, "a reply Debounce after the cut cuts again"},
		{10 * time.Second, true, 0.125, "third cut"},
		{10 * time.Second, true, 0.1, "Floor stops the fourth cut at 0.1"},
		{10 * time.Second, true, 0.1, "and every later one"},
		{time.Minute - time.Nanosecond, false, 0.1, "held through Hold"},
		{time.Minute + time.Nanosecond, false, 0.2, "one Step after Hold+StepEvery"},
		{time.Minute, false, 0.3, "another Step"},
		{10 * time.Minute, false, 1, "recovered, never above 1"},
		{0, true, 0.5, "a cut after recovery halves from 1"},
	}
	var last time.Time
	for _, s := range steps {
		clk.Add(s.advance)
		if s.cut {
			if err := m.Throttled(ctx, d, "throttled"); err != nil {
				t.Fatal(err)
			}
		}
		st := factorOf(t, m, "d")
		if !near(st.Factor, s.want) {
			t.Fatalf("%s: factor %v, want %v", s.why, st.Factor, s.want)
		}
		if s.cut && s.why != "second reply within Debounce is ignored" {
			last = clk.Now()
		}
		if !st.LastThrottled.Equal(last) {
			t.Fatalf("%s: LastThrottled %v, want %v", s.why, st.LastThrottled, last)
		}
	}
}

func TestMemoryAdaptiveDefaults(t *testing.T) {
	m := NewMemory(MemoryConfig{Adaptive: Adaptive{Cut: 0.8, Floor: 2}})
	want := DefaultAdaptive()
	want.Cut = 0.8
	if m.adaptive != want {
		t.Fatalf("adaptive = %+v, want %+v: zero fields and a Floor above 1 take the defaults", m.adaptive, want)
	}
}

func TestMemoryThrottledLogsTheCut(t *testing.T) {
	var buf bytes.Buffer
	m := NewMemory(MemoryConfig{Now: newMemClock().Now, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	d := memDestination("google", Rate{N: 20, Per: time.Second}, 1, 0)
	if err := m.Throttled(context.Background(), d, "421 4.7.28 unusual rate"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"rate cut", "destination=google", "factor_to=0.5", "4.7.28", "rate=20/2s"} {
		if !strings.Contains(buf.String(), want) {
			t.Fatalf("log %q lacks %q", buf.String(), want)
		}
	}
}

func TestMemoryStatus(t *testing.T) {
	clk := newMemClock()
	m := newTestMemory(clk)
	ctx := context.Background()
	b := memDestination("b", Rate{N: 100, Per: time.Second}, 1, 5)
	a := memDestination("a", Rate{N: 20, Per: time.Minute}, 1, 2)
	for range 3 {
		if _, ok, _ := m.Acquire(ctx, b, time.Minute); !ok {
			t.Fatal("Acquire(b) refused")
		}
	}
	if _, ok, _ := m.Acquire(ctx, a, time.Second); !ok {
		t.Fatal("Acquire(a) refused")
	}
	if err := m.Throttled(ctx, a, "421"); err != nil {
		t.Fatal(err)
	}
	cut := clk.Now()
	clk.Add(2 * time.Second) // a's lease expires
	got, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []DestinationStatus{
		{Name: "a", Configured: a.Limits.Rate, Current: Rate{N: 20, Per: 2 * time.Minute}, Factor: 0.5, ConnectionsInUse: 0, LastThrottled: cut},
		{Name: "b", Configured: b.Limits.Rate, Current: b.Limits.Rate, Factor: 1, ConnectionsInUse: 3},
	}
	if len(got) != len(want) {
		t.Fatalf("Status = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Status[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestMemorySweepDropsIdleDestinations(t *testing.T) {
	clk := newMemClock()
	m := newTestMemory(clk)
	ctx := context.Background()
	idle := memDestination("idle", Rate{N: 10, Per: time.Second}, 1, 0)
	leased := memDestination("leased", Rate{}, 0, 1)
	cut := memDestination("cut", Rate{N: 10, Per: time.Second}, 1, 0)
	held := memDestination("held", Rate{N: 1, Per: time.Hour}, 1, 0)
	reserve(t, m, idle, "x")
	if _, _, err := m.Acquire(ctx, leased, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := m.Throttled(ctx, cut, "421"); err != nil {
		t.Fatal(err)
	}
	reserve(t, m, held, "x")
	reserve(t, m, held, "y") // a slot an hour away
	clk.Add(sweepEvery)
	reserve(t, m, memDestination("trigger", Rate{}, 0, 0), "x") // runs the sweep
	st, _ := m.Status(ctx)
	var names []string
	for _, s := range st {
		names = append(names, s.Name)
	}
	if got, want := strings.Join(names, ","), "cut,held,leased,trigger"; got != want {
		t.Fatalf("destinations after a sweep = %s, want %s (idle dropped)", got, want)
	}
	// A dropped destination starts afresh, as if never seen.
	if ok, _ := reserve(t, m, idle, "z"); !ok {
		t.Fatal("Reserve on a swept destination refused")
	}
}

func TestMemorySweepRacesWithUse(t *testing.T) {
	// Calls spread over many sweeps must never lose a lease: the cap holds.
	clk := newMemClock()
	m := newTestMemory(clk)
	ctx := context.Background()
	d := memDestination("d", Rate{N: 1000, Per: time.Second}, 10, 2)
	var wg sync.WaitGroup
	var held, peak atomic.Int32
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				if i == 0 {
					clk.Add(sweepEvery) // a sweep on the next call
				}
				if _, _, err := m.Reserve(ctx, d, fmt.Sprintf("%d-%d", i, j)); err != nil {
					t.Error(err)
					return
				}
				l, ok, err := m.Acquire(ctx, d, time.Hour)
				if err != nil {
					t.Error(err)
					return
				}
				if !ok {
					continue
				}
				n := held.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				held.Add(-1)
				if err := l.Release(ctx); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > 2 {
		t.Fatalf("peak leases %d, want <= 2", p)
	}
}

// BenchmarkMemoryReserve measures rate decisions per second.
func BenchmarkMemoryReserve(b *testing.B) {
	ctx := context.Background()
	report := func(b *testing.B) {
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
	}
	b.Run("granted", func(b *testing.B) {
		m := NewMemory(MemoryConfig{})
		d := memDestination("d", Rate{N: 1_000_000_000, Per: time.Second}, 1000, 0)
		for i := 0; b.Loop(); i++ {
			if _, _, err := m.Reserve(ctx, d, "job"); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("held-back", func(b *testing.B) {
		// 1,000 jobs with reservations, asking again before their slot.
		clk := newMemClock()
		m := NewMemory(MemoryConfig{Now: clk.Now})
		d := memDestination("d", Rate{N: 1, Per: time.Second}, 1, 0)
		jobs := make([]string, 1000)
		for i := range jobs {
			jobs[i] = fmt.Sprint("job", i)
		}
		for i := 0; b.Loop(); i++ {
			if _, _, err := m.Reserve(ctx, d, jobs[i%len(jobs)]); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("parallel-64-destinations", func(b *testing.B) {
		m := NewMemory(MemoryConfig{})
		dests := make([]Destination, 64)
		for i := range dests {
			dests[i] = memDestination(fmt.Sprint("d", i), Rate{N: 1_000_000_000, Per: time.Second}, 1000, 0)
		}
		var n atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			d := dests[n.Add(1)%int64(len(dests))]
			for pb.Next() {
				if _, _, err := m.Reserve(ctx, d, "job"); err != nil {
					b.Error(err)
					return
				}
			}
		})
		report(b)
	})
}

// TestMemoryCutVoidsReservations: slots reserved before a cut were spaced
// for the old rate; after the cut a returning job takes a slot at the new
// spacing, so the cut takes effect at once instead of after the backlog.
func TestMemoryCutVoidsReservations(t *testing.T) {
	clk := newMemClock()
	m := NewMemory(MemoryConfig{Now: clk.Now, Adaptive: Adaptive{Cut: 0.5, Floor: 0.1, Debounce: time.Second, Hold: time.Hour, Step: 0.1, StepEvery: time.Hour}})
	d := memDestination("cut.test", Rate{N: 10, Per: time.Second}, 1, 0)
	reserve(t, m, d, "first")
	var slots []time.Time
	for i := range 5 {
		_, at := reserve(t, m, d, strconv.Itoa(i))
		slots = append(slots, at)
	}
	if err := m.Throttled(context.Background(), d, "421"); err != nil {
		t.Fatal(err)
	}
	clk.Add(slots[0].Sub(clk.Now())) // job 0 comes back at its old slot
	ok, at := reserve(t, m, d, "0")
	if !ok {
		t.Fatalf("job 0 at its voided slot: held until %v, want a fresh grant (the schedule restarted)", at)
	}
	_, at = reserve(t, m, d, "1")
	if got := at.Sub(clk.Now()); got != 200*time.Millisecond {
		t.Fatalf("job 1 after the cut: slot in %v, want 200ms (the halved rate)", got)
	}
}

// TestMemoryLateClaimIsDecidedAfresh: a reservation claimed more than
// reserveLate after its slot is void, so that jobs held up together cannot
// redeem a run of past slots at once.
func TestMemoryLateClaimIsDecidedAfresh(t *testing.T) {
	clk := newMemClock()
	m := newTestMemory(clk)
	d := memDestination("late.test", Rate{N: 10, Per: time.Second}, 1, 0)
	reserve(t, m, d, "first")
	var slots []time.Time
	for i := range 10 {
		_, at := reserve(t, m, d, strconv.Itoa(i))
		slots = append(slots, at)
	}
	// Every job comes back a second after the last slot: only the GCRA
	// decision lets any through, one now and the rest spaced again.
	clk.Add(slots[9].Sub(clk.Now()) + time.Second)
	granted := 0
	for i := range 10 {
		if ok, _ := reserve(t, m, d, strconv.Itoa(i)); ok {
			granted++
		}
	}
	if granted != 1 {
		t.Fatalf("%d late claims granted at once, want 1 (burst 1)", granted)
	}
}

// TestMemoryRecoveryStepTakesEffect: slots reserved at a cut rate are void
// once a recovery step raises it, so the faster rate applies at once
// instead of after the slow backlog.
func TestMemoryRecoveryStepTakesEffect(t *testing.T) {
	clk := newMemClock()
	a := Adaptive{Cut: 0.5, Floor: 0.1, Debounce: time.Second, Hold: time.Second, Step: 0.5, StepEvery: time.Second}
	m := NewMemory(MemoryConfig{Now: clk.Now, Adaptive: a})
	d := memDestination("recover.test", Rate{N: 10, Per: time.Second}, 1, 0)
	if err := m.Throttled(context.Background(), d, "421"); err != nil {
		t.Fatal(err)
	}
	reserve(t, m, d, "first")
	for i := range 100 { // 20s of backlog at the cut rate (5/s)
		reserve(t, m, d, strconv.Itoa(i))
	}
	clk.Add(a.Hold + a.StepEvery) // the factor is back to 1
	if ok, at := reserve(t, m, d, "0"); !ok {
		t.Fatalf("job 0 after recovery: held until %v, want granted (its old slot is void)", at)
	}
	_, at := reserve(t, m, d, "1")
	if got := at.Sub(clk.Now()); got != 100*time.Millisecond {
		t.Fatalf("job 1 after recovery: slot in %v, want 100ms (the full rate)", got)
	}
}

func TestAdaptiveEpoch(t *testing.T) {
	a := Adaptive{Cut: 0.5, Floor: 0.1, Hold: time.Second, Step: 0.25, StepEvery: time.Second}
	cut := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		after time.Duration
		want  time.Duration // after the cut
	}{
		{0, 0}, {time.Second, 0}, {1999 * time.Millisecond, 0},
		{2 * time.Second, 2 * time.Second}, {3500 * time.Millisecond, 3 * time.Second},
		{time.Hour, 3 * time.Second}, // 0.5 -> 0.75 -> 1 in two steps
	} {
		if got := a.Epoch(0.5, cut, cut.Add(tc.after)); !got.Equal(cut.Add(tc.want)) {
			t.Errorf("Epoch %v after the cut = %v after it, want %v", tc.after, got.Sub(cut), tc.want)
		}
	}
	if !a.Epoch(1, cut, cut).IsZero() || !a.Epoch(0.5, time.Time{}, cut).IsZero() {
		t.Error("Epoch without a cut in force is not zero")
	}
}
