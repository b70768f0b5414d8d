// Package queue owns Postflow's JetStream layout (DESIGN.md §4): the stream
// and consumer definitions, subject names, and publishing with the guarantees
// the roles rely on (deterministic Nats-Msg-Id, wait for every PubAck, trace
// context in headers).
//
// Streams are created or updated idempotently by whichever role starts first,
// so any role may start in any order against a fresh NATS.
package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream and consumer names.
const (
	OutboundStream = "OUTBOUND"
	EventsStream   = "EVENTS"
	// BouncesStream holds one record per permanently failed recipient.
	BouncesStream = "BOUNCES"
	// WorkerConsumer is the durable pull consumer every worker shares.
	WorkerConsumer = "workers"
	// BounceConsumer is the durable pull consumer on BOUNCES that every
	// bounce role shares: it turns bounce records into suppressions.
	BounceConsumer = "bounce"
)

// Subject prefixes. Subjects end in tokens chosen by Postflow (tenant names,
// message ids, indexes) or DNS domain names in A-label form, all of which are
// valid subject tokens.
const (
	// OutboundPrefix starts every OUTBOUND subject:
	// OutboundPrefix + "<tenant>.<domain>".
	OutboundPrefix = "postflow.outbound."
	eventsPrefix   = "postflow.events."
	bouncesPrefix  = "postflow.bounces."
)

// OutboundSubject is the subject of a delivery job for one recipient domain.
// The domain keeps its dots, so it spans several tokens; consumers filter by
// prefix ("postflow.outbound.<tenant>.>").
func OutboundSubject(tenant, domain string) string {
	return OutboundPrefix + tenant + "." + domain
}

// BounceSubject is the subject of a tenant's bounce records.
func BounceSubject(tenant string) string {
	return bouncesPrefix + tenant
}

// EventSubject is the subject of one recipient's events.
func EventSubject(tenant, messageID string, index int) string {
	return eventsPrefix + tenant + "." + messageID + "." + strconv.Itoa(index)
}

// MessageEventsFilter matches every event of one message.
func MessageEventsFilter(tenant, messageID string) string {
	return eventsPrefix + tenant + "." + messageID + ".>"
}

// Config sizes the streams. Every limit is explicit: a WorkQueue stream still
// enforces its limits, and DiscardNew makes a full stream refuse new jobs
// (the client gets RESOURCE_EXHAUSTED) instead of deleting unsent mail.
type Config struct {
	// Replicas is 1 on the embedded server and 3 in production.
	Replicas int
	// OutboundMaxBytes bounds the bytes queued for delivery.
	OutboundMaxBytes int64
	// OutboundMaxMsgs bounds the number of queued jobs.
	OutboundMaxMsgs int64
	// MaxMsgSize is the largest job accepted; it must cover the largest
	// message body plus the job envelope.
	MaxMsgSize int32
	// Duplicates is the Nats-Msg-Id deduplication window. It must exceed
	// the client publish-retry horizon and AckWait plus event publishing
	// (TESTPLAN §7: at least 10 minutes).
	Duplicates time.Duration
	// EventsMaxAge is status retention.
	EventsMaxAge time.Duration
	// AckWait is how long a worker may hold a job without acking or
	// sending InProgress before JetStream redelivers it.
	AckWait time.Duration
	// MaxAckPending bounds jobs delivered and not yet acked, including jobs
	// waiting out a NakWithDelay.
	MaxAckPending int
	// MaxDeliver bounds deliveries of one job; the worker expires a job
	// before it reaches this.
	MaxDeliver int
}

// DefaultConfig returns the embedded default's sizes.
func DefaultConfig() Config {
	return Config{
		Replicas:         1,
		OutboundMaxBytes: 8 << 30,
		OutboundMaxMsgs:  10_000_000,
		MaxMsgSize:       12 << 20,
		Duplicates:       15 * time.Minute,
		EventsMaxAge:     30 * 24 * time.Hour,
		AckWait:          60 * time.Second,
		MaxAckPending:    100_000,
		MaxDeliver:       1000,
	}
}

// OutboundConfig is the OUTBOUND stream definition.
func (c Config) OutboundConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        OutboundStream,
		Description: "Postflow delivery jobs, one per message and recipient domain",
		Subjects:    []string{OutboundPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    c.OutboundMaxBytes,
		MaxMsgs:     c.OutboundMaxMsgs,
		MaxMsgSize:  c.MaxMsgSize,
		MaxAge:      0, // never age out unsent mail; the worker enforces max age
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		Duplicates:  c.Duplicates,
		DenyDelete:  true,
		DenyPurge:   true,
	}
}

// EventsConfig is the EVENTS stream definition.
func (c Config) EventsConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              EventsStream,
		Description:       "Postflow per-recipient state changes; the source of truth for status",
		Subjects:          []string{eventsPrefix + ">"},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxAge:            c.EventsMaxAge,
		Storage:           jetstream.FileStorage,
		Replicas:          c.Replicas,
		Duplicates:        c.Duplicates,
		AllowDirect:       true,
		MaxMsgsPerSubject: -1,
	}
}

// BouncesConfig is the BOUNCES stream definition (DESIGN §4): one record per
// permanently failed recipient, kept as long as status.
func (c Config) BouncesConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        BouncesStream,
		Description: "Postflow bounce records: permanent failures, expiries and complaints, one per recipient and report",
		Subjects:    []string{bouncesPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      c.EventsMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		Duplicates:  c.Duplicates,
	}
}

// WorkerConsumerConfig is the shared durable pull consumer on OUTBOUND.
func (c Config) WorkerConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       WorkerConsumer,
		Description:   "Postflow workers",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    c.MaxDeliver,
		MaxAckPending: c.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
}

// BounceConsumerConfig is the bounce roles' shared durable pull consumer
// on BOUNCES. Handling a record is idempotent (a suppression entry is
// written again), so redelivery is harmless and MaxDeliver is unbounded.
func (c Config) BounceConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       BounceConsumer,
		Description:   "Postflow bounce role: suppression",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 1000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
}

// Validate reports every invalid field.
func (c Config) Validate() error {
	var errs []error
	if c.Replicas < 1 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("queue: replicas %d out of range 1..5", c.Replicas))
	}
	if c.OutboundMaxBytes <= 0 || c.OutboundMaxMsgs <= 0 || c.MaxMsgSize <= 0 {
		errs = append(errs, errors.New("queue: outbound limits must be positive"))
	}
	if c.Duplicates < 10*time.Minute {
		errs = append(errs, fmt.Errorf("queue: duplicates window %v below 10m", c.Duplicates))
	}
	if c.AckWait < time.Second {
		errs = append(errs, fmt.Errorf("queue: ack wait %v below 1s", c.AckWait))
	}
	if c.MaxAckPending < 1 || c.MaxDeliver < 2 {
		errs = append(errs, errors.New("queue: max ack pending must be at least 1 and max deliver at least 2"))
	}
	return errors.Join(errs...)
}

// Ensure creates or updates the streams and the worker and bounce
// consumers. It is safe
// to call concurrently from several processes.
func Ensure(ctx context.Context, js jetstream.JetStream, c Config) error {
	for _, sc := range []jetstream.StreamConfig{c.OutboundConfig(), c.EventsConfig(), c.BouncesConfig()} {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("queue: ensure stream %s: %w", sc.Name, err)
		}
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, OutboundStream, c.WorkerConsumerConfig()); err != nil {
		return fmt.Errorf("queue: ensure consumer %s: %w", WorkerConsumer, err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, BouncesStream, c.BounceConsumerConfig()); err != nil {
		return fmt.Errorf("queue: ensure consumer %s: %w", BounceConsumer, err)
	}
	return nil
}

// IsSubjectToken reports whether s can be used as one subject token: non-empty,
// no dots, wildcards or whitespace.
func IsSubjectToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".*> \t\r\n")
}
