package eventlog

// These tests are internal to the package (eventlog_test.go is an external
// test package) so that they can shrink the scan budget and time slack
// through list and watch.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

const (
	qQueued    = postflowv1.RecipientState_RECIPIENT_STATE_QUEUED
	qDeferred  = postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED
	qDelivered = postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED
	qBounced   = postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED
	qNoState   = postflowv1.RecipientState_RECIPIENT_STATE_UNSPECIFIED

	qStateChange = postflowv1.EventType_EVENT_TYPE_UNSPECIFIED
	qDSN         = postflowv1.EventType_EVENT_TYPE_DSN
	qComplaint   = postflowv1.EventType_EVENT_TYPE_COMPLAINT
)

// queryEnv is an embedded JetStream with Postflow's streams.
type queryEnv struct {
	ctx context.Context
	js  jetstream.JetStream
	st  jetstream.Stream
	w   *Writer
	r   *Reader
}

func startQueryEnv(tb testing.TB) *queryEnv {
	tb.Helper()
	srv := testenv.StartJetStream(tb)
	js, err := jetstream.New(srv.Connect(tb))
	if err != nil {
		tb.Fatalf("jetstream.New: %v", err)
	}
	ctx, cancel := context.WithTimeout(tb.Context(), 2*time.Minute)
	tb.Cleanup(cancel)
	if err := queue.Ensure(ctx, js, queue.DefaultConfig()); err != nil {
		tb.Fatalf("queue.Ensure: %v", err)
	}
	st, err := js.Stream(ctx, queue.EventsStream)
	if err != nil {
		tb.Fatalf("Stream(%s): %v", queue.EventsStream, err)
	}
	return &queryEnv{ctx: ctx, js: js, st: st, w: NewWriter(queue.NewPublisher(js)), r: NewReader(js)}
}

// write stores evs in order.
func (e *queryEnv) write(tb testing.TB, evs ...*postflowv1.Event) {
	tb.Helper()
	for chunk := range slices.Chunk(evs, 500) {
		if err := e.w.Write(e.ctx, chunk...); err != nil {
			tb.Fatalf("Write(%d events): %v", len(chunk), err)
		}
	}
}

// lastSeq is the EVENTS stream's last sequence.
func (e *queryEnv) lastSeq(tb testing.TB) uint64 {
	tb.Helper()
	info, err := e.st.Info(e.ctx)
	if err != nil {
		tb.Fatalf("EVENTS Info: %v", err)
	}
	return info.State.LastSeq
}

// assertNoConsumers fails unless List and Watch deleted their consumers.
func (e *queryEnv) assertNoConsumers(t *testing.T) {
	t.Helper()
	info, err := e.st.Info(e.ctx)
	if err != nil {
		t.Fatalf("EVENTS Info: %v", err)
	}
	if info.State.Consumers != 0 {
		t.Errorf("EVENTS has %d consumers after the reads returned, want 0", info.State.Consumers)
	}
}

// listAll pages through List with limit per page and returns every item
// and the number of pages.
func (e *queryEnv) listAll(t *testing.T, tenant string, f Filter, limit int, lim readLimits) ([]Item, int) {
	t.Helper()
	var all []Item
	var after uint64
	for pages := 1; ; pages++ {
		items, next, more, err := e.r.list(e.ctx, tenant, f, after, limit, lim)
		if err != nil {
			t.Fatalf("List(%s, %+v, after %d) page %d: %v", tenant, f, after, pages, err)
		}
		if len(items) > limit {
			t.Fatalf("List(%s, %+v, after %d) returned %d items, limit %d", tenant, f, after, len(items), limit)
		}
		if len(items) > 0 && next < items[len(items)-1].Seq {
			t.Fatalf("List page %d: next %d precedes its last item %d", pages, next, items[len(items)-1].Seq)
		}
		all = append(all, items...)
		if !more {
			return all, pages
		}
		if next <= after {
			t.Fatalf("List(%s, %+v, after %d) = more with next %d: no progress", tenant, f, after, next)
		}
		after = next
		if pages > 100_000 {
			t.Fatal("List never reported the end")
		}
	}
}

// qEvent builds an event of tenant's recipient index of messageID, stamped
// now. Its id also depends on the tenant, unlike production ids, so that
// tests can give tenants the same message ids without the stream's
// deduplication dropping events.
func qEvent(tenant, messageID string, index int, state postflowv1.RecipientState, attempt int32) *postflowv1.Event {
	rid := RecipientID(messageID, index)
	return &postflowv1.Event{
		EventId:     EventID(tenant+"/"+rid, attempt, state),
		Tenant:      tenant,
		MessageId:   messageID,
		RecipientId: rid,
		Recipient:   fmt.Sprintf("user%d@example.com", index),
		State:       state,
		Attempt:     attempt,
		Time:        timestamppb.Now(),
	}
}

func msgID(prefix string, n int) string { return fmt.Sprintf("%s%0*d", prefix, 24-len(prefix), n) }

func ids(items []Item) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.Event.GetEventId()
	}
	return out
}

func eventIDs(evs []*postflowv1.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.GetEventId()
	}
	return out
}

// assertStreamOrder fails unless items' sequences strictly increase.
func assertStreamOrder(t *testing.T, items []Item) {
	t.Helper()
	for i := 1; i < len(items); i++ {
		if items[i].Seq <= items[i-1].Seq {
			t.Fatalf("item %d has sequence %d after %d: not in stream order or repeated", i, items[i].Seq, items[i-1].Seq)
		}
	}
}

func TestFilterMatch(t *testing.T) {
	t.Parallel()
	t1 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	base := &postflowv1.Event{
		MessageId:  "abcdefghijklmnopqrstuvwx",
		Recipient:  "Alice@Example.COM",
		CampaignId: "spring",
		Tags:       []string{"welcome", "eu"},
		State:      qDeferred,
		Type:       qDSN,
		Time:       timestamppb.New(t1),
	}
	tests := []struct {
		name string
		f    Filter
		ev   *postflowv1.Event
		want bool
	}{
		{"zero filter", Filter{}, base, true},
		{"zero filter, empty event", Filter{}, &postflowv1.Event{}, true},
		{"message id", Filter{MessageID: "abcdefghijklmnopqrstuvwx"}, base, true},
		{"other message id", Filter{MessageID: "bbcdefghijklmnopqrstuvwx"}, base, false},
		{"recipient exact", Filter{Recipient: "Alice@Example.COM"}, base, true},
		{"recipient other case", Filter{Recipient: "alice@example.com"}, base, true},
		{"recipient upper case", Filter{Recipient: "ALICE@EXAMPLE.COM"}, base, true},
		{"other recipient", Filter{Recipient: "bob@example.com"}, base, false},
		{"recipient prefix", Filter{Recipient: "alice@example.co"}, base, false},
		{"campaign", Filter{CampaignID: "spring"}, base, true},
		{"other campaign", Filter{CampaignID: "Spring"}, base, false},
		{"campaign on event without one", Filter{CampaignID: "spring"}, &postflowv1.Event{}, false},
		{"first tag", Filter{Tag: "welcome"}, base, true},
		{"second tag", Filter{Tag: "eu"}, base, true},
		{"absent tag", Filter{Tag: "us"}, base, false},
		{"tag is not a substring match", Filter{Tag: "welc"}, base, false},
		{"state", Filter{States: []postflowv1.RecipientState{qDeferred}}, base, true},
		{"one of states", Filter{States: []postflowv1.RecipientState{qDelivered, qDeferred}}, base, true},
		{"other states", Filter{States: []postflowv1.RecipientState{qDelivered, qBounced}}, base, false},
		{"unspecified state selects complaints", Filter{States: []postflowv1.RecipientState{qNoState}}, &postflowv1.Event{Type: qComplaint}, true},
		{"type", Filter{Types: []postflowv1.EventType{qDSN}}, base, true},
		{"one of types", Filter{Types: []postflowv1.EventType{qComplaint, qDSN}}, base, true},
		{"other type", Filter{Types: []postflowv1.EventType{qComplaint}}, base, false},
		{"state-change type", Filter{Types: []postflowv1.EventType{qStateChange}}, &postflowv1.Event{State: qQueued}, true},
		{"since equal is included", Filter{Since: t1}, base, true},
		{"since before", Filter{Since: t1.Add(-time.Second)}, base, true},
		{"since after", Filter{Since: t1.Add(time.Nanosecond)}, base, false},
		{"until equal is excluded", Filter{Until: t1}, base, false},
		{"until after", Filter{Until: t1.Add(time.Nanosecond)}, base, true},
		{"until before", Filter{Until: t1.Add(-time.Second)}, base, false},
		{"since and until around", Filter{Since: t1.Add(-time.Minute), Until: t1.Add(time.Minute)}, base, true},
		{"since in another zone", Filter{Since: t1.In(time.FixedZone("x", 3600))}, base, true},
		{"since on event without time", Filter{Since: t1}, &postflowv1.Event{}, false},
		{"until on event without time", Filter{Until: t1}, &postflowv1.Event{}, true},
		{
			"every field matches",
			Filter{
				MessageID: "abcdefghijklmnopqrstuvwx", Recipient: "alice@example.com", CampaignID: "spring", Tag: "eu",
				States: []postflowv1.RecipientState{qDeferred}, Types: []postflowv1.EventType{qDSN},
				Since: t1, Until: t1.Add(time.Second),
			},
			base, true,
		},
		{"all but message id", Filter{MessageID: "bbcdefghijklmnopqrstuvwx", Recipient: "alice@example.com", CampaignID: "spring", Tag: "eu"}, base, false},
		{"all but recipient", Filter{MessageID: "abcdefghijklmnopqrstuvwx", Recipient: "bob@example.com", CampaignID: "spring"}, base, false},
		{"all but tag", Filter{Recipient: "alice@example.com", CampaignID: "spring", Tag: "us"}, base, false},
		{"all but state", Filter{Tag: "eu", States: []postflowv1.RecipientState{qBounced}, Types: []postflowv1.EventType{qDSN}}, base, false},
		{"all but type", Filter{Tag: "eu", States: []postflowv1.RecipientState{qDeferred}, Types: []postflowv1.EventType{qComplaint}}, base, false},
		{"all but time", Filter{CampaignID: "spring", Since: t1.Add(time.Second)}, base, false},
	}
	for _, tc := range tests {
		if got := tc.f.Match(tc.ev); got != tc.want {
			t.Errorf("%s: %+v.Match(%v) = %v, want %v", tc.name, tc.f, tc.ev, got, tc.want)
		}
	}
}

func TestListPagesThroughEveryEvent(t *testing.T) {
	t.Parallel()
	e := startQueryEnv(t)
	// 300 messages of 5 recipients, written recipient by recipient so that
	// each message's events are spread over the stream.
	var written []*postflowv1.Event
	for index := range 5 {
		for m := range 300 {
			written = append(written, qEvent("acme", msgID("page", m), index, qQueued, 0))
		}
	}
	e.write(t, written...)

	var got []Item
	var after uint64
	pages := 0
	for {
		items, next, more, err := e.r.List(e.ctx, "acme", Filter{}, after, 100)
		if err != nil {
			t.Fatalf("List(after %d, 100): %v", after, err)
		}
		pages++
		if len(items) != 100 {
			t.Fatalf("List page %d (after %d) returned %d events, want 100", pages, after, len(items))
		}
		if next != items[len(items)-1].Seq {
			t.Fatalf("List page %d: next = %d, want the last item's sequence %d", pages, next, items[len(items)-1].Seq)
		}
		got = append(got, items...)
		if !more {
			break
		}
		if pages > 15 {
			t.Fatalf("List returned more than 15 pages of 100 for 1500 events")
		}
		after = next
	}
	// The last page ends at the last stored event, so it already says so
	// rather than leaving an empty 16th page.
	if pages != 15 {
		t.Errorf("List took %d pages of 100 for 1500 events, want 15", pages)
	}
	assertStreamOrder(t, got)
	if !slices.Equal(ids(got), eventIDs(written)) {
		t.Errorf("List pages returned %d events, want the 1500 written, each once, in write order", len(got))
	}
	e.assertNoConsumers(t)
}

// filterData writes tenant acme's events in three phases (A, B, C) and
// returns them with the times between the phases.
func filterData(t *testing.T, e *queryEnv) (evs []*postflowv1.Event, mark1, mark2 time.Time) {
	t.Helper()
	states := []postflowv1.RecipientState{qQueued, qDeferred, qDelivered, qBounced}
	n := 0
	phase := func(count int) {
		var batch []*postflowv1.Event
		for range count {
			ev := qEvent("acme", msgID("filt", n%40), n/40, states[n%len(states)], int32(n%3))
			ev.Recipient = fmt.Sprintf("User%d@Example.com", n%7)
			if n%3 != 0 {
				ev.CampaignId = fmt.Sprintf("camp%d", n%3)
			}
			ev.Tags = []string{fmt.Sprintf("tag%d", n%5), "all"}
			switch n % 11 {
			case 3:
				ev.Type = qDSN
			case 7:
				ev.Type, ev.State = qComplaint, qNoState
			}
			batch = append(batch, ev)
			n++
		}
		e.write(t, batch...)
		evs = append(evs, batch...)
	}
	phase(200)
	mark1 = time.Now()
	phase(150)
	mark2 = time.Now()
	phase(100)
	// Noise another tenant's filter must never see, with the same ids.
	var other []*postflowv1.Event
	for _, ev := range evs[:50] {
		o := qEvent("globex", ev.GetMessageId(), 0, ev.GetState(), ev.GetAttempt())
		o.Tags = ev.GetTags()
		other = append(other, o)
	}
	e.write(t, other...)
	return evs, mark1, mark2
}

func TestListFilters(t *testing.T) {
	t.Parallel()
	e := startQueryEnv(t)
	evs, mark1, mark2 := filterData(t, e)

	tests := []struct {
		name string
		f    Filter
		want int // the count Match selects, as a check on the data and on Match
	}{
		{"everything", Filter{}, 450},
		{"message id", Filter{MessageID: msgID("filt", 7)}, 12},
		{"recipient, other case", Filter{Recipient: "user3@EXAMPLE.com"}, 64},
		{"tag", Filter{Tag: "tag2"}, 90},
		{"state", Filter{States: []postflowv1.RecipientState{qBounced}}, 101},
		{"states", Filter{States: []postflowv1.RecipientState{qDeferred, qDelivered}}, 205},
		{"type", Filter{Types: []postflowv1.EventType{qDSN}}, 41},
		{"complaints", Filter{Types: []postflowv1.EventType{qComplaint}}, 41},
		{"campaign", Filter{CampaignID: "camp2"}, 150},
		{"since", Filter{Since: mark1}, 250},
		{"until", Filter{Until: mark1}, 200},
		{"since and until", Filter{Since: mark1, Until: mark2}, 150},
		{"message id and state", Filter{MessageID: msgID("filt", 7), States: []postflowv1.RecipientState{qBounced}}, 10},
		{"message id and type", Filter{MessageID: msgID("filt", 7), Types: []postflowv1.EventType{qComplaint}}, 2},
		{"campaign and tag and since", Filter{CampaignID: "camp1", Tag: "tag4", Since: mark1}, 16},
		{"nothing", Filter{Tag: "absent"}, 0},
	}
	for _, tc := range tests {
		var want []*postflowv1.Event
		for _, ev := range evs {
			if tc.f.Match(ev) {
				want = append(want, ev)
			}
		}
		if len(want) != tc.want {
			t.Fatalf("%s: the data holds %d matching events, the test expects %d", tc.name, len(want), tc.want)
		}
		if tc.name != "everything" && len(want) == len(evs) {
			t.Fatalf("%s: the filter matches every event, so it tests nothing", tc.name)
		}
		for _, limit := range []int{7, 1000} {
			got, _ := e.listAll(t, "acme", tc.f, limit, defaultLimits)
			assertStreamOrder(t, got)
			if !slices.Equal(ids(got), eventIDs(want)) {
				t.Errorf("%s: List with pages of %d returned %d events, want the %d matching ones in write order", tc.name, limit, len(got), len(want))
			}
		}
	}
	e.assertNoConsumers(t)
}

// TestListStartsAtSinceAndStopsAtUntil checks that List reads from the
// stream's time index and stops past Until rather than scanning the rest:
// with no slack, a budget of the selected events plus one suffices.
func TestListStartsAtSinceAndStopsAtUntil(t *testing.T) {
	t.Parallel()
	e := startQueryEnv(t)
	evs, mark1, mark2 := filterData(t, e)
	var phaseB []*postflowv1.Event
	for _, ev := range evs {
		if tm := ev.GetTime().AsTime(); !tm.Before(mark1) && tm.Before(mark2) {
			phaseB = append(phaseB, ev)
		}
	}
	lim := readLimits{budget: len(phaseB) + 1, slack: 0}
	items, _, more, err := e.r.list(e.ctx, "acme", Filter{Since: mark1, Until: mark2}, 0, 1000, lim)
	if err != nil {
		t.Fatalf("list(since, until): %v", err)
	}
	if more || !slices.Equal(ids(items), eventIDs(phaseB)) {
		t.Errorf("list(since, until) with budget %d = %d events, more %v; want the %d events between the marks, more false", lim.budget, len(items), more, len(phaseB))
	}
	// Since alone reads to the end of the stream.
	items, _, more, err = e.r.list(e.ctx, "acme", Filter{Since: mark2}, 0, 1000, readLimits{budget: 100 + 50, slack: 0})
	if err != nil || more || len(items) != 100 {
		t.Errorf("list(since mark2) = %d events, more %v, %v; want phase C's 100, more false", len(items), more, err)
	}
}

func TestListScanBudget(t *testing.T) {
	t.Parallel()
	e := startQueryEnv(t)
	var evs []*postflowv1.Event
	for i := range 50 {
		evs = append(evs, qEvent("acme", msgID("budget", 0), i, qQueued, 0))
	}
	evs[49].Tags = []string{"needle"}
	e.write(t, evs...)
	first := e.lastSeq(t) - 49

	lim := readLimits{budget: 20, slack: timeSlack}
	f := Filter{Tag: "needle"}
	var after uint64
	for page, want := range []struct {
		items int
		next  uint64
		more  bool
	}{
		{0, first + 19, true},
		{0, first + 39, true},
		{1, first + 49, false},
	} {
		items, next, more, err := e.r.list(e.ctx, "acme", f, after, 10, lim)
		if err != nil {
			t.Fatalf("page %d: %v", page, err)
		}
		if len(items) != want.items || next != want.next || more != want.more {
			t.Fatalf("page %d (after %d, budget 20) = %d events, next %d, more %v; want %d, %d, %v", page, after, len(items), next, more, want.items, want.next, want.more)
		}
		after = next
	}
	// The package budget finds it in one call, by message too.
	for _, f := range []Filter{{Tag: "needle"}, {MessageID: msgID("budget", 0), Tag: "needle"}} {
		items, next, more, err := e.r.List(e.ctx, "acme", f, 0, 10)
		if err != nil || len(items) != 1 || items[0].Event.GetEventId() != evs[49].GetEventId() || more || next != first+49 {
			t.Errorf("List(%+v) = %d events, next %d, more %v, %v; want the needle, next %d, more false", f, len(items), next, more, err, first+49)
		}
	}
	e.assertNoConsumers(t)
}

func TestListEdges(t *testing.T) {
	t.Parallel()
	e := startQueryEnv(t)
	items, next, more, err := e.r.List(e.ctx, "acme", Filter{}, 0, 10)
	if err != nil || len(items) != 0 || next != 0 || more {
		t.Errorf("List on an empty stream = %d events, next %d, more %v, %v; want none, 0, false, nil", len(items), next, more, err)
	}
	e.write(t, qEvent("acme", msgID("edge", 0), 0, qQueued, 0), qEvent("acme", msgID("edge", 0), 1, qQueued, 0))
	last := e.lastSeq(t)
	now := time.Now()
	tests := []struct {
		name  string
		f     Filter
		after uint64
	}{
		{"after the last event", Filter{}, last},
		{"far after the last event", Filter{}, last + 1000},
		{"since in the future", Filter{Since: now.Add(time.Hour)}, 0},
		{"until before since", Filter{Since: now, Until: now.Add(-time.Hour)}, 0},
		{"unknown message", Filter{MessageID: msgID("none", 0)}, 0},
	}
	for _, tc := range tests {
		items, next, more, err := e.r.List(e.ctx, "acme", tc.f, tc.after, 10)
		if err != nil || len(items) != 0 || more || next != tc.after {
			t.Errorf("List (%s) = %d events, next %d, more %v, %v; want none, next %d, more false", tc.name, len(items), next, more, err, tc.after)
		}
	}
	// A page that ends exactly at the last event says it is the last.
	items, next, more, err = e.r.List(e.ctx, "acme", Filter{}, 0, 2)
	if err != nil || len(items) != 2 || more || next != last {
		t.Errorf("List(limit 2) of 2 events = %d events, next %d, more %v, %v; want 2, %d, false", len(items), next, more, err, last)
	}
	items, next, more, err = e.r.List(e.ctx, "acme", Filter{}, 0, 1)
	if err != nil || len(items) != 1 || !more || next != last-1 {
		t.Errorf("List(limit 1) of 2 events = %d events, next %d, more %v, %v; want 1, %d, true", len(items), next, more, err, last-1)
	}

	bad := []struct {
		name   string
		tenant string
		f      Filter
		limit  int
	}{
		{"zero limit", "acme", Filter{}, 0},
		{"negative limit", "acme", Filter{}, -1},
		{"empty tenant", "", Filter{}, 10},
		{"wildcard tenant", "*", Filter{}, 10},
		{"dotted tenant", "acme.x", Filter{}, 10},
		{"wildcard message id", "acme", Filter{MessageID: ">"}, 10},
		{"dotted message id", "acme", Filter{MessageID: "a.b"}, 10},
	}
	for _, tc := range bad {
		if _, _, _, err := e.r.List(e.ctx, tc.tenant, tc.f, 0, tc.limit); err == nil {
			t.Errorf("List (%s) = nil error, want one", tc.name)
		}
		if tc.limit > 0 {
			if err := e.r.Watch(e.ctx, tc.tenant, tc.f, 0, func(Item) error { return nil }); err == nil || errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Watch (%s) = %v, want a validation error", tc.name, err)
			}
		}
	}
	e.assertNoConsumers(t)
}

func TestListTenantIsolation(t *testing.T) {
	t.Parallel()
	e := startQueryEnv(t)
	var acme, globex, acm []*postflowv1.Event
	for i := range 30 {
		id := msgID("iso", i%3)
		a := qEvent("acme", id, i, qQueued, 0)
		g := qEvent("globex", id, i, qQueued, 0)
		p := qEvent("acm", id, i, qQueued, 0)
		e.write(t, a, g, p)
		acme, globex, acm = append(acme, a), append(globex, g), append(acm, p)
	}
	for _, tc := range []struct {
		tenant string
		f      Filter
		want   []*postflowv1.Event
	}{
		{"acme", Filter{}, acme},
		{"globex", Filter{}, globex},
		{"acm", Filter{}, acm},
		{"acme", Filter{MessageID: msgID("iso", 1)}, everyThird(acme, 1)},
		{"globex", Filter{MessageID: msgID("iso", 2)}, everyThird(globex, 2)},
		{"initech", Filter{}, nil},
		{"initech", Filter{MessageID: msgID("iso", 1)}, nil},
	} {
		got, _ := e.listAll(t, tc.tenant, tc.f, 7, defaultLimits)
		for _, it := range got {
			if it.Event.GetTenant() != tc.tenant {
				t.Fatalf("List(%s, %+v) returned tenant %s's event %s", tc.tenant, tc.f, it.Event.GetTenant(), it.Event.GetEventId())
			}
		}
		if !slices.Equal(ids(got), eventIDs(tc.want)) {
			t.Errorf("List(%s, %+v) = %d events, want %d", tc.tenant, tc.f, len(got), len(tc.want))
		}
	}

	// Watch sees its tenant only: globex's events, then a sentinel.
	w := startWatch(t, e, "globex", Filter{}, 0, time.Now().Add(-time.Hour))
	for i, want := range globex {
		if got := w.next(t); got.Event.GetEventId() != want.GetEventId() {
			t.Fatalf("Watch(globex) item %d = %s of tenant %s, want %s", i, got.Event.GetEventId(), got.Event.GetTenant(), want.GetEventId())
		}
	}
	e.write(t, qEvent("acme", msgID("iso", 9), 0, qDelivered, 1))
	sentinel := qEvent("globex", msgID("iso", 9), 0, qDelivered, 1)
	e.write(t, sentinel)
	if got := w.next(t); got.Event.GetEventId() != sentinel.GetEventId() || got.Event.GetTenant() != "globex" {
		t.Fatalf("Watch(globex) after its backlog = %s of %s, want the globex sentinel", got.Event.GetEventId(), got.Event.GetTenant())
	}
	w.stop(t)
	e.assertNoConsumers(t)
}

func everyThird(evs []*postflowv1.Event, from int) []*postflowv1.Event {
	var out []*postflowv1.Event
	for i := from; i < len(evs); i += 3 {
		out = append(out, evs[i])
	}
	return out
}

// watcher runs Watch in the background and hands its items over.
type watcher struct {
	items  chan Item
	done   chan error
	cancel context.CancelFunc
}

// startWatch starts Watch(tenant, f, after); a non-zero since overrides
// f.Since.
func startWatch(t *testing.T, e *queryEnv, tenant string, f Filter, after uint64, since time.Time) *watcher {
	t.Helper()
	if !since.IsZero() {
		f.Since = since
	}
	return startWatchFunc(t, func(ctx context.Context, fn func(Item) error) error {
		return e.r.Watch(ctx, tenant, f, after, fn)
	})
}

func startWatchFunc(t *testing.T, watch func(context.Context, func(Item) error) error) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	w := &watcher{items: make(chan Item, 4096), done: make(chan error, 1), cancel: cancel}
	go func() {
		w.done <- watch(ctx, func(it Item) error {
			select {
			case w.items <- it:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-w.done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch returned %v, want context.Canceled once the test ended", err)
		}
	})
	return w
}

// next returns the next item, failing the test if none comes in time.
func (w *watcher) next(t *testing.T) Item {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	select {
	case it := <-w.items:
		return it
	case err := <-w.done:
		w.done <- err // for the cleanup
		t.Fatalf("Watch returned %v while an event was expected", err)
	case <-deadline.C:
		t.Fatal("Watch delivered nothing within 30s")
	}
	return Item{}
}

// stop cancels the watch and checks it ends with context.Canceled.
func (w *watcher) stop(t *testing.T) {
	t.Helper()
	w.cancel()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	select {
	case err := <-w.done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Watch after cancel returned %v, want context.Canceled", err)
		}
		w.done <- err // for the cleanup
	case <-deadline.C:
		t.Fatal("Watch did not return within 30s of its context ending")
	}
}

func TestWatchResumesAfterCursor(t *testing.T) {
	t.Parallel()
	e := startQueryEnv(t)
	var evs []*postflowv1.Event
	for i := range 10 {
		evs = append(evs, qEvent("acme", msgID("resume", 0), i, qQueued, 0))
	}
	e.write(t, evs...)
	listed, _, _, err := e.r.List(e.ctx, "acme", Filter{}, 0, 100)
	if err != nil || len(listed) != 10 {
		t.Fatalf("List = %d events, %v; want 10", len(listed), err)
	}
	// Resume from a cursor as a client would hold it.
	after, err := DecodeCursor(EncodeCursor(listed[4].Seq))
	if err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, e, "acme", Filter{}, after, time.Time{})
	for i := 5; i < 10; i++ {
		if got := w.next(t); got.Seq != listed[i].Seq || got.Event.GetEventId() != evs[i].GetEventId() {
			t.Fatalf("Watch(after %d) item = seq %d %s, want seq %d %s", after, got.Seq, got.Event.GetEventId(), listed[i].Seq, evs[i].GetEventId())
		}
	}
	more := []*postflowv1.Event{
		qEvent("acme", msgID("resume", 0), 0, qDelivered, 1),
		qEvent("acme", msgID("resume", 1), 0, qQueued, 0),
	}
	e.write(t, more...)
	for _, want := range more {
		if got := w.next(t); got.Event.GetEventId() != want.GetEventId() {
			t.Fatalf("Watch after new events = %s, want %s", got.Event.GetEventId(), want.GetEventId())
		}
	}
	w.stop(t)
	e.assertNoConsumers(t)

	// A filtered watch from the same cursor skips what does not match.
	w = startWatch(t, e, "acme", Filter{States: []postflowv1.RecipientState{qDelivered}}, after, time.Time{})
	if got := w.next(t); got.Event.GetEventId() != more[0].GetEventId() {
		t.Fatalf("Watch(delivered, after %d) = %s, want %s", after, got.Event.GetEventId(), more[0].GetEventId())
	}
	w.stop(t)
}

func TestWatchSince(t *testing.T) {
	t.Parallel()
	e := startQueryEnv(t)
	// Events stored before mark, although their times say otherwise: only
	// the time index can leave them out.
	var early []*postflowv1.Event
	for i := range 20 {
		ev := qEvent("acme", msgID("since", 0), i, qQueued, 0)
		ev.Time = timestamppb.New(time.Now().Add(time.Hour))
		early = append(early, ev)
	}
	// Events stored before mark with times before it: Since leaves them out.
	var old []*postflowv1.Event
	for i := range 20 {
		ev := qEvent("acme", msgID("since", 1), i, qQueued, 0)
		ev.Time = timestamppb.New(time.Now().Add(-time.Hour))
		old = append(old, ev)
	}
	e.write(t, early...)
	e.write(t, old...)
	mark := time.Now()
	var late []*postflowv1.Event
	for i := range 20 {
		late = append(late, qEvent("acme", msgID("since", 2), i, qQueued, 0))
	}
	e.write(t, late...)

	// With the default slack the scan starts before mark; the filter
	// leaves the old events out and keeps the "early" ones it can see.
	w := startWatch(t, e, "acme", Filter{}, 0, mark)
	for i, want := range append(slices.Clone(early), late...) {
		if got := w.next(t); got.Event.GetEventId() != want.GetEventId() {
			t.Fatalf("Watch(since) item %d = %s, want %s", i, got.Event.GetEventId(), want.GetEventId())
		}
	}
	w.stop(t)

	// Without slack it starts at mark in the time index.
	w = startWatchFunc(t, func(ctx context.Context, fn func(Item) error) error {
		return e.r.watch(ctx, "acme", Filter{Since: mark}, 0, fn, readLimits{budget: scanBudget})
	})
	for i, want := range late {
		if got := w.next(t); got.Event.GetEventId() != want.GetEventId() {
			t.Fatalf("watch(since, no slack) item %d = %s, want %s", i, got.Event.GetEventId(), want.GetEventId())
		}
	}
	// And it follows new events; Until is ignored.
	newer := qEvent("acme", msgID("since", 3), 0, qQueued, 0)
	e.write(t, newer)
	if got := w.next(t); got.Event.GetEventId() != newer.GetEventId() {
		t.Fatalf("watch(since) after a new event = %s, want %s", got.Event.GetEventId(), newer.GetEventId())
	}
	w.stop(t)

	w = startWatch(t, e, "acme", Filter{Until: mark}, 0, mark)
	if got := w.next(t); got.Event.GetEventId() != early[0].GetEventId() {
		t.Fatalf("Watch(since, until) = %s, want %s: Until must be ignored", got.Event.GetEventId(), early[0].GetEventId())
	}
	w.stop(t)
	e.assertNoConsumers(t)
}

func TestWatchFromNow(t *testing.T) {
	t.Parallel()
	e := startQueryEnv(t)
	var before []*postflowv1.Event
	for i := range 20 {
		before = append(before, qEvent("acme", msgID("now", 0), i, qQueued, 0))
	}
	e.write(t, before...)
	lastBefore := e.lastSeq(t)

	w := startWatch(t, e, "acme", Filter{}, 0, time.Time{})
	// Watch does not say when it has started; write probes until one shows
	// up, then everything after must be probes or new events.
	var first Item
	probes := 0
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
probing:
	for {
		e.write(t, qEvent("acme", msgID("probe", 0), probes, qQueued, 0))
		probes++
		select {
		case first = <-w.items:
			break probing
		case <-poll.C:
		case <-deadline.C:
			t.Fatal("Watch from now delivered no probe within 30s")
		}
	}
	if first.Seq <= lastBefore || first.Event.GetMessageId() != msgID("probe", 0) {
		t.Fatalf("Watch from now first delivered seq %d (%s), want a probe after seq %d", first.Seq, first.Event.GetMessageId(), lastBefore)
	}
	var after []*postflowv1.Event
	for i := range 20 {
		after = append(after, qEvent("acme", msgID("now", 1), i, qQueued, 0))
	}
	e.write(t, after...)
	got := []Item{first}
	var news []string
	for len(news) < len(after) {
		it := w.next(t)
		got = append(got, it)
		switch it.Event.GetMessageId() {
		case msgID("probe", 0):
		case msgID("now", 1):
			news = append(news, it.Event.GetEventId())
		default:
			t.Fatalf("Watch from now delivered %s of message %s", it.Event.GetEventId(), it.Event.GetMessageId())
		}
	}
	assertStreamOrder(t, got)
	if !slices.Equal(news, eventIDs(after)) {
		t.Errorf("Watch from now delivered new events %v, want %v", news, eventIDs(after))
	}
	w.stop(t)
	e.assertNoConsumers(t)
}

func TestWatchConcurrentWriters(t *testing.T) {
	t.Parallel()
	e := startQueryEnv(t)
	start := qEvent("acme", msgID("start", 0), 0, qQueued, 0)
	e.write(t, start)
	w := startWatch(t, e, "acme", Filter{}, e.lastSeq(t), time.Time{})

	// 8 writers, each writing 25 attempts for each of its 5 messages,
	// round robin, one event per publish.
	const writers, perWriter, attempts = 8, 5, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for g := range writers {
		wg.Go(func() {
			for a := range attempts {
				for m := range perWriter {
					ev := qEvent("acme", msgID("conc", g*perWriter+m), 0, qDeferred, int32(a+1))
					if err := e.w.Write(e.ctx, ev); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	const total = writers * perWriter * attempts
	var got []Item
	for len(got) < total {
		got = append(got, w.next(t))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Write: %v", err)
	}
	assertStreamOrder(t, got)
	seen := map[string]bool{}
	lastAttempt := map[string]int32{}
	for _, it := range got {
		ev := it.Event
		if seen[ev.GetEventId()] {
			t.Fatalf("Watch delivered %s twice", ev.GetEventId())
		}
		seen[ev.GetEventId()] = true
		if ev.GetAttempt() != lastAttempt[ev.GetMessageId()]+1 {
			t.Fatalf("Watch delivered attempt %d of %s after attempt %d", ev.GetAttempt(), ev.GetMessageId(), lastAttempt[ev.GetMessageId()])
		}
		lastAttempt[ev.GetMessageId()] = ev.GetAttempt()
	}
	if len(lastAttempt) != writers*perWriter {
		t.Errorf("Watch delivered events of %d messages, want %d", len(lastAttempt), writers*perWriter)
	}
	// Nothing else is pending: the next delivery is the next event written.
	sentinel := qEvent("acme", msgID("sentinel", 0), 0, qQueued, 0)
	e.write(t, sentinel)
	if it := w.next(t); it.Event.GetEventId() != sentinel.GetEventId() {
		t.Fatalf("Watch after %d events delivered %s, want the sentinel", total, it.Event.GetEventId())
	}
	w.stop(t)
	e.assertNoConsumers(t)
}

func TestWatchCursorExpired(t *testing.T) {
	t.Parallel()
	e := startQueryEnv(t)
	for i := range 10 {
		e.write(t, qEvent("acme", msgID("expire", 0), i, qQueued, 0))
	}
	// As if the oldest events had aged out.
	if err := e.st.Purge(e.ctx, jetstream.WithPurgeKeep(4)); err != nil {
		t.Fatalf("Purge: %v", err)
	}
	info, err := e.st.Info(e.ctx)
	if err != nil || info.State.FirstSeq != 7 || info.State.LastSeq != 10 {
		t.Fatalf("EVENTS after purge = %+v, %v; want sequences 7..10", info.State, err)
	}
	never := func(it Item) error {
		t.Errorf("Watch called fn with seq %d for an expired cursor", it.Seq)
		return nil
	}
	for _, after := range []uint64{1, 5, 11, 1000} {
		if err := e.r.Watch(e.ctx, "acme", Filter{}, after, never); !errors.Is(err, ErrCursorExpired) {
			t.Errorf("Watch(after %d) with sequences 7..10 stored = %v, want ErrCursorExpired", after, err)
		}
	}
	// A cursor right before the first stored event loses nothing, nor does
	// one at the last.
	for after, want := range map[uint64]uint64{6: 7, 10: 11} {
		w := startWatch(t, e, "acme", Filter{}, after, time.Time{})
		if after == 10 {
			e.write(t, qEvent("acme", msgID("expire", 1), 0, qQueued, 0))
		}
		if got := w.next(t); got.Seq != want {
			t.Errorf("Watch(after %d) first delivered seq %d, want %d", after, got.Seq, want)
		}
		w.stop(t)
	}

	// Everything purged: the last sequence is still a valid cursor.
	if err := e.st.Purge(e.ctx); err != nil {
		t.Fatalf("Purge: %v", err)
	}
	if err := e.r.Watch(e.ctx, "acme", Filter{}, 10, never); !errors.Is(err, ErrCursorExpired) {
		t.Errorf("Watch(after 10) with everything through 11 purged = %v, want ErrCursorExpired", err)
	}
	w := startWatch(t, e, "acme", Filter{}, 11, time.Time{})
	e.write(t, qEvent("acme", msgID("expire", 2), 0, qQueued, 0))
	if got := w.next(t); got.Seq != 12 {
		t.Errorf("Watch(after 11) on a purged stream first delivered seq %d, want 12", got.Seq)
	}
	w.stop(t)
	e.assertNoConsumers(t)
}

func TestWatchReturnsCallbackError(t *testing.T) {
	t.Parallel()
	e := startQueryEnv(t)
	e.write(t, qEvent("acme", msgID("cb", 0), 0, qQueued, 0), qEvent("acme", msgID("cb", 0), 1, qQueued, 0))
	errStop := errors.New("stop")
	calls := 0
	err := e.r.Watch(e.ctx, "acme", Filter{Since: time.Now().Add(-time.Hour)}, 0, func(Item) error {
		calls++
		return errStop
	})
	if !errors.Is(err, errStop) || calls != 1 {
		t.Errorf("Watch with fn failing = %v after %d calls, want errStop after 1", err, calls)
	}
	e.assertNoConsumers(t)
}

func TestCursorRoundTrip(t *testing.T) {
	t.Parallel()
	if got := EncodeCursor(0); got != "" {
		t.Errorf("EncodeCursor(0) = %q, want \"\"", got)
	}
	if seq, err := DecodeCursor(""); seq != 0 || err != nil {
		t.Errorf("DecodeCursor(\"\") = %d, %v; want 0, nil", seq, err)
	}
	seen := map[string]uint64{}
	for _, seq := range []uint64{1, 2, 31, 32, 1000, 1 << 32, 1<<63 + 12345, ^uint64(0)} {
		c := EncodeCursor(seq)
		if !strings.HasPrefix(c, "c") || strings.Trim(c[1:], "abcdefghijklmnopqrstuvwxyz234567") != "" {
			t.Errorf("EncodeCursor(%d) = %q, want c and lower-case base32", seq, c)
		}
		if prev, dup := seen[c]; dup {
			t.Errorf("EncodeCursor(%d) = EncodeCursor(%d) = %q", seq, prev, c)
		}
		seen[c] = seq
		got, err := DecodeCursor(c)
		if err != nil || got != seq {
			t.Errorf("DecodeCursor(EncodeCursor(%d) = %q) = %d, %v; want %d, nil", seq, c, got, err, seq)
		}
	}
}

func TestDecodeCursorRejectsMangled(t *testing.T) {
	t.Parallel()
	good := EncodeCursor(123456)
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567ABCXYZ01890=+/-_. \n"
	var bad []string
	// Every single-character substitution.
	for i := range len(good) {
		for _, c := range alphabet {
			if s := good[:i] + string(c) + good[i+1:]; s != good {
				bad = append(bad, s)
			}
		}
	}
	// Every truncation and extension.
	for i := range len(good) {
		bad = append(bad, good[:i])
		bad = append(bad, good[:i]+"a"+good[i:], good[:i]+"\n"+good[i:])
	}
	bad = append(bad,
		good+"a", good+"=", good[1:], strings.ToUpper(good), " "+good, good+" ",
		"c", "c0", "1", "0", "123456", "caaaaaaaaaaaaaaaaaaaa", // seq 0 with a zero checksum
		good[:1]+good[2:]+good[1:2], // rotated
	)
	for _, s := range bad {
		if s == "" {
			continue
		}
		if seq, err := DecodeCursor(s); !errors.Is(err, ErrBadCursor) {
			t.Errorf("DecodeCursor(%q) = %d, %v; want ErrBadCursor", s, seq, err)
		}
	}
}

// benchmarkEvents writes messages×recipients queued events of tenant acme,
// message by message, and returns the message ids.
func benchmarkEvents(b *testing.B, e *queryEnv, messages, recipients int) []string {
	b.Helper()
	evs := make([]*postflowv1.Event, 0, messages*recipients)
	ids := make([]string, messages)
	for m := range messages {
		ids[m] = msgID("bench", m)
		for r := range recipients {
			ev := qEvent("acme", ids[m], r, qQueued, 0)
			ev.Tags = []string{"bulk"}
			evs = append(evs, ev)
		}
	}
	e.write(b, evs...)
	return ids
}

// BenchmarkListByMessage lists one message's 5 events out of 100,000.
func BenchmarkListByMessage(b *testing.B) {
	e := startQueryEnv(b)
	ids := benchmarkEvents(b, e, 20_000, 5)
	i := 0
	for b.Loop() {
		items, _, more, err := e.r.List(e.ctx, "acme", Filter{MessageID: ids[i%len(ids)]}, 0, 100)
		if err != nil || len(items) != 5 || more {
			b.Fatalf("List(message) = %d events, more %v, %v; want 5, false", len(items), more, err)
		}
		i += 7919 // spread over the stream
	}
}

// BenchmarkListScan scans a full budget of a tenant's events with a filter
// that matches none of them: the cost of one page of a selective listing.
func BenchmarkListScan(b *testing.B) {
	e := startQueryEnv(b)
	benchmarkEvents(b, e, 20_000, 5)
	examined := 0
	for b.Loop() {
		items, next, more, err := e.r.List(e.ctx, "acme", Filter{Tag: "absent"}, 0, 100)
		if err != nil || len(items) != 0 || !more {
			b.Fatalf("List(scan) = %d events, more %v, %v; want none, more", len(items), more, err)
		}
		examined += int(next)
	}
	b.ReportMetric(float64(examined)/b.Elapsed().Seconds(), "events/s")
}
