package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// TestWatchEventsSeesEveryEventOnce: a watcher started at a 1,000-message
// run receives every event of the run exactly once, in the order
// GetMessage lists them per message; a watcher resumed from a cursor
// midway receives exactly the rest.
func TestWatchEventsSeesEveryEventOnce(t *testing.T) {
	const total = 1000
	s := startStack(t, testenv.SinkScript{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// From the start of the run: a watch "from now" could begin after the
	// first events are stored, since the call returns before the server
	// has set it up.
	stream, err := s.status.WatchEvents(ctx, &postflowv1.WatchEventsRequest{Filter: &postflowv1.EventFilter{Since: timestamppb.New(time.Now().Add(-time.Second))}})
	if err != nil {
		t.Fatal(err)
	}
	s.sendMany(t, "watch", "example.test", total)
	s.sink.WaitForCount(t, total, 60*time.Second)
	s.waitQueueEmpty(30 * time.Second)

	want := 2 * total // queued and delivered per message
	byMsg := map[string][]string{}
	seen := map[string]bool{}
	var cursors []string
	for n := 0; n < want; n++ {
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := recvWithin(rctx, stream)
		rcancel()
		if err != nil {
			t.Fatalf("after %d of %d events: %v", n, want, err)
		}
		ev := resp.GetEvent()
		if seen[ev.GetEventId()] {
			t.Fatalf("event %s delivered twice", ev.GetEventId())
		}
		seen[ev.GetEventId()] = true
		byMsg[ev.GetMessageId()] = append(byMsg[ev.GetMessageId()], ev.GetEventId())
		cursors = append(cursors, resp.GetCursor())
	}
	// Nothing more: every event of the run was one of the above.
	rctx, rcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if extra, err := recvWithin(rctx, stream); err == nil {
		t.Fatalf("an event beyond the run's %d: %v", want, extra.GetEvent())
	}
	rcancel()
	if len(byMsg) != total {
		t.Fatalf("events of %d messages, want %d", len(byMsg), total)
	}
	for id, got := range byMsg {
		st, err := s.status.GetMessage(s.ctx(), &postflowv1.GetMessageRequest{MessageId: id})
		if err != nil {
			t.Fatal(err)
		}
		var stored []string
		for _, ev := range st.GetRecipients()[0].GetEvents() {
			stored = append(stored, ev.GetEventId())
		}
		if strings.Join(got, ",") != strings.Join(stored, ",") {
			t.Fatalf("message %s: watched %v, stored %v", id, got, stored)
		}
	}

	// Resuming after the middle cursor gives exactly the second half.
	mid := len(cursors) / 2
	resumed, err := s.status.WatchEvents(ctx, &postflowv1.WatchEventsRequest{Cursor: cursors[mid-1]})
	if err != nil {
		t.Fatal(err)
	}
	for i := mid; i < len(cursors); i++ {
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := recvWithin(rctx, resumed)
		rcancel()
		if err != nil || resp.GetCursor() != cursors[i] {
			t.Fatalf("resumed event %d: cursor %q, %v; want %q", i, resp.GetCursor(), err, cursors[i])
		}
	}
	// A server stream's error surfaces on the first Recv.
	bad, err := s.status.WatchEvents(ctx, &postflowv1.WatchEventsRequest{Cursor: "garbage"})
	if err == nil {
		_, err = recvWithin(s.ctx(), bad)
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("malformed cursor: %v, want INVALID_ARGUMENT", err)
	}
}

// recvWithin is Recv bounded by ctx: a stream's Recv blocks until its own
// context ends, so it runs aside.
func recvWithin[T any](ctx context.Context, s interface{ Recv() (*T, error) }) (*T, error) {
	type result struct {
		v   *T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := s.Recv()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestListEventsFilters: each filter selects exactly the events it names,
// and paging returns every event once.
func TestListEventsFilters(t *testing.T) {
	s := startStack(t, testenv.SinkScript{Rcpt: func(addr string, n int) *smtp.SMTPError {
		if strings.HasPrefix(addr, "nobody") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}})
	before := time.Now()
	var ids []string
	for i := range 30 {
		to := fmt.Sprintf("user%d@example.test", i)
		if i%10 == 0 {
			to = fmt.Sprintf("nobody%d@example.test", i)
		}
		tag := "even"
		if i%2 == 1 {
			tag = "odd"
		}
		ids = append(ids, s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{to}, Subject: "s", Text: "t", Tags: []string{tag}}).GetMessageId())
	}
	for _, id := range ids {
		s.waitFinal(id, 30*time.Second)
	}
	list := func(f *postflowv1.EventFilter, pageSize int32) []*postflowv1.Event {
		t.Helper()
		var out []*postflowv1.Event
		for token, pages := "", 0; ; pages++ {
			resp, err := s.status.ListEvents(s.ctx(), &postflowv1.ListEventsRequest{Filter: f, PageSize: pageSize, PageToken: token})
			if err != nil {
				t.Fatalf("ListEvents(%v): %v", f, err)
			}
			out = append(out, resp.GetEvents()...)
			if token = resp.GetNextPageToken(); token == "" {
				return out
			}
			if pages > 1000 {
				t.Fatal("ListEvents does not end")
			}
		}
	}
	all := list(nil, 7)
	if len(all) != 60 {
		t.Fatalf("%d events in pages of 7, want 60 (queued and final per message)", len(all))
	}
	seen := map[string]bool{}
	for _, ev := range all {
		if seen[ev.GetEventId()] {
			t.Fatalf("event %s listed twice", ev.GetEventId())
		}
		seen[ev.GetEventId()] = true
	}
	for _, tc := range []struct {
		name   string
		filter *postflowv1.EventFilter
		want   int
	}{
		{"message", &postflowv1.EventFilter{MessageId: ids[3]}, 2},
		{"recipient", &postflowv1.EventFilter{Recipient: "USER7@example.test"}, 2},
		{"tag", &postflowv1.EventFilter{Tag: "odd"}, 30},
		{"state", &postflowv1.EventFilter{States: []postflowv1.RecipientState{postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED}}, 3},
		{"states", &postflowv1.EventFilter{States: []postflowv1.RecipientState{postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED, postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED}}, 30},
		{"tag and state", &postflowv1.EventFilter{Tag: "even", States: []postflowv1.RecipientState{postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED}}, 3},
		{"since", &postflowv1.EventFilter{Since: timestamppb.New(before)}, 60},
		{"until", &postflowv1.EventFilter{Until: timestamppb.New(before)}, 0},
		{"campaign", &postflowv1.EventFilter{CampaignId: "none"}, 0},
	} {
		if got := list(tc.filter, 0); len(got) != tc.want {
			t.Errorf("%s: %d events, want %d", tc.name, len(got), tc.want)
		}
	}
	for _, bad := range []*postflowv1.ListEventsRequest{
		{Filter: &postflowv1.EventFilter{MessageId: "short"}},
		{PageSize: 5000},
		{PageToken: "not-a-token"},
	} {
		if _, err := s.status.ListEvents(s.ctx(), bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("ListEvents(%v): %v, want INVALID_ARGUMENT", bad, err)
		}
	}
}

// TestCLIEventsAndSuppress drives the CLI as a user would.
func TestCLIEventsAndSuppress(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	addr := "--server=" + s.api.app.grpcLis.Addr().String()
	run := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		var err error
		switch args[0] {
		case "events":
			err = eventsCmd(context.Background(), append(args[1:], addr), &out, func(string) string { return "" })
		case "suppress":
			err = suppressCmd(context.Background(), append([]string{args[1], addr}, args[2:]...), &out, func(string) string { return "" })
		case "cancel":
			err = cancelCmd(context.Background(), append([]string{addr}, args[1:]...), &out, func(string) string { return "" })
		}
		if err != nil {
			t.Fatalf("postflow %v: %v", args, err)
		}
		return out.String()
	}
	out := run("suppress", "add", "--reason=unsubscribe", "--detail=footer link", "Quit@Example.test")
	if !strings.Contains(out, "quit@example.test") || !strings.Contains(out, "unsubscribe") {
		t.Errorf("suppress add printed %q", out)
	}
	if out := run("suppress", "check", "quit@example.test"); !strings.Contains(out, "unsubscribe") {
		t.Errorf("suppress check printed %q", out)
	}
	if out := run("suppress", "list"); !strings.Contains(out, "quit@example.test") || !strings.Contains(out, "footer link") {
		t.Errorf("suppress list printed %q", out)
	}
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"quit@example.test", "stay@example.test"}, Subject: "s", Text: "t"})
	s.waitFinal(resp.GetMessageId(), 30*time.Second)
	out = run("events", "--message="+resp.GetMessageId())
	for _, want := range []string{"quit@example.test", "suppressed", "stay@example.test", "delivered"} {
		if !strings.Contains(out, want) {
			t.Errorf("events output lacks %q:\n%s", want, out)
		}
	}
	if out := run("events", "--state=suppressed", "--json"); !strings.Contains(out, `"quit@example.test"`) || !strings.Contains(out, "RECIPIENT_STATE_SUPPRESSED") || strings.Contains(out, "stay@") {
		t.Errorf("events --state=suppressed printed %q", out)
	}
	// --follow prints events as they come, until interrupted.
	var follow lockedBuffer
	fctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- eventsCmd(fctx, []string{"--follow", "--since=1s", "--recipient=late@example.test", addr}, &follow, func(string) string { return "" })
	}()
	late := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"late@example.test"}, Subject: "s", Text: "t"})
	if !eventually(10*time.Second, func() bool { return strings.Contains(follow.String(), "delivered") }) {
		t.Errorf("events --follow printed %q, want the delivery of %s", follow.String(), late.GetMessageId())
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("events --follow ended with %v after an interrupt", err)
	}
	if strings.Contains(follow.String(), "stay@") || !strings.Contains(follow.String(), late.GetMessageId()) {
		t.Errorf("events --follow --recipient printed %q", follow.String())
	}
	if out := run("suppress", "remove", "quit@example.test"); !strings.Contains(out, "removed") {
		t.Errorf("suppress remove printed %q", out)
	}
	if out := run("suppress", "check", "quit@example.test"); !strings.Contains(out, "not suppressed") {
		t.Errorf("suppress check after remove printed %q", out)
	}
}
