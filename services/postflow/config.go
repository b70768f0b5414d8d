package main

import (
	"bytes"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postflow/postflow/pkg/bounceclass"
	"github.com/postflow/postflow/pkg/mailmsg"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/retry"
	"github.com/postflow/postflow/pkg/routes"
	"github.com/postflow/postflow/pkg/shaping"
	"github.com/postflow/postflow/pkg/smtpout"
	"github.com/postflow/postflow/pkg/unsubscribe"
	"github.com/postflow/postflow/pkg/verp"
	"github.com/postflow/postflow/services/bounce"
)

// serveConfig is every knob of `postflow serve`, declared once with its
// default in defaultServeConfig.
type serveConfig struct {
	GRPCAddr       string
	HTTPAddr       string
	DataDir        string
	NATSURL        string
	RedisURL       string
	Roles          []string
	DNSServer      string
	SMTPPort       int
	AllowPrivateMX bool
	Simulator      bool
	MaxAge         time.Duration

	Hostname        string
	DKIMKeys        string
	RoutesFile      string
	ShapingFile     string
	TLSRoots        string
	SMTPTimeouts    smtpTimeouts
	Concurrency     int
	MaxMessageBytes int
	RetryMin        time.Duration
	RetryMax        time.Duration
	SyncAlways      bool
	ShutdownTimeout time.Duration
	LogLevel        slog.Level
	Pprof           bool
	CheckConfig     bool

	BounceDomain       string
	BounceSMTPAddr     string
	BounceSecretFile   string
	SuppressCategories []string

	UnsubscribeURL        string
	UnsubscribeSecretFile string

	// Not flags: sized from the above.
	Queue queue.Config
	// Not flags: read by finish from RoutesFile and TLSRoots.
	routes   *routes.Table
	shaping  *shaping.Config
	tlsRoots *x509.CertPool
	// Not a flag: read by finish from BounceDomain and BounceSecretFile.
	verp *verp.Signer
	// Not flags: built by finish from UnsubscribeURL and its secret.
	unsubSigner *unsubscribe.Signer
	unsubLinks  *unsubscribe.Links
	// unsubAllowHTTP lets the unsubscribe URL be http (tests on loopback).
	unsubAllowHTTP bool
	// mtastsPort is the HTTPS port of MTA-STS policy hosts; zero is 443.
	// Only tests change it.
	mtastsPort int
}

var knownRoles = []string{"api", "worker", "bounce"}

// smtpTimeouts are the SMTP client's per-phase limits (RFC 5321 §4.5.3.2).
type smtpTimeouts struct {
	Connect, Command, Data time.Duration
}

// attempt is the hard deadline of one delivery attempt: DNS plus the
// sessions it may open (2, Postfix's smtp_mx_session_limit), each bounded by
// connect, six command replies and the final reply, with 10% slack
// (TESTPLAN A12).
func (t smtpTimeouts) attempt() time.Duration {
	const dnsBudget = 30 * time.Second
	session := t.Connect + 6*t.Command + t.Data
	return (dnsBudget + 2*session) * 11 / 10
}

func defaultServeConfig() serveConfig {
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	return serveConfig{
		GRPCAddr:  "127.0.0.1:8025",
		HTTPAddr:  "127.0.0.1:8026",
		DataDir:   "./postflow-data",
		Roles:     knownRoles,
		SMTPPort:  25,
		Simulator: true,
		MaxAge:    5 * 24 * time.Hour, // Postfix maximal_queue_lifetime
		// RFC 5321 §4.5.3.2 minimums, as Postfix uses them.
		SMTPTimeouts:    smtpTimeouts{Connect: smtpout.DefaultConnectTimeout, Command: smtpout.DefaultCommandTimeout, Data: smtpout.DefaultDataTimeout},
		Hostname:        host,
		Concurrency:     64,
		MaxMessageBytes: 10 << 20, // Postfix message_size_limit is 10,240,000
		RetryMin:        retry.DefaultSchedule().Min,
		RetryMax:        retry.DefaultSchedule().Max,
		ShutdownTimeout: 30 * time.Second,
		LogLevel:        slog.LevelInfo,
		Queue:           queue.DefaultConfig(),

		SuppressCategories: bounce.DefaultSuppressCategories,
	}
}

// serveFlags registers the flags of `postflow serve` on fs, bound to cfg.
func serveFlags(fs *flag.FlagSet, cfg *serveConfig) {
	fs.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "gRPC API listen address")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "HTTP listen address for /healthz, /readyz and /metrics")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "embedded NATS JetStream storage directory")
	fs.StringVar(&cfg.NATSURL, "nats-url", cfg.NATSURL, "NATS server URL(s), comma-separated; empty runs an embedded nats-server")
	fs.StringVar(&cfg.RedisURL, "redis-url", cfg.RedisURL, "Redis URL (redis://[user:password@]host:port/db) for limits shared by every worker; empty keeps them in this process")
	fs.Func("roles", "comma-separated roles to run: api,worker,bounce (default all)", func(s string) error {
		cfg.Roles = nil
		for _, r := range strings.Split(s, ",") {
			if r = strings.TrimSpace(r); r != "" {
				cfg.Roles = append(cfg.Roles, r)
			}
		}
		return nil
	})
	fs.StringVar(&cfg.DNSServer, "dns-server", cfg.DNSServer, "DNS server host:port for MX lookups; empty uses /etc/resolv.conf")
	fs.IntVar(&cfg.SMTPPort, "smtp-port", cfg.SMTPPort, "destination SMTP port (25 in production; other values for tests and demos)")
	fs.BoolVar(&cfg.AllowPrivateMX, "allow-private-mx", cfg.AllowPrivateMX, "allow delivery to loopback, private, link-local and unspecified addresses")
	fs.BoolVar(&cfg.Simulator, "simulator", cfg.Simulator, "run the mailbox simulator for @simulator.postflow.test")
	fs.DurationVar(&cfg.MaxAge, "max-age", cfg.MaxAge, "how long a message is retried before it expires")
	fs.DurationVar(&cfg.SMTPTimeouts.Connect, "smtp-connect-timeout", cfg.SMTPTimeouts.Connect, "TCP connect timeout per MX address")
	fs.DurationVar(&cfg.SMTPTimeouts.Command, "smtp-command-timeout", cfg.SMTPTimeouts.Command, "wait for each SMTP reply before the body (RFC 5321 minimum 5m)")
	fs.DurationVar(&cfg.SMTPTimeouts.Data, "smtp-data-timeout", cfg.SMTPTimeouts.Data, "wait for the reply after the final dot (RFC 5321 minimum 10m)")
	fs.StringVar(&cfg.DKIMKeys, "dkim-keys", cfg.DKIMKeys, "directory of DKIM private keys named <selector>._domainkey.<domain>.pem; mail from those domains is signed")
	fs.StringVar(&cfg.RoutesFile, "routes", cfg.RoutesFile, "YAML file of delivery routes: per-domain TLS policy (opportunistic, require), MTA-STS, smarthost relays; see docs/delivery.md")
	fs.StringVar(&cfg.ShapingFile, "shaping", cfg.ShapingFile, "YAML file of per-destination limits (rate, connections, ...) over the shipped provider defaults; see docs/shaping.md")
	fs.StringVar(&cfg.TLSRoots, "tls-roots", cfg.TLSRoots, "PEM file of CA certificates that replace the system roots when verifying receivers, relays and MTA-STS hosts")
	fs.StringVar(&cfg.Hostname, "hostname", cfg.Hostname, "name used in EHLO and generated Message-IDs")
	fs.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "delivery jobs a worker processes at once")
	fs.IntVar(&cfg.MaxMessageBytes, "max-message-size", cfg.MaxMessageBytes, "largest message accepted, in bytes")
	fs.DurationVar(&cfg.RetryMin, "retry-min", cfg.RetryMin, "delay before the first retry after a temporary failure")
	fs.DurationVar(&cfg.RetryMax, "retry-max", cfg.RetryMax, "longest delay between retries")
	fs.IntVar(&cfg.Queue.Replicas, "stream-replicas", cfg.Queue.Replicas, "JetStream replicas for the streams (1 embedded; 3 on a production cluster)")
	fs.BoolVar(&cfg.SyncAlways, "sync-always", cfg.SyncAlways, "embedded NATS: fsync every write (sync_interval: always)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long in-flight work may finish after SIGTERM")
	fs.TextVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "log level: debug, info, warn, error")
	fs.BoolVar(&cfg.Pprof, "pprof", cfg.Pprof, "serve Go profiles under /debug/pprof/ on --http-addr (keep that address private)")
	fs.BoolVar(&cfg.CheckConfig, "check-config", false, "validate the configuration, print it and exit")
	fs.DurationVar(&cfg.Queue.EventsMaxAge, "events-retention", cfg.Queue.EventsMaxAge, "how long events (status, history, idempotency keys, bounce records) are kept")
	fs.StringVar(&cfg.BounceDomain, "bounce-domain", cfg.BounceDomain, "domain of VERP return paths (b+TOKEN@domain); its MX must reach --bounce-smtp-addr. Empty: the sender's address is the return path")
	fs.StringVar(&cfg.BounceSMTPAddr, "bounce-smtp-addr", cfg.BounceSMTPAddr, "bounce role: listen address for asynchronous bounces and complaints over SMTP (needs --bounce-domain)")
	fs.StringVar(&cfg.BounceSecretFile, "bounce-secret-file", cfg.BounceSecretFile, "file holding the secret (at least 16 bytes) that authenticates return paths; the same on every worker and bounce role")
	fs.StringVar(&cfg.UnsubscribeURL, "unsubscribe-url", cfg.UnsubscribeURL, "public https base URL of the one-click unsubscribe endpoint (served at <url>/u/ on --http-addr); campaign mail carries List-Unsubscribe only with it")
	fs.StringVar(&cfg.UnsubscribeSecretFile, "unsubscribe-secret-file", cfg.UnsubscribeSecretFile, "file with the secret (at least 16 bytes) that signs unsubscribe links; default: --bounce-secret-file")
	fs.Func("suppress-categories", "bounce categories that put an address on the suppression list (default bad_mailbox,bad_domain); complaints always do", func(s string) error {
		cfg.SuppressCategories = []string{}
		for _, c := range strings.Split(s, ",") {
			if c = strings.TrimSpace(c); c != "" {
				cfg.SuppressCategories = append(cfg.SuppressCategories, c)
			}
		}
		return nil
	})
}

// envName is the environment variable mirroring a flag: POSTFLOW_<NAME>.
func envName(flagName string) string {
	return "POSTFLOW_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseWithEnv applies POSTFLOW_* variables as flag values, then the command
// line, which wins.
func parseWithEnv(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if v := getenv(envName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", envName(f.Name), v, err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return fs.Parse(args)
}

// finish derives dependent settings and validates everything, returning
// every problem at once.
func (c *serveConfig) finish() error {
	var errs []error
	for _, r := range c.Roles {
		if !contains(knownRoles, r) {
			errs = append(errs, fmt.Errorf("--roles: unknown role %q (want api, worker, bounce)", r))
		}
	}
	if len(c.Roles) == 0 {
		errs = append(errs, errors.New("--roles: no role given"))
	}
	for name, addr := range map[string]string{"--grpc-addr": c.GRPCAddr, "--http-addr": c.HTTPAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	if c.DNSServer != "" {
		if _, _, err := net.SplitHostPort(c.DNSServer); err != nil {
			errs = append(errs, fmt.Errorf("--dns-server: %w", err))
		}
	}
	if c.SMTPPort < 1 || c.SMTPPort > 65535 {
		errs = append(errs, fmt.Errorf("--smtp-port: %d out of range", c.SMTPPort))
	}
	if c.MaxAge < time.Minute {
		errs = append(errs, fmt.Errorf("--max-age: %v below 1m", c.MaxAge))
	}
	if c.Concurrency < 1 || c.Concurrency > 10000 {
		errs = append(errs, fmt.Errorf("--concurrency: %d out of range 1..10000", c.Concurrency))
	}
	if c.MaxMessageBytes < 1024 || c.MaxMessageBytes > 64<<20 {
		errs = append(errs, fmt.Errorf("--max-message-size: %d out of range 1KiB..64MiB", c.MaxMessageBytes))
	}
	if c.SMTPTimeouts.Connect <= 0 || c.SMTPTimeouts.Command <= 0 || c.SMTPTimeouts.Data <= 0 {
		errs = append(errs, errors.New("--smtp-*-timeout: must be positive"))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, errors.New("--shutdown-timeout: must be positive"))
	}
	if c.NATSURL == "" && c.Queue.Replicas != 1 {
		errs = append(errs, fmt.Errorf("--stream-replicas: %d needs a NATS cluster (--nats-url); the embedded server has one node", c.Queue.Replicas))
	}
	if c.RedisURL != "" {
		if _, err := redis.ParseURL(c.RedisURL); err != nil {
			// go-redis's message does not echo the URL, so no password leaks.
			errs = append(errs, fmt.Errorf("--redis-url: %w", err))
		}
	}
	// A job is the body plus its envelope (addresses, ids, timestamps).
	c.Queue.MaxMsgSize = int32(c.MaxMessageBytes + 1<<20)
	if err := c.retrySchedule().Validate(); err != nil {
		errs = append(errs, fmt.Errorf("--retry-min/--retry-max: %w", err))
	}
	if err := c.Queue.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.RoutesFile != "" {
		t, err := routes.Load(c.RoutesFile, os.Getenv)
		if err != nil {
			errs = append(errs, fmt.Errorf("--routes: %w", err))
		}
		c.routes = t
	}
	c.shaping = shaping.Builtin()
	if c.ShapingFile != "" {
		sc, err := shaping.Load(c.ShapingFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("--shaping: %w", err))
		} else {
			c.shaping = sc
		}
	}
	errs = append(errs, c.finishBounce()...)
	errs = append(errs, c.finishUnsubscribe()...)
	if c.TLSRoots != "" {
		pem, err := os.ReadFile(c.TLSRoots)
		c.tlsRoots = x509.NewCertPool()
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("--tls-roots: %w", err))
		case !c.tlsRoots.AppendCertsFromPEM(pem):
			errs = append(errs, fmt.Errorf("--tls-roots: %s holds no PEM certificate", c.TLSRoots))
		}
	}
	return errors.Join(errs...)
}

// finishBounce checks the bounce settings and builds the VERP signer.
func (c *serveConfig) finishBounce() (errs []error) {
	for _, cat := range c.SuppressCategories {
		if !slices.Contains(bounceclass.Categories, bounceclass.Category(cat)) {
			errs = append(errs, fmt.Errorf("--suppress-categories: unknown category %q", cat))
		}
	}
	if c.Queue.EventsMaxAge < time.Hour {
		errs = append(errs, fmt.Errorf("--events-retention: %v below 1h", c.Queue.EventsMaxAge))
	}
	if c.BounceDomain == "" {
		if c.BounceSMTPAddr != "" {
			errs = append(errs, errors.New("--bounce-smtp-addr: needs --bounce-domain"))
		}
		return errs
	}
	if c.BounceSMTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.BounceSMTPAddr); err != nil {
			errs = append(errs, fmt.Errorf("--bounce-smtp-addr: %w", err))
		}
	}
	if c.BounceSecretFile == "" {
		return append(errs, errors.New("--bounce-domain: needs --bounce-secret-file"))
	}
	secret, err := os.ReadFile(c.BounceSecretFile)
	if err != nil {
		return append(errs, fmt.Errorf("--bounce-secret-file: %w", err))
	}
	// The error names lengths and the domain, never the secret.
	if c.verp, err = verp.New(bytes.TrimSpace(secret), c.BounceDomain); err != nil {
		errs = append(errs, fmt.Errorf("--bounce-domain/--bounce-secret-file: %w", err))
	}
	return errs
}

// finishUnsubscribe builds the unsubscribe signer and links.
func (c *serveConfig) finishUnsubscribe() (errs []error) {
	if c.UnsubscribeURL == "" {
		return nil
	}
	file := c.UnsubscribeSecretFile
	if file == "" {
		file = c.BounceSecretFile
	}
	if file == "" {
		return []error{errors.New("--unsubscribe-url: needs --unsubscribe-secret-file (or --bounce-secret-file)")}
	}
	secret, err := os.ReadFile(file)
	if err != nil {
		return []error{fmt.Errorf("--unsubscribe-secret-file: %w", err)}
	}
	if c.unsubSigner, err = unsubscribe.NewSigner(bytes.TrimSpace(secret)); err != nil {
		return []error{fmt.Errorf("--unsubscribe-secret-file: %w", err)}
	}
	if c.unsubLinks, err = unsubscribe.NewLinks(c.unsubSigner, c.UnsubscribeURL, c.BounceDomain, unsubscribe.Options{AllowHTTP: c.unsubAllowHTTP}); err != nil {
		errs = append(errs, fmt.Errorf("--unsubscribe-url: %w", err))
	}
	return errs
}

func (c *serveConfig) retrySchedule() retry.Schedule {
	s := retry.DefaultSchedule()
	s.Min, s.Max = c.RetryMin, c.RetryMax
	return s
}

func (c *serveConfig) limits() mailmsg.Limits {
	return mailmsg.Limits{MaxMessageBytes: c.MaxMessageBytes, MaxRecipients: 50, MaxHeaders: 50, MaxHeaderValueBytes: 998}
}

func (c *serveConfig) has(role string) bool { return contains(c.Roles, role) }

// logValue lists the effective configuration for the start-up log, with the
// credentials in URLs redacted.
func (c *serveConfig) logAttrs() []any {
	return []any{
		slog.String("grpc_addr", c.GRPCAddr), slog.String("http_addr", c.HTTPAddr),
		slog.String("data_dir", c.DataDir), slog.String("nats_url", redactURL(c.NATSURL)),
		slog.String("redis_url", redactURL(c.RedisURL)), slog.Any("roles", c.Roles),
		slog.String("dns_server", c.DNSServer), slog.Int("smtp_port", c.SMTPPort),
		slog.Bool("allow_private_mx", c.AllowPrivateMX), slog.Bool("simulator", c.Simulator),
		slog.Duration("max_age", c.MaxAge), slog.String("hostname", c.Hostname), slog.String("dkim_keys", c.DKIMKeys),
		slog.String("routes", c.RoutesFile), slog.String("shaping", c.ShapingFile), slog.String("tls_roots", c.TLSRoots),
		slog.Int("concurrency", c.Concurrency), slog.Int("max_message_size", c.MaxMessageBytes),
		slog.Duration("retry_min", c.RetryMin), slog.Duration("retry_max", c.RetryMax),
		slog.Bool("sync_always", c.SyncAlways), slog.Int("stream_replicas", c.Queue.Replicas),
		slog.Duration("smtp_connect_timeout", c.SMTPTimeouts.Connect), slog.Duration("smtp_command_timeout", c.SMTPTimeouts.Command),
		slog.Duration("smtp_data_timeout", c.SMTPTimeouts.Data),
		slog.Duration("events_retention", c.Queue.EventsMaxAge), slog.String("bounce_domain", c.BounceDomain),
		slog.String("bounce_smtp_addr", c.BounceSMTPAddr), slog.String("bounce_secret_file", c.BounceSecretFile),
		slog.Any("suppress_categories", c.SuppressCategories),
		slog.String("unsubscribe_url", c.UnsubscribeURL), slog.String("unsubscribe_secret_file", c.UnsubscribeSecretFile),
	}
}

// redactURL hides user information in a URL ("nats://user:pass@host").
func redactURL(u string) string {
	at := strings.LastIndexByte(u, '@')
	if at < 0 {
		return u
	}
	scheme := strings.Index(u, "://")
	if scheme < 0 || scheme > at {
		return "REDACTED@" + u[at+1:]
	}
	return u[:scheme+3] + "REDACTED@" + u[at+1:]
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
