package shaping

import (
	"context"
	"errors"
	"math"
	"time"
)

// ErrLeaseLost is returned by Lease.Renew when the lease is no longer held:
// it expired (and its slot may have gone to someone else), or Redis lost it
// in a restart. The caller should stop counting on the slot.
var ErrLeaseLost = errors.New("shaping: lease lost")

// Rate is a message rate: N messages per Per. The zero Rate is unlimited.
type Rate struct {
	N   int
	Per time.Duration
}

// Unlimited reports whether r sets no limit.
func (r Rate) Unlimited() bool { return r.N <= 0 || r.Per <= 0 }

// Interval is GCRA's emission interval, Per/N: the spacing of messages at
// the steady rate. It is 0 for an unlimited rate.
func (r Rate) Interval() time.Duration {
	if r.Unlimited() {
		return 0
	}
	return r.Per / time.Duration(r.N)
}

// PerSecond is the rate in messages per second, 0 when unlimited.
func (r Rate) PerSecond() float64 {
	if r.Unlimited() {
		return 0
	}
	return float64(r.N) / r.Per.Seconds()
}

// Limits apply to one destination, shared by every worker.
type Limits struct {
	// Rate caps messages started per unit of time (GCRA, with Burst).
	Rate Rate
	// Burst is how many messages may start back to back before Rate
	// spaces them; GCRA's burst tolerance is (Burst-1) × Rate.Interval().
	// Zero means 1.
	Burst int
	// Connections caps concurrent SMTP sessions (leased semaphore); zero
	// means unlimited.
	Connections int
	// MessagesPerConnection caps how many messages one session carries;
	// zero means the SMTP client's default.
	MessagesPerConnection int
	// RecipientsPerTransaction caps RCPTs per transaction; zero means the
	// API's own cap.
	RecipientsPerTransaction int
}

// Destination is a named group of recipient domains that share one set of
// limits: one receiving organisation, such as every domain whose MX hosts
// end in .google.com. Its Name keys the shared state (Redis keys use it as
// their hash tag), so it must be stable across workers.
type Destination struct {
	Name   string
	Limits Limits
}

// Limiter decides, for every worker, whether a message may go to a
// destination now. Implementations: Memory (one process, the embedded
// default) and Redis (shared). All methods are safe for concurrent use.
type Limiter interface {
	// Reserve takes one message slot at dest for job, a key stable across
	// redeliveries of the same job (message id and recipient domain). When
	// ok, send now. Otherwise at is the slot reserved for job: the caller
	// hands the job back until then (NakWithDelay), and a Reserve for the
	// same job at or after at is granted without taking another slot, so a
	// throttled job costs one fetch per send, not a fetch per poll. An
	// unlimited Rate is always ok.
	Reserve(ctx context.Context, dest Destination, job string) (ok bool, at time.Time, err error)
	// Acquire leases one of dest's connection slots for ttl. ok is false
	// when every slot is held; the caller retries later. A lease that is
	// neither renewed nor released expires, so a dead worker's slots come
	// back. Unlimited Connections always succeed.
	Acquire(ctx context.Context, dest Destination, ttl time.Duration) (lease Lease, ok bool, err error)
	// Throttled reports a throttling reply from dest (421, 4.7.x rate
	// limits, provider texts): dest's rate is cut for a while and then
	// recovers step by step; every worker sees the change.
	Throttled(ctx context.Context, dest Destination, reason string) error
	// Status reports the destinations this limiter has state for.
	Status(ctx context.Context) ([]DestinationStatus, error)
}

// Lease is a held connection slot.
type Lease interface {
	// Renew extends the lease to ttl from now; a long session renews
	// before the lease runs out.
	Renew(ctx context.Context, ttl time.Duration) error
	// Release frees the slot. Calling it more than once is harmless.
	Release(ctx context.Context) error
}

// DestinationStatus is one destination's live state.
type DestinationStatus struct {
	Name string
	// Configured is the destination's configured rate; Current the rate
	// in force after adaptive cuts.
	Configured, Current Rate
	// Factor is Current/Configured, 1 when not throttled.
	Factor float64
	// ConnectionsInUse counts unexpired leases.
	ConnectionsInUse int
	// LastThrottled is the time of the latest cut; zero if none.
	LastThrottled time.Time
}

// Adaptive says how throttling replies change a destination's rate.
type Adaptive struct {
	// Cut multiplies the rate factor on a throttling reply (default 0.5).
	Cut float64
	// Floor is the lowest factor (default 0.05).
	Floor float64
	// Debounce ignores further throttling replies this soon after a cut
	// (default 10s): many sessions see the same 421 burst at once.
	Debounce time.Duration
	// Hold keeps the cut rate this long after the last cut (default 1m).
	Hold time.Duration
	// Step is added to the factor every StepEvery after Hold, up to 1
	// (defaults 0.1 and 1m): recovery is gradual.
	Step      float64
	StepEvery time.Duration
}

// DefaultAdaptive returns the defaults documented on Adaptive.
func DefaultAdaptive() Adaptive {
	return Adaptive{Cut: 0.5, Floor: 0.05, Debounce: 10 * time.Second, Hold: time.Minute, Step: 0.1, StepEvery: time.Minute}
}

// Factor is the rate factor at now, given the factor set at the last cut
// (cutFactor) and its time (cutAt). Both implementations compute it the same
// way, lazily, so no timer runs.
func (a Adaptive) Factor(cutFactor float64, cutAt, now time.Time) float64 {
	if cutAt.IsZero() || cutFactor >= 1 {
		return 1
	}
	since := now.Sub(cutAt) - a.Hold
	if since <= 0 || a.StepEvery <= 0 {
		return max(cutFactor, a.Floor)
	}
	steps := float64(since / a.StepEvery)
	return min(1, max(cutFactor, a.Floor)+steps*a.Step)
}

// String formats r as the configuration writes it: "50/s", "5000/h",
// "unlimited".
func (r Rate) String() string { return describeRate(r) }

// Epoch is the time of the latest change of the rate factor at now: the
// last cut, or the latest recovery step after it (step k comes Hold +
// k×StepEvery after the cut; steps after full recovery change nothing). It
// is zero when no cut is in force. Limiters schedule message slots per
// epoch: slots reserved under another epoch were spaced for another rate,
// so they are void and the schedule restarts, which makes a cut, and each
// recovery step, take effect at once.
func (a Adaptive) Epoch(cutFactor float64, cutAt, now time.Time) time.Time {
	if cutAt.IsZero() || cutFactor >= 1 {
		return time.Time{}
	}
	since := now.Sub(cutAt) - a.Hold
	if since < 0 || a.StepEvery <= 0 || a.Step <= 0 {
		return cutAt
	}
	k := int64(since / a.StepEvery)
	full := int64(math.Ceil((1 - max(cutFactor, a.Floor)) / a.Step))
	k = min(k, full)
	if k <= 0 {
		return cutAt
	}
	return cutAt.Add(a.Hold + time.Duration(k)*a.StepEvery)
}
