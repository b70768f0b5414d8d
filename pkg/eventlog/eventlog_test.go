package eventlog_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

const (
	unspecified = postflowv1.RecipientState_RECIPIENT_STATE_UNSPECIFIED
	queued      = postflowv1.RecipientState_RECIPIENT_STATE_QUEUED
	deferred    = postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED
	delivered   = postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED
	bounced     = postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED
	expired     = postflowv1.RecipientState_RECIPIENT_STATE_EXPIRED
	suppressed  = postflowv1.RecipientState_RECIPIENT_STATE_SUPPRESSED
	canceled    = postflowv1.RecipientState_RECIPIENT_STATE_CANCELED
	failed      = postflowv1.RecipientState_RECIPIENT_STATE_FAILED
)

func TestFinal(t *testing.T) {
	t.Parallel()
	tests := []struct {
		state postflowv1.RecipientState
		want  bool
	}{
		{unspecified, false},
		{queued, false},
		{deferred, false},
		{delivered, true},
		{bounced, true},
		{expired, true},
		{suppressed, true},
		{canceled, true},
		{failed, true},
		{postflowv1.RecipientState(99), false},
	}
	covered := map[int32]bool{}
	for _, tc := range tests {
		covered[int32(tc.state)] = true
		if got := eventlog.Final(tc.state); got != tc.want {
			t.Errorf("Final(%v) = %v, want %v", tc.state, got, tc.want)
		}
	}
	// A state added to the proto must be classified here too.
	for v, name := range postflowv1.RecipientState_name {
		if !covered[v] {
			t.Errorf("RecipientState %s (%d) has no Final test case", name, v)
		}
	}
}

func TestRecipientIDRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		messageID string
		index     int
		want      string
	}{
		{"abcdefghijklmnopqrstuvwx", 0, "abcdefghijklmnopqrstuvwx-0"},
		{"abcdefghijklmnopqrstuvwx", 7, "abcdefghijklmnopqrstuvwx-7"},
		{"abcdefghijklmnopqrstuvwx", 123, "abcdefghijklmnopqrstuvwx-123"},
		{"with-dash", 2, "with-dash-2"},
	}
	for _, tc := range tests {
		id := eventlog.RecipientID(tc.messageID, tc.index)
		if id != tc.want {
			t.Errorf("RecipientID(%q, %d) = %q, want %q", tc.messageID, tc.index, id, tc.want)
		}
		gotMsg, gotIndex, err := eventlog.ParseRecipientID(id)
		if err != nil || gotMsg != tc.messageID || gotIndex != tc.index {
			t.Errorf("ParseRecipientID(%q) = %q, %d, %v, want %q, %d, nil", id, gotMsg, gotIndex, err, tc.messageID, tc.index)
		}
	}
}

func TestParseRecipientIDMalformed(t *testing.T) {
	t.Parallel()
	tests := []string{
		"",
		"abc",
		"-1",
		"abc-",
		"abc-x",
		"abc-1x",
		"abc-1.5",
		"abc-01",
		"abc-+1",
		"abc- 1",
		"abc-99999999999999999999999",
	}
	for _, id := range tests {
		msg, index, err := eventlog.ParseRecipientID(id)
		if err == nil {
			t.Errorf("ParseRecipientID(%q) = %q, %d, nil, want an error", id, msg, index)
			continue
		}
		if !strings.Contains(err.Error(), "malformed recipient id") {
			t.Errorf("ParseRecipientID(%q) error = %q, want it to say malformed recipient id", id, err)
		}
	}
}

var eventIDPattern = regexp.MustCompile(`^[a-z2-7]+$`)

func TestEventID(t *testing.T) {
	t.Parallel()
	base := eventlog.EventID("m-0", 1, deferred)
	if again := eventlog.EventID("m-0", 1, deferred); again != base {
		t.Errorf("EventID(m-0, 1, DEFERRED) = %q then %q, want the same id", base, again)
	}
	tests := []struct {
		name        string
		recipientID string
		attempt     int32
		state       postflowv1.RecipientState
	}{
		{"other attempt", "m-0", 2, deferred},
		{"other state", "m-0", 1, delivered},
		{"other recipient", "m-1", 1, deferred},
		{"other message", "n-0", 1, deferred},
		{"queued", "m-0", 0, queued},
		// The separator keeps field boundaries: "m-0"+"11" differs from "m-01"+"1".
		{"shifted boundary", "m-01", 1, deferred},
	}
	seen := map[string]string{base: "base"}
	for _, tc := range tests {
		id := eventlog.EventID(tc.recipientID, tc.attempt, tc.state)
		if prev, dup := seen[id]; dup {
			t.Errorf("EventID(%q, %d, %v) = %q, same as case %q", tc.recipientID, tc.attempt, tc.state, id, prev)
		}
		seen[id] = tc.name
	}
	for id, name := range seen {
		if len(id) != 24 {
			t.Errorf("EventID (%s) = %q, length %d, want 24", name, id, len(id))
		}
		if !eventIDPattern.MatchString(id) {
			t.Errorf("EventID (%s) = %q, want lower-case base32 [a-z2-7]", name, id)
		}
		if !queue.IsSubjectToken(id) {
			t.Errorf("EventID (%s) = %q is not a valid subject token", name, id)
		}
	}
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func at(minutes int) *timestamppb.Timestamp {
	return timestamppb.New(t0.Add(time.Duration(minutes) * time.Minute))
}

func reply(code int32, text string) *postflowv1.SMTPReply {
	return &postflowv1.SMTPReply{Code: code, Text: text, Remote: true}
}

// ev builds an event of recipient index of message "msg".
func ev(index int, state postflowv1.RecipientState, attempt int32, minute int) *postflowv1.Event {
	rid := eventlog.RecipientID("msg", index)
	return &postflowv1.Event{
		EventId:     eventlog.EventID(rid, attempt, state),
		Tenant:      "acme",
		MessageId:   "msg",
		RecipientId: rid,
		Recipient:   "rcpt" + rid + "@example.com",
		State:       state,
		Attempt:     attempt,
		Time:        at(minute),
	}
}

func withReply(e *postflowv1.Event, r *postflowv1.SMTPReply, mx string) *postflowv1.Event {
	e.Reply = r
	e.MxHost = mx
	return e
}

func withNext(e *postflowv1.Event, next *timestamppb.Timestamp) *postflowv1.Event {
	e.NextAttemptAt = next
	return e
}

func withDup(e *postflowv1.Event) *postflowv1.Event {
	e.PossibleDuplicate = true
	return e
}

// want is the part of a RecipientStatus each Summarize case checks.
type want struct {
	index             int
	state             postflowv1.RecipientState
	attempts          int32
	lastReply         *postflowv1.SMTPReply
	mxHost            string
	nextAttemptAt     *timestamppb.Timestamp
	possibleDuplicate bool
	updatedAt         *timestamppb.Timestamp
	events            int
}

func TestSummarize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		evs  []*postflowv1.Event
		want []want
	}{
		{
			name: "no events",
			evs:  nil,
			want: nil,
		},
		{
			name: "queued then delivered",
			evs: []*postflowv1.Event{
				ev(0, queued, 0, 0),
				withReply(ev(0, delivered, 1, 1), reply(250, "ok"), "mx1.example.com"),
			},
			want: []want{{index: 0, state: delivered, attempts: 1, lastReply: reply(250, "ok"), mxHost: "mx1.example.com", updatedAt: at(1), events: 2}},
		},
		{
			name: "deferred twice then delivered",
			evs: []*postflowv1.Event{
				ev(0, queued, 0, 0),
				withNext(withReply(ev(0, deferred, 1, 1), reply(451, "try later"), "mx1.example.com"), at(6)),
				withNext(withReply(ev(0, deferred, 2, 6), reply(421, "busy"), "mx2.example.com"), at(20)),
				withReply(ev(0, delivered, 3, 20), reply(250, "queued as 123"), "mx1.example.com"),
			},
			want: []want{{index: 0, state: delivered, attempts: 3, lastReply: reply(250, "queued as 123"), mxHost: "mx1.example.com", updatedAt: at(20), events: 4}},
		},
		{
			name: "deferred carries next attempt and reply",
			evs: []*postflowv1.Event{
				ev(0, queued, 0, 0),
				withNext(withReply(ev(0, deferred, 1, 1), reply(451, "greylisted"), "mx1.example.com"), at(16)),
			},
			want: []want{{index: 0, state: deferred, attempts: 1, lastReply: reply(451, "greylisted"), mxHost: "mx1.example.com", nextAttemptAt: at(16), updatedAt: at(1), events: 2}},
		},
		{
			name: "late queued after delivered does not override",
			evs: []*postflowv1.Event{
				withReply(ev(0, delivered, 1, 1), reply(250, "ok"), "mx1.example.com"),
				ev(0, queued, 0, 0),
			},
			want: []want{{index: 0, state: delivered, attempts: 1, lastReply: reply(250, "ok"), mxHost: "mx1.example.com", updatedAt: at(1), events: 2}},
		},
		{
			name: "late queued after deferred does not override",
			evs: []*postflowv1.Event{
				withNext(withReply(ev(0, deferred, 1, 1), reply(451, "later"), "mx1.example.com"), at(5)),
				ev(0, queued, 0, 0),
			},
			want: []want{{index: 0, state: deferred, attempts: 1, lastReply: reply(451, "later"), mxHost: "mx1.example.com", nextAttemptAt: at(5), updatedAt: at(1), events: 2}},
		},
		{
			name: "bounced is sticky against a stray deferred",
			evs: []*postflowv1.Event{
				ev(0, queued, 0, 0),
				withReply(ev(0, bounced, 1, 1), reply(550, "no such user"), "mx1.example.com"),
				withNext(withReply(ev(0, deferred, 1, 2), reply(451, "stray"), "mx9.example.com"), at(10)),
			},
			want: []want{{index: 0, state: bounced, attempts: 1, lastReply: reply(550, "no such user"), mxHost: "mx1.example.com", updatedAt: at(2), events: 3}},
		},
		{
			name: "expired is sticky against a stray delivered",
			evs: []*postflowv1.Event{
				ev(0, queued, 0, 0),
				ev(0, expired, 4, 1),
				withReply(ev(0, delivered, 4, 2), reply(250, "ok"), "mx1.example.com"),
			},
			want: []want{{index: 0, state: expired, attempts: 1, updatedAt: at(2), events: 3}},
		},
		{
			name: "possible duplicate carried to delivered",
			evs: []*postflowv1.Event{
				ev(0, queued, 0, 0),
				withDup(withNext(withReply(ev(0, deferred, 1, 1), reply(451, "timeout after DATA"), "mx1.example.com"), at(5))),
				withReply(ev(0, delivered, 2, 5), reply(250, "ok"), "mx1.example.com"),
			},
			want: []want{{index: 0, state: delivered, attempts: 2, lastReply: reply(250, "ok"), mxHost: "mx1.example.com", possibleDuplicate: true, updatedAt: at(5), events: 3}},
		},
		{
			name: "redelivered attempt counted once",
			evs: []*postflowv1.Event{
				ev(0, queued, 0, 0),
				withNext(withReply(ev(0, deferred, 1, 1), reply(451, "a"), "mx1.example.com"), at(5)),
				withNext(withReply(ev(0, deferred, 1, 2), reply(451, "b"), "mx1.example.com"), at(6)),
			},
			want: []want{{index: 0, state: deferred, attempts: 1, lastReply: reply(451, "b"), mxHost: "mx1.example.com", nextAttemptAt: at(6), updatedAt: at(2), events: 3}},
		},
		{
			name: "recipients sorted numerically by index",
			evs: []*postflowv1.Event{
				ev(10, queued, 0, 0),
				ev(2, queued, 0, 0),
				ev(11, queued, 0, 0),
				ev(0, queued, 0, 0),
				withReply(ev(2, delivered, 1, 1), reply(250, "ok"), "mx.example.com"),
				withReply(ev(10, bounced, 1, 2), reply(550, "unknown"), "mx.example.com"),
			},
			want: []want{
				{index: 0, state: queued, updatedAt: at(0), events: 1},
				{index: 2, state: delivered, attempts: 1, lastReply: reply(250, "ok"), mxHost: "mx.example.com", updatedAt: at(1), events: 2},
				{index: 10, state: bounced, attempts: 1, lastReply: reply(550, "unknown"), mxHost: "mx.example.com", updatedAt: at(2), events: 2},
				{index: 11, state: queued, updatedAt: at(0), events: 1},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := eventlog.Summarize(tc.evs)
			if len(got) != len(tc.want) {
				t.Fatalf("Summarize(%v) returned %d recipients, want %d: %v", tc.evs, len(got), len(tc.want), got)
			}
			for i, w := range tc.want {
				g := got[i]
				wantID := eventlog.RecipientID("msg", w.index)
				if g.GetRecipientId() != wantID {
					t.Errorf("Summarize(%s)[%d].RecipientId = %q, want %q", tc.name, i, g.GetRecipientId(), wantID)
				}
				if wantRcpt := "rcpt" + wantID + "@example.com"; g.GetRecipient() != wantRcpt {
					t.Errorf("Summarize(%s)[%d].Recipient = %q, want %q", tc.name, i, g.GetRecipient(), wantRcpt)
				}
				if g.GetState() != w.state {
					t.Errorf("Summarize(%s)[%d].State = %v, want %v", tc.name, i, g.GetState(), w.state)
				}
				if g.GetAttempts() != w.attempts {
					t.Errorf("Summarize(%s)[%d].Attempts = %d, want %d", tc.name, i, g.GetAttempts(), w.attempts)
				}
				if !proto.Equal(g.GetLastReply(), w.lastReply) {
					t.Errorf("Summarize(%s)[%d].LastReply = %v, want %v", tc.name, i, g.GetLastReply(), w.lastReply)
				}
				if g.GetMxHost() != w.mxHost {
					t.Errorf("Summarize(%s)[%d].MxHost = %q, want %q", tc.name, i, g.GetMxHost(), w.mxHost)
				}
				if !proto.Equal(g.GetNextAttemptAt(), w.nextAttemptAt) {
					t.Errorf("Summarize(%s)[%d].NextAttemptAt = %v, want %v", tc.name, i, g.GetNextAttemptAt(), w.nextAttemptAt)
				}
				if g.GetPossibleDuplicate() != w.possibleDuplicate {
					t.Errorf("Summarize(%s)[%d].PossibleDuplicate = %v, want %v", tc.name, i, g.GetPossibleDuplicate(), w.possibleDuplicate)
				}
				if !proto.Equal(g.GetUpdatedAt(), w.updatedAt) {
					t.Errorf("Summarize(%s)[%d].UpdatedAt = %v, want %v", tc.name, i, g.GetUpdatedAt(), w.updatedAt)
				}
				if len(g.GetEvents()) != w.events {
					t.Errorf("Summarize(%s)[%d] has %d events, want %d", tc.name, i, len(g.GetEvents()), w.events)
				}
			}
		})
	}
}

// startEvents starts JetStream with Postflow's streams and returns a
// Writer, a Reader and the EVENTS stream.
func startEvents(t *testing.T) (context.Context, *eventlog.Writer, *eventlog.Reader, jetstream.Stream) {
	t.Helper()
	ctx, w, r, st, _ := startEventsJS(t)
	return ctx, w, r, st
}

// startEventsJS is startEvents that also returns the JetStream handle.
func startEventsJS(t *testing.T) (context.Context, *eventlog.Writer, *eventlog.Reader, jetstream.Stream, jetstream.JetStream) {
	t.Helper()
	srv := testenv.StartJetStream(t)
	js, err := jetstream.New(srv.Connect(t))
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	if err := queue.Ensure(ctx, js, queue.DefaultConfig()); err != nil {
		t.Fatalf("queue.Ensure: %v", err)
	}
	st, err := js.Stream(ctx, queue.EventsStream)
	if err != nil {
		t.Fatalf("Stream(%s): %v", queue.EventsStream, err)
	}
	return ctx, eventlog.NewWriter(queue.NewPublisher(js)), eventlog.NewReader(js), st, js
}

// msgEvent builds an event of recipient index of messageID.
func msgEvent(messageID string, index int, state postflowv1.RecipientState, attempt int32) *postflowv1.Event {
	rid := eventlog.RecipientID(messageID, index)
	return &postflowv1.Event{
		EventId:     eventlog.EventID(rid, attempt, state),
		Tenant:      "acme",
		MessageId:   messageID,
		RecipientId: rid,
		Recipient:   "user@example.com",
		State:       state,
		Attempt:     attempt,
		Time:        timestamppb.New(t0),
	}
}

func TestWriterReader(t *testing.T) {
	t.Parallel()
	ctx, w, r, st := startEvents(t)

	const msgA, msgB = "aaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbb"
	first := []*postflowv1.Event{
		msgEvent(msgA, 0, queued, 0),
		msgEvent(msgA, 1, queued, 0),
		msgEvent(msgA, 0, deferred, 1),
	}
	if err := w.Write(ctx, first...); err != nil {
		t.Fatalf("Write(%s events) = %v, want nil", msgA, err)
	}
	// Interleave the second message's events with the first's.
	if err := w.Write(ctx, msgEvent(msgB, 0, queued, 0)); err != nil {
		t.Fatalf("Write(%s queued) = %v, want nil", msgB, err)
	}
	last := []*postflowv1.Event{
		msgEvent(msgA, 0, delivered, 2),
		msgEvent(msgA, 1, bounced, 1),
	}
	if err := w.Write(ctx, last...); err != nil {
		t.Fatalf("Write(%s final events) = %v, want nil", msgA, err)
	}
	if err := w.Write(ctx, msgEvent(msgB, 0, delivered, 1)); err != nil {
		t.Fatalf("Write(%s delivered) = %v, want nil", msgB, err)
	}

	got, err := r.Message(ctx, "acme", msgA)
	if err != nil {
		t.Fatalf("Message(acme, %s) = %v, want nil", msgA, err)
	}
	wantEvs := append(append([]*postflowv1.Event{}, first...), last...)
	if len(got) != len(wantEvs) {
		t.Fatalf("Message(acme, %s) returned %d events, want %d: %v", msgA, len(got), len(wantEvs), got)
	}
	for i := range wantEvs {
		if !proto.Equal(got[i], wantEvs[i]) {
			t.Errorf("Message(acme, %s)[%d] = %v, want %v", msgA, i, got[i], wantEvs[i])
		}
	}

	gotB, err := r.Message(ctx, "acme", msgB)
	if err != nil || len(gotB) != 2 {
		t.Errorf("Message(acme, %s) = %d events, %v, want 2, nil", msgB, len(gotB), err)
	}

	notFound := []struct {
		name, tenant, messageID string
	}{
		{"unknown message", "acme", "cccccccccccccccccccccccc"},
		{"other tenant", "other", msgA},
	}
	for _, tc := range notFound {
		evs, err := r.Message(ctx, tc.tenant, tc.messageID)
		if !errors.Is(err, eventlog.ErrNotFound) {
			t.Errorf("Message(%s, %s) (%s) = %v, %v, want eventlog.ErrNotFound", tc.tenant, tc.messageID, tc.name, evs, err)
		}
	}

	states := []struct {
		messageID string
		index     int
		want      postflowv1.RecipientState
	}{
		{msgA, 0, delivered},
		{msgA, 1, bounced},
		{msgA, 2, unspecified},
		{msgB, 0, delivered},
		{"cccccccccccccccccccccccc", 0, unspecified},
	}
	for _, tc := range states {
		got, err := r.LastState(ctx, "acme", tc.messageID, tc.index)
		if err != nil || got != tc.want {
			t.Errorf("LastState(acme, %s, %d) = %v, %v, want %v, nil", tc.messageID, tc.index, got, err, tc.want)
		}
	}

	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("EVENTS Info: %v", err)
	}
	if info.State.Msgs != 7 {
		t.Errorf("EVENTS holds %d messages after writing 7 events, want 7", info.State.Msgs)
	}
}

func TestWriterDeduplicates(t *testing.T) {
	t.Parallel()
	ctx, w, r, st := startEvents(t)
	const msgID = "dddddddddddddddddddddddd"

	e := msgEvent(msgID, 0, deferred, 1)
	if err := w.Write(ctx, e); err != nil {
		t.Fatalf("Write(%s) = %v, want nil", e.GetEventId(), err)
	}
	// A redelivery of the same attempt writes the same EventId again.
	again := msgEvent(msgID, 0, deferred, 1)
	again.Time = timestamppb.New(t0.Add(time.Minute))
	if err := w.Write(ctx, again); err != nil {
		t.Fatalf("Write(%s) again = %v, want nil", again.GetEventId(), err)
	}

	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("EVENTS Info: %v", err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("EVENTS holds %d messages after writing EventId %s twice, want 1", info.State.Msgs, e.GetEventId())
	}
	got, err := r.Message(ctx, "acme", msgID)
	if err != nil || len(got) != 1 || !proto.Equal(got[0], e) {
		t.Errorf("Message(acme, %s) = %v, %v, want only the first write %v", msgID, got, err, e)
	}
}

func TestWriterRejectsBadRecipientID(t *testing.T) {
	t.Parallel()
	ctx, w, _, st := startEvents(t)
	good := msgEvent("eeeeeeeeeeeeeeeeeeeeeeee", 0, queued, 0)
	bad := msgEvent("eeeeeeeeeeeeeeeeeeeeeeee", 1, queued, 0)
	bad.RecipientId = "no-index"
	err := w.Write(ctx, good, bad)
	if err == nil {
		t.Fatalf("Write(recipient id %q) = nil, want an error", bad.GetRecipientId())
	}
	// The batch is checked before anything is published.
	info, ierr := st.Info(ctx)
	if ierr != nil {
		t.Fatalf("EVENTS Info: %v", ierr)
	}
	if info.State.Msgs != 0 {
		t.Errorf("EVENTS holds %d messages after a rejected batch, want 0", info.State.Msgs)
	}
}

func TestIsFinalLooksPastALateQueuedEvent(t *testing.T) {
	ctx, w, r, _ := startEvents(t)
	const (
		delivered = postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED
		queued    = postflowv1.RecipientState_RECIPIENT_STATE_QUEUED
		deferred  = postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED
	)
	tests := []struct {
		name   string
		states []postflowv1.RecipientState
		want   bool
	}{
		{"no events", nil, false},
		{"queued only", []postflowv1.RecipientState{queued}, false},
		{"queued then delivered", []postflowv1.RecipientState{queued, delivered}, true},
		{"delivered then a late queued", []postflowv1.RecipientState{delivered, queued}, true},
		{"deferred then a late queued", []postflowv1.RecipientState{deferred, queued}, false},
	}
	for i, tc := range tests {
		id := fmt.Sprintf("isfinal%017d", i)
		for n, st := range tc.states {
			if err := w.Write(ctx, msgEvent(id, 0, st, int32(n))); err != nil {
				t.Fatal(err)
			}
		}
		got, err := r.IsFinal(ctx, "acme", id, 0)
		if err != nil || got != tc.want {
			t.Errorf("%s: IsFinal = %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
}

// TestWriterRecordsOneBouncePerFailure: bounced and expired events also go
// to BOUNCES, once, however often the same attempt is written again (a
// worker dying between publishing and acking, TESTPLAN A10); other states
// do not.
func TestWriterRecordsOneBouncePerFailure(t *testing.T) {
	t.Parallel()
	ctx, w, _, _, js := startEventsJS(t)
	const msgID = "bbbbbbbbbbbbbbbbbbbbbbbb"
	bounced := postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED
	expired := postflowv1.RecipientState_RECIPIENT_STATE_EXPIRED
	batch := []*postflowv1.Event{
		msgEvent(msgID, 0, bounced, 1),
		msgEvent(msgID, 1, expired, 3),
		msgEvent(msgID, 2, deferred, 1),
	}
	for range 3 {
		if err := w.Write(ctx, batch...); err != nil {
			t.Fatal(err)
		}
	}
	b, err := js.Stream(ctx, queue.BouncesStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := b.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("BOUNCES holds %d records after writing the batch three times, want 2 (the bounced and the expired)", info.State.Msgs)
	}
	raw, err := b.GetLastMsgForSubject(ctx, queue.BounceSubject("acme"))
	if err != nil {
		t.Fatal(err)
	}
	var ev postflowv1.Event
	if err := proto.Unmarshal(raw.Data, &ev); err != nil || ev.GetState() != expired || ev.GetRecipientId() != eventlog.RecipientID(msgID, 1) {
		t.Fatalf("last bounce record = %v, %v; want the expired recipient's event", &ev, err)
	}
}

func report(e *postflowv1.Event, typ postflowv1.EventType) *postflowv1.Event {
	e.Type = typ
	e.EventId = eventlog.ReportEventID(e.GetRecipientId(), typ, "report-"+e.GetState().String())
	return e
}

// TestSummarizeReports: a complaint changes no state; an asynchronous
// bounce (a DSN) replaces a delivery, and nothing else.
func TestSummarizeReports(t *testing.T) {
	t.Parallel()
	const msg = "reportsreportsreportsrep"
	tests := []struct {
		name string
		evs  []*postflowv1.Event
		want postflowv1.RecipientState
	}{
		{"dsn after delivery", []*postflowv1.Event{msgEvent(msg, 0, queued, 0), msgEvent(msg, 0, delivered, 1), report(msgEvent(msg, 0, bounced, 1), postflowv1.EventType_EVENT_TYPE_DSN)}, bounced},
		{"complaint after delivery", []*postflowv1.Event{msgEvent(msg, 0, delivered, 1), report(msgEvent(msg, 0, unspecified, 1), postflowv1.EventType_EVENT_TYPE_COMPLAINT)}, delivered},
		{"dsn after cancel", []*postflowv1.Event{msgEvent(msg, 0, canceled, 0), report(msgEvent(msg, 0, bounced, 1), postflowv1.EventType_EVENT_TYPE_DSN)}, canceled},
		{"attempt bounce after delivery", []*postflowv1.Event{msgEvent(msg, 0, delivered, 1), msgEvent(msg, 0, bounced, 2)}, delivered},
	}
	for _, tc := range tests {
		got := eventlog.Summarize(tc.evs)
		if len(got) != 1 || got[0].GetState() != tc.want || len(got[0].GetEvents()) != len(tc.evs) {
			t.Errorf("%s: state %v with %d events, want %v with %d", tc.name, got[0].GetState(), len(got[0].GetEvents()), tc.want, len(tc.evs))
		}
	}
}

// TestMessageLastAndHeader: the message-wide reads workers and Send use.
func TestMessageLastAndHeader(t *testing.T) {
	t.Parallel()
	ctx, w, r, _, js := startEventsJS(t)
	const msg = "lastfirstlastfirstlastfi"
	if ev, err := r.MessageLast(ctx, "acme", msg); err != nil || ev != nil {
		t.Fatalf("MessageLast of nothing = %v, %v", ev, err)
	}
	if _, err := r.Header(ctx, "acme", msg, "X-Test"); !errors.Is(err, eventlog.ErrNotFound) {
		t.Fatalf("Header of nothing: %v, want ErrNotFound", err)
	}
	// A worker's event stored before Send's own (they go to different
	// streams), then Send's events with the header.
	if err := w.Write(ctx, msgEvent(msg, 1, delivered, 1)); err != nil {
		t.Fatal(err)
	}
	if v, err := r.Header(ctx, "acme", msg, "X-Test"); err != nil || v != "" {
		t.Fatalf("Header before any carries it = %q, %v", v, err)
	}
	sent, err := eventlog.Msgs(msgEvent(msg, 0, queued, 0), msgEvent(msg, 1, queued, 0))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range sent {
		m.Header.Set("X-Test", "digest")
	}
	if err := queue.NewPublisher(js).Publish(ctx, sent...); err != nil {
		t.Fatal(err)
	}
	if v, err := r.Header(ctx, "acme", msg, "X-Test"); err != nil || v != "digest" {
		t.Fatalf("Header = %q, %v; want digest", v, err)
	}
	// The bounce role finds a recipient knowing no tenant.
	if ev, err := r.Recipient(ctx, msg, 1); err != nil || ev.GetTenant() != "acme" || ev.GetState() != delivered {
		t.Fatalf("Recipient = %v, %v; want acme's first event of recipient 1", ev, err)
	}
	if _, err := r.Recipient(ctx, msg, 2); !errors.Is(err, eventlog.ErrNotFound) {
		t.Fatalf("Recipient of an unknown index: %v, want ErrNotFound", err)
	}
	last, err := r.MessageLast(ctx, "acme", msg)
	if err != nil || last.GetState() != queued || last.GetRecipientId() != msg+"-1" {
		t.Fatalf("MessageLast = %v, %v; want recipient 1's late queued event", last, err)
	}
	// A complaint after the delivery leaves the recipient final.
	if err := w.Write(ctx, report(msgEvent(msg, 1, unspecified, 1), postflowv1.EventType_EVENT_TYPE_COMPLAINT)); err != nil {
		t.Fatal(err)
	}
	if final, attempt, err := r.Progress(ctx, "acme", msg, 1); err != nil || !final || attempt != 1 {
		t.Fatalf("Progress after a complaint = %v, %d, %v; want final at attempt 1", final, attempt, err)
	}
}

// TestRepublishBounceRestoresAMissingRecord: an event stored without its
// BOUNCES record (a crash between the two) gets it from RepublishBounce,
// once however often it is called; FinalEvent finds the failure.
func TestRepublishBounceRestoresAMissingRecord(t *testing.T) {
	t.Parallel()
	ctx, w, r, _, js := startEventsJS(t)
	const msg = "republishrepublishrepubl"
	bounce := msgEvent(msg, 0, bounced, 1)
	// Only the EVENTS half of Write, as a crash would leave it.
	evMsgs, err := eventlog.Msgs(msgEvent(msg, 0, queued, 0), bounce)
	if err != nil {
		t.Fatal(err)
	}
	if err := queue.NewPublisher(js).Publish(ctx, evMsgs...); err != nil {
		t.Fatal(err)
	}
	final, err := r.FinalEvent(ctx, "acme", msg, 0)
	if err != nil || final.GetEventId() != bounce.GetEventId() {
		t.Fatalf("FinalEvent = %v, %v; want the bounce", final, err)
	}
	for range 3 {
		if err := w.RepublishBounce(ctx, final); err != nil {
			t.Fatal(err)
		}
	}
	st, err := js.Stream(ctx, queue.BouncesStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil || info.State.Msgs != 1 {
		t.Fatalf("BOUNCES holds %d records, %v; want 1", info.State.Msgs, err)
	}
	// A delivered recipient has no record to restore.
	if err := w.RepublishBounce(ctx, msgEvent(msg, 1, delivered, 1)); err != nil {
		t.Fatal(err)
	}
	if info, _ = st.Info(ctx); info.State.Msgs != 1 {
		t.Fatalf("BOUNCES holds %d records after a delivery, want 1", info.State.Msgs)
	}
}
