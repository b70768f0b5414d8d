// Package shaping limits how hard Postflow pushes each destination: how many
// SMTP sessions it holds open at once and how many messages per second it
// starts. This version holds the limits in process (the embedded default);
// the Redis-backed limiter shared by every worker implements the same
// interface.
package shaping

import (
	"context"
	"fmt"
	"sync"

	"golang.org/x/time/rate"
)

// DefaultLimits are conservative enough for any receiver: Postfix's default
// destination concurrency is 20 (default_destination_concurrency_limit);
// large providers ask for fewer.
func DefaultLimits() Limits {
	return Limits{Connections: 10}
}

// Local is an in-process limiter. Destinations are created on first use and
// never forgotten, so a worker's memory grows with the number of distinct
// destinations it has seen (a few hundred bytes each).
type Local struct {
	lim   Limits
	mu    sync.Mutex
	dests map[string]*dest
}

type dest struct {
	slots chan struct{}
	rate  *rate.Limiter
}

// NewLocal returns an in-process limiter applying lim to every destination.
func NewLocal(lim Limits) *Local {
	return &Local{lim: lim, dests: map[string]*dest{}}
}

// Acquire blocks until destination has a free session slot and its rate
// allows one more message, or ctx ends. The caller must call release exactly
// once when the session is over.
func (l *Local) Acquire(ctx context.Context, destination string) (release func(), err error) {
	d := l.dest(destination)
	if d.rate != nil {
		if err := d.rate.Wait(ctx); err != nil {
			return nil, fmt.Errorf("shaping: %s: %w", destination, err)
		}
	}
	if d.slots == nil {
		return func() {}, nil
	}
	select {
	case d.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("shaping: %s: %w", destination, ctx.Err())
	}
	var once sync.Once
	return func() { once.Do(func() { <-d.slots }) }, nil
}

func (l *Local) dest(name string) *dest {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.dests[name]
	if d == nil {
		d = &dest{}
		if l.lim.Connections > 0 {
			d.slots = make(chan struct{}, l.lim.Connections)
		}
		if !l.lim.Rate.Unlimited() {
			d.rate = rate.NewLimiter(rate.Limit(l.lim.Rate.PerSecond()), max(l.lim.Burst, 1))
		}
		l.dests[name] = d
	}
	return d
}
