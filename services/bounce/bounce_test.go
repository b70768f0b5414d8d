package bounce_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/suppression"
	"github.com/postflow/postflow/pkg/testenv"
	"github.com/postflow/postflow/pkg/unsubscribe"
	"github.com/postflow/postflow/pkg/verp"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
	"github.com/postflow/postflow/services/bounce"
)

const (
	bounceDomain = "bounces.postflow.test"
	tenant       = "acme"
)

type env struct {
	unsub  *unsubscribe.Signer
	addr   string
	js     jetstream.JetStream
	signer *verp.Signer
	store  *suppression.Store
	writer *eventlog.Writer
	reader *eventlog.Reader
}

// start runs the bounce role (record consumer and report listener) on a
// fresh embedded NATS.
func start(t *testing.T) *env {
	t.Helper()
	srv := testenv.StartJetStream(t)
	js, err := jetstream.New(srv.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := queue.Ensure(ctx, js, queue.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	store, err := suppression.Open(ctx, js, suppression.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := verp.New([]byte("a test secret of enough length"), bounceDomain)
	if err != nil {
		t.Fatal(err)
	}
	unsub, err := unsubscribe.NewSigner([]byte("another test secret, long enough"))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- bounce.Run(ctx, bounce.Config{Hostname: "mx." + bounceDomain, ShutdownTimeout: time.Second},
			bounce.Deps{JS: js, Suppression: store, VERP: signer, Listener: lis, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				UnsubscribeSigner: unsub, Unsubscriber: bounce.NewUnsubscriber(js, store, slog.New(slog.NewTextHandler(io.Discard, nil)))})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("bounce.Run: %v", err)
		}
	})
	return &env{unsub: unsub, addr: lis.Addr().String(), js: js, signer: signer, store: store,
		writer: eventlog.NewWriter(queue.NewPublisher(js)), reader: eventlog.NewReader(js)}
}

// sent records that message id was sent to addr (recipient 0) and
// delivered, as Send and a worker would have.
func (e *env) sent(t *testing.T, id, addr string) {
	t.Helper()
	rid := eventlog.RecipientID(id, 0)
	ev := func(st postflowv1.RecipientState, attempt int32) *postflowv1.Event {
		return &postflowv1.Event{EventId: eventlog.EventID(rid, attempt, st), Tenant: tenant, MessageId: id, RecipientId: rid,
			Recipient: addr, State: st, Attempt: attempt, Time: timestamppb.Now()}
	}
	if err := e.writer.Write(t.Context(), ev(postflowv1.RecipientState_RECIPIENT_STATE_QUEUED, 0), ev(postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED, 1)); err != nil {
		t.Fatal(err)
	}
}

// deliver runs one SMTP transaction to the listener and returns the error
// of the first step that failed.
func (e *env) deliver(t *testing.T, from string, rcpts []string, msg string) error {
	t.Helper()
	c, err := smtp.Dial(e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if err := c.Hello("mta.example.com"); err != nil {
		return err
	}
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, strings.ReplaceAll(msg, "\n", "\r\n")); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// rawRcpt sends RCPT TO with arg verbatim, so that forms a client library
// would refuse to write (source routes, quoted local parts) reach the
// listener, and returns the reply code.
func rawRcpt(t *testing.T, addr, arg string) int {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	read := func() string {
		var got string
		for !strings.Contains(got, "\r\n") || got[3] == '-' && !lastLineDone(got) {
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("read: %v (got %q)", err, got)
			}
			got += string(buf[:n])
		}
		return got
	}
	read() // banner
	for _, cmd := range []string{"EHLO relay.test", "MAIL FROM:<>"} {
		fmt.Fprintf(conn, "%s\r\n", cmd)
		if r := read(); !strings.HasPrefix(r, "250") {
			t.Fatalf("%s: %q", cmd, r)
		}
	}
	fmt.Fprintf(conn, "RCPT TO:%s\r\n", arg)
	r := read()
	code, err := strconv.Atoi(r[:3])
	if err != nil {
		t.Fatalf("reply %q", r)
	}
	return code
}

func lastLineDone(s string) bool {
	lines := strings.Split(strings.TrimSuffix(s, "\r\n"), "\r\n")
	last := lines[len(lines)-1]
	return strings.HasSuffix(s, "\r\n") && len(last) >= 4 && last[3] == ' '
}

// TestNoRelay is TESTPLAN D5: the listener takes mail only for return
// paths on the bounce domain; every relay vector is refused with 5xx.
func TestNoRelay(t *testing.T) {
	e := start(t)
	good := e.signer.ReturnPath("abcdefghijklmnopqrstuvwx", 0)
	local := good[:strings.IndexByte(good, '@')]
	vectors := []string{
		"<victim@example.com>",                       // unknown domain
		"<victim%example.com@" + bounceDomain + ">",  // percent hack
		"<example.com!victim@" + bounceDomain + ">",  // bang path
		"<@" + bounceDomain + ":victim@example.com>", // source route to a foreign mailbox
		"<@relay.test,@" + bounceDomain + ":victim@example.com>",
		"<\"victim@example.com\"@" + bounceDomain + ">", // quoted local part holding '@'
		"<\"" + local + "\"@example.com>",               // a valid token at another domain
		"<victim@[127.0.0.1]>",                          // address literal
		"<" + local + "@[127.0.0.1]>",
		"<postmaster@" + bounceDomain + ">", // no such local part
		"<" + local + "@sub." + bounceDomain + ">",
		"<" + local[:len(local)-1] + "x@" + bounceDomain + ">", // forged mac
		"<victim@example.com@" + bounceDomain + ">",
	}
	for _, v := range vectors {
		if code := rawRcpt(t, e.addr, v); code < 500 || code > 599 {
			t.Errorf("RCPT TO:%s answered %d, want 5xx", v, code)
		}
	}
	if code := rawRcpt(t, e.addr, "<"+good+">"); code != 250 {
		t.Errorf("RCPT TO a valid return path answered %d, want 250", code)
	}
	if code := rawRcpt(t, e.addr, "<"+strings.ToUpper(good)+">"); code != 250 {
		t.Errorf("RCPT TO a valid return path in upper case answered %d, want 250", code)
	}
	t.Logf("%d relay vectors refused", len(vectors))
}

const postfixDSN = `From: MAILER-DAEMON@mx.example.com (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {{RP}}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B1"
Message-Id: <20261126.ABC123@mx.example.com>

--B1
Content-Type: text/plain

This is the mail system at host mx.example.com.
I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{{RCPT}}>: unknown user: "nosuch"

--B1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com
Arrival-Date: Thu, 26 Nov 2026 10:00:00 +0000

Final-Recipient: rfc822; {{RCPT}}
Original-Recipient: rfc822;{{RCPT}}
Action: failed
Status: {{STATUS}}
Diagnostic-Code: X-Postfix; {{DIAG}}

--B1
Content-Type: text/rfc822-headers

Return-Path: <{{RP}}>
From: me@sender.test
To: {{RCPT}}
Subject: hello

--B1--
`

func fill(tpl string, kv ...string) string {
	return strings.NewReplacer(kv...).Replace(tpl)
}

// waitRecordsHandled waits until the bounce consumer has acked every
// BOUNCES record: then a missing suppression entry is a decision, not lag.
func waitRecordsHandled(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ok := testenv.Eventually(10*time.Second, func() bool {
		c, err := js.Consumer(t.Context(), queue.BouncesStream, queue.BounceConsumer)
		if err != nil {
			return false
		}
		info, err := c.Info(t.Context())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	if !ok {
		t.Fatal("bounce records not all handled within 10s")
	}
}

func bounceRecords(t *testing.T, js jetstream.JetStream) []*postflowv1.Event {
	t.Helper()
	st, err := js.Stream(t.Context(), queue.BouncesStream)
	if err != nil {
		t.Fatal(err)
	}
	var out []*postflowv1.Event
	for seq := uint64(1); ; {
		raw, err := st.GetMsg(t.Context(), seq, jetstream.WithGetMsgSubject(queue.BounceSubject(tenant)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		ev := &postflowv1.Event{}
		if err := proto.Unmarshal(raw.Data, ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
		seq = raw.Sequence + 1
	}
}

// TestAsyncBounce: a DSN to a return path becomes a DSN event that makes
// the delivered recipient bounced, one BOUNCES record, and a suppression
// entry for a hard category; the same DSN again changes nothing.
func TestAsyncBounce(t *testing.T) {
	e := start(t)
	const id, rcpt = "asyncbounceasyncbounceaa", "nosuch@example.com"
	e.sent(t, id, rcpt)
	rp := e.signer.ReturnPath(id, 0)
	msg := fill(postfixDSN, "{{RP}}", rp, "{{RCPT}}", rcpt, "{{STATUS}}", "5.1.1", "{{DIAG}}", `550 5.1.1 <nosuch@example.com>: Recipient address rejected: User unknown`)
	for range 2 {
		if err := e.deliver(t, "", []string{rp}, msg); err != nil {
			t.Fatalf("delivering the DSN: %v", err)
		}
	}
	waitRecordsHandled(t, e.js)

	evs, err := e.reader.Message(t.Context(), tenant, id)
	if err != nil {
		t.Fatal(err)
	}
	st := eventlog.Summarize(evs)[0]
	if st.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED || len(st.GetEvents()) != 3 {
		t.Fatalf("state %v with %d events, want BOUNCED with 3 (queued, delivered, dsn)", st.GetState(), len(st.GetEvents()))
	}
	dsnEv := st.GetEvents()[2]
	if dsnEv.GetType() != postflowv1.EventType_EVENT_TYPE_DSN || dsnEv.GetReply().GetCode() != 550 || dsnEv.GetReply().GetEnhancedCode() != "5.1.1" ||
		dsnEv.GetCategory() != "bad_mailbox" || dsnEv.GetReportingMta() != "mx.example.com" || dsnEv.GetAttempt() != 1 {
		t.Errorf("dsn event = %v", dsnEv)
	}
	if recs := bounceRecords(t, e.js); len(recs) != 1 || recs[0].GetEventId() != dsnEv.GetEventId() {
		t.Errorf("BOUNCES holds %d records, want the one DSN", len(recs))
	}
	sup, err := e.store.Get(t.Context(), tenant, rcpt)
	if err != nil || sup == nil || sup.GetReason() != postflowv1.SuppressionReason_SUPPRESSION_REASON_BOUNCE || sup.GetMessageId() != id {
		t.Fatalf("suppression = %v, %v; want a bounce entry naming %s", sup, err, id)
	}
}

// TestSoftBounceNotSuppressed: a full mailbox bounces the recipient but
// does not suppress the address.
func TestSoftBounceNotSuppressed(t *testing.T) {
	e := start(t)
	const id, rcpt = "softbouncesoftbouncesoft", "full@example.com"
	e.sent(t, id, rcpt)
	rp := e.signer.ReturnPath(id, 0)
	msg := fill(postfixDSN, "{{RP}}", rp, "{{RCPT}}", rcpt, "{{STATUS}}", "5.2.2", "{{DIAG}}", `552 5.2.2 <full@example.com>: mailbox full`)
	if err := e.deliver(t, "", []string{rp}, msg); err != nil {
		t.Fatal(err)
	}
	waitRecordsHandled(t, e.js)
	if recs := bounceRecords(t, e.js); len(recs) != 1 || recs[0].GetCategory() != "mailbox_full" {
		t.Fatalf("BOUNCES = %v, want one mailbox_full record", recs)
	}
	if sup, err := e.store.Get(t.Context(), tenant, rcpt); err != nil || sup != nil {
		t.Fatalf("suppression = %v, %v; want none for a full mailbox", sup, err)
	}
}

const arfReport = `From: staff@hotmail.com
To: fbl@` + bounceDomain + `
Subject: complaint about message from 192.0.2.10
MIME-Version: 1.0
Message-ID: <arf-1@feedback.example.net>
Content-Type: multipart/report; report-type=feedback-report; boundary="F1"

--F1
Content-Type: text/plain

This is an email abuse report for an email message received from IP 192.0.2.10.

--F1
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <{{RP}}>
Original-Rcpt-To: <{{RCPT}}>
Source-IP: 192.0.2.10
Arrival-Date: Thu, 26 Nov 2026 10:00:00 +0000

--F1
Content-Type: message/rfc822

Return-Path: <{{RP}}>
From: me@sender.test
To: {{RCPT}}
Subject: offer
Message-ID: <orig@sender.test>

body
--F1--
`

// TestComplaint: an ARF report to the feedback address is correlated
// through the return path it carries, recorded as a complaint event (the
// state stays delivered) and puts the address on the list.
func TestComplaint(t *testing.T) {
	e := start(t)
	const id, rcpt = "complaintcomplaintcompla", "angry@example.com"
	e.sent(t, id, rcpt)
	rp := e.signer.ReturnPath(id, 0)
	if err := e.deliver(t, "", []string{"fbl@" + bounceDomain}, fill(arfReport, "{{RP}}", rp, "{{RCPT}}", rcpt)); err != nil {
		t.Fatal(err)
	}
	waitRecordsHandled(t, e.js)
	evs, err := e.reader.Message(t.Context(), tenant, id)
	if err != nil {
		t.Fatal(err)
	}
	st := eventlog.Summarize(evs)[0]
	last := st.GetEvents()[len(st.GetEvents())-1]
	if st.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED || last.GetType() != postflowv1.EventType_EVENT_TYPE_COMPLAINT || last.GetFeedbackType() != "abuse" {
		t.Fatalf("state %v, last event %v; want DELIVERED and an abuse complaint", st.GetState(), last)
	}
	sup, err := e.store.Get(t.Context(), tenant, rcpt)
	if err != nil || sup.GetReason() != postflowv1.SuppressionReason_SUPPRESSION_REASON_COMPLAINT {
		t.Fatalf("suppression = %v, %v; want a complaint entry", sup, err)
	}
}

// TestUncorrelatedReportDropped: a report naming none of our messages is
// accepted (refusing it would bounce a bounce) and records nothing.
func TestUncorrelatedReportDropped(t *testing.T) {
	e := start(t)
	msg := fill(arfReport, "{{RP}}", "someone@else.example", "{{RCPT}}", "x@example.com")
	if err := e.deliver(t, "", []string{"fbl@" + bounceDomain}, msg); err != nil {
		t.Fatal(err)
	}
	// A return path that verifies but names a message never sent.
	rp := e.signer.ReturnPath("neversentneversentneverx", 0)
	if err := e.deliver(t, "", []string{rp}, fill(postfixDSN, "{{RP}}", rp, "{{RCPT}}", "x@example.com", "{{STATUS}}", "5.1.1", "{{DIAG}}", "550 5.1.1 unknown")); err != nil {
		t.Fatal(err)
	}
	if recs := bounceRecords(t, e.js); len(recs) != 0 {
		t.Fatalf("BOUNCES holds %d records, want none", len(recs))
	}
}

// TestUnsubscribeByMail: mail to the List-Unsubscribe mailto address
// (u+TOKEN@ the bounce domain) unsubscribes the recipient it names, and a
// forged token is refused at RCPT.
func TestUnsubscribeByMail(t *testing.T) {
	e := start(t)
	const id, rcpt = "unsubbymailunsubbymailun", "bye@example.com"
	e.sent(t, id, rcpt)
	to := unsubscribe.MailtoPrefix + e.unsub.MailtoToken(id, 0) + "@" + bounceDomain
	if err := e.deliver(t, "bye@example.com", []string{to}, "Subject: unsubscribe\n\nplease\n"); err != nil {
		t.Fatal(err)
	}
	sup, err := e.store.Get(t.Context(), tenant, rcpt)
	if err != nil || sup.GetReason() != postflowv1.SuppressionReason_SUPPRESSION_REASON_UNSUBSCRIBE || sup.GetMessageId() != id {
		t.Fatalf("suppression = %v, %v; want an unsubscribe naming %s", sup, err, id)
	}
	evs, err := e.reader.Message(t.Context(), tenant, id)
	if err != nil {
		t.Fatal(err)
	}
	last := evs[len(evs)-1]
	if last.GetType() != postflowv1.EventType_EVENT_TYPE_UNSUBSCRIBE || eventlog.Summarize(evs)[0].GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
		t.Errorf("last event %v; want an unsubscribe that leaves the state delivered", last)
	}
	forged := unsubscribe.MailtoPrefix + e.unsub.MailtoToken(id, 1)[:10] + "@" + bounceDomain
	if code := rawRcpt(t, e.addr, "<"+forged+">"); code != 550 {
		t.Errorf("RCPT to a forged unsubscribe address answered %d, want 550", code)
	}
}
