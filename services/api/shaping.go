package api

import (
	"context"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/mx"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/shaping"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// ShapingDeps are what ShapingService reads: the limiter's shared state, the
// rules that group domains into destinations, and MX lookups to apply the
// rules that match by MX host.
type ShapingDeps struct {
	Limiter  shaping.Limiter
	Config   *shaping.Config
	Resolver interface {
		Lookup(ctx context.Context, domain string) ([]mx.Target, error)
	}
}

// shapingServer implements ShapingService.
type shapingServer struct {
	postflowv1.UnimplementedShapingServiceServer
	deps ShapingDeps
	js   jetstream.JetStream
}

// ListDestinations merges the limiter's state with OUTBOUND's per-subject
// job counts. Queued domains are grouped by the same rules the workers
// apply; a domain whose MX lookup fails is counted under its own name.
func (s *shapingServer) ListDestinations(ctx context.Context, _ *postflowv1.ListDestinationsRequest) (*postflowv1.ListDestinationsResponse, error) {
	states, err := s.deps.Limiter.Status(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "shaping state: %v", err)
	}
	byName := map[string]*postflowv1.DestinationStatus{}
	for _, st := range states {
		d := &postflowv1.DestinationStatus{
			Name:             st.Name,
			ConfiguredRate:   st.Configured.String(),
			CurrentRate:      st.Current.String(),
			Factor:           st.Factor,
			ConnectionsInUse: int32(min(st.ConnectionsInUse, 1<<30)),
		}
		if !st.LastThrottled.IsZero() {
			d.LastThrottled = timestamppb.New(st.LastThrottled)
		}
		byName[st.Name] = d
	}

	queued, err := s.queuedByDomain(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "queued jobs: %v", err)
	}
	for domain, n := range queued {
		dest := s.destination(ctx, domain)
		d := byName[dest.Name]
		if d == nil {
			d = &postflowv1.DestinationStatus{
				Name:           dest.Name,
				ConfiguredRate: dest.Limits.Rate.String(),
				CurrentRate:    dest.Limits.Rate.String(),
				Factor:         1,
			}
			byName[dest.Name] = d
		}
		d.QueuedJobs += n
		d.ConnectionLimit = int32(min(dest.Limits.Connections, 1<<30))
	}
	limits := s.limitsByName()
	out := &postflowv1.ListDestinationsResponse{}
	for _, d := range byName {
		if d.ConnectionLimit == 0 && s.deps.Config != nil {
			l, ok := limits[d.Name]
			if !ok {
				l = s.deps.Config.Defaults()
			}
			d.ConnectionLimit = int32(min(l.Connections, 1<<30))
		}
		out.Destinations = append(out.Destinations, d)
	}
	slices.SortFunc(out.Destinations, func(a, b *postflowv1.DestinationStatus) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// queuedByDomain counts OUTBOUND's jobs per recipient domain.
func (s *shapingServer) queuedByDomain(ctx context.Context) (map[string]int64, error) {
	st, err := s.js.Stream(ctx, queue.OutboundStream)
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(queue.OutboundPrefix+">"))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for subject, n := range info.State.Subjects {
		// postflow.outbound.<tenant>.<domain>: the domain keeps its dots.
		rest := strings.TrimPrefix(subject, queue.OutboundPrefix)
		if _, domain, ok := strings.Cut(rest, "."); ok {
			out[domain] += int64(n)
		}
	}
	return out, nil
}

func (s *shapingServer) destination(ctx context.Context, domain string) shaping.Destination {
	if s.deps.Config == nil {
		return shaping.Destination{Name: domain}
	}
	var hosts []string
	if s.deps.Resolver != nil {
		if targets, err := s.deps.Resolver.Lookup(ctx, domain); err == nil {
			for _, t := range targets {
				hosts = append(hosts, t.Host)
			}
		}
	}
	return s.deps.Config.Match(domain, hosts)
}

// limitsByName maps each rule's name to its limits; a destination without a
// rule (a domain of its own) has the defaults.
func (s *shapingServer) limitsByName() map[string]shaping.Limits {
	m := map[string]shaping.Limits{}
	if s.deps.Config == nil {
		return m
	}
	for _, r := range s.deps.Config.Rules() {
		m[r.Name] = r.Limits
	}
	return m
}
