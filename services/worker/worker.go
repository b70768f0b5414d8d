// Package worker is the worker role: it pulls delivery jobs from the shared
// OUTBOUND consumer, routes each job's domain to its MX hosts, runs the SMTP
// transaction, records every recipient's outcome in EVENTS and then acks,
// naks with a delay, or terminates the job. Workers keep no state of their
// own; any number of them share the consumer.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/postflow/postflow/pkg/campaign"
	"github.com/postflow/postflow/pkg/campaign/render"
	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/mailmsg"
	"github.com/postflow/postflow/pkg/mtasts"
	"github.com/postflow/postflow/pkg/mx"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/retry"
	"github.com/postflow/postflow/pkg/routes"
	"github.com/postflow/postflow/pkg/shaping"
	"github.com/postflow/postflow/pkg/smtpout"
	"github.com/postflow/postflow/pkg/suppression"
	"github.com/postflow/postflow/pkg/verp"
)

// Config configures the worker role.
type Config struct {
	// Concurrency bounds jobs processed at once by this worker.
	Concurrency int
	// Retry spaces attempts after temporary failures.
	Retry retry.Schedule
	// AttemptTimeout is the hard deadline of one attempt (DNS and SMTP).
	// It must cover the SMTP client's own timeouts; a wedged session is cut
	// off here and the job retried (TESTPLAN A12).
	AttemptTimeout time.Duration
	// Heartbeat is the InProgress interval while a job is worked on; it
	// must be well below the consumer's AckWait.
	Heartbeat time.Duration
	// ShutdownTimeout bounds how long in-flight attempts may run after
	// shutdown begins; they are then canceled and their jobs retried.
	ShutdownTimeout time.Duration
	// PoisonAttempts is how many times a job that panics the worker is
	// retried before its recipients are marked failed.
	PoisonAttempts int
	// BusyDelay is how long a job waits in the worker for a session to its
	// destination when every connection slot is held, and then, if none
	// freed, how long it goes back to the queue (default 250ms, jittered
	// ±20%): about one SMTP transaction, after which a slot is likely free.
	BusyDelay time.Duration
	// MaxDeliver is the consumer's MaxDeliver: a job one delivery short of
	// it is requeued as a fresh copy. Zero or less: no bound.
	MaxDeliver int
	// LeaseTTL is how long a connection slot is held without renewal; it
	// must match the sender's shaping.LeasedDialer (default 30s).
	LeaseTTL time.Duration
	// Limits bound the campaign messages the worker builds.
	Limits mailmsg.Limits
	// FeedWindow is how many jobs OUTBOUND may hold before campaign
	// feeding waits (default 5,000).
	FeedWindow uint64
	// MaxAge is how long a campaign job is retried before it expires.
	MaxAge time.Duration
}

// router resolves a recipient domain to its MX targets, and a smarthost's
// host:port to its targets.
type router interface {
	Lookup(ctx context.Context, domain string) ([]mx.Target, error)
	Static(ctx context.Context, dest string) ([]mx.Target, error)
}

// stsPolicies returns a domain's MTA-STS policy: nil when it has none, or
// when it cannot be fetched (then with the error).
type stsPolicies interface {
	Get(ctx context.Context, domain string) (*mtasts.Policy, error)
}

// sender runs one SMTP delivery attempt.
type sender interface {
	Deliver(ctx context.Context, targets []smtpout.Target, env smtpout.Envelope, body []byte) smtpout.Result
	// HasIdle reports an idle pooled session to t (advice only).
	HasIdle(t smtpout.Target) bool
}

// signer adds DKIM signatures; Sign returns the message unchanged when no
// key covers its From domain.
type signer interface {
	Sign(msg []byte) ([]byte, error)
}

// destinations groups recipient domains into shaping destinations.
type destinations interface {
	Match(domain string, mxHosts []string) shaping.Destination
	// Tenant returns the destination carrying tenant's overall rate.
	Tenant(tenant string) (shaping.Destination, bool)
}

// Deps are the worker's collaborators.
type Deps struct {
	JS     jetstream.JetStream
	Router router
	// Routes holds each domain's TLS policy and smarthost; nil routes
	// every domain to its MX hosts with opportunistic TLS.
	Routes *routes.Table
	// MTASTS, if set, is consulted for domains whose route honours
	// MTA-STS.
	MTASTS stsPolicies
	Sender sender
	// Shaping maps a domain and its MX hosts to the destination whose
	// limits apply; Limiter enforces them, for every worker when it is
	// shared. Connection limits are enforced where connections are made:
	// the sender dials through shaping.LeasedDialer over the same Limiter.
	Shaping destinations
	Limiter shaping.Limiter
	// Signer, if set, DKIM-signs each message just before it is sent, so
	// private keys never leave the worker.
	Signer signer
	// VERP, if set, gives every recipient its own return path on the
	// bounce domain, so asynchronous bounces name their recipient.
	VERP *verp.Signer
	// Campaigns, if set, is the live view of every campaign: the worker
	// then feeds running campaigns and renders their jobs.
	Campaigns *campaign.Cache
	// Suppression is consulted when campaign rows are fed.
	Suppression *suppression.Store
	// Unsubscribe, if set, returns a campaign recipient's List-Unsubscribe
	// and List-Unsubscribe-Post header values (RFC 8058).
	Unsubscribe func(tenant, campaignID string, index int, addr string) (listUnsubscribe, post string, err error)
	Logger      *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Worker processes delivery jobs.
type Worker struct {
	cfg    Config
	router router
	routes *routes.Table
	sts    stsPolicies
	sender sender
	shape  destinations
	limit  shaping.Limiter
	gate   connGate
	sign   signer
	verp   *verp.Signer
	// Campaigns: the live view, parsed templates, unsubscribe headers
	// and the feeder (nil without campaigns).
	campaigns   *campaign.Cache
	templates   *render.Cache
	unsubscribe func(tenant, campaignID string, index int, addr string) (string, string, error)
	feed        *feeder
	pub         *queue.Publisher
	events      *eventlog.Writer
	reader      *eventlog.Reader
	log         *slog.Logger
	now         func() time.Time
	tracer      trace.Tracer
}

// New returns a Worker; Run starts it.
func New(cfg Config, deps Deps) *Worker {
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	if cfg.BusyDelay <= 0 {
		cfg.BusyDelay = 250 * time.Millisecond
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 30 * time.Second
	}
	if cfg.FeedWindow == 0 {
		cfg.FeedWindow = 5000
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = 5 * 24 * time.Hour
	}
	w := &Worker{
		cfg:    cfg,
		router: deps.Router,
		routes: deps.Routes,
		sts:    deps.MTASTS,
		sender: deps.Sender,
		shape:  deps.Shaping,
		limit:  deps.Limiter,
		sign:   deps.Signer,
		verp:   deps.VERP,

		campaigns:   deps.Campaigns,
		templates:   render.NewCache(256),
		unsubscribe: deps.Unsubscribe,
		pub:         queue.NewPublisher(deps.JS),
		events:      eventlog.NewWriter(queue.NewPublisher(deps.JS)),
		reader:      eventlog.NewReader(deps.JS),
		log:         deps.Logger,
		now:         now,
		tracer:      otel.Tracer("github.com/postflow/postflow/services/worker"),
	}
	if deps.Campaigns != nil {
		w.feed = &feeder{js: deps.JS, cache: deps.Campaigns, supp: deps.Suppression, pub: w.pub, events: w.events,
			log: deps.Logger, now: now, window: cfg.FeedWindow, maxAge: cfg.MaxAge}
	}
	return w
}

// Run consumes jobs until ctx ends. Shutdown then proceeds in order: stop
// pulling, hand back jobs buffered but not started (Nak, so another worker
// takes them at once), let in-flight attempts finish within
// ShutdownTimeout, cancel what is still running (those jobs are retried),
// and return nil.
func Run(ctx context.Context, cfg Config, deps Deps) error {
	return New(cfg, deps).Run(ctx, deps.JS)
}

// Run is the method form of the package-level Run.
func (w *Worker) Run(ctx context.Context, js jetstream.JetStream) error {
	cons, err := js.Consumer(ctx, queue.OutboundStream, queue.WorkerConsumer)
	if err != nil {
		if ctx.Err() != nil {
			return nil // shut down while starting
		}
		return fmt.Errorf("worker: consumer: %w", err)
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(w.cfg.Concurrency))
	if err != nil {
		return fmt.Errorf("worker: pull: %w", err)
	}
	w.log.Info("worker: consuming", slog.Int("concurrency", w.cfg.Concurrency))
	if w.feed != nil {
		feedCtx, stopFeed := context.WithCancel(ctx)
		defer stopFeed()
		go w.feed.run(feedCtx)
	}

	// Attempts run under hard, which outlives ctx by ShutdownTimeout.
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	stopWatch := context.AfterFunc(ctx, func() {
		iter.Drain()
		time.AfterFunc(w.cfg.ShutdownTimeout, cancelHard)
	})
	defer stopWatch()

	sem := make(chan struct{}, w.cfg.Concurrency)
	var wg sync.WaitGroup
	backoff := pullBackoffMin
	for {
		msg, err := iter.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				break
			}
			// Missed heartbeats and lost connections repeat until NATS is
			// back; back off instead of spinning on them.
			w.log.Warn("worker: pull", slog.Any("error", err), slog.Duration("retry_in", backoff))
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			backoff = min(2*backoff, pullBackoffMax)
			continue
		}
		backoff = pullBackoffMin
		if ctx.Err() != nil {
			// Buffered before shutdown began and not started: hand it
			// back without counting an attempt against it.
			_ = msg.Nak()
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			_ = msg.Nak()
			continue
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			w.handle(hard, msg)
		}()
	}
	wg.Wait()
	w.log.Info("worker: stopped")
	return nil
}

// Bounds of the wait after a failed pull.
const (
	pullBackoffMin = 100 * time.Millisecond
	pullBackoffMax = 5 * time.Second
)

// heartbeat sends InProgress for msg every interval until stop is called.
func (w *Worker) heartbeat(msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	var once sync.Once
	go func() {
		t := time.NewTicker(w.cfg.Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { once.Do(func() { close(done) }) }
}
