package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// withBounce gives the stack a bounce domain (VERP return paths) and runs
// the report listener on a free loopback port.
func withBounce(t *testing.T, domain string) stackOpt {
	t.Helper()
	secret := filepath.Join(t.TempDir(), "bounce.secret")
	if err := os.WriteFile(secret, []byte("e2e bounce secret, long enough\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(c *serveConfig) {
		c.BounceDomain = domain
		c.BounceSMTPAddr = "127.0.0.1:0"
		c.BounceSecretFile = secret
	}
}

func (s *stack) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	s.t.Cleanup(cancel)
	return ctx
}

func (s *stack) checkSuppressed(addr string) *postflowv1.CheckSuppressionResponse {
	s.t.Helper()
	resp, err := s.suppress.CheckSuppression(s.ctx(), &postflowv1.CheckSuppressionRequest{Address: addr})
	if err != nil {
		s.t.Fatalf("CheckSuppression(%s): %v", addr, err)
	}
	return resp
}

// TestSuppressedRecipientSkipsSMTP: a suppressed address is final at Send
// with no SMTP, while the message's other recipient is delivered; the list
// survives a restart of every role.
func TestSuppressedRecipientSkipsSMTP(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	if _, err := s.suppress.AddSuppression(s.ctx(), &postflowv1.AddSuppressionRequest{
		Address: "Gone@Example.test", Reason: postflowv1.SuppressionReason_SUPPRESSION_REASON_MANUAL, Detail: "asked by phone",
	}); err != nil {
		t.Fatal(err)
	}
	// Every role restarts: the list lives in JetStream, not in a process.
	s.api.stop(t)
	s.api = s.startApp(s.cfg)
	s.reconnect()

	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"gone@example.test", "here@example.test"}, Subject: "s", Text: "t"})
	if got := resp.GetRecipients()[0].GetState(); got != postflowv1.RecipientState_RECIPIENT_STATE_SUPPRESSED {
		t.Errorf("Send answered %v for the suppressed recipient, want SUPPRESSED", got)
	}
	st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
	if got := stateOf(t, st, 0); got != postflowv1.RecipientState_RECIPIENT_STATE_SUPPRESSED {
		t.Errorf("gone@: state %v, want SUPPRESSED", got)
	}
	if got := stateOf(t, st, 1); got != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
		t.Errorf("here@: state %v, want DELIVERED", got)
	}
	s.waitQueueEmpty(10 * time.Second)
	if n := s.sink.RcptAttempts("gone@example.test"); n != 0 {
		t.Errorf("RCPT attempts for the suppressed address = %d, want 0", n)
	}
	// Removed, the address is mailed again.
	if r, err := s.suppress.RemoveSuppression(s.ctx(), &postflowv1.RemoveSuppressionRequest{Address: "gone@example.test"}); err != nil || !r.GetRemoved() {
		t.Fatalf("RemoveSuppression = %v, %v", r, err)
	}
	again := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"gone@example.test"}, Subject: "s", Text: "t"})
	if got := stateOf(t, s.waitFinal(again.GetMessageId(), 30*time.Second), 0); got != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
		t.Errorf("after removal: state %v, want DELIVERED", got)
	}
}

// reconnect points the stack's clients at the current api app.
func (s *stack) reconnect() {
	s.t.Helper()
	conn := dialAPI(s.t, s.api.app.grpcLis.Addr().String())
	s.mail = postflowv1.NewMailServiceClient(conn)
	s.status = postflowv1.NewStatusServiceClient(conn)
	s.shaping = postflowv1.NewShapingServiceClient(conn)
	s.suppress = postflowv1.NewSuppressionServiceClient(conn)
	s.campaigns = postflowv1.NewCampaignServiceClient(conn)
}

// TestHardBounceSuppressesAddress: a synchronous 5.1.1 puts the address on
// the list (bounce role), so the next Send to it is suppressed; a full
// mailbox does not.
func TestHardBounceSuppressesAddress(t *testing.T) {
	s := startStack(t, testenv.SinkScript{Rcpt: func(addr string, n int) *smtp.SMTPError {
		switch {
		case strings.HasPrefix(addr, "nobody@"):
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		case strings.HasPrefix(addr, "full@"):
			return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "mailbox full"}
		}
		return nil
	}})
	first := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"nobody@example.test", "full@example.test"}, Subject: "s", Text: "t"})
	s.waitFinal(first.GetMessageId(), 30*time.Second)
	var entry *postflowv1.Suppression
	if !eventually(10*time.Second, func() bool {
		entry = s.checkSuppressed("nobody@example.test").GetSuppression()
		return entry != nil
	}) {
		t.Fatal("the hard bounce did not reach the suppression list within 10s")
	}
	if entry.GetReason() != postflowv1.SuppressionReason_SUPPRESSION_REASON_BOUNCE || entry.GetMessageId() != first.GetMessageId() || !strings.Contains(entry.GetDetail(), "5.1.1") {
		t.Errorf("entry = %v, want a bounce naming %s and 5.1.1", entry, first.GetMessageId())
	}
	second := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"nobody@example.test", "full@example.test"}, Subject: "s", Text: "t"})
	if got := second.GetRecipients()[0].GetState(); got != postflowv1.RecipientState_RECIPIENT_STATE_SUPPRESSED {
		t.Errorf("second Send to the bounced address: %v, want SUPPRESSED", got)
	}
	if got := second.GetRecipients()[1].GetState(); got != postflowv1.RecipientState_RECIPIENT_STATE_QUEUED {
		t.Errorf("second Send to the full mailbox: %v, want QUEUED (soft bounces do not suppress)", got)
	}
	s.waitFinal(second.GetMessageId(), 30*time.Second)
	s.waitQueueEmpty(10 * time.Second)
	if n := s.sink.RcptAttempts("nobody@example.test"); n != 1 {
		t.Errorf("RCPT attempts for the bounced address = %d, want 1", n)
	}
}

// TestCancel: a deferred recipient is canceled and never attempted again;
// a delivered one keeps its state.
func TestCancel(t *testing.T) {
	s := startStack(t, testenv.SinkScript{Rcpt: func(addr string, n int) *smtp.SMTPError {
		if strings.HasPrefix(addr, "later@") {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
		}
		return nil
	}}, func(c *serveConfig) { c.RetryMin, c.RetryMax = 500*time.Millisecond, time.Second })
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"later@example.test", "now@other.test"}, Subject: "s", Text: "t"})
	s.waitState(resp.GetMessageId(), 30*time.Second, func(r *postflowv1.GetMessageResponse) bool {
		return r.GetRecipients()[0].GetState() == postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED &&
			r.GetRecipients()[1].GetState() == postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED
	})
	c, err := s.mail.Cancel(s.ctx(), &postflowv1.CancelRequest{MessageId: resp.GetMessageId()})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.GetRecipients()[0].GetState(); got != postflowv1.RecipientState_RECIPIENT_STATE_CANCELED {
		t.Errorf("Cancel answered %v for the deferred recipient, want CANCELED", got)
	}
	if got := c.GetRecipients()[1].GetState(); got != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
		t.Errorf("Cancel answered %v for the delivered recipient, want DELIVERED", got)
	}
	// The job comes back at its retry time, finds the recipient final and
	// is acked without an attempt.
	s.waitQueueEmpty(20 * time.Second)
	attempts := s.sink.RcptAttempts("later@example.test")
	st := s.waitFinal(resp.GetMessageId(), 10*time.Second)
	if got := stateOf(t, st, 0); got != postflowv1.RecipientState_RECIPIENT_STATE_CANCELED {
		t.Errorf("state %v after the queue drained, want CANCELED", got)
	}
	if n := st.GetRecipients()[0].GetAttempts(); int(n) != attempts {
		t.Errorf("status counts %d attempts, the sink saw %d", n, attempts)
	}
	// Cancel again changes nothing; an unknown id is NOT_FOUND.
	if _, err := s.mail.Cancel(s.ctx(), &postflowv1.CancelRequest{MessageId: resp.GetMessageId()}); err != nil {
		t.Errorf("second Cancel: %v", err)
	}
	if _, err := s.mail.Cancel(s.ctx(), &postflowv1.CancelRequest{MessageId: "aaaaaaaaaaaaaaaaaaaaaaaa"}); status.Code(err) != codes.NotFound {
		t.Errorf("Cancel of an unknown message: %v, want NOT_FOUND", err)
	}
}

// TestCancelBeforeFirstAttempt: a message canceled while its job waits in
// the queue is never attempted.
func TestCancelBeforeFirstAttempt(t *testing.T) {
	s := startStack(t, testenv.SinkScript{}, func(c *serveConfig) { c.Roles = []string{"api"} })
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"a@example.test", "b@other.test"}, Subject: "s", Text: "t"})
	if _, err := s.mail.Cancel(s.ctx(), &postflowv1.CancelRequest{MessageId: resp.GetMessageId()}); err != nil {
		t.Fatal(err)
	}
	w := s.cfg
	w.Roles = []string{"worker"}
	s.startApp(w)
	s.waitQueueEmpty(20 * time.Second)
	if n := s.sink.Sessions(); n != 0 {
		t.Errorf("sink saw %d sessions for a canceled message, want 0", n)
	}
	st := s.waitFinal(resp.GetMessageId(), 10*time.Second)
	for i := range 2 {
		if got := stateOf(t, st, i); got != postflowv1.RecipientState_RECIPIENT_STATE_CANCELED {
			t.Errorf("recipient %d: %v, want CANCELED", i, got)
		}
	}
}

// TestIdempotencyBeyondDuplicateWindow is TESTPLAN A5, with JetStream's
// duplicate window shortened to 1 s so that resubmissions land past it:
// 1,000 keys resubmitted inside and past the window give one message per
// key, and 100 keys reused with another payload are refused.
func TestIdempotencyBeyondDuplicateWindow(t *testing.T) {
	const keys, conflicting = 1000, 100
	s := startStack(t, testenv.SinkScript{})
	for _, name := range []string{"OUTBOUND", "EVENTS", "BOUNCES"} {
		st, err := s.stream.Stream(s.ctx(), name)
		if err != nil {
			t.Fatal(err)
		}
		cfg := st.CachedInfo().Config
		cfg.Duplicates = time.Second
		if _, err := s.stream.UpdateStream(s.ctx(), cfg); err != nil {
			t.Fatalf("shorten %s's duplicate window: %v", name, err)
		}
	}
	req := func(i int, subject string) *postflowv1.SendRequest {
		return &postflowv1.SendRequest{From: "me@sender.test", To: []string{fmt.Sprintf("k%d@example.test", i)},
			Subject: subject, Text: "t", IdempotencyKey: fmt.Sprintf("order-%d", i)}
	}
	sendAll := func(subject string) []string {
		ids := make([]string, keys)
		var wg sync.WaitGroup
		errs := make(chan error, keys)
		for w := range 8 {
			wg.Go(func() {
				for i := w; i < keys; i += 8 {
					resp, err := s.mail.Send(context.Background(), req(i, subject+fmt.Sprint(i)))
					if err != nil {
						errs <- err
						return
					}
					ids[i] = resp.GetMessageId()
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("Send: %v", err)
		}
		return ids
	}
	first := sendAll("idem ")
	again := sendAll("idem ") // inside the window
	s.sink.WaitForCount(t, keys, 60*time.Second)
	// Past the window: the duplicate window is what is being outlived.
	time.Sleep(1500 * time.Millisecond) //nolint:forbidigo // let the 1 s duplicate window pass
	late := sendAll("idem ")
	for i := range keys {
		if first[i] != again[i] || first[i] != late[i] {
			t.Fatalf("key %d: ids %s, %s, %s; want one id", i, first[i], again[i], late[i])
		}
	}
	rejected := 0
	for i := range conflicting {
		_, err := s.mail.Send(s.ctx(), req(i, "another payload"))
		if status.Code(err) == codes.AlreadyExists {
			rejected++
		}
	}
	s.waitQueueEmpty(30 * time.Second)
	lost, dup, phantom := s.oracle(t, "idem ", keys)
	if lost != 0 || dup != 0 || phantom != 0 {
		t.Errorf("lost %d, duplicates %d, phantoms %d; want none", lost, dup, phantom)
	}
	if rejected != conflicting {
		t.Errorf("%d of %d reuses with another payload refused with ALREADY_EXISTS", rejected, conflicting)
	}
}

func dialAPI(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// bouncesStored is the number of records in BOUNCES.
func (s *stack) bouncesStored() uint64 { return s.streamMsgs(queue.BouncesStream) }

// TestOneBouncePerRecipientUnderCrashes is TESTPLAN A10: 1,000 recipients
// refused with 5.1.1 while the worker is killed 20 times (its NATS
// connection cut, nothing settled); BOUNCES holds exactly one record per
// recipient and every status is bounced.
func TestOneBouncePerRecipientUnderCrashes(t *testing.T) {
	const total, kills = 1000, 20
	s := startStack(t, testenv.SinkScript{Rcpt: func(string, int) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}}, func(c *serveConfig) {
		c.Roles = []string{"api"}
		c.Queue.AckWait = 2 * time.Second
	})
	workerCfg := s.cfg
	workerCfg.Roles = []string{"worker"}
	workerCfg.Concurrency = 16
	workerCfg.ShutdownTimeout = time.Millisecond
	w := s.startApp(workerCfg)

	sent := make(chan struct{})
	go func() { defer close(sent); s.sendMany(t, "permfail", "example.test", total) }()
	// Kill whenever some more bounces are recorded, so kills fall all
	// through the run, some between a record and its ack.
	for k := range kills {
		at := s.bouncesStored()
		if !eventually(30*time.Second, func() bool { return s.bouncesStored() >= at+uint64(total/(2*kills)) || s.bouncesStored() >= total }) {
			t.Fatalf("kill %d: no progress past %d bounce records", k, at)
		}
		w.app.nc.Close()
		w.stop(t)
		w = s.startApp(workerCfg)
	}
	<-sent
	if !eventually(60*time.Second, func() bool { return s.bouncesStored() >= total }) {
		t.Fatalf("%d bounce records after 60s, want %d", s.bouncesStored(), total)
	}
	s.waitQueueEmpty(60 * time.Second)

	perRcpt := map[string]int{}
	for _, rec := range s.bounceRecords() {
		perRcpt[rec.GetRecipient()]++
		if rec.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED {
			t.Errorf("record for %s has state %v", rec.GetRecipient(), rec.GetState())
		}
	}
	for i := range total {
		addr := fmt.Sprintf("permfail%d@example.test", i)
		if n := perRcpt[addr]; n != 1 {
			t.Errorf("%s has %d bounce records, want 1", addr, n)
		}
		delete(perRcpt, addr)
	}
	if len(perRcpt) != 0 {
		t.Errorf("bounce records for unknown recipients: %v", perRcpt)
	}
	// Every status bounced: the events say so for each recipient.
	resp, err := s.status.ListEvents(s.ctx(), &postflowv1.ListEventsRequest{PageSize: 1000, Filter: &postflowv1.EventFilter{
		States: []postflowv1.RecipientState{postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED, postflowv1.RecipientState_RECIPIENT_STATE_FAILED, postflowv1.RecipientState_RECIPIENT_STATE_EXPIRED},
	}})
	if err != nil || len(resp.GetEvents()) != 0 {
		t.Errorf("events in a state other than bounced: %d, %v", len(resp.GetEvents()), err)
	}
	attempts := 0
	for i := range total {
		attempts += s.sink.RcptAttempts(fmt.Sprintf("permfail%d@example.test", i))
	}
	t.Logf("%d kills; %d RCPT attempts for %d recipients (a retry after a kill before the outcome was recorded tries again)", kills, attempts, total)
}

// TestPermanentFailuresB2 is TESTPLAN B2: 550 5.1.1 at RCPT and 554 after
// the final dot each bounce at once, with no further attempt, the remote's
// code, enhanced code and text in status, a bounce record within 60 s; a
// 5xx to MAIL FROM is not remembered for the domain.
func TestPermanentFailuresB2(t *testing.T) {
	var mu sync.Mutex
	mailRefused := 0
	s := startStack(t, testenv.SinkScript{
		Mail: func(from string) *smtp.SMTPError {
			mu.Lock()
			defer mu.Unlock()
			if strings.HasPrefix(from, "blocked@") {
				mailRefused++
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "sender refused"}
			}
			return nil
		},
		Rcpt: func(addr string, _ int) *smtp.SMTPError {
			if strings.HasPrefix(addr, "nobody@") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}
			}
			return nil
		},
		Data: func(rcpts []string, body []byte) *smtp.SMTPError {
			if strings.Contains(string(body), "Subject: spammy") {
				return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "message content rejected"}
			}
			return nil
		},
	})
	cases := []struct {
		from, to, subject string
		code              int32
		enhanced, text    string
	}{
		{"me@sender.test", "nobody@example.test", "hello", 550, "5.1.1", "no such user here"},
		{"me@sender.test", "someone@example.test", "spammy", 554, "5.7.1", "message content rejected"},
		{"blocked@sender.test", "other@example.test", "hello", 550, "5.7.1", "sender refused"},
	}
	for _, tc := range cases {
		resp := s.send(&postflowv1.SendRequest{From: tc.from, To: []string{tc.to}, Subject: tc.subject, Text: "t"})
		st := s.waitFinal(resp.GetMessageId(), 60*time.Second)
		r := st.GetRecipients()[0]
		if r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED || r.GetAttempts() != 1 {
			t.Errorf("%s: %v after %d attempts, want BOUNCED after 1", tc.to, r.GetState(), r.GetAttempts())
		}
		rep := r.GetLastReply()
		if rep.GetCode() != tc.code || rep.GetEnhancedCode() != tc.enhanced || !strings.Contains(rep.GetText(), tc.text) || !rep.GetRemote() {
			t.Errorf("%s: reply %v, want the remote's %d %s %q", tc.to, rep, tc.code, tc.enhanced, tc.text)
		}
		if lag := r.GetUpdatedAt().AsTime().Sub(st.GetAcceptedAt().AsTime()); lag > time.Minute {
			t.Errorf("%s: bounced %v after acceptance, want within 60s", tc.to, lag)
		}
	}
	// The refused sender did not mark the domain: the next message to it,
	// from another sender, is tried and delivered.
	ok := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"other@example.test"}, Subject: "hello", Text: "t"})
	if got := stateOf(t, s.waitFinal(ok.GetMessageId(), 30*time.Second), 0); got != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
		t.Errorf("after a 5xx to MAIL FROM: next message %v, want DELIVERED", got)
	}
	s.waitQueueEmpty(10 * time.Second)
	if recs := s.bounceRecords(); len(recs) != len(cases) {
		t.Errorf("%d bounce records, want %d", len(recs), len(cases))
	}
	if n := s.sink.RcptAttempts("nobody@example.test"); n != 1 {
		t.Errorf("RCPT attempts for nobody@ = %d, want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if mailRefused != 1 {
		t.Errorf("MAIL FROM refused %d times, want 1 (no retry)", mailRefused)
	}
}
