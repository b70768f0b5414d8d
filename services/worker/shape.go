package worker

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/postflow/postflow/pkg/bounceclass"
	"github.com/postflow/postflow/pkg/shaping"
	"github.com/postflow/postflow/pkg/smtpout"
	"github.com/postflow/postflow/pkg/telemetry"
)

// destination returns the shaping destination of a job: the rule matching
// its domain or its targets' host names (MX hosts, or the smarthost).
func (w *Worker) destination(domain string, targets []smtpout.Target) shaping.Destination {
	if w.shape == nil {
		return shaping.Destination{Name: domain}
	}
	hosts := make([]string, 0, len(targets))
	for i, t := range targets {
		if i == 0 || t.Host != targets[i-1].Host {
			hosts = append(hosts, t.Host)
		}
	}
	return w.shape.Match(domain, hosts)
}

// tenantHeld applies the tenant's overall send rate, if it has one: it
// reports true, with the reserved slot, when the job must wait. The
// tenant's slot is taken before the destination's, so a job then held by
// its destination has used a tenant slot too: under throttling the tenant
// rate errs on the slow side.
func (w *Worker) tenantHeld(ctx context.Context, tenant, key string) (time.Time, bool) {
	if w.shape == nil {
		return time.Time{}, false
	}
	td, ok := w.shape.Tenant(tenant)
	if !ok {
		return time.Time{}, false
	}
	granted, at, err := w.limit.Reserve(ctx, td, key)
	if err != nil || granted {
		// A limiter error is the destination check's to report.
		return time.Time{}, false
	}
	telemetry.Held(ctx, "tenant")
	return at, true
}

// connection makes sure a job to dest can have a connection at once: an
// idle pooled session to its first target, or a connection slot leased
// here, which the dialer then uses (see shaping.WithLease). When every slot
// is held it waits as connGate describes, and reports false if none came
// free. Unlimited destinations need neither.
func (w *Worker) connection(ctx context.Context, dest shaping.Destination, t smtpout.Target) (shaping.Lease, bool, error) {
	if dest.Limits.Connections <= 0 || w.sender.HasIdle(t) {
		return nil, true, nil
	}
	for {
		lease, ok, err := w.limit.Acquire(ctx, dest, w.cfg.LeaseTTL)
		if err != nil || ok {
			return lease, ok, err
		}
		if !w.gate.wait(ctx, dest.Name, dest.Limits.Connections, w.cfg.BusyDelay) {
			return nil, false, nil
		}
		if w.sender.HasIdle(t) {
			return nil, true, nil
		}
	}
}

// busy reports an attempt that reached no server because every connection
// slot of the destination was held: nothing was tried, so the job waits
// instead of counting an attempt.
func busy(res smtpout.Result) bool {
	for _, r := range res.Recipients {
		if r.Delivered || !errors.Is(r.Err, shaping.ErrNoConnection) {
			return false
		}
	}
	return len(res.Recipients) > 0
}

// feedback tells the limiter about throttling replies (421, rate-limit
// 4.7.x, provider texts the classifier knows), so that every worker slows
// down for the destination.
func (w *Worker) feedback(ctx context.Context, dest shaping.Destination, outs []outcome) {
	for _, o := range outs {
		if o.delivered || o.reply == nil || !o.reply.Remote {
			continue
		}
		if o.reply.Code != 421 && bounceclass.ClassifyError(o.reply).Category != bounceclass.CategoryThrottled {
			continue
		}
		reason := o.reply.Error()
		if err := w.limit.Throttled(ctx, dest, reason); err != nil {
			w.log.WarnContext(ctx, "worker: recording throttling", slog.String("destination", dest.Name), slog.Any("error", err))
		}
		return // one reply per attempt is enough: the limiter debounces anyway
	}
}

// jitter spreads d by ±20%, so that jobs held back together do not return
// together.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// connGate lets a job whose destination has every connection slot held wait
// in the worker for one of this worker's sessions to that destination to
// finish, instead of going back to the queue: the session then returns to
// the pool and the waiting job takes it, so a connection-limited
// destination is served back to back over its few connections. Waiters per
// destination are capped at the destination's connection limit, so jobs of
// one destination never hold more than twice its connections' worth of the
// worker's concurrency; the rest go back to the queue for a while.
type connGate struct {
	mu      sync.Mutex
	done    map[string]chan struct{} // closed when a session of the destination ends
	waiting map[string]int
}

// wait blocks until a session to dest ends, d passes or ctx ends, and
// reports whether a session ended. It returns false at once when dest
// already has limit waiters.
func (g *connGate) wait(ctx context.Context, dest string, limit int, d time.Duration) bool {
	g.mu.Lock()
	if g.done == nil {
		g.done, g.waiting = map[string]chan struct{}{}, map[string]int{}
	}
	if g.waiting[dest] >= max(limit, 1) {
		g.mu.Unlock()
		return false
	}
	ch := g.done[dest]
	if ch == nil {
		ch = make(chan struct{})
		g.done[dest] = ch
	}
	g.waiting[dest]++
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		if g.waiting[dest]--; g.waiting[dest] == 0 {
			delete(g.waiting, dest)
		}
		g.mu.Unlock()
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// ended wakes every job waiting for a session to dest.
func (g *connGate) ended(dest string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if ch := g.done[dest]; ch != nil {
		close(ch)
		delete(g.done, dest)
	}
}
