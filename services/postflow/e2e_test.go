package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// spans records every span of the test binary; one trace must run from
// Send to the SMTP attempt.
var spans = tracetest.NewSpanRecorder()

func TestMain(m *testing.M) {
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)))
	os.Exit(m.Run())
}

const zone = `
example.test.      60 IN MX 10 mx.example.test.
mx.example.test.   60 IN A  127.0.0.1
other.test.        60 IN MX 10 mx.other.test.
mx.other.test.     60 IN A  127.0.0.1
`

// stack is a Postflow under test: real JetStream, DNS and SMTP sink on
// loopback, and the roles wired exactly as `postflow serve` wires them.
type stack struct {
	t      testing.TB
	js     *testenv.JetStream
	dns    *testenv.DNSServer
	sink   *testenv.SMTPSink
	cfg    serveConfig
	mail   postflowv1.MailServiceClient
	status postflowv1.StatusServiceClient
	// shaping is the ShapingService client.
	shaping postflowv1.ShapingServiceClient
	// suppress is the SuppressionService client.
	suppress postflowv1.SuppressionServiceClient
	// campaigns is the CampaignService client.
	campaigns postflowv1.CampaignServiceClient
	stream    jetstream.JetStream
	api       *runningApp
	// logs holds every app's log lines at Info and above, so tests can
	// assert what is (and is not) logged.
	logs lockedBuffer
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type runningApp struct {
	app    *app
	cancel context.CancelFunc
	done   chan struct{} // closed when run returned, with its error in err
	err    error
}

// stop shuts the app down gracefully and waits for it.
func (r *runningApp) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		if r.err != nil {
			t.Errorf("app returned %v", r.err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("app did not stop within 60s")
	}
}

type stackOpt func(*serveConfig)

func startStack(t testing.TB, script testenv.SinkScript, opts ...stackOpt) *stack {
	t.Helper()
	s := &stack{t: t, js: testenv.StartJetStream(t), dns: testenv.StartDNS(t, zone), sink: testenv.StartSMTPSink(t, script)}
	cfg := defaultServeConfig()
	cfg.NATSURL = s.js.URL
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.DNSServer = s.dns.Addr()
	cfg.SMTPPort = int(s.sink.Addr().Port())
	cfg.AllowPrivateMX = true
	cfg.Simulator = false
	cfg.RetryMin = 50 * time.Millisecond
	cfg.RetryMax = 200 * time.Millisecond
	cfg.ShutdownTimeout = 20 * time.Second
	cfg.Hostname = "postflow.test"
	// No rate limit unless a test sets one: the shipped 100/s per
	// destination would only slow tests that are about something else.
	// Connection limits stay as shipped.
	cfg.ShapingFile = filepath.Join(t.TempDir(), "shaping.yaml")
	if err := os.WriteFile(cfg.ShapingFile, []byte("defaults: {rate: unlimited}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.finish(); err != nil {
		t.Fatalf("config: %v", err)
	}
	s.cfg = cfg
	s.api = s.startApp(cfg)
	s.reconnect()
	var err error
	if s.stream, err = jetstream.New(s.js.Connect(t)); err != nil {
		t.Fatal(err)
	}
	return s
}

// startApp starts one postflow process (in-process) with cfg.
func (s *stack) startApp(cfg serveConfig) *runningApp {
	s.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out io.Writer = &s.logs
	if testing.Verbose() {
		out = io.MultiWriter(&s.logs, os.Stderr)
	}
	log := slog.New(slog.NewJSONHandler(out, nil))
	a, err := newApp(ctx, cfg, log, http.NotFoundHandler())
	if err != nil {
		cancel()
		s.t.Fatalf("newApp: %v", err)
	}
	r := &runningApp{app: a, cancel: cancel, done: make(chan struct{})}
	go func() { r.err = a.run(ctx); close(r.done) }()
	s.t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

func (s *stack) send(req *postflowv1.SendRequest) *postflowv1.SendResponse {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := s.mail.Send(ctx, req)
	if err != nil {
		s.t.Fatalf("Send(%v): %v", req.GetTo(), err)
	}
	return resp
}

// eventually polls cond under a deadline (testenv.Eventually).
func eventually(timeout time.Duration, cond func() bool) bool {
	return testenv.Eventually(timeout, cond)
}

// waitState polls GetMessage until done accepts the response.
func (s *stack) waitState(id string, timeout time.Duration, done func(*postflowv1.GetMessageResponse) bool) *postflowv1.GetMessageResponse {
	s.t.Helper()
	var last *postflowv1.GetMessageResponse
	if eventually(timeout, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := s.status.GetMessage(ctx, &postflowv1.GetMessageRequest{MessageId: id})
		if err != nil {
			return false
		}
		last = resp
		return done(resp)
	}) {
		return last
	}
	s.t.Fatalf("message %s not in the expected state within %v; last status: %v", id, timeout, last)
	return nil
}

// waitFinal polls GetMessage until every recipient is final.
func (s *stack) waitFinal(id string, timeout time.Duration) *postflowv1.GetMessageResponse {
	s.t.Helper()
	return s.waitState(id, timeout, allFinal)
}

// outboundMsgs is the number of jobs in OUTBOUND.
func (s *stack) outboundMsgs() uint64 { return s.streamMsgs(queue.OutboundStream) }

// streamMsgs is the number of messages stored in a stream.
func (s *stack) streamMsgs(name string) uint64 {
	s.t.Helper()
	st, err := s.stream.Stream(context.Background(), name)
	if err != nil {
		s.t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		s.t.Fatal(err)
	}
	return info.State.Msgs
}

func stateOf(t *testing.T, resp *postflowv1.GetMessageResponse, i int) postflowv1.RecipientState {
	t.Helper()
	if len(resp.GetRecipients()) <= i {
		t.Fatalf("GetMessage has %d recipients, want > %d", len(resp.GetRecipients()), i)
	}
	return resp.GetRecipients()[i].GetState()
}

func TestSendRawIsDeliveredByteIdentical(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	raw := "From: Me <me@sender.test>\r\nTo: you@example.test\r\nSubject: raw\r\n" +
		"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <raw-1@sender.test>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" +
		"Hello.\r\n.leading dot must survive dot-stuffing\r\nÜmlaut line\r\n"
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"you@example.test"}, Raw: []byte(raw)})
	st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
	if got := stateOf(t, st, 0); got != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
		t.Fatalf("state = %v, want DELIVERED", got)
	}
	msgs := s.sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("sink received %d messages, want 1", len(msgs))
	}
	if !bytes.Equal(msgs[0].Data, []byte(raw)) {
		t.Errorf("body at sink differs from the raw message sent:\n got %q\nwant %q", msgs[0].Data, raw)
	}
	if msgs[0].From != "me@sender.test" || strings.Join(msgs[0].To, ",") != "you@example.test" {
		t.Errorf("envelope = %s -> %v, want me@sender.test -> [you@example.test]", msgs[0].From, msgs[0].To)
	}
	r := st.GetRecipients()[0]
	if r.GetLastReply().GetCode() != 250 || r.GetMxHost() != "mx.example.test" || r.GetAttempts() != 1 {
		t.Errorf("status = reply %v, mx %q, attempts %d; want 250 from mx.example.test after 1 attempt", r.GetLastReply(), r.GetMxHost(), r.GetAttempts())
	}
}

func TestSendStructuredBuildsMIME(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	resp := s.send(&postflowv1.SendRequest{
		From: "Sender Name <me@sender.test>", To: []string{"a@example.test"}, Cc: []string{"b@other.test"},
		Bcc: []string{"hidden@example.test"}, Subject: "Grüße", Text: "plain body", Html: "<p>html body</p>",
		Headers: []*postflowv1.Header{{Name: "X-Campaign", Value: "c1"}},
	})
	if len(resp.GetRecipients()) != 3 {
		t.Fatalf("Send returned %d recipients, want 3", len(resp.GetRecipients()))
	}
	st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
	for i := range 3 {
		if got := stateOf(t, st, i); got != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
			t.Errorf("recipient %d state = %v, want DELIVERED", i, got)
		}
	}
	// Two domains: two transactions; example.test's carries both of its
	// recipients.
	msgs := s.sink.Messages()
	if len(msgs) != 2 {
		t.Fatalf("sink received %d transactions, want 2 (one per domain)", len(msgs))
	}
	for _, m := range msgs {
		if bytes.Contains(m.Data, []byte("hidden@example.test")) {
			t.Errorf("Bcc address appears in the message data")
		}
		mr, err := mail.CreateReader(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatalf("sink data is not a parseable message: %v", err)
		}
		subj, _ := mr.Header.Subject()
		if subj != "Grüße" {
			t.Errorf("Subject = %q, want Grüße", subj)
		}
		if mr.Header.Get("X-Campaign") != "c1" || mr.Header.Get("Message-Id") == "" || mr.Header.Get("Date") == "" {
			t.Errorf("headers missing: X-Campaign=%q Message-Id=%q Date=%q", mr.Header.Get("X-Campaign"), mr.Header.Get("Message-Id"), mr.Header.Get("Date"))
		}
		var parts []string
		for {
			p, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(p.Body)
			parts = append(parts, string(b))
		}
		if strings.Join(parts, "|") != "plain body|<p>html body</p>" {
			t.Errorf("parts = %q, want text then html", parts)
		}
	}
}

func TestTempfailTwiceThenDelivered(t *testing.T) {
	s := startStack(t, testenv.SinkScript{Rcpt: func(addr string, n int) *smtp.SMTPError {
		if n < 2 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted, try later"}
		}
		return nil
	}})
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"grey@example.test"}, Subject: "s", Text: "t"})
	st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
	r := st.GetRecipients()[0]
	if r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED || r.GetAttempts() != 3 {
		t.Fatalf("state %v after %d attempts, want DELIVERED after 3", r.GetState(), r.GetAttempts())
	}
	var deferred int
	for _, ev := range r.GetEvents() {
		if ev.GetState() == postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED {
			deferred++
			if ev.GetReply().GetCode() != 451 || ev.GetReply().GetEnhancedCode() != "4.7.1" || ev.GetNextAttemptAt() == nil {
				t.Errorf("deferred event = %v, want 451 4.7.1 with a next attempt time", ev)
			}
		}
	}
	if deferred != 2 {
		t.Errorf("deferred events = %d, want 2", deferred)
	}
	if s.sink.Count() != 1 {
		t.Errorf("sink received %d messages, want 1", s.sink.Count())
	}
}

func TestPermanentFailureBouncesWithoutRetry(t *testing.T) {
	s := startStack(t, testenv.SinkScript{Rcpt: func(addr string, n int) *smtp.SMTPError {
		if strings.HasPrefix(addr, "nobody@") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}})
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"nobody@example.test", "ok@example.test"}, Subject: "s", Text: "t"})
	st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
	if got := stateOf(t, st, 0); got != postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED {
		t.Errorf("nobody@: state %v, want BOUNCED", got)
	}
	if got := stateOf(t, st, 1); got != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
		t.Errorf("ok@: state %v, want DELIVERED", got)
	}
	rep := st.GetRecipients()[0].GetLastReply()
	if rep.GetCode() != 550 || rep.GetEnhancedCode() != "5.1.1" || !strings.Contains(rep.GetText(), "no such user") || !rep.GetRemote() {
		t.Errorf("bounce reply = %v, want the remote 550 5.1.1", rep)
	}
	if got := st.GetRecipients()[0].GetCategory(); got != "bad_mailbox" {
		t.Errorf("bounce category = %q, want bad_mailbox", got)
	}
	// No further attempt can happen: the job left the work queue and no
	// delivery is pending.
	s.waitQueueEmpty(10 * time.Second)
	if n := s.sink.RcptAttempts("nobody@example.test"); n != 1 {
		t.Errorf("RCPT attempts for the bounced recipient = %d, want 1", n)
	}
	if recs := s.bounceRecords(); len(recs) != 1 || recs[0].GetRecipient() != "nobody@example.test" || recs[0].GetReply().GetEnhancedCode() != "5.1.1" {
		t.Errorf("BOUNCES = %v, want one record for nobody@ with 5.1.1", recs)
	}
}

// bounceRecords reads every record in BOUNCES.
func (s *stack) bounceRecords() []*postflowv1.Event {
	s.t.Helper()
	ctx := context.Background()
	st, err := s.stream.Stream(ctx, queue.BouncesStream)
	if err != nil {
		s.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	var out []*postflowv1.Event
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		raw, err := st.GetMsg(ctx, seq)
		if err != nil {
			s.t.Fatal(err)
		}
		ev := &postflowv1.Event{}
		if err := proto.Unmarshal(raw.Data, ev); err != nil {
			s.t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// waitQueueEmpty polls until OUTBOUND holds no job and nothing is pending
// acknowledgement.
func (s *stack) waitQueueEmpty(timeout time.Duration) {
	s.t.Helper()
	var info *jetstream.ConsumerInfo
	if !eventually(timeout, func() bool {
		cons, err := s.stream.Consumer(context.Background(), queue.OutboundStream, queue.WorkerConsumer)
		if err != nil {
			s.t.Fatal(err)
		}
		if info, err = cons.Info(context.Background()); err != nil {
			s.t.Fatal(err)
		}
		return s.outboundMsgs() == 0 && info.NumAckPending == 0 && info.NumPending == 0
	}) {
		s.t.Fatalf("OUTBOUND not empty after %v: %d jobs, %d ack pending", timeout, s.outboundMsgs(), info.NumAckPending)
	}
}

func TestDNSFailuresBounce(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"x@nowhere.test"}, Subject: "s", Text: "t"})
	st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
	r := st.GetRecipients()[0]
	if r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED || r.GetLastReply().GetEnhancedCode() != "5.1.2" {
		t.Errorf("NXDOMAIN: state %v reply %v, want BOUNCED 5.1.2", r.GetState(), r.GetLastReply())
	}
	if s.sink.Sessions() != 0 {
		t.Errorf("sink saw %d sessions for an NXDOMAIN recipient, want 0", s.sink.Sessions())
	}
}

func TestPrivateMXNeverDialedWithoutAllowPrivate(t *testing.T) {
	s := startStack(t, testenv.SinkScript{}, func(c *serveConfig) { c.AllowPrivateMX = false })
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"x@example.test"}, Subject: "s", Text: "t"})
	st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
	r := st.GetRecipients()[0]
	if r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED {
		t.Errorf("state %v, want BOUNCED", r.GetState())
	}
	if s.dns.QueriesFor("mx.example.test.", 1) == 0 {
		t.Errorf("the MX host's A record was never looked up; the test proves nothing")
	}
	if n := s.sink.Sessions(); n != 0 {
		t.Fatalf("sink on 127.0.0.1 saw %d sessions, want 0 (egress guard)", n)
	}
}

func TestIdempotencyKeyQueuesOnce(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	req := &postflowv1.SendRequest{From: "me@sender.test", To: []string{"x@example.test"}, Subject: "s", Text: "t", IdempotencyKey: "order-42"}
	a := s.send(req)
	b := s.send(req)
	if a.GetMessageId() != b.GetMessageId() {
		t.Fatalf("same idempotency key gave ids %s and %s", a.GetMessageId(), b.GetMessageId())
	}
	s.waitFinal(a.GetMessageId(), 30*time.Second)
	s.waitQueueEmpty(10 * time.Second)
	if n := s.sink.Count(); n != 1 {
		t.Errorf("sink received %d copies, want 1", n)
	}
}

func TestOneTraceFromSendToSMTPAttempt(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"trace@example.test"}, Subject: "s", Text: "t"})
	s.waitFinal(resp.GetMessageId(), 30*time.Second)
	// The attempt span ends after the outcome is recorded, so it may end a
	// moment after the status turned final.
	attemptTrace := ""
	found := eventually(10*time.Second, func() bool {
		for _, sp := range spans.Ended() {
			if sp.Name() != "postflow.delivery.attempt" {
				continue
			}
			for _, a := range sp.Attributes() {
				if string(a.Key) == "postflow.message_id" && a.Value.AsString() == resp.GetMessageId() {
					attemptTrace = sp.SpanContext().TraceID().String()
				}
			}
		}
		return attemptTrace != ""
	})
	if !found {
		t.Fatal("no postflow.delivery.attempt span for the message")
	}
	for _, sp := range spans.Ended() {
		if sp.Name() == "postflow.v1.MailService/Send" && sp.SpanContext().TraceID().String() == attemptTrace {
			return
		}
	}
	t.Errorf("attempt span's trace %s contains no MailService/Send server span", attemptTrace)
}

func TestMalformedSendIsRejectedAndQueuesNothing(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	ok := func() *postflowv1.SendRequest {
		return &postflowv1.SendRequest{From: "me@sender.test", To: []string{"you@example.test"}, Subject: "s", Text: "t"}
	}
	with := func(f func(r *postflowv1.SendRequest)) *postflowv1.SendRequest { r := ok(); f(r); return r }
	many := func(n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("r%d@example.test", i))
		}
		return out
	}
	tests := []struct {
		name  string
		req   *postflowv1.SendRequest
		field string
	}{
		{"CRLF in from", with(func(r *postflowv1.SendRequest) { r.From = "me@sender.test\r\nBcc: x@evil.test" }), "from"},
		{"LF in to", with(func(r *postflowv1.SendRequest) { r.To = []string{"you@example.test\nRCPT TO:<x@evil.test>"} }), "to[0]"},
		{"NUL in subject", with(func(r *postflowv1.SendRequest) { r.Subject = "hi\x00there" }), "subject"},
		{"CR in display name", with(func(r *postflowv1.SendRequest) { r.To = []string{"\"Evil\rName\" <you@example.test>"} }), "to[0]"},
		{"LF in header value", with(func(r *postflowv1.SendRequest) {
			r.Headers = []*postflowv1.Header{{Name: "X-A", Value: "v\nBcc: x@evil.test"}}
		}), "headers[0].value"},
		{"space in header name", with(func(r *postflowv1.SendRequest) { r.Headers = []*postflowv1.Header{{Name: "X A", Value: "v"}} }), "headers[0].name"},
		{"colon in header name", with(func(r *postflowv1.SendRequest) { r.Headers = []*postflowv1.Header{{Name: "X:A", Value: "v"}} }), "headers[0].name"},
		{"source route", with(func(r *postflowv1.SendRequest) { r.To = []string{"@relay.test:you@example.test"} }), "to[0]"},
		{"local part over 64", with(func(r *postflowv1.SendRequest) { r.To = []string{strings.Repeat("a", 65) + "@example.test"} }), "to[0]"},
		{"domain over 255", with(func(r *postflowv1.SendRequest) {
			r.To = []string{"a@" + strings.Repeat(strings.Repeat("b", 60)+".", 5) + "test"}
		}), "to[0]"},
		{"address literal", with(func(r *postflowv1.SendRequest) { r.To = []string{"root@[127.0.0.1]"} }), "to[0]"},
		{"port in domain", with(func(r *postflowv1.SendRequest) { r.To = []string{"a@example.test:2525"} }), "to[0]"},
		{"percent routing", with(func(r *postflowv1.SendRequest) { r.To = []string{"a%evil.test@example.test"} }), "to[0]"},
		{"bang routing", with(func(r *postflowv1.SendRequest) { r.Cc = []string{"evil.test!a@example.test"} }), "cc[0]"},
		{"unbalanced quote", with(func(r *postflowv1.SendRequest) { r.To = []string{"\"abc@example.test"} }), "to[0]"},
		{"no recipients", with(func(r *postflowv1.SendRequest) { r.To = nil }), "to"},
		{"too many recipients", with(func(r *postflowv1.SendRequest) { r.To = many(51) }), "to"},
		{"duplicate recipient", with(func(r *postflowv1.SendRequest) { r.Bcc = []string{"you@example.test"} }), "bcc[0]"},
		{"reserved header Received", with(func(r *postflowv1.SendRequest) { r.Headers = []*postflowv1.Header{{Name: "Received", Value: "from x"}} }), "headers[0].name"},
		{"reserved header DKIM-Signature", with(func(r *postflowv1.SendRequest) {
			r.Headers = []*postflowv1.Header{{Name: "DKIM-Signature", Value: "v=1"}}
		}), "headers[0].name"},
		{"Bcc as header", with(func(r *postflowv1.SendRequest) { r.Headers = []*postflowv1.Header{{Name: "Bcc", Value: "x@evil.test"}} }), "headers[0].name"},
		{"oversized message", with(func(r *postflowv1.SendRequest) { r.Text = strings.Repeat("x", 11<<20) }), "text"},
		{"raw with subject", with(func(r *postflowv1.SendRequest) { r.Raw = []byte("From: a@b.test\r\n\r\nhi\r\n") }), "subject"},
		{"missing from", with(func(r *postflowv1.SendRequest) { r.From = "" }), "from"},
		{"expire_at in the past", with(func(r *postflowv1.SendRequest) { r.ExpireAt = timestamppb.New(time.Now().Add(-time.Minute)) }), "expire_at"},
		{"expire_at beyond max age", with(func(r *postflowv1.SendRequest) { r.ExpireAt = timestamppb.New(time.Now().Add(30 * 24 * time.Hour)) }), "expire_at"},
	}
	beforeJobs := s.outboundMsgs()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := s.mail.Send(ctx, tc.req, grpc.MaxCallSendMsgSize(64<<20))
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("Send = %v, want INVALID_ARGUMENT", err)
			}
			var fields []string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						fields = append(fields, v.GetField())
					}
				}
			}
			for _, f := range fields {
				if f == tc.field {
					return
				}
			}
			t.Errorf("field violations = %v, want one naming %q (status: %s)", fields, tc.field, st.Message())
		})
	}
	if after := s.outboundMsgs(); after != beforeJobs {
		t.Errorf("OUTBOUND held %d jobs before the malformed requests and %d after", beforeJobs, after)
	}
	st, err := s.stream.Stream(context.Background(), queue.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(context.Background())
	if info.State.Msgs != 0 {
		t.Errorf("EVENTS holds %d events after only malformed requests, want 0", info.State.Msgs)
	}
}

// TestWorkerRestartLosesNothing is TESTPLAN A1 at 1,000 messages with A3's
// graceful restart: the worker is stopped mid-run and a new one started;
// every accepted message ends delivered exactly once.
func TestWorkerRestartLosesNothing(t *testing.T) {
	const total = 1000
	s := startStack(t, testenv.SinkScript{}, func(c *serveConfig) { c.Roles = []string{"api"} })
	workerCfg := s.cfg
	workerCfg.Roles = []string{"worker"}
	workerCfg.HTTPAddr = "127.0.0.1:0"
	workerCfg.Concurrency = 16
	w1 := s.startApp(workerCfg)

	ids := make([]string, total)
	var wg sync.WaitGroup
	errs := make(chan error, total)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < total; i += 16 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := s.mail.Send(ctx, &postflowv1.SendRequest{
					From: "me@sender.test", To: []string{fmt.Sprintf("u%d@example.test", i)},
					Subject: "msg " + strconv.Itoa(i), Text: "body " + strconv.Itoa(i),
				})
				cancel()
				if err != nil {
					errs <- err
					return
				}
				ids[i] = resp.GetMessageId()
			}
		}()
	}
	// Stop the first worker part-way through delivery.
	s.sink.WaitForCount(t, total/5, 60*time.Second)
	w1.stop(t)
	stoppedAt := s.sink.Count()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Send: %v", err)
	}
	if stoppedAt >= total {
		t.Fatalf("all %d messages were delivered before the worker stopped; the restart was not exercised", total)
	}
	s.startApp(workerCfg)
	s.sink.WaitForCount(t, total, 120*time.Second)
	s.waitQueueEmpty(30 * time.Second)

	// The oracle: per accepted message exactly one receipt, no phantoms, and
	// status delivered.
	lost, dup, phantom := s.oracle(t, "msg ", total)
	if lost != 0 || dup != 0 || phantom != 0 {
		t.Errorf("lost %d, duplicates %d, phantom %d; want 0, 0, 0 (worker stopped after %d deliveries)", lost, dup, phantom, stoppedAt)
	}
	for i, id := range ids {
		st := s.waitFinal(id, 10*time.Second)
		if got := stateOf(t, st, 0); got != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
			t.Fatalf("message %d (%s) state %v, want DELIVERED", i, id, got)
		}
	}
	t.Logf("worker stopped after %d of %d deliveries; all %d delivered once", stoppedAt, total, total)
}

func TestMailboxSimulator(t *testing.T) {
	s := startStack(t, testenv.SinkScript{}, func(c *serveConfig) { c.Simulator = true; c.AllowPrivateMX = false })
	resp := s.send(&postflowv1.SendRequest{
		From: "me@sender.test",
		To: []string{"success@simulator.postflow.test", "bounce@simulator.postflow.test",
			"tempfail+1@simulator.postflow.test", "success+7@simulator.postflow.test"},
		Subject: "sim", Text: "t",
	})
	st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
	want := []struct {
		state    postflowv1.RecipientState
		attempts int32
		code     int32
	}{
		{postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED, 1, 250},
		{postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED, 1, 550},
		{postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED, 3, 250},
		{postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED, 1, 250},
	}
	for i, w := range want {
		r := st.GetRecipients()[i]
		if r.GetState() != w.state || r.GetAttempts() != w.attempts || r.GetLastReply().GetCode() != w.code {
			t.Errorf("%s: state %v, %d attempts, reply %v; want %v, %d attempts, %d",
				r.GetRecipient(), r.GetState(), r.GetAttempts(), r.GetLastReply(), w.state, w.attempts, w.code)
		}
	}
	if s.sink.Sessions() != 0 {
		t.Errorf("simulator traffic reached the sink (%d sessions)", s.sink.Sessions())
	}
	// Its bounces are rehearsals: the record is handled, the address is
	// not suppressed, and a second message bounces again.
	if !eventually(10*time.Second, func() bool {
		c, err := s.stream.Consumer(context.Background(), queue.BouncesStream, queue.BounceConsumer)
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.Delivered.Consumer >= 1 && info.NumPending == 0 && info.NumAckPending == 0
	}) {
		t.Fatal("the bounce record was not handled within 10s")
	}
	if c := s.checkSuppressed("bounce@simulator.postflow.test"); c.GetSuppressed() {
		t.Errorf("the simulator's bounce address was suppressed: %v", c.GetSuppression())
	}
}

func TestCLISendAndStatus(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	addr := s.api.app.grpcLis.Addr().String()
	noenv := func(string) string { return "" }
	var out bytes.Buffer
	err := sendCmd(context.Background(), []string{"--server", addr, "--from", "me@sender.test", "--to", "cli@example.test", "--subject", "hi", "--text", "hello"}, &out, noenv)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	id := strings.TrimSpace(out.String())
	if !validIDForTest(id) {
		t.Fatalf("send printed %q, want a message id", id)
	}
	out.Reset()
	if err := statusCmd(context.Background(), []string{"--server", addr, "--wait", "30s", id}, &out, noenv); err != nil {
		t.Fatalf("status: %v", err)
	}
	if !strings.Contains(out.String(), "cli@example.test") || !strings.Contains(out.String(), "delivered") || !strings.Contains(out.String(), "250") {
		t.Errorf("status output lacks the delivered recipient and its reply:\n%s", out.String())
	}
	out.Reset()
	if err := statusCmd(context.Background(), []string{"--server", addr, "--json", id}, &out, noenv); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	var parsed struct {
		Recipients []struct {
			State string `json:"state"`
		} `json:"recipients"`
	}
	if err := json.Unmarshal(out.Bytes(), &parsed); err != nil || len(parsed.Recipients) != 1 || parsed.Recipients[0].State != "RECIPIENT_STATE_DELIVERED" {
		t.Errorf("status --json = %v (err %v), want one recipient in RECIPIENT_STATE_DELIVERED:\n%s", parsed, err, out.String())
	}
	err = sendCmd(context.Background(), []string{"--server", addr, "--from", "bad", "--to", "cli@example.test", "--text", "x"}, &out, noenv)
	if err == nil || !strings.Contains(err.Error(), "InvalidArgument") || !strings.Contains(err.Error(), "from") {
		t.Errorf("send with a bad --from = %v, want an InvalidArgument error naming from", err)
	}
}

func validIDForTest(s string) bool {
	_, _, err := eventlog.ParseRecipientID(s + "-0")
	return err == nil && len(s) == 24
}

// TestTemporaryFailuresExpire is TESTPLAN B1 compressed through the
// message's own expire_at: a recipient that tempfails for ever ends expired
// with 4.4.7 and the last diagnostic, and no attempt is made after expiry.
func TestTemporaryFailuresExpire(t *testing.T) {
	s := startStack(t, testenv.SinkScript{Rcpt: func(string, int) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "mailbox full"}
	}}, func(c *serveConfig) { c.RetryMin, c.RetryMax = 100*time.Millisecond, 100*time.Millisecond })

	expireAt := time.Now().Add(700 * time.Millisecond)
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"full@example.test"}, Subject: "s", Text: "t",
		ExpireAt: timestamppb.New(expireAt)})
	st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
	r := st.GetRecipients()[0]
	if r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_EXPIRED {
		t.Fatalf("state %v, want EXPIRED", r.GetState())
	}
	if r.GetLastReply().GetEnhancedCode() != "4.4.7" || !strings.Contains(r.GetLastReply().GetText(), "mailbox full") {
		t.Errorf("expiry reply = %v, want 4.4.7 carrying the last diagnostic", r.GetLastReply())
	}
	if r.GetAttempts() < 2 {
		t.Errorf("attempts = %d, want at least 2 before expiry", r.GetAttempts())
	}
	last := r.GetEvents()[len(r.GetEvents())-1].GetTime().AsTime()
	if last.Before(expireAt) {
		t.Errorf("expired at %v, before expire_at %v", last, expireAt)
	}
	s.waitQueueEmpty(10 * time.Second)
	if got, want := s.sink.RcptAttempts("full@example.test"), int(r.GetAttempts()); got != want {
		t.Errorf("sink saw %d RCPT attempts, status counts %d", got, want)
	}
	if recs := s.bounceRecords(); len(recs) != 1 || recs[0].GetState() != postflowv1.RecipientState_RECIPIENT_STATE_EXPIRED {
		t.Errorf("BOUNCES = %v, want one expiry record", recs)
	}
}

// TestWorkerCrashLosesNothing approximates TESTPLAN A2 in process: a worker
// loses its NATS connection mid-run and dies without settling anything in
// flight. JetStream redelivers after AckWait to a new worker; nothing is lost,
// and duplicates stay within what was in flight at the crash.
func TestWorkerCrashLosesNothing(t *testing.T) {
	const total, concurrency = 500, 16
	s := startStack(t, testenv.SinkScript{}, func(c *serveConfig) {
		c.Roles = []string{"api"}
		c.Queue.AckWait = 2 * time.Second
	})
	workerCfg := s.cfg
	workerCfg.Roles = []string{"worker"}
	workerCfg.Concurrency = concurrency
	workerCfg.ShutdownTimeout = time.Millisecond
	w1 := s.startApp(workerCfg)

	ids := make([]string, total)
	for i := range total {
		ids[i] = s.send(&postflowv1.SendRequest{
			From: "me@sender.test", To: []string{fmt.Sprintf("c%d@example.test", i)},
			Subject: "crash " + strconv.Itoa(i), Text: "body",
		}).GetMessageId()
		if i == total/5 {
			s.sink.WaitForCount(t, total/10, 30*time.Second)
			w1.app.nc.Close() // the crash: nothing more reaches NATS from this worker
			w1.stop(t)
		}
	}
	crashedAt := s.sink.Count()
	s.startApp(workerCfg)
	s.sink.WaitForCount(t, total, 60*time.Second)
	s.waitQueueEmpty(30 * time.Second)

	lost, dup, phantom := s.oracle(t, "crash ", total)
	if lost != 0 || phantom != 0 || dup > concurrency {
		t.Errorf("lost %d, phantom %d, duplicates %d; want 0, 0, at most %d (in flight at the crash)", lost, phantom, dup, concurrency)
	}
	for i, id := range ids {
		st := s.waitFinal(id, 10*time.Second)
		if got := stateOf(t, st, 0); got != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
			t.Fatalf("message %d (%s) state %v, want DELIVERED", i, id, got)
		}
	}
	t.Logf("crash after %d deliveries; %d duplicates", crashedAt, dup)
}

// oracle counts, over the sink's receipts, messages whose subject is prefix
// followed by 0..total-1: lost (no receipt), duplicates (receipts beyond the
// first) and phantoms (receipts of anything else), TESTPLAN's acceptance
// oracle.
func (s *stack) oracle(t *testing.T, prefix string, total int) (lost, dup, phantom int) {
	t.Helper()
	receipts := map[string]int{}
	for _, m := range s.sink.Messages() {
		mr, err := mail.CreateReader(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatalf("sink holds an unparseable message: %v", err)
		}
		subj, _ := mr.Header.Subject()
		receipts[subj]++
	}
	for i := range total {
		key := prefix + strconv.Itoa(i)
		switch n := receipts[key]; {
		case n == 0:
			lost++
		case n > 1:
			dup += n - 1
		}
		delete(receipts, key)
	}
	for _, n := range receipts {
		phantom += n
	}
	return lost, dup, phantom
}

func TestRetryHintIsHonoured(t *testing.T) {
	s := startStack(t, testenv.SinkScript{Rcpt: func(addr string, n int) *smtp.SMTPError {
		if n == 0 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "Greylisted, please try again in 2 seconds"}
		}
		return nil
	}}, func(c *serveConfig) { c.RetryMax = 10 * time.Second }) // hints are capped at the retry max
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"grey@example.test"}, Subject: "s", Text: "t"})
	st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
	r := st.GetRecipients()[0]
	if r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
		t.Fatalf("state %v, want DELIVERED", r.GetState())
	}
	var deferredAt, next, deliveredAt time.Time
	for _, ev := range r.GetEvents() {
		switch ev.GetState() {
		case postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED:
			deferredAt, next = ev.GetTime().AsTime(), ev.GetNextAttemptAt().AsTime()
		case postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED:
			deliveredAt = ev.GetTime().AsTime()
		}
	}
	// The schedule's own first delay is 50 ms; the server asked for 2 s.
	if got := next.Sub(deferredAt); got != 2*time.Second {
		t.Errorf("next attempt scheduled %v after the deferral, want the server's 2s", got)
	}
	if got := deliveredAt.Sub(deferredAt); got < 2*time.Second {
		t.Errorf("retried %v after the deferral, before the 2s the server asked for", got)
	}
}

// TestDKIMSignedOnTheWayOut: with --dkim-keys, mail from a keyed domain
// reaches the receiver with a signature that go-msgauth verifies, and mail
// from other domains is sent unsigned.
func TestDKIMSignedOnTheWayOut(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "s1._domainkey.sender.test.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startStack(t, testenv.SinkScript{}, func(c *serveConfig) { c.DKIMKeys = dir })
	signed := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"a@example.test"}, Subject: "signed", Text: "t",
		Headers: []*postflowv1.Header{{Name: "List-Unsubscribe", Value: "<mailto:u@sender.test>"}}})
	unsigned := s.send(&postflowv1.SendRequest{From: "me@other.test", To: []string{"b@example.test"}, Subject: "unsigned", Text: "t"})
	s.waitFinal(signed.GetMessageId(), 30*time.Second)
	s.waitFinal(unsigned.GetMessageId(), 30*time.Second)

	txt := "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	for _, m := range s.sink.Messages() {
		verifications, err := msgdkim.VerifyWithOptions(bytes.NewReader(m.Data), &msgdkim.VerifyOptions{
			LookupTXT: func(domain string) ([]string, error) {
				if domain == "s1._domainkey.sender.test" {
					return []string{txt}, nil
				}
				return nil, fmt.Errorf("no TXT for %s", domain)
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		switch m.To[0] {
		case "a@example.test":
			if len(verifications) != 1 || verifications[0].Err != nil || verifications[0].Domain != "sender.test" {
				t.Errorf("signed message: verifications %+v, want one valid signature for sender.test", verifications)
			} else if !slices.ContainsFunc(verifications[0].HeaderKeys, func(k string) bool { return strings.EqualFold(k, "List-Unsubscribe") }) {
				t.Errorf("signed headers %v lack List-Unsubscribe", verifications[0].HeaderKeys)
			}
		case "b@example.test":
			if len(verifications) != 0 {
				t.Errorf("message from an unkeyed domain carries %d signatures", len(verifications))
			}
		}
	}
}

// TestClassifierOverridesReplyClass: 552 "too many recipients" is a 5xx the
// classifier treats as temporary (RFC 5321 §4.5.3.1.10), so the recipient is
// retried rather than bounced.
func TestClassifierOverridesReplyClass(t *testing.T) {
	s := startStack(t, testenv.SinkScript{Rcpt: func(addr string, n int) *smtp.SMTPError {
		if n == 0 {
			return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 5, 3}, Message: "Too many recipients"}
		}
		return nil
	}})
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"many@example.test"}, Subject: "s", Text: "t"})
	st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
	r := st.GetRecipients()[0]
	if r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED || r.GetAttempts() != 2 {
		t.Fatalf("state %v after %d attempts, want DELIVERED after 2 (552 too many recipients retried)", r.GetState(), r.GetAttempts())
	}
	if ev := r.GetEvents()[1]; ev.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED || ev.GetCategory() != "throttled" {
		t.Errorf("first attempt event = %v / %q, want DEFERRED / throttled", ev.GetState(), ev.GetCategory())
	}
}

// TestDNSOutcomeTable is the worker-level part of TESTPLAN B5: each DNS
// situation ends in the documented state, and the permanent ones never
// connect anywhere.
func TestDNSOutcomeTable(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	s.dns.Update(zone + `
nullmx.test.          60 IN MX 0 .
noaddr.test.          60 IN MX 10 mx.noaddr.test.
mx.noaddr.test.       60 IN TXT "no address here"
cname.test.           60 IN MX 10 alias.cname.test.
alias.cname.test.     60 IN CNAME mx.example.test.
implicit.test.        60 IN A 127.0.0.1
broken.test.          60 IN MX 10 mx.example.test.
`)
	s.dns.SetRcode("broken.test.", dns.RcodeServerFailure)
	tests := []struct {
		domain   string
		state    postflowv1.RecipientState
		enhanced string
		connects bool
	}{
		{"nullmx.test", postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED, "5.1.10", false},
		{"nowhere.test", postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED, "5.1.2", false},
		{"noaddr.test", postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED, "5.4.4", false},
		{"cname.test", postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED, "", true},
		{"implicit.test", postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED, "", true},
		{"broken.test", postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED, "4.4.3", false},
	}
	for _, tc := range tests {
		t.Run(tc.domain, func(t *testing.T) {
			before := s.sink.RcptAttempts("x@" + tc.domain)
			resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"x@" + tc.domain}, Subject: "s", Text: "t"})
			// Polled here, not with s.waitState, whose failure would call
			// FailNow on the parent test from this subtest.
			var r *postflowv1.RecipientStatus
			if !eventually(20*time.Second, func() bool {
				st, err := s.status.GetMessage(context.Background(), &postflowv1.GetMessageRequest{MessageId: resp.GetMessageId()})
				if err == nil && st.GetRecipients()[0].GetState() == tc.state {
					r = st.GetRecipients()[0]
				}
				return r != nil
			}) {
				t.Fatalf("%s: never reached %v", tc.domain, tc.state)
			}
			if tc.enhanced != "" && r.GetLastReply().GetEnhancedCode() != tc.enhanced {
				t.Errorf("%s: reply %v, want enhanced code %s", tc.domain, r.GetLastReply(), tc.enhanced)
			}
			if connected := s.sink.RcptAttempts("x@"+tc.domain) > before; connected != tc.connects {
				t.Errorf("%s: reached the SMTP server = %v, want %v", tc.domain, connected, tc.connects)
			}
		})
	}
}

// TestStalledServerDefersAtTheCommandTimeout is TESTPLAN B6 at RCPT: a
// receiver that never answers costs one command timeout, and the recipient
// is deferred, never bounced.
func TestStalledServerDefersAtTheCommandTimeout(t *testing.T) {
	release := make(chan struct{})
	const timeout = 300 * time.Millisecond
	s := startStack(t, testenv.SinkScript{Rcpt: func(addr string, n int) *smtp.SMTPError {
		if n == 0 {
			<-release // stall the first attempt until the test ends
		}
		return nil
	}}, func(c *serveConfig) {
		c.SMTPTimeouts.Command = timeout
		c.RetryMin, c.RetryMax = 100*time.Millisecond, 100*time.Millisecond
	})
	t.Cleanup(func() { close(release) }) // runs before the sink's cleanup
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"stall@example.test"}, Subject: "s", Text: "t"})
	st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
	r := st.GetRecipients()[0]
	if r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED || r.GetAttempts() != 2 {
		t.Fatalf("state %v after %d attempts, want DELIVERED on the second", r.GetState(), r.GetAttempts())
	}
	queued, deferred := r.GetEvents()[0], r.GetEvents()[1]
	if deferred.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED || deferred.GetReply().GetRemote() {
		t.Fatalf("first attempt = %v (remote %v), want a local deferral", deferred.GetState(), deferred.GetReply().GetRemote())
	}
	// The stall cost the configured command timeout, not the 5-minute
	// default; the upper bound leaves room for a loaded CI machine.
	if took := deferred.GetTime().AsTime().Sub(queued.GetTime().AsTime()); took < timeout || took > timeout+3*time.Second {
		t.Errorf("stalled attempt took %v, want about one command timeout (%v)", took, timeout)
	}
}
