package shaping

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postflow/postflow/pkg/telemetry"
)

const (
	// reserveEarly is how long before its slot a reserved job is still
	// granted: a redelivery timer that fires a hair early should not cost
	// another round trip through the queue. It is capped at one interval,
	// so a job is never more than one slot early.
	reserveEarly = 50 * time.Millisecond
	// reserveLate is how long after its slot a reservation may still be
	// claimed. Later, it is void and the job is decided afresh: jobs held
	// up together (waiting for a connection, a starved worker) must not
	// redeem a run of past slots at once and burst past the rate. At 50/s
	// it lets at most 5 late slots through together.
	reserveLate = 100 * time.Millisecond
	// reservationTTL is how long after its slot an unclaimed reservation
	// is kept. A job that comes back later (its worker died, the queue was
	// slow) is decided afresh; its slot has passed unused either way.
	reservationTTL = 10 * time.Minute
	// sweepEvery spaces the sweeps that drop expired reservations, expired
	// leases and idle destinations.
	sweepEvery = time.Minute
)

// MemoryConfig configures a Memory limiter.
type MemoryConfig struct {
	// Adaptive says how throttling replies change a destination's rate.
	// Zero fields take DefaultAdaptive's values, as do a Cut or a Floor
	// outside (0, 1].
	Adaptive Adaptive
	// Now is the clock; nil is time.Now. Tests pass a fake one.
	Now func() time.Time
	// Logger receives one line per rate cut; nil logs nothing.
	Logger *slog.Logger
}

// Memory is the in-process Limiter: the embedded default, and the
// fallback a worker applies while Redis is unreachable. It runs the
// algorithm of the Redis limiter on state held in maps: GCRA with per-job
// reservations for the rate, a counting semaphore of expiring leases for
// connections, and the lazily recovering Adaptive factor.
//
// Each destination has its own lock, so a busy or throttled destination
// never waits on another. A destination's state is created on first use
// and dropped by a sweep (at most once a minute, on some call) when it
// holds nothing: no future slot, no reservation, no lease and no rate cut
// still recovering. Memory therefore grows with the destinations in
// active use and with their outstanding reservations (one map entry per
// job held back, kept until reservationTTL after its slot), not with every
// domain ever seen. Lock order: Memory.mu before memDest.mu.
type Memory struct {
	adaptive Adaptive
	now      func() time.Time
	log      *slog.Logger

	mu        sync.Mutex
	dests     map[string]*memDest
	nextSweep time.Time
	nextID    atomic.Uint64
}

var _ Limiter = (*Memory)(nil)

// memDest is one destination's state.
type memDest struct {
	mu sync.Mutex
	// removed marks state the sweep dropped: a caller that looked it up
	// just before looks it up again.
	removed bool
	// limits are the latest the callers passed.
	limits Limits
	// tat is GCRA's theoretical arrival time: when the next message would
	// go at the steady rate, reservations included.
	tat time.Time
	// tatEpoch is the rate epoch (Adaptive.Epoch) tat was computed in;
	// in another epoch the schedule restarts from now.
	tatEpoch time.Time
	// reserved maps a held-back job to its slot.
	reserved map[string]reservation
	// leases maps a lease id to its expiry.
	leases map[uint64]time.Time
	// cutFactor and cutAt describe the latest adaptive cut; see
	// Adaptive.Factor.
	cutFactor float64
	cutAt     time.Time
}

// NewMemory returns an empty in-process limiter.
func NewMemory(cfg MemoryConfig) *Memory {
	a, def := cfg.Adaptive, DefaultAdaptive()
	if a.Cut <= 0 || a.Cut > 1 {
		a.Cut = def.Cut
	}
	if a.Floor <= 0 || a.Floor > 1 {
		a.Floor = def.Floor
	}
	if a.Debounce <= 0 {
		a.Debounce = def.Debounce
	}
	if a.Hold <= 0 {
		a.Hold = def.Hold
	}
	if a.Step <= 0 {
		a.Step = def.Step
	}
	if a.StepEvery <= 0 {
		a.StepEvery = def.StepEvery
	}
	m := &Memory{adaptive: a, now: cfg.Now, log: cfg.Logger, dests: map[string]*memDest{}}
	if m.now == nil {
		m.now = time.Now
	}
	return m
}

// lock returns dest's state, locked, with its limits updated to dest's.
// The caller unlocks it.
func (m *Memory) lock(dest Destination, now time.Time) *memDest {
	for {
		m.mu.Lock()
		if !now.Before(m.nextSweep) {
			m.sweepLocked(now)
			m.nextSweep = now.Add(sweepEvery)
		}
		d := m.dests[dest.Name]
		if d == nil {
			d = &memDest{reserved: map[string]reservation{}, leases: map[uint64]time.Time{}, cutFactor: 1}
			m.dests[dest.Name] = d
		}
		m.mu.Unlock()
		d.mu.Lock()
		if !d.removed {
			d.limits = dest.Limits
			return d
		}
		d.mu.Unlock()
	}
}

// sweepLocked drops expired reservations and leases everywhere, and the
// destinations left with nothing. m.mu is held.
func (m *Memory) sweepLocked(now time.Time) {
	for name, d := range m.dests {
		d.mu.Lock()
		d.pruneReservations(now)
		d.pruneLeases(now)
		if len(d.reserved) == 0 && len(d.leases) == 0 && !d.tat.After(now) && m.factor(d, now) >= 1 {
			d.removed = true
			delete(m.dests, name)
		}
		d.mu.Unlock()
	}
}

func (d *memDest) pruneReservations(now time.Time) {
	for job, r := range d.reserved {
		if now.Sub(r.slot) >= reservationTTL {
			delete(d.reserved, job)
		}
	}
}

func (d *memDest) pruneLeases(now time.Time) {
	for id, exp := range d.leases {
		if !now.Before(exp) {
			delete(d.leases, id)
		}
	}
}

// factor is d's adaptive rate factor at now. d.mu is held.
func (m *Memory) factor(d *memDest, now time.Time) float64 {
	return m.adaptive.Factor(d.cutFactor, d.cutAt, now)
}

// interval is d's emission interval at now, after adaptive cuts; 0 means
// unlimited. d.mu is held.
func (m *Memory) interval(d *memDest, now time.Time) time.Duration {
	t := d.limits.Rate.Interval()
	if t <= 0 {
		return 0
	}
	if f := m.factor(d, now); f < 1 {
		t = time.Duration(float64(t) / f)
	}
	return t
}

// Reserve implements Limiter. A job with a reservation is granted from
// min(50ms, one interval) before its slot on; before that it gets its slot
// back, and no new one. A reservation not claimed within 10 minutes of its
// slot is forgotten. With an empty job nobody could claim a reservation,
// so a refusal takes no slot: at is only the earliest time worth asking
// again (as in the Redis limiter).
func (m *Memory) Reserve(_ context.Context, dest Destination, job string) (bool, time.Time, error) {
	now := m.now()
	d := m.lock(dest, now)
	defer d.mu.Unlock()

	t := m.interval(d, now)
	epoch := m.adaptive.Epoch(d.cutFactor, d.cutAt, now)
	if !d.tatEpoch.Equal(epoch) {
		d.tat, d.tatEpoch = now, epoch
	}
	if r, ok := d.reserved[job]; ok {
		slot := r.slot
		switch {
		case t <= 0 || now.Sub(slot) > reserveLate || !r.epoch.Equal(epoch):
			// Unlimited now, claimed too late to honour without a
			// burst, or spaced for a rate no longer in force: decide
			// afresh below.
			delete(d.reserved, job)
		case !now.Before(slot.Add(-min(reserveEarly, t))):
			delete(d.reserved, job)
			return true, now, nil
		default:
			return false, slot, nil
		}
	}
	if t <= 0 {
		return true, now, nil
	}
	// GCRA: a message conforms when it is no more than the burst
	// tolerance ahead of the theoretical arrival time.
	tau := time.Duration(max(d.limits.Burst, 1)-1) * t
	tat := d.tat
	if tat.Before(now) {
		tat = now
	}
	slot := tat.Add(-tau)
	switch {
	case !slot.After(now):
		d.tat = tat.Add(t)
		return true, now, nil
	case job == "":
		return false, slot, nil
	default:
		d.tat = tat.Add(t)
		d.reserved[job] = reservation{slot: slot, epoch: epoch}
		return false, slot, nil
	}
}

// reservation is a slot held for a job, in the rate epoch it was spaced for.
type reservation struct {
	slot, epoch time.Time
}

// Acquire implements Limiter. Leases are counted against the
// destination's current Connections, so lowering the limit takes effect
// as sessions end.
func (m *Memory) Acquire(_ context.Context, dest Destination, ttl time.Duration) (Lease, bool, error) {
	if dest.Limits.Connections <= 0 {
		return memNoLease{}, true, nil
	}
	if ttl <= 0 {
		return nil, false, fmt.Errorf("shaping: %s: lease ttl %v is not positive", dest.Name, ttl)
	}
	now := m.now()
	d := m.lock(dest, now)
	defer d.mu.Unlock()
	d.pruneLeases(now)
	if len(d.leases) >= d.limits.Connections {
		return nil, false, nil
	}
	id := m.nextID.Add(1)
	d.leases[id] = now.Add(ttl)
	return &memLease{m: m, dest: dest, id: id}, true, nil
}

// memNoLease is the lease of a destination without a connection limit.
type memNoLease struct{}

func (memNoLease) Renew(context.Context, time.Duration) error { return nil }
func (memNoLease) Release(context.Context) error              { return nil }

// memLease is a Memory connection slot.
type memLease struct {
	m    *Memory
	dest Destination
	id   uint64

	mu       sync.Mutex
	released bool
}

// Renew implements Lease. It returns an error wrapping ErrLeaseLost when
// the lease expired first (its slot may be someone else's now) or was
// released; the lease is not taken back, as in the Redis limiter.
func (l *memLease) Renew(_ context.Context, ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("shaping: %s: renew: ttl %v is not positive", l.dest.Name, ttl)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return fmt.Errorf("shaping: %s: renew: %w", l.dest.Name, ErrLeaseLost)
	}
	now := l.m.now()
	d := l.m.lock(l.dest, now)
	defer d.mu.Unlock()
	exp, ok := d.leases[l.id]
	if !ok || !now.Before(exp) {
		delete(d.leases, l.id)
		return fmt.Errorf("shaping: %s: renew: %w", l.dest.Name, ErrLeaseLost)
	}
	d.leases[l.id] = now.Add(ttl)
	return nil
}

// Release implements Lease.
func (l *memLease) Release(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return nil
	}
	l.released = true
	now := l.m.now()
	d := l.m.lock(l.dest, now)
	delete(d.leases, l.id)
	d.mu.Unlock()
	return nil
}

// Throttled implements Limiter: the factor in force is multiplied by Cut,
// down to Floor, unless the previous cut is less than Debounce old. The
// cut and its reason are logged.
func (m *Memory) Throttled(ctx context.Context, dest Destination, reason string) error {
	now := m.now()
	d := m.lock(dest, now)
	from := m.factor(d, now)
	if !d.cutAt.IsZero() && now.Sub(d.cutAt) < m.adaptive.Debounce {
		d.mu.Unlock()
		return nil
	}
	to := max(from*m.adaptive.Cut, m.adaptive.Floor)
	d.cutFactor, d.cutAt = to, now
	// The cut starts a new rate epoch: slots handed out before it are
	// void and the schedule restarts (see Reserve).
	d.mu.Unlock()
	telemetry.RateCut(ctx)
	if m.log != nil {
		m.log.Info("shaping: rate cut", slog.String("destination", dest.Name),
			slog.Float64("factor_from", from), slog.Float64("factor_to", to),
			slog.String("rate", describeRate(slowedRate(dest.Limits.Rate, to))),
			slog.String("reason", reason))
	}
	return nil
}

// slowedRate is r slowed by factor f (0 < f <= 1).
func slowedRate(r Rate, f float64) Rate {
	if r.Unlimited() || f >= 1 || f <= 0 {
		return r
	}
	return Rate{N: r.N, Per: time.Duration(float64(r.Per) / f)}
}

// Status implements Limiter, sorted by name.
func (m *Memory) Status(context.Context) ([]DestinationStatus, error) {
	now := m.now()
	m.mu.Lock()
	ds := make([]*memDest, 0, len(m.dests))
	names := make([]string, 0, len(m.dests))
	for name, d := range m.dests {
		ds = append(ds, d)
		names = append(names, name)
	}
	m.mu.Unlock()
	out := make([]DestinationStatus, 0, len(ds))
	for i, d := range ds {
		d.mu.Lock()
		if !d.removed {
			d.pruneLeases(now)
			f := m.factor(d, now)
			out = append(out, DestinationStatus{
				Name:             names[i],
				Configured:       d.limits.Rate,
				Current:          slowedRate(d.limits.Rate, f),
				Factor:           f,
				ConnectionsInUse: len(d.leases),
				LastThrottled:    d.cutAt,
			})
		}
		d.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b DestinationStatus) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
