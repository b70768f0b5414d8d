package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/postflow/postflow/pkg/campaign"
	"github.com/postflow/postflow/pkg/dkim"
	"github.com/postflow/postflow/pkg/mtasts"
	"github.com/postflow/postflow/pkg/mx"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/routes"
	"github.com/postflow/postflow/pkg/shaping"
	"github.com/postflow/postflow/pkg/simulator"
	"github.com/postflow/postflow/pkg/smtpout"
	"github.com/postflow/postflow/pkg/suppression"
	"github.com/postflow/postflow/pkg/telemetry"
	"github.com/postflow/postflow/pkg/unsubscribe"
	"github.com/postflow/postflow/services/api"
	"github.com/postflow/postflow/services/bounce"
	"github.com/postflow/postflow/services/worker"
)

// serve is `postflow serve`.
func serve(ctx context.Context, args []string, getenv func(string) string) (err error) {
	cfg := defaultServeConfig()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	serveFlags(fs, &cfg)
	if err := parseWithEnv(fs, args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if err := cfg.finish(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	log := telemetry.NewLogger(os.Stderr, cfg.LogLevel)
	if cfg.CheckConfig {
		log.Info("configuration is valid", cfg.logAttrs()...)
		for _, line := range cfg.routes.Describe() {
			log.Info("route: " + line)
		}
		for _, line := range cfg.shaping.Describe() {
			log.Info("shaping: " + line)
		}
		return nil
	}

	if getenv("GOGC") == "" {
		// The live heap is small (tens of MiB) and allocation-heavy per
		// message; collecting at 5x instead of 2x the live heap cut CPU per
		// message by about a tenth in the load test. GOGC overrides it.
		debug.SetGCPercent(400)
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	go forceExitOnSecondSignal(ctx, stop, log)

	prov, err := telemetry.Setup(ctx, telemetry.Config{
		ServiceName: "postflow",
		Version:     version,
		OTLPTraces:  getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "",
	})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		err = errors.Join(err, prov.Shutdown(sctx))
	}()

	log.Info("postflow starting", cfg.logAttrs()...)
	a, err := newApp(ctx, cfg, log, prov.Metrics)
	if err != nil {
		return err
	}
	return a.run(ctx)
}

// forceExitOnSecondSignal exits at once on a signal received after shutdown
// began (STYLE rule 9).
func forceExitOnSecondSignal(ctx context.Context, stop func(), log *slog.Logger) {
	<-ctx.Done()
	stop()
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt, syscall.SIGTERM)
	<-c
	log.Warn("second signal: exiting without finishing in-flight work")
	os.Exit(1)
}

// app is one postflow process: its NATS connection (and embedded server),
// listeners and the roles it runs.
type app struct {
	cfg     serveConfig
	log     *slog.Logger
	metrics http.Handler

	ns  *server.Server // nil unless embedded
	nc  *nats.Conn
	js  jetstream.JetStream
	sim *simulator.Server

	grpcLis   net.Listener
	httpLis   net.Listener
	bounceLis net.Listener

	// supp is the suppression list, shared by the api and bounce roles.
	supp *suppression.Store
	// campaigns is the campaign store (api role) behind the live view
	// the worker role watches.
	campaigns *campaign.Store
	// unsub records unsubscriptions, from the HTTP endpoint and the
	// bounce listener; nil without --unsubscribe-url.
	unsub *bounce.Unsubscriber
}

// newApp connects (or starts) NATS, ensures the streams, and opens the
// listeners, so that an address conflict fails start-up rather than later.
func newApp(ctx context.Context, cfg serveConfig, log *slog.Logger, metrics http.Handler) (_ *app, err error) {
	a := &app{cfg: cfg, log: log, metrics: metrics}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	if cfg.NATSURL == "" {
		if a.ns, err = startEmbeddedNATS(cfg); err != nil {
			return nil, err
		}
		a.nc, err = nats.Connect("", nats.InProcessServer(a.ns), nats.Name("postflow"))
	} else {
		a.nc, err = nats.Connect(cfg.NATSURL, nats.Name("postflow"), nats.MaxReconnects(-1),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				log.Warn("nats: disconnected", slog.Any("error", err))
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("nats: reconnected", slog.String("url", nc.ConnectedUrlRedacted())) }))
	}
	if err != nil {
		return nil, fmt.Errorf("nats: connect: %w", err)
	}
	if mp := a.nc.MaxPayload(); mp < int64(cfg.Queue.MaxMsgSize) {
		return nil, fmt.Errorf("nats: server max_payload %d is below the largest job %d (--max-message-size plus 1 MiB): raise max_payload or lower --max-message-size", mp, cfg.Queue.MaxMsgSize)
	}
	if a.js, err = jetstream.New(a.nc, jetstream.WithPublishAsyncMaxPending(4096)); err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err = queue.Ensure(ectx, a.js, cfg.Queue); err != nil {
		return nil, err
	}
	if a.supp, err = suppression.Open(ectx, a.js, suppression.Config{Replicas: cfg.Queue.Replicas}, nil); err != nil {
		return nil, err
	}
	if a.campaigns, err = campaign.Open(ectx, a.js, campaign.Config{Replicas: cfg.Queue.Replicas}); err != nil {
		return nil, err
	}
	if cfg.unsubSigner != nil {
		a.unsub = bounce.NewUnsubscriber(a.js, a.supp, log)
	}
	if cfg.has("bounce") && cfg.BounceSMTPAddr != "" {
		if a.bounceLis, err = net.Listen("tcp", cfg.BounceSMTPAddr); err != nil {
			return nil, fmt.Errorf("--bounce-smtp-addr: %w", err)
		}
	}
	if cfg.has("api") {
		if a.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
			return nil, fmt.Errorf("--grpc-addr: %w", err)
		}
	}
	if a.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("--http-addr: %w", err)
	}
	if cfg.has("worker") && cfg.Simulator {
		if a.sim, err = simulator.Start("127.0.0.1:0", log); err != nil {
			return nil, fmt.Errorf("simulator: %w", err)
		}
	}
	return a, nil
}

func startEmbeddedNATS(cfg serveConfig) (*server.Server, error) {
	opts := &server.Options{
		ServerName: "postflow-embedded",
		DontListen: true, // in-process clients only: no port to collide with
		JetStream:  true,
		StoreDir:   filepath.Join(cfg.DataDir, "jetstream"),
		MaxPayload: cfg.Queue.MaxMsgSize,
		SyncAlways: cfg.SyncAlways,
		NoSigs:     true,
		NoLog:      true,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded nats-server: not ready within 30s")
	}
	return ns, nil
}

// run runs the configured roles until ctx ends, then shuts them down in
// order: intake first (api), then delivery (worker drains), then NATS.
func (a *app) run(ctx context.Context) error {
	defer a.close()
	if a.sim != nil {
		// The simulator is ours, on loopback: no limits.
		a.cfg.shaping = a.cfg.shaping.WithExact(simulator.Domain, shaping.Rule{Name: "simulator"})
	}
	// One limiter and one resolver per process, shared by its roles: the
	// api role reports the limiter's state (ShapingService).
	lim, closeLimiter, err := a.limiter()
	if err != nil {
		return err
	}
	defer closeLimiter()
	router, err := mx.New(a.mxConfig())
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.serveHTTP(gctx) })
	if a.cfg.has("api") {
		g.Go(func() error {
			return api.Run(gctx, api.Config{
				Tenant:          "default",
				Limits:          a.cfg.limits(),
				MessageIDDomain: "", // the sender's domain
				MaxAge:          a.cfg.MaxAge,
				PublishTimeout:  10 * time.Second,
				ShutdownTimeout: a.cfg.ShutdownTimeout,
			}, api.Deps{JS: a.js, Logger: a.log, Listener: a.grpcLis, Suppression: a.supp, Campaigns: a.campaigns,
				Shaping: &api.ShapingDeps{Limiter: lim, Config: a.cfg.shaping, Resolver: router}})
		})
	}
	if a.cfg.has("worker") {
		var signer *dkim.Signer
		if a.cfg.DKIMKeys != "" {
			keys, err := dkim.LoadKeys(a.cfg.DKIMKeys)
			if err != nil {
				return fmt.Errorf("--dkim-keys: %w", err)
			}
			if signer, err = dkim.NewSigner(keys); err != nil {
				return fmt.Errorf("--dkim-keys: %w", err)
			}
			a.log.Info("dkim: signing", slog.Any("domains", signer.Domains()), slog.Int("keys", len(keys)))
		}
		// Keep as many idle sessions per host as jobs may run at once, so a
		// busy destination is not re-dialed after every burst.
		sender := smtpout.New(smtpout.Config{
			HelloName: a.cfg.Hostname,
			// Every new connection holds one of its destination's
			// connection slots while it is open, pooled or busy.
			Dialer:         shaping.LeasedDialer(lim, (&net.Dialer{}).DialContext, connectionLease),
			MaxIdlePerHost: a.cfg.Concurrency,
			ConnectTimeout: a.cfg.SMTPTimeouts.Connect,
			CommandTimeout: a.cfg.SMTPTimeouts.Command,
			DataTimeout:    a.cfg.SMTPTimeouts.Data,
			// nil RootCAs is the system pool.
			TLSConfig: &tls.Config{RootCAs: a.cfg.tlsRoots},
		})
		table := a.cfg.routes
		if a.sim != nil {
			// The simulator is ours, on loopback: no MTA-STS lookups,
			// no smarthost, whatever the default route says.
			table = table.With(simulator.Domain, routes.Route{TLS: smtpout.TLSOpportunistic, Rule: "simulator"})
		}
		sts, err := mtasts.New(mtasts.Config{
			Resolver:     router,
			RootCAs:      a.cfg.tlsRoots,
			Port:         a.cfg.mtastsPort,
			AllowPrivate: a.cfg.AllowPrivateMX,
		})
		if err != nil {
			return fmt.Errorf("mta-sts: %w", err)
		}
		live, err := a.campaigns.Watch(ctx)
		if err != nil {
			return err
		}
		deps := worker.Deps{
			JS:      a.js,
			Router:  router,
			Routes:  table,
			MTASTS:  sts,
			Sender:  sender,
			Shaping: a.cfg.shaping,
			Limiter: lim,
			VERP:    a.cfg.verp,
			Logger:  a.log,

			Campaigns:   live,
			Suppression: a.supp,
		}
		if links := a.cfg.unsubLinks; links != nil {
			deps.Unsubscribe = func(tenant, campaignID string, index int, addr string) (string, string, error) {
				return links.Headers(unsubscribe.Subject{Tenant: tenant, Address: addr, CampaignID: campaignID, MessageID: campaignID, Index: index})
			}
		} else {
			a.log.Warn("campaigns: no --unsubscribe-url: campaign mail goes without List-Unsubscribe (RFC 8058); set it in production")
		}
		if signer != nil { // a nil *dkim.Signer must not become a non-nil interface
			deps.Signer = signer
		}
		g.Go(func() error {
			// Idle SMTP sessions are closed once the worker has drained,
			// releasing their connection slots before the limiter goes
			// (closeLimiter runs after g.Wait).
			defer func() { _ = sender.Close() }()
			return worker.Run(gctx, worker.Config{
				Concurrency:     a.cfg.Concurrency,
				Retry:           a.cfg.retrySchedule(),
				AttemptTimeout:  a.cfg.SMTPTimeouts.attempt(),
				Heartbeat:       a.cfg.Queue.AckWait / 3,
				ShutdownTimeout: a.cfg.ShutdownTimeout,
				PoisonAttempts:  5,
				LeaseTTL:        connectionLease,
				MaxDeliver:      a.cfg.Queue.MaxDeliver,
				Limits:          a.cfg.limits(),
				MaxAge:          a.cfg.MaxAge,
			}, deps)
		})
	}
	if a.cfg.has("bounce") {
		g.Go(func() error {
			var exempt []string
			if a.cfg.Simulator {
				exempt = []string{simulator.Domain}
			}
			return bounce.Run(gctx, bounce.Config{
				SuppressCategories: a.cfg.SuppressCategories,
				ExemptDomains:      exempt,
				Hostname:           a.cfg.Hostname,
				MaxReportBytes:     int64(a.cfg.MaxMessageBytes),
				ShutdownTimeout:    a.cfg.ShutdownTimeout,
			}, bounce.Deps{JS: a.js, Suppression: a.supp, VERP: a.cfg.verp, Listener: a.bounceLis, Logger: a.log,
				UnsubscribeSigner: a.cfg.unsubSigner, Unsubscriber: a.unsub})
		})
	}
	return g.Wait()
}

// connectionLease is how long a connection slot is held without renewal: a
// worker that dies gives its slots back within this time.
const connectionLease = 30 * time.Second

// limiter returns the shaping limiter: shared through Redis with
// --redis-url, else in process. The in-process one also serves as the
// Redis limiter's fallback while Redis is unreachable, with this worker's
// share of each limit. The returned func closes what it opened.
func (a *app) limiter() (shaping.Limiter, func(), error) {
	mem := shaping.NewMemory(shaping.MemoryConfig{Adaptive: a.cfg.shaping.Adaptive(), Logger: a.log})
	if a.cfg.RedisURL == "" {
		return mem, func() {}, nil
	}
	opts, err := redis.ParseURL(a.cfg.RedisURL)
	if err != nil {
		return nil, nil, fmt.Errorf("--redis-url: %w", err)
	}
	// go-redis reports every failed dial on its own logger; while Redis is
	// down that is one line per attempt. The limiter logs the outage once;
	// the details go to debug.
	redisLogOnce.Do(func() { redis.SetLogger(redisLog{a.log}) })
	client := redis.NewClient(opts)
	lim, err := shaping.NewRedis(client, shaping.RedisConfig{
		Adaptive: a.cfg.shaping.Adaptive(),
		Fallback: mem,
		Logger:   a.log,
	})
	if err != nil {
		_ = client.Close()
		return nil, nil, fmt.Errorf("shaping: %w", err)
	}
	return lim, func() {
		_ = lim.Close()
		_ = client.Close()
	}, nil
}

// redisLogOnce guards go-redis's process-wide logger: set once, before the
// first client, never while clients may be reading it.
var redisLogOnce sync.Once

// redisLog sends go-redis's internal log lines to slog at debug level.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "redis: "+fmt.Sprintf(format, v...))
}

func (a *app) mxConfig() mx.Config {
	c := mx.Config{
		Server:       a.cfg.DNSServer,
		Port:         a.cfg.SMTPPort,
		AllowPrivate: a.cfg.AllowPrivateMX,
	}
	if a.sim != nil {
		c.Routes = map[string][]string{simulator.Domain: {a.sim.Addr()}}
	}
	return c
}

// serveHTTP serves health and metrics until ctx ends.
func (a *app) serveHTTP(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.nc.IsConnected() {
			http.Error(w, "nats: "+a.nc.Status().String(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", a.metrics)
	if a.cfg.unsubSigner != nil {
		// RFC 8058 one-click unsubscribe: the only path to expose publicly.
		mux.Handle(unsubscribe.Path, unsubscribe.Handler(a.cfg.unsubSigner, a.unsub))
	}
	if a.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(a.httpLis) }()
	a.log.Info("http: serving", slog.String("addr", a.httpLis.Addr().String()))
	select {
	case err := <-errc:
		return fmt.Errorf("http: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}

// close releases everything newApp opened; the embedded NATS server goes
// last so that roles could flush their final acks and events.
func (a *app) close() {
	if a.sim != nil {
		_ = a.sim.Close()
	}
	if a.grpcLis != nil {
		_ = a.grpcLis.Close()
	}
	if a.httpLis != nil {
		_ = a.httpLis.Close()
	}
	if a.bounceLis != nil {
		_ = a.bounceLis.Close()
	}
	if a.nc != nil {
		_ = a.nc.FlushTimeout(5 * time.Second)
		a.nc.Close()
	}
	if a.ns != nil {
		a.ns.Shutdown()
		a.ns.WaitForShutdown()
	}
}
