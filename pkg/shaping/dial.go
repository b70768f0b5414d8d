package shaping

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoConnection is returned by a leased dialer when every connection slot
// of the destination is held. It is a reason to try later, not a failure of
// the receiver.
var ErrNoConnection = errors.New("shaping: every connection slot of the destination is in use")

type destKey struct{}

// WithDestination returns ctx carrying dest, for a Dialer made by
// LeasedDialer: connections dialed under it count against dest's limit.
func WithDestination(ctx context.Context, dest Destination) context.Context {
	return context.WithValue(ctx, destKey{}, dest)
}

// DestinationOf returns the destination ctx carries, if any.
func DestinationOf(ctx context.Context) (Destination, bool) {
	d, ok := ctx.Value(destKey{}).(Destination)
	return d, ok
}

type heldKey struct{}

// HeldLease is a connection slot taken before dialing, so that a job
// claims its rate slot only with a connection in hand. A LeasedDialer
// uses it for the first connection it opens under the context that
// carries it (see WithLease) instead of acquiring one.
type HeldLease struct {
	lease Lease
	used  atomic.Bool
}

// WithLease returns ctx carrying lease for the next leased dial.
func WithLease(ctx context.Context, lease Lease) (context.Context, *HeldLease) {
	h := &HeldLease{lease: lease}
	return context.WithValue(ctx, heldKey{}, h), h
}

// ReleaseUnused releases the lease if no connection took it (the job found
// a pooled session after all, or was held back by its rate).
func (h *HeldLease) ReleaseUnused(ctx context.Context) {
	if h != nil && h.used.CompareAndSwap(false, true) {
		_ = h.lease.Release(ctx)
	}
}

// DialFunc dials a network address, as net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// LeasedDialer returns a dialer that holds one of the destination's
// connection slots (see WithDestination) for as long as each connection it
// opens stays open, idle in a connection pool included, since the receiver
// counts it all that time. The lease is renewed every ttl/3 by a goroutine
// that ends with the connection, and released when the connection is
// closed; a worker that dies stops renewing, and its slots come back
// within ttl. Without a destination in ctx it dials without a lease.
//
// When every slot is held the dial fails at once with an error wrapping
// ErrNoConnection: the caller hands the job back for later instead of
// waiting on a slot while holding it.
func LeasedDialer(l Limiter, dial DialFunc, ttl time.Duration) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		dest, ok := DestinationOf(ctx)
		if !ok || dest.Limits.Connections <= 0 {
			return dial(ctx, network, addr)
		}
		var lease Lease
		if h, _ := ctx.Value(heldKey{}).(*HeldLease); h != nil && h.used.CompareAndSwap(false, true) {
			lease = h.lease
		} else {
			var ok bool
			var err error
			if lease, ok, err = l.Acquire(ctx, dest, ttl); err != nil {
				return nil, fmt.Errorf("shaping: %s: connection slot: %w", dest.Name, err)
			}
			if !ok {
				return nil, fmt.Errorf("shaping: %s: %w", dest.Name, ErrNoConnection)
			}
		}
		conn, err := dial(ctx, network, addr)
		if err != nil {
			_ = lease.Release(context.WithoutCancel(ctx))
			return nil, err
		}
		lc := &leasedConn{Conn: conn, lease: lease, done: make(chan struct{})}
		go lc.renew(ttl)
		return lc, nil
	}
}

// leaseOpTimeout bounds one renewal or release.
const leaseOpTimeout = 5 * time.Second

// leasedConn releases its lease when closed.
type leasedConn struct {
	net.Conn
	lease Lease
	once  sync.Once
	done  chan struct{}
}

func (c *leasedConn) renew(ttl time.Duration) {
	t := time.NewTicker(max(ttl/3, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), leaseOpTimeout)
			// A failed renewal is retried on the next tick; if the lease
			// is lost meanwhile the slot is briefly over-committed, which
			// is the cost of not cutting a live session.
			_ = c.lease.Renew(ctx, ttl)
			cancel()
		}
	}
}

// Close closes the connection and releases its slot, once.
func (c *leasedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		close(c.done)
		ctx, cancel := context.WithTimeout(context.Background(), leaseOpTimeout)
		_ = c.lease.Release(ctx)
		cancel()
	})
	return err
}
