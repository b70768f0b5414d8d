package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/postflow/postflow/pkg/deliveryerr"
	"github.com/postflow/postflow/pkg/mtasts"
	"github.com/postflow/postflow/pkg/mx"
	"github.com/postflow/postflow/pkg/routes"
	"github.com/postflow/postflow/pkg/smtpout"
)

// targets decides where and how a job's domain is delivered: through its
// route's smarthost, or to its MX hosts under the route's TLS policy,
// tightened by the domain's MTA-STS policy when that is in enforce mode. A
// non-nil error is a *deliveryerr.Error for every recipient.
func (w *Worker) targets(ctx context.Context, domain string) ([]smtpout.Target, error) {
	route := w.routes.Lookup(domain)
	if route.Relay != nil {
		return w.relayTargets(ctx, route.Relay)
	}
	found, err := w.router.Lookup(ctx, domain)
	if err != nil {
		return nil, err
	}
	mode := route.TLS
	if route.MTASTS && w.sts != nil {
		enforced := false
		if found, enforced, err = w.applySTS(ctx, domain, found); err != nil {
			return nil, err
		}
		if enforced {
			mode = smtpout.TLSRequire
		}
	}
	targets := make([]smtpout.Target, len(found))
	for i, t := range found {
		targets[i] = smtpout.Target{Host: t.Host, Addr: t.Addr, TLS: mode}
	}
	return targets, nil
}

// applySTS keeps the MX targets an enforce-mode MTA-STS policy allows
// (RFC 8461 §4.1). A policy that cannot be had is logged and ignored, as
// §5 asks of a sender with no cached policy: failing closed would let
// anyone who can break an HTTPS fetch stop the domain's mail.
func (w *Worker) applySTS(ctx context.Context, domain string, found []mx.Target) (kept []mx.Target, enforced bool, err error) {
	p, stsErr := w.sts.Get(ctx, domain)
	if stsErr != nil {
		// A failure is logged once; the cache then backs off, and every
		// delivery meanwhile would repeat the same line.
		level := slog.LevelWarn
		if errors.Is(stsErr, mtasts.ErrBackoff) {
			level = slog.LevelDebug
		}
		w.log.Log(ctx, level, "worker: MTA-STS policy unavailable; delivering without it",
			slog.String("domain", domain), slog.Any("error", stsErr))
	}
	if p == nil || p.Mode != mtasts.ModeEnforce {
		return found, false, nil
	}
	for _, t := range found {
		if p.Match(t.Host) {
			kept = append(kept, t)
		}
	}
	if len(kept) == 0 {
		return nil, true, deliveryerr.Temporary(451, "4.7.5",
			fmt.Sprintf("no MX host of %s matches its MTA-STS policy (id %s)", domain, p.ID), nil)
	}
	return kept, true, nil
}

// relayTargets resolves a smarthost as a static route (mx.Resolver.Static):
// its addresses skip the egress guard, since the operator chose the relay,
// which may well sit on a private network, and a relay that does not
// resolve defers the mail rather than bouncing it.
func (w *Worker) relayTargets(ctx context.Context, relay *routes.Relay) ([]smtpout.Target, error) {
	found, err := w.router.Static(ctx, relay.Addr())
	if err != nil {
		return nil, err
	}
	targets := make([]smtpout.Target, len(found))
	for i, t := range found {
		targets[i] = smtpout.Target{Host: relay.Host, Addr: t.Addr, TLS: relay.TLS, Auth: relay.Auth}
	}
	return targets, nil
}
