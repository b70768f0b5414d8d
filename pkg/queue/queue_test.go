package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/testenv"
)

// TestStreamDefinitions checks the properties DESIGN.md §4 and TESTPLAN A9
// rely on: OUTBOUND never deletes unsent mail and refuses new jobs when full,
// EVENTS ages out, and the worker consumer acks explicitly with a bounded
// number of deliveries.
func TestStreamDefinitions(t *testing.T) {
	t.Parallel()
	cfg := queue.DefaultConfig()
	cfg.AckWait = 42 * time.Second
	cfg.MaxDeliver = 7
	cfg.EventsMaxAge = 48 * time.Hour
	out := cfg.OutboundConfig()
	ev := cfg.EventsConfig()
	cc := cfg.WorkerConsumerConfig()

	tests := []struct {
		name string
		got  any
		want any
	}{
		{"OUTBOUND name", out.Name, queue.OutboundStream},
		{"OUTBOUND retention", out.Retention, jetstream.WorkQueuePolicy},
		{"OUTBOUND discard", out.Discard, jetstream.DiscardNew},
		{"OUTBOUND storage", out.Storage, jetstream.FileStorage},
		{"OUTBOUND max age", out.MaxAge, time.Duration(0)},
		{"OUTBOUND max bytes", out.MaxBytes, cfg.OutboundMaxBytes},
		{"OUTBOUND max bytes positive", out.MaxBytes > 0, true},
		{"OUTBOUND max msgs", out.MaxMsgs, cfg.OutboundMaxMsgs},
		{"OUTBOUND max msgs positive", out.MaxMsgs > 0, true},
		{"OUTBOUND max msg size", out.MaxMsgSize, cfg.MaxMsgSize},
		{"OUTBOUND max msg size positive", out.MaxMsgSize > 0, true},
		{"OUTBOUND duplicates", out.Duplicates, cfg.Duplicates},
		{"OUTBOUND duplicates at least 10m", out.Duplicates >= 10*time.Minute, true},
		{"OUTBOUND deny delete", out.DenyDelete, true},
		{"OUTBOUND deny purge", out.DenyPurge, true},
		{"OUTBOUND replicas", out.Replicas, cfg.Replicas},
		{"OUTBOUND subjects", strings.Join(out.Subjects, ","), "postflow.outbound.>"},
		{"EVENTS name", ev.Name, queue.EventsStream},
		{"EVENTS retention", ev.Retention, jetstream.LimitsPolicy},
		{"EVENTS max age", ev.MaxAge, cfg.EventsMaxAge},
		{"EVENTS storage", ev.Storage, jetstream.FileStorage},
		{"EVENTS duplicates at least 10m", ev.Duplicates >= 10*time.Minute, true},
		{"EVENTS allow direct", ev.AllowDirect, true},
		{"EVENTS subjects", strings.Join(ev.Subjects, ","), "postflow.events.>"},
		{"consumer durable", cc.Durable, queue.WorkerConsumer},
		{"consumer ack policy", cc.AckPolicy, jetstream.AckExplicitPolicy},
		{"consumer max deliver", cc.MaxDeliver, 7},
		{"consumer max deliver bounded", cc.MaxDeliver > 0, true},
		{"consumer ack wait", cc.AckWait, 42 * time.Second},
		{"consumer max ack pending", cc.MaxAckPending, cfg.MaxAckPending},
		{"consumer not filtered to one tenant", cc.FilterSubject, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.got != tc.want {
				t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
			}
		})
	}
}

func TestDefaultConfigValid(t *testing.T) {
	t.Parallel()
	cfg := queue.DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Errorf("DefaultConfig().Validate() = %v, want nil", err)
	}
	if cfg.MaxDeliver == -1 || cfg.MaxDeliver < 2 {
		t.Errorf("DefaultConfig().MaxDeliver = %d, want an explicit bound ≥ 2", cfg.MaxDeliver)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		mod  func(*queue.Config)
		// want lists substrings the error must contain; nil means valid.
		want []string
	}{
		{"default", func(*queue.Config) {}, nil},
		{"replicas 3", func(c *queue.Config) { c.Replicas = 3 }, nil},
		{"replicas 5", func(c *queue.Config) { c.Replicas = 5 }, nil},
		{"replicas 0", func(c *queue.Config) { c.Replicas = 0 }, []string{"replicas 0"}},
		{"replicas 6", func(c *queue.Config) { c.Replicas = 6 }, []string{"replicas 6"}},
		{"max bytes 0", func(c *queue.Config) { c.OutboundMaxBytes = 0 }, []string{"outbound limits"}},
		{"max bytes -1", func(c *queue.Config) { c.OutboundMaxBytes = -1 }, []string{"outbound limits"}},
		{"max msgs 0", func(c *queue.Config) { c.OutboundMaxMsgs = 0 }, []string{"outbound limits"}},
		{"max msgs -1", func(c *queue.Config) { c.OutboundMaxMsgs = -1 }, []string{"outbound limits"}},
		{"max msg size 0", func(c *queue.Config) { c.MaxMsgSize = 0 }, []string{"outbound limits"}},
		{"duplicates exactly 10m", func(c *queue.Config) { c.Duplicates = 10 * time.Minute }, nil},
		{"duplicates 9m59s", func(c *queue.Config) { c.Duplicates = 10*time.Minute - time.Second }, []string{"duplicates window"}},
		{"duplicates 0", func(c *queue.Config) { c.Duplicates = 0 }, []string{"duplicates window"}},
		{"ack wait 1s", func(c *queue.Config) { c.AckWait = time.Second }, nil},
		{"ack wait 999ms", func(c *queue.Config) { c.AckWait = 999 * time.Millisecond }, []string{"ack wait"}},
		{"max ack pending 0", func(c *queue.Config) { c.MaxAckPending = 0 }, []string{"max ack pending"}},
		{"max deliver unlimited", func(c *queue.Config) { c.MaxDeliver = -1 }, []string{"max deliver"}},
		{"max deliver 1", func(c *queue.Config) { c.MaxDeliver = 1 }, []string{"max deliver"}},
		{"max deliver 2", func(c *queue.Config) { c.MaxDeliver = 2 }, nil},
		{
			"every problem reported",
			func(c *queue.Config) { *c = queue.Config{} },
			[]string{"replicas 0", "outbound limits", "duplicates window", "ack wait", "max deliver"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := queue.DefaultConfig()
			tc.mod(&cfg)
			err := cfg.Validate()
			if tc.want == nil {
				if err != nil {
					t.Errorf("Validate(%+v) = %v, want nil", cfg, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate(%+v) = nil, want an error containing %q", cfg, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate(%+v) = %q, want it to contain %q", cfg, err, w)
				}
			}
		})
	}
}

func TestSubjects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"outbound", queue.OutboundSubject("acme", "example.com"), "postflow.outbound.acme.example.com"},
		{"event", queue.EventSubject("acme", "abc", 12), "postflow.events.acme.abc.12"},
		{"message filter", queue.MessageEventsFilter("acme", "abc"), "postflow.events.acme.abc.>"},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s subject = %q, want %q", tc.name, tc.got, tc.want)
		}
	}
}

func TestIsSubjectToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want bool
	}{
		{"acme", true},
		{"abc-12", true},
		{"", false},
		{"a.b", false},
		{"*", false},
		{">", false},
		{"a b", false},
		{"a\tb", false},
		{"a\nb", false},
	}
	for _, tc := range tests {
		if got := queue.IsSubjectToken(tc.in); got != tc.want {
			t.Errorf("IsSubjectToken(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func newJetStream(t *testing.T) (*testenv.JetStream, jetstream.JetStream) {
	t.Helper()
	srv := testenv.StartJetStream(t)
	js, err := jetstream.New(srv.Connect(t))
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	return srv, js
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEnsureIdempotent(t *testing.T) {
	t.Parallel()
	_, js := newJetStream(t)
	ctx := testContext(t)
	cfg := queue.DefaultConfig()

	for i := range 2 {
		if err := queue.Ensure(ctx, js, cfg); err != nil {
			t.Fatalf("Ensure call %d = %v, want nil", i+1, err)
		}
	}

	out, err := js.Stream(ctx, queue.OutboundStream)
	if err != nil {
		t.Fatalf("Stream(%s): %v", queue.OutboundStream, err)
	}
	oc := out.CachedInfo().Config
	if oc.Retention != jetstream.WorkQueuePolicy || oc.Discard != jetstream.DiscardNew || oc.Storage != jetstream.FileStorage {
		t.Errorf("server OUTBOUND retention/discard/storage = %v/%v/%v, want WorkQueue/DiscardNew/File", oc.Retention, oc.Discard, oc.Storage)
	}
	if oc.MaxMsgs != cfg.OutboundMaxMsgs || oc.MaxBytes != cfg.OutboundMaxBytes || oc.Duplicates != cfg.Duplicates {
		t.Errorf("server OUTBOUND MaxMsgs/MaxBytes/Duplicates = %d/%d/%v, want %d/%d/%v",
			oc.MaxMsgs, oc.MaxBytes, oc.Duplicates, cfg.OutboundMaxMsgs, cfg.OutboundMaxBytes, cfg.Duplicates)
	}
	if !oc.DenyDelete || !oc.DenyPurge {
		t.Errorf("server OUTBOUND DenyDelete/DenyPurge = %v/%v, want true/true", oc.DenyDelete, oc.DenyPurge)
	}

	ev, err := js.Stream(ctx, queue.EventsStream)
	if err != nil {
		t.Fatalf("Stream(%s): %v", queue.EventsStream, err)
	}
	if got := ev.CachedInfo().Config.MaxAge; got != cfg.EventsMaxAge {
		t.Errorf("server EVENTS MaxAge = %v, want %v", got, cfg.EventsMaxAge)
	}

	cons, err := js.Consumer(ctx, queue.OutboundStream, queue.WorkerConsumer)
	if err != nil {
		t.Fatalf("Consumer(%s, %s): %v", queue.OutboundStream, queue.WorkerConsumer, err)
	}
	cc := cons.CachedInfo().Config
	if cc.AckPolicy != jetstream.AckExplicitPolicy || cc.MaxDeliver != cfg.MaxDeliver || cc.AckWait != cfg.AckWait {
		t.Errorf("server consumer AckPolicy/MaxDeliver/AckWait = %v/%d/%v, want %v/%d/%v",
			cc.AckPolicy, cc.MaxDeliver, cc.AckWait, jetstream.AckExplicitPolicy, cfg.MaxDeliver, cfg.AckWait)
	}

	names := map[string]bool{}
	for name := range js.StreamNames(ctx).Name() {
		names[name] = true
	}
	if len(names) != 3 || !names[queue.OutboundStream] || !names[queue.EventsStream] || !names[queue.BouncesStream] {
		t.Errorf("streams after Ensure twice = %v, want exactly %s, %s and %s", names, queue.OutboundStream, queue.EventsStream, queue.BouncesStream)
	}
	bst, err := js.Stream(ctx, queue.BouncesStream)
	if err != nil {
		t.Fatal(err)
	}
	if bc := bst.CachedInfo().Config; bc.Retention != jetstream.LimitsPolicy || bc.MaxAge != cfg.EventsMaxAge || bc.Duplicates != cfg.Duplicates {
		t.Errorf("BOUNCES retention/max age/duplicates = %v/%v/%v, want limits/%v/%v", bc.Retention, bc.MaxAge, bc.Duplicates, cfg.EventsMaxAge, cfg.Duplicates)
	}
}

func TestEnsureUpdates(t *testing.T) {
	t.Parallel()
	_, js := newJetStream(t)
	ctx := testContext(t)
	cfg := queue.DefaultConfig()
	if err := queue.Ensure(ctx, js, cfg); err != nil {
		t.Fatalf("Ensure(default) = %v, want nil", err)
	}

	changed := cfg
	changed.OutboundMaxMsgs = 1234
	changed.OutboundMaxBytes = 1 << 30
	changed.Duplicates = 20 * time.Minute
	changed.EventsMaxAge = 7 * 24 * time.Hour
	changed.AckWait = 90 * time.Second
	changed.MaxDeliver = 50
	changed.MaxAckPending = 500
	if err := queue.Ensure(ctx, js, changed); err != nil {
		t.Fatalf("Ensure(changed) = %v, want nil", err)
	}

	out, err := js.Stream(ctx, queue.OutboundStream)
	if err != nil {
		t.Fatalf("Stream(%s): %v", queue.OutboundStream, err)
	}
	ev, err := js.Stream(ctx, queue.EventsStream)
	if err != nil {
		t.Fatalf("Stream(%s): %v", queue.EventsStream, err)
	}
	cons, err := js.Consumer(ctx, queue.OutboundStream, queue.WorkerConsumer)
	if err != nil {
		t.Fatalf("Consumer: %v", err)
	}
	oc, ec, cc := out.CachedInfo().Config, ev.CachedInfo().Config, cons.CachedInfo().Config

	tests := []struct {
		name string
		got  any
		want any
	}{
		{"OUTBOUND MaxMsgs", oc.MaxMsgs, changed.OutboundMaxMsgs},
		{"OUTBOUND MaxBytes", oc.MaxBytes, changed.OutboundMaxBytes},
		{"OUTBOUND Duplicates", oc.Duplicates, changed.Duplicates},
		{"EVENTS MaxAge", ec.MaxAge, changed.EventsMaxAge},
		{"EVENTS Duplicates", ec.Duplicates, changed.Duplicates},
		{"consumer AckWait", cc.AckWait, changed.AckWait},
		{"consumer MaxDeliver", cc.MaxDeliver, changed.MaxDeliver},
		{"consumer MaxAckPending", cc.MaxAckPending, changed.MaxAckPending},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("after Ensure(changed), %s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}
