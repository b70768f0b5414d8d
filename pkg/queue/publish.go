package queue

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/propagation"
)

// Sentinel errors returned by Publisher.Publish, wrapped with the cause.
var (
	// ErrUnavailable means JetStream did not acknowledge in time, or
	// refused for a reason that may pass (no leader, connection lost).
	// Whether the message was stored is unknown; retry with the same id.
	ErrUnavailable = errors.New("queue: unavailable")
	// ErrFull means the stream refused the message because a limit was
	// reached (DiscardNew). Nothing was stored.
	ErrFull = errors.New("queue: stream full")
	// ErrTooLarge means the stream refused the message for its size; a
	// retry cannot succeed. Nothing was stored.
	ErrTooLarge = errors.New("queue: message larger than the stream allows")
)

// jsStoreFailed is JetStream's error code for a publish refused by a stream
// limit under DiscardNew ("maximum bytes exceeded", "maximum messages
// exceeded").
const jsStoreFailed jetstream.ErrorCode = 10077

// jsMsgTooLarge is JetStream's error code for a message above the stream's
// MaxMsgSize.
const jsMsgTooLarge jetstream.ErrorCode = 10054

// Publisher publishes messages and waits for their acknowledgement.
type Publisher struct {
	js jetstream.JetStream
}

// NewPublisher returns a Publisher. Pass a JetStream created with
// jetstream.WithPublishAsyncMaxPending to bound in-flight publishes.
func NewPublisher(js jetstream.JetStream) *Publisher { return &Publisher{js: js} }

// Publish sends every message asynchronously, each with its Nats-Msg-Id
// header already set by the caller, and returns nil only once JetStream has
// acknowledged all of them. On error some messages may be stored; publishing
// the same messages again is safe within the stream's Duplicates window.
//
// Errors wrap ErrFull, ErrTooLarge or ErrUnavailable.
func (p *Publisher) Publish(ctx context.Context, msgs ...*nats.Msg) error {
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for _, m := range msgs {
		InjectTrace(ctx, m)
		f, err := p.js.PublishMsgAsync(m)
		if err != nil {
			return classify(err)
		}
		futures = append(futures, f)
	}
	var first error
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			if first == nil {
				first = classify(err)
			}
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
		}
	}
	return first
}

func classify(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jsStoreFailed:
			return fmt.Errorf("%w: %w", ErrFull, err)
		case jsMsgTooLarge:
			return fmt.Errorf("%w: %w", ErrTooLarge, err)
		}
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// traceHeaders adapts nats.Header to the OTel propagator. nats.Header keys are
// case-sensitive; W3C trace context keys are always written and read in lower
// case ("traceparent", "tracestate") on both sides.
type traceHeaders nats.Header

func (h traceHeaders) Get(key string) string { return nats.Header(h).Get(key) }
func (h traceHeaders) Set(key, value string) { nats.Header(h).Set(key, value) }
func (h traceHeaders) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

var propagator = propagation.TraceContext{}

// InjectTrace writes ctx's span context into m's headers.
func InjectTrace(ctx context.Context, m *nats.Msg) {
	if m.Header == nil {
		m.Header = nats.Header{}
	}
	propagator.Inject(ctx, traceHeaders(m.Header))
}

// ExtractTrace returns ctx carrying the span context found in h, if any.
func ExtractTrace(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return propagator.Extract(ctx, traceHeaders(h))
}
