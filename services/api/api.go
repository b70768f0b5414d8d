// Package api is the api role: it serves Postflow's public gRPC API
// (MailService, StatusService, health and reflection), validates and builds
// messages, and queues them in JetStream. It never speaks SMTP.
package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/postflow/postflow/pkg/campaign"
	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/mailmsg"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/suppression"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// Config configures the api role.
type Config struct {
	// Addr is the gRPC listen address, used when Deps.Listener is nil.
	Addr string
	// Tenant owns every message until authentication assigns tenants.
	Tenant string
	// Limits bounds what Send accepts.
	Limits mailmsg.Limits
	// MessageIDDomain is the right-hand side of generated Message-ID
	// headers; empty means the sender's domain.
	MessageIDDomain string
	// MaxAge is how long a message may be retried before it expires.
	MaxAge time.Duration
	// PublishTimeout bounds waiting for JetStream acknowledgements; past it
	// Send answers UNAVAILABLE.
	PublishTimeout time.Duration
	// ShutdownTimeout bounds graceful stop; in-flight RPCs still running
	// after it are cut off.
	ShutdownTimeout time.Duration
}

// Deps are the api role's collaborators.
type Deps struct {
	JS     jetstream.JetStream
	Logger *slog.Logger
	// Listener, if set, is served instead of listening on Config.Addr.
	Listener net.Listener
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Shaping, if set, serves ShapingService.
	Shaping *ShapingDeps
	// Campaigns, if set, serves CampaignService.
	Campaigns *campaign.Store
	// Suppression is the tenants' suppression lists: Send consults it and
	// SuppressionService manages it. Nil disables both (tests of other
	// parts only).
	Suppression *suppression.Store
}

// Server implements MailService and StatusService.
type Server struct {
	postflowv1.UnimplementedMailServiceServer
	postflowv1.UnimplementedStatusServiceServer

	cfg    Config
	pub    *queue.Publisher
	events *eventlog.Writer
	reader *eventlog.Reader
	supp   *suppression.Store
	log    *slog.Logger
	now    func() time.Time
}

// NewServer returns a Server; it does not listen.
func NewServer(cfg Config, deps Deps) *Server {
	pub := queue.NewPublisher(deps.JS)
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	return &Server{
		cfg:    cfg,
		pub:    pub,
		events: eventlog.NewWriter(pub),
		reader: eventlog.NewReader(deps.JS),
		supp:   deps.Suppression,
		log:    deps.Logger,
		now:    now,
	}
}

// Run serves the API until ctx ends, then stops intake (health goes
// NOT_SERVING), lets in-flight RPCs finish within ShutdownTimeout and
// returns nil.
func Run(ctx context.Context, cfg Config, deps Deps) error {
	lis := deps.Listener
	if lis == nil {
		var err error
		lis, err = net.Listen("tcp", cfg.Addr)
		if err != nil {
			return fmt.Errorf("api: listen: %w", err)
		}
	}
	srv := NewServer(cfg, deps)
	gs := grpc.NewServer(
		grpc.StatsHandler(otelgrpc.NewServerHandler()),
		// Structured content can carry text and html each up to the size
		// limit; anything larger is refused by the transport, anything
		// smaller by validation with the field named.
		grpc.MaxRecvMsgSize(2*cfg.Limits.MaxMessageBytes+1<<20),
	)
	postflowv1.RegisterMailServiceServer(gs, srv)
	postflowv1.RegisterStatusServiceServer(gs, srv)
	if deps.Campaigns != nil {
		postflowv1.RegisterCampaignServiceServer(gs, &campaignServer{store: deps.Campaigns, reader: srv.reader, tenant: cfg.Tenant, limits: cfg.Limits, now: srv.now, log: deps.Logger})
	}
	if deps.Suppression != nil {
		postflowv1.RegisterSuppressionServiceServer(gs, &suppressionServer{store: deps.Suppression, tenant: cfg.Tenant, now: srv.now, log: deps.Logger})
	}
	if deps.Shaping != nil {
		postflowv1.RegisterShapingServiceServer(gs, &shapingServer{deps: *deps.Shaping, js: deps.JS})
	}
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	served := []string{"", postflowv1.MailService_ServiceDesc.ServiceName, postflowv1.StatusService_ServiceDesc.ServiceName}
	if deps.Suppression != nil {
		served = append(served, postflowv1.SuppressionService_ServiceDesc.ServiceName)
	}
	if deps.Campaigns != nil {
		served = append(served, postflowv1.CampaignService_ServiceDesc.ServiceName)
	}
	for _, name := range served {
		hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}

	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	deps.Logger.Info("api: serving gRPC", slog.String("addr", lis.Addr().String()))

	select {
	case err := <-errc:
		return fmt.Errorf("api: serve: %w", err)
	case <-ctx.Done():
	}
	hs.Shutdown() // every service NOT_SERVING: load balancers stop sending
	t := time.AfterFunc(cfg.ShutdownTimeout, gs.Stop)
	defer t.Stop()
	gs.GracefulStop()
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		deps.Logger.Warn("api: serve", slog.Any("error", err))
	}
	deps.Logger.Info("api: stopped")
	return nil
}

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// newMessageID returns a message id: random (unguessable) without an
// idempotency key, and derived from tenant and key with one, so that a retry
// maps to the same id and the same Nats-Msg-Ids. Ids are 24 lower-case
// base32 characters, valid as NATS subject tokens.
func newMessageID(tenant, idempotencyKey string) string {
	var b [15]byte
	if idempotencyKey == "" {
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	} else {
		h := sha256.Sum256([]byte("postflow-msgid\x00" + tenant + "\x00" + idempotencyKey))
		copy(b[:], h[:])
	}
	return strings.ToLower(idEncoding.EncodeToString(b[:]))
}

// validMessageID reports whether s has the form newMessageID produces.
func validMessageID(s string) bool {
	if len(s) != 24 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

var errMessageIDFormat = errors.New("message_id must be 24 characters of [a-z2-7]")
