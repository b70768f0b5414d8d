package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/postflow/postflow/pkg/queue"
)

// newMsg returns a message for subject carrying the Nats-Msg-Id id.
func newMsg(subject, id, data string) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = []byte(data)
	m.Header.Set(jetstream.MsgIDHeader, id)
	return m
}

// createStream creates a small stream on "<prefix>.>" for one test.
func createStream(t *testing.T, ctx context.Context, js jetstream.JetStream, sc jetstream.StreamConfig) jetstream.Stream {
	t.Helper()
	st, err := js.CreateStream(ctx, sc)
	if err != nil {
		t.Fatalf("CreateStream(%s): %v", sc.Name, err)
	}
	return st
}

func streamMsgs(t *testing.T, ctx context.Context, st jetstream.Stream) uint64 {
	t.Helper()
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("stream Info: %v", err)
	}
	return info.State.Msgs
}

func TestPublishStores(t *testing.T) {
	t.Parallel()
	_, js := newJetStream(t)
	ctx := testContext(t)
	if err := queue.Ensure(ctx, js, queue.DefaultConfig()); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	out, err := js.Stream(ctx, queue.OutboundStream)
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	p := queue.NewPublisher(js)

	msgs := []*nats.Msg{
		newMsg(queue.OutboundSubject("acme", "example.com"), "job-1", "a"),
		newMsg(queue.OutboundSubject("acme", "example.org"), "job-2", "b"),
		newMsg(queue.OutboundSubject("acme", "example.net"), "job-3", "c"),
	}
	if err := p.Publish(ctx, msgs...); err != nil {
		t.Fatalf("Publish(3 jobs) = %v, want nil", err)
	}
	// Publish returns only after every PubAck, so the count is exact now.
	if got := streamMsgs(t, ctx, out); got != 3 {
		t.Errorf("OUTBOUND holds %d messages after Publish(3 jobs), want 3", got)
	}

	if err := p.Publish(ctx); err != nil {
		t.Errorf("Publish(no messages) = %v, want nil", err)
	}
}

func TestPublishDeduplicates(t *testing.T) {
	t.Parallel()
	_, js := newJetStream(t)
	ctx := testContext(t)
	st := createStream(t, ctx, js, jetstream.StreamConfig{
		Name:       "DEDUP",
		Subjects:   []string{"d.>"},
		Storage:    jetstream.MemoryStorage,
		Duplicates: time.Hour,
	})
	p := queue.NewPublisher(js)

	if err := p.Publish(ctx, newMsg("d.x", "same-id", "first")); err != nil {
		t.Fatalf("Publish(id same-id) = %v, want nil", err)
	}
	if err := p.Publish(ctx, newMsg("d.x", "same-id", "second")); err != nil {
		t.Fatalf("Publish(id same-id) again = %v, want nil (a duplicate is acknowledged)", err)
	}
	// Two copies in one call are deduplicated too.
	if err := p.Publish(ctx, newMsg("d.y", "other-id", "a"), newMsg("d.y", "other-id", "b")); err != nil {
		t.Fatalf("Publish(other-id twice in one call) = %v, want nil", err)
	}
	if got := streamMsgs(t, ctx, st); got != 2 {
		t.Errorf("stream holds %d messages after publishing 2 ids twice each, want 2", got)
	}
	raw, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatalf("GetMsg(1): %v", err)
	}
	if string(raw.Data) != "first" {
		t.Errorf("stored message for same-id = %q, want the first copy %q", raw.Data, "first")
	}
}

func TestPublishFull(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		sc   jetstream.StreamConfig
		data string
	}{
		{"max msgs", jetstream.StreamConfig{
			Name: "TINY", Subjects: []string{"t.>"}, Storage: jetstream.MemoryStorage,
			MaxMsgs: 1, Discard: jetstream.DiscardNew,
		}, "x"},
		{"max bytes on a work queue", jetstream.StreamConfig{
			Name: "SMALL", Subjects: []string{"t.>"}, Storage: jetstream.FileStorage,
			Retention: jetstream.WorkQueuePolicy, MaxBytes: 600, Discard: jetstream.DiscardNew,
		}, string(make([]byte, 400))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, js := newJetStream(t)
			ctx := testContext(t)
			st := createStream(t, ctx, js, tc.sc)
			p := queue.NewPublisher(js)

			if err := p.Publish(ctx, newMsg("t.a", "m1", tc.data)); err != nil {
				t.Fatalf("Publish(m1) into empty stream %s = %v, want nil", tc.sc.Name, err)
			}
			err := p.Publish(ctx, newMsg("t.a", "m2", tc.data))
			if !errors.Is(err, queue.ErrFull) {
				t.Errorf("Publish(m2) into full stream %s = %v, want an error wrapping queue.ErrFull", tc.sc.Name, err)
			}
			if errors.Is(err, queue.ErrUnavailable) {
				t.Errorf("Publish(m2) into full stream %s = %v, must not wrap queue.ErrUnavailable", tc.sc.Name, err)
			}
			if got := streamMsgs(t, ctx, st); got != 1 {
				t.Errorf("full stream %s holds %d messages after refused publish, want 1", tc.sc.Name, got)
			}
		})
	}
}

func TestPublishTooLarge(t *testing.T) {
	t.Parallel()
	_, js := newJetStream(t)
	ctx := testContext(t)
	st := createStream(t, ctx, js, jetstream.StreamConfig{
		Name: "SIZED", Subjects: []string{"t.>"}, Storage: jetstream.MemoryStorage, MaxMsgSize: 100,
	})
	err := queue.NewPublisher(js).Publish(ctx, newMsg("t.a", "big", string(make([]byte, 200))))
	if !errors.Is(err, queue.ErrTooLarge) || errors.Is(err, queue.ErrUnavailable) {
		t.Errorf("Publish(200 bytes) into a 100-byte stream = %v, want ErrTooLarge and not ErrUnavailable", err)
	}
	if got := streamMsgs(t, ctx, st); got != 0 {
		t.Errorf("stream holds %d messages after a refused publish, want 0", got)
	}
}

func TestPublishUnavailable(t *testing.T) {
	t.Parallel()
	srv, js := newJetStream(t)
	ctx := testContext(t)

	// A subscriber that never answers: PublishMsgAsync succeeds but no
	// PubAck ever arrives, so only the context can end the wait.
	nc := srv.Connect(t)
	if _, err := nc.Subscribe("silent.>", func(*nats.Msg) {}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}

	closedConn := srv.Connect(t)
	closedJS, err := jetstream.New(closedConn)
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	closedConn.Close()

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	expired, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	t.Cleanup(cancel2)

	tests := []struct {
		name    string
		js      jetstream.JetStream
		ctx     context.Context
		subject string
		cause   error // also wrapped, when not nil
	}{
		{"canceled context", js, canceled, "silent.a", context.Canceled},
		{"expired context", js, expired, "silent.b", context.DeadlineExceeded},
		// nats.go flattens the connection error with %v, so only the
		// sentinel is checked.
		{"closed connection", closedJS, ctx, "silent.c", nil},
		{"no stream", js, ctx, "nostream.d", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := queue.NewPublisher(tc.js).Publish(tc.ctx, newMsg(tc.subject, "id-"+tc.subject, "x"))
			if !errors.Is(err, queue.ErrUnavailable) {
				t.Errorf("Publish(%s) with %s = %v, want an error wrapping queue.ErrUnavailable", tc.subject, tc.name, err)
			}
			if errors.Is(err, queue.ErrFull) {
				t.Errorf("Publish(%s) with %s = %v, must not wrap queue.ErrFull", tc.subject, tc.name, err)
			}
			if tc.cause != nil && !errors.Is(err, tc.cause) {
				t.Errorf("Publish(%s) with %s = %v, want it to wrap %v", tc.subject, tc.name, err, tc.cause)
			}
		})
	}
}

func TestPublishInjectsTrace(t *testing.T) {
	t.Parallel()
	_, js := newJetStream(t)
	ctx := testContext(t)
	st := createStream(t, ctx, js, jetstream.StreamConfig{
		Name:     "TRACE",
		Subjects: []string{"tr.>"},
		Storage:  jetstream.MemoryStorage,
	})
	sc := testSpanContext(t)
	if err := queue.NewPublisher(js).Publish(trace.ContextWithSpanContext(ctx, sc), newMsg("tr.a", "t1", "x")); err != nil {
		t.Fatalf("Publish = %v, want nil", err)
	}
	raw, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatalf("GetMsg(1): %v", err)
	}
	got := trace.SpanContextFromContext(queue.ExtractTrace(context.Background(), raw.Header))
	if got.TraceID() != sc.TraceID() {
		t.Errorf("stored message trace id = %v (headers %v), want %v", got.TraceID(), raw.Header, sc.TraceID())
	}
}

func testSpanContext(t *testing.T) trace.SpanContext {
	t.Helper()
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
	})
	if !sc.IsValid() {
		t.Fatalf("test span context %v is not valid", sc)
	}
	return sc
}

func TestTraceRoundTrip(t *testing.T) {
	t.Parallel()
	sc := testSpanContext(t)
	ctx := trace.ContextWithSpanContext(context.Background(), sc)

	tests := []struct {
		name   string
		header nats.Header
	}{
		{"nil header", nil},
		{"existing header", nats.Header{jetstream.MsgIDHeader: []string{"abc"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := &nats.Msg{Subject: "x", Header: tc.header}
			queue.InjectTrace(ctx, m)
			const wantParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
			if got := m.Header.Get("traceparent"); got != wantParent {
				t.Errorf("InjectTrace(%v) traceparent = %q (headers %v), want %q", sc, got, m.Header, wantParent)
			}
			if tc.header != nil && m.Header.Get(jetstream.MsgIDHeader) != "abc" {
				t.Errorf("InjectTrace dropped %s: headers %v", jetstream.MsgIDHeader, m.Header)
			}
			got := trace.SpanContextFromContext(queue.ExtractTrace(context.Background(), m.Header))
			if got.TraceID() != sc.TraceID() || got.SpanID() != sc.SpanID() || !got.IsSampled() {
				t.Errorf("ExtractTrace(%v) = trace %v span %v sampled %v, want trace %v span %v sampled true",
					m.Header, got.TraceID(), got.SpanID(), got.IsSampled(), sc.TraceID(), sc.SpanID())
			}
			if !got.IsRemote() {
				t.Errorf("ExtractTrace(%v) span context is not marked remote", m.Header)
			}
		})
	}
}

func TestExtractTraceWithoutContext(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		header nats.Header
	}{
		{"nil header", nil},
		{"no traceparent", nats.Header{"Other": []string{"v"}}},
		{"malformed traceparent", nats.Header{"traceparent": []string{"not-a-traceparent"}}},
	}
	for _, tc := range tests {
		got := trace.SpanContextFromContext(queue.ExtractTrace(context.Background(), tc.header))
		if got.IsValid() {
			t.Errorf("ExtractTrace(%v) = valid span context %v, want none", tc.header, got)
		}
	}

	// Without a span in ctx nothing is injected.
	m := nats.NewMsg("x")
	queue.InjectTrace(context.Background(), m)
	if got := m.Header.Get("traceparent"); got != "" {
		t.Errorf("InjectTrace(no span) traceparent = %q, want empty", got)
	}
}
