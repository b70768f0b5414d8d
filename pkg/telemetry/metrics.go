// Package telemetry declares Postflow's telemetry vocabulary in one place
// (every metric instrument and log attribute key) and installs the
// OpenTelemetry SDK. Libraries use the instruments and helpers here, which
// sit on the OTel API; only main calls Setup.
package telemetry

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

const instrumentationName = "github.com/postflow/postflow"

// Attribute keys. Metric labels stay low-cardinality (result, reply class);
// recipients and message ids go to logs and spans only.
const (
	KeyMessageID = attribute.Key("postflow.message_id")
	KeyDomain    = attribute.Key("postflow.domain")
	KeyMXHost    = attribute.Key("postflow.mx_host")
	KeyAttempt   = attribute.Key("postflow.attempt")
	KeyResult    = attribute.Key("postflow.result")
	KeyReplyCode = attribute.Key("postflow.reply_class")
)

// Instruments are created once against the global meter provider. The OTel
// API delegates instruments made before Setup to the SDK once it is
// installed, so package-level instruments are safe.
var (
	meter = otel.Meter(instrumentationName)

	accepted   = must(meter.Int64Counter("postflow.submit.accepted", metric.WithDescription("Messages accepted by Send (JetStream acknowledged)"), metric.WithUnit("{message}")))
	rejected   = must(meter.Int64Counter("postflow.submit.rejected", metric.WithDescription("Send requests refused, by gRPC code"), metric.WithUnit("{request}")))
	delivered  = must(meter.Int64Counter("postflow.delivery.delivered", metric.WithDescription("Recipients delivered"), metric.WithUnit("{recipient}")))
	deferred   = must(meter.Int64Counter("postflow.delivery.deferred", metric.WithDescription("Recipient attempts deferred for retry"), metric.WithUnit("{recipient}")))
	bounced    = must(meter.Int64Counter("postflow.delivery.bounced", metric.WithDescription("Recipients bounced (permanent failure)"), metric.WithUnit("{recipient}")))
	expired    = must(meter.Int64Counter("postflow.delivery.expired", metric.WithDescription("Recipients expired after max age"), metric.WithUnit("{recipient}")))
	failed     = must(meter.Int64Counter("postflow.delivery.failed", metric.WithDescription("Recipients failed without an SMTP attempt (undecodable job)"), metric.WithUnit("{recipient}")))
	sessions   = must(meter.Int64Counter("postflow.delivery.sessions", metric.WithDescription("SMTP delivery attempts (one per job attempt)"), metric.WithUnit("{attempt}")))
	latency    = must(meter.Float64Histogram("postflow.delivery.latency", metric.WithDescription("Time from acceptance to delivery"), metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400)))
	held       = must(meter.Int64Counter("postflow.shaping.held", metric.WithDescription("Jobs handed back unattempted by traffic shaping, by reason (rate, connections)"), metric.WithUnit("{job}")))
	cuts       = must(meter.Int64Counter("postflow.shaping.cuts", metric.WithDescription("Destination rate cuts after throttling replies"), metric.WithUnit("{cut}")))
	fallbacks  = must(meter.Int64Counter("postflow.shaping.fallbacks", metric.WithDescription("Switches to the local limit while Redis was unreachable"), metric.WithUnit("{switch}")))
	reports    = must(meter.Int64Counter("postflow.bounce.reports", metric.WithDescription("Reports received on the bounce domain, by kind (failed, delayed, delivered, complaint, unknown, uncorrelated)"), metric.WithUnit("{report}")))
	suppressed = must(meter.Int64Counter("postflow.suppression.added", metric.WithDescription("Addresses put on a suppression list by the bounce role, by reason (bounce, complaint)"), metric.WithUnit("{address}")))
	skipped    = must(meter.Int64Counter("postflow.submit.suppressed", metric.WithDescription("Recipients not queued by Send because they are on the suppression list"), metric.WithUnit("{recipient}")))
	attemptDur = must(meter.Float64Histogram("postflow.delivery.duration", metric.WithDescription("Duration of one delivery attempt (DNS and SMTP)"), metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)))
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err) // only on invalid instrument names, a programming error
	}
	return v
}

// Accepted counts n accepted messages.
func Accepted(ctx context.Context, n int) { accepted.Add(ctx, int64(n)) }

// Rejected counts one refused Send, labelled with its gRPC code name.
func Rejected(ctx context.Context, code string) {
	rejected.Add(ctx, 1, metric.WithAttributes(KeyResult.String(code)))
}

// Delivered counts one delivered recipient and records its end-to-end latency.
func Delivered(ctx context.Context, secondsSinceAccept float64) {
	delivered.Add(ctx, 1)
	latency.Record(ctx, secondsSinceAccept)
}

// Deferred counts one deferred recipient attempt.
func Deferred(ctx context.Context) { deferred.Add(ctx, 1) }

// Bounced counts one bounced recipient.
func Bounced(ctx context.Context) { bounced.Add(ctx, 1) }

// Expired counts one expired recipient.
func Expired(ctx context.Context) { expired.Add(ctx, 1) }

// Failed counts one failed recipient.
func Failed(ctx context.Context) { failed.Add(ctx, 1) }

// Attempt records one delivery attempt's duration and its result class
// ("delivered", "deferred", "bounced", "mixed").
func Attempt(ctx context.Context, result string, seconds float64) {
	sessions.Add(ctx, 1, metric.WithAttributes(KeyResult.String(result)))
	attemptDur.Record(ctx, seconds, metric.WithAttributes(KeyResult.String(result)))
}

// keyReason labels why shaping held a job back.
var keyReason = attribute.Key("postflow.reason")

// Held records a job handed back by traffic shaping; reason is "rate" or
// "connections".
func Held(ctx context.Context, reason string) {
	held.Add(ctx, 1, metric.WithAttributes(keyReason.String(reason)))
}

// RateCut records one destination rate cut.
func RateCut(ctx context.Context) { cuts.Add(ctx, 1) }

// ShapingFallback records a switch to the local limit.
func ShapingFallback(ctx context.Context) { fallbacks.Add(ctx, 1) }

// Report records a report received by the bounce listener, by kind.
func Report(ctx context.Context, kind string) {
	reports.Add(ctx, 1, metric.WithAttributes(keyReason.String(kind)))
}

// SuppressionAdded records an address the bounce role suppressed, by
// reason.
func SuppressionAdded(ctx context.Context, reason string) {
	suppressed.Add(ctx, 1, metric.WithAttributes(keyReason.String(reason)))
}

// SuppressedAtSend records recipients Send did not queue.
func SuppressedAtSend(ctx context.Context, n int) { skipped.Add(ctx, int64(n)) }
