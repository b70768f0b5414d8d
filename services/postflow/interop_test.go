package main

import (
	"bufio"
	"bytes"
	"context"
	"net/mail"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/testenv"
	queuev1 "github.com/postflow/postflow/proto/postflow/queue/v1"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// The interop tests deliver through the whole Postflow stack to real
// receiving MTAs on loopback, Postfix (Debian's package) and Haraka (npm),
// which testenv installs on first use. Each MTA is the MX of the test
// domains through the in-process DNS; cfg.SMTPPort points the worker at it.

// interopReceiver is what testenv.StartPostfix and testenv.StartHaraka
// return.
type interopReceiver interface {
	Addr() netip.AddrPort
	Messages() [][]byte
	Log() string
}

// interopMTA is what the interop subtests need to know about one MTA.
type interopMTA struct {
	start func(t *testing.T, opts testenv.ReceiverOptions) interopReceiver
	// rejectText is part of the MTA's own reply to an unknown user.
	rejectText string
	// command matches a log line recording that the MTA received the SMTP
	// command that starts with the given (quoted) prefix.
	command func(prefix string) *regexp.Regexp
	// offeredPipelining matches a log line showing PIPELINING in the EHLO
	// reply; pipelinedInput one showing a command group that arrived
	// pipelined (or, unannounced, as an improper one).
	offeredPipelining, pipelinedInput *regexp.Regexp
}

var postfixMTA = interopMTA{
	start:      func(t *testing.T, opts testenv.ReceiverOptions) interopReceiver { return testenv.StartPostfix(t, opts) },
	rejectText: "Recipient address rejected: User unknown in virtual mailbox table",
	command: func(prefix string) *regexp.Regexp {
		return regexp.MustCompile(`(?mi)\]: < \S+: ` + prefix)
	},
	offeredPipelining: regexp.MustCompile(`(?mi)\]: > \S+: 250[- ]PIPELINING\s*$`),
	pipelinedInput:    regexp.MustCompile(`(?i)improper command pipelining`),
}

var harakaMTA = interopMTA{
	start:      func(t *testing.T, opts testenv.ReceiverOptions) interopReceiver { return testenv.StartHaraka(t, opts) },
	rejectText: "No such user",
	command: func(prefix string) *regexp.Regexp {
		return regexp.MustCompile(`(?mi)\] C: ` + prefix)
	},
	offeredPipelining: regexp.MustCompile(`(?mi)\] S: 250[- ]PIPELINING\s*$`),
	// Haraka logs "pipeline:" only for a command that arrives while it is
	// still busy with the one before, so this catches some pipelining, not
	// all of it.
	pipelinedInput: regexp.MustCompile(`\] pipeline: |\[early_talker\]`),
}

func TestInteropPostfix(t *testing.T) { runInterop(t, postfixMTA) }

func TestInteropHaraka(t *testing.T) { runInterop(t, harakaMTA) }

const (
	// tlsRequiredDomain is served by the same MX as example.test, under a
	// `tls: require` route.
	tlsRequiredDomain = "tlsreq.test"
	interopZone       = zone + `
tlsreq.test.      60 IN MX 10 mx.tlsreq.test.
mx.tlsreq.test.   60 IN A  127.0.0.1
`
	// interopSizeLimit is the receivers' message size limit.
	interopSizeLimit = 20000
	// interopCase is the header that tells the subtests' messages apart.
	interopCase = "X-Interop-Case"
)

// interopRaw is a raw submission with the edges of a body: a line that is a
// lone dot, one that starts with a dot, 8-bit UTF-8, a blank line, trailing
// white space and a long (but legal) line.
var interopRaw = "From: Me <me@sender.test>\r\nTo: raw@example.test\r\nSubject: interop raw\r\n" +
	"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <interop-raw@sender.test>\r\n" +
	"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n" +
	interopCase + ": raw\r\n\r\n" +
	"Hello,\r\n.\r\n..two dots\r\n.leading dot\r\n\r\nÜmlaut, naïve, 日本語\r\ntrailing space \r\n\ttab first\r\n" +
	strings.Repeat("long ", 180) + "end\r\n-- \r\nMe\r\n"

// runInterop starts mta with STARTTLS (a self-signed certificate), an
// unknown user and a size limit, and a Postflow that delivers to it, and
// runs the interop subtests against that one instance; no-pipelining gets an
// instance of its own.
func runInterop(t *testing.T, mta interopMTA) {
	certFile, keyFile := testenv.WriteKeyPair(t, testenv.SelfSigned(t, "localhost"))
	r := mta.start(t, testenv.ReceiverOptions{
		Domains:          []string{"example.test", tlsRequiredDomain},
		RejectRecipients: []string{"nobody@example.test"},
		CertFile:         certFile, KeyFile: keyFile,
		MessageSizeLimit: interopSizeLimit,
	})
	routes := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(routes, []byte("rules:\n  - match: ["+tlsRequiredDomain+"]\n    tls: require\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The API alone first, so that what it queued can be read from OUTBOUND
	// before a worker takes it.
	s := startStack(t, testenv.SinkScript{}, func(c *serveConfig) {
		c.Roles = []string{"api"}
		c.SMTPPort = int(r.Addr().Port())
		c.RoutesFile = routes
	})
	s.dns.Update(interopZone)
	rawID := interopSend(t, s, &postflowv1.SendRequest{From: "me@sender.test", To: []string{"raw@example.test"}, Raw: []byte(interopRaw)})
	structuredID := interopSend(t, s, &postflowv1.SendRequest{
		From: "Sender Name <me@sender.test>", To: []string{"structured@example.test"}, Subject: "Grüße aus Köln",
		Text: "Hello,\n.\nsecond line\n\nÜmlaut\n", Html: "<p>Hello, <b>world</b></p>",
		Headers: []*postflowv1.Header{{Name: interopCase, Value: "structured"}},
	})
	queued := interopQueued(t, s)
	workerCfg := s.cfg
	workerCfg.Roles = []string{"worker"}
	s.startApp(workerCfg)

	t.Run("accepted mail arrives byte-identical", func(t *testing.T) {
		if got := string(queued[rawID]); got != interopRaw {
			t.Errorf("OUTBOUND holds the raw submission as\n%q\nwant it unchanged:\n%q", got, interopRaw)
		}
		for _, tc := range []struct{ id, name string }{{rawID, "raw"}, {structuredID, "structured"}} {
			st := interopWait(t, s, tc.id, 30*time.Second, interopAllFinal)
			if st[0].GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
				t.Errorf("%s message: state %v (%v), want DELIVERED", tc.name, st[0].GetState(), st[0].GetLastReply())
				continue
			}
			got := interopWaitDelivered(t, r, tc.name, 1)
			if !bytes.Equal(got[0], queued[tc.id]) {
				t.Errorf("%s message at the receiver, trace headers removed:\n%q\nwant what Postflow queued:\n%q", tc.name, got[0], queued[tc.id])
			}
		}
	})

	t.Run("rejected recipient bounces with the receiver's reply", func(t *testing.T) {
		id := interopSend(t, s, &postflowv1.SendRequest{From: "me@sender.test", To: []string{"nobody@example.test", "somebody@example.test"},
			Subject: "one unknown", Text: "t", Headers: []*postflowv1.Header{{Name: interopCase, Value: "reject"}}})
		st := interopWait(t, s, id, 30*time.Second, interopAllFinal)
		nobody, somebody := st[0], st[1]
		rep := nobody.GetLastReply()
		t.Logf("bounce reply: %v", rep)
		if nobody.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED || rep.GetCode() != 550 || rep.GetEnhancedCode() != "5.1.1" ||
			!strings.Contains(rep.GetText(), mta.rejectText) || !rep.GetRemote() {
			t.Errorf("nobody@: state %v, reply %v; want BOUNCED with the receiver's 550 5.1.1 %q", nobody.GetState(), rep, mta.rejectText)
		}
		if evs := nobody.GetEvents(); len(evs) == 0 {
			t.Errorf("nobody@: no events")
		} else if last := evs[len(evs)-1]; last.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED || !proto.Equal(last.GetReply(), rep) {
			t.Errorf("nobody@: last event %v, want the bounce with reply %v", last, rep)
		}
		if somebody.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
			t.Errorf("somebody@: state %v (%v), want DELIVERED", somebody.GetState(), somebody.GetLastReply())
		}
		got := interopWaitDelivered(t, r, "reject", 1)
		if len(got) != 1 {
			t.Errorf("receiver stored %d copies, want 1 (for somebody@ only)", len(got))
		}
	})

	t.Run("STARTTLS with a self-signed certificate delivers", func(t *testing.T) {
		id := interopSend(t, s, &postflowv1.SendRequest{From: "me@sender.test", To: []string{"tls@example.test"},
			Subject: "over TLS", Text: "t", Headers: []*postflowv1.Header{{Name: interopCase, Value: "tls"}}})
		st := interopWait(t, s, id, 30*time.Second, interopAllFinal)
		rs := st[0]
		if rs.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
			t.Fatalf("state %v (%v), want DELIVERED", rs.GetState(), rs.GetLastReply())
		}
		evs := rs.GetEvents()
		for where, info := range map[string]*postflowv1.TLSInfo{"status": rs.GetTls(), "delivered event": evs[len(evs)-1].GetTls()} {
			if !strings.HasPrefix(info.GetVersion(), "TLS") || info.GetCipher() == "" || info.GetVerified() {
				t.Errorf("%s TLS = %v, want a version, a cipher and verified=false", where, info)
			}
		}
		interopWaitDelivered(t, r, "tls", 1)
	})

	t.Run("require TLS policy never delivers to an unverified certificate", func(t *testing.T) {
		id := interopSend(t, s, &postflowv1.SendRequest{From: "me@sender.test", To: []string{"x@" + tlsRequiredDomain},
			Subject: "require", Text: "t", Headers: []*postflowv1.Header{{Name: interopCase, Value: "require"}}})
		st := interopWait(t, s, id, 30*time.Second, func(rs []*postflowv1.RecipientStatus) bool {
			return eventlog.Final(rs[0].GetState()) || rs[0].GetState() == postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED && rs[0].GetAttempts() >= 2
		})
		rs := st[0]
		t.Logf("%v after %d attempts: %v", rs.GetState(), rs.GetAttempts(), rs.GetLastReply())
		if rs.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED || !strings.HasPrefix(rs.GetLastReply().GetEnhancedCode(), "4.7.") {
			t.Errorf("state %v after %d attempts, reply %v; want DEFERRED with 4.7.x", rs.GetState(), rs.GetAttempts(), rs.GetLastReply())
		}
		if n := len(interopDelivered(t, r, "require")); n != 0 {
			t.Errorf("receiver stored %d copies, want 0", n)
		}
	})

	t.Run("receiver size limit bounces 5.3.4 without DATA", func(t *testing.T) {
		dataCmd, mailCmd := mta.command(`(DATA|BDAT)\b`), mta.command(`MAIL FROM:<big-sender@sender\.test>`)
		dataBefore := len(dataCmd.FindAllString(r.Log(), -1))
		if dataBefore == 0 || !mta.command(`MAIL FROM:<me@sender\.test>`).MatchString(r.Log()) {
			t.Fatalf("the receiver's log shows no MAIL or DATA of the messages delivered so far; the checks below would prove nothing")
		}
		id := interopSend(t, s, &postflowv1.SendRequest{From: "big-sender@sender.test", To: []string{"big@example.test"},
			Subject: "too big", Text: strings.Repeat(strings.Repeat("x", 74)+"\n", interopSizeLimit/75+50),
			Headers: []*postflowv1.Header{{Name: interopCase, Value: "big"}}})
		st := interopWait(t, s, id, 30*time.Second, interopAllFinal)
		rs := st[0]
		if rs.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED || rs.GetLastReply().GetEnhancedCode() != "5.3.4" {
			t.Errorf("state %v, reply %v; want BOUNCED with 5.3.4", rs.GetState(), rs.GetLastReply())
		}
		t.Logf("bounce reply: %v", rs.GetLastReply())
		// A message after it, once in the log, shows that the log holds
		// everything the receiver got for the oversized one: Postfix logs
		// through postlogd, asynchronously.
		after := interopSend(t, s, &postflowv1.SendRequest{From: "after-big@sender.test", To: []string{"after-big@example.test"},
			Subject: "after too big", Text: "t", Headers: []*postflowv1.Header{{Name: interopCase, Value: "after-big"}}})
		interopWait(t, s, after, 30*time.Second, interopAllFinal)
		interopWaitDelivered(t, r, "after-big", 1)
		var log string
		if !eventually(10*time.Second, func() bool {
			log = r.Log()
			return mta.command(`MAIL FROM:<after-big@sender\.test>`).MatchString(log)
		}) {
			t.Fatalf("the receiver's log never showed the MAIL FROM of the message sent after the oversized one")
		}
		if mailCmd.MatchString(log) {
			t.Errorf("the receiver got MAIL FROM for the oversized message; want the SIZE limit honoured before MAIL")
		}
		if n := len(dataCmd.FindAllString(log, -1)) - dataBefore; n != 1 {
			t.Errorf("the receiver got %d DATA/BDAT commands for the oversized message and the one after it, want 1 (the one after)", n)
		}
		if n := len(interopDelivered(t, r, "big")); n != 0 {
			t.Errorf("receiver stored %d copies, want 0", n)
		}
	})

	t.Run("delivery works when the receiver does not offer PIPELINING", func(t *testing.T) {
		np := mta.start(t, testenv.ReceiverOptions{Domains: []string{"example.test"}, NoPipelining: true})
		s := startStack(t, testenv.SinkScript{}, func(c *serveConfig) { c.SMTPPort = int(np.Addr().Port()) })
		raw := strings.Replace(interopRaw, interopCase+": raw", interopCase+": nopipe-raw", 1)
		ids := []string{
			interopSend(t, s, &postflowv1.SendRequest{From: "me@sender.test", To: []string{"raw@example.test"}, Raw: []byte(raw)}),
			interopSend(t, s, &postflowv1.SendRequest{From: "me@sender.test", To: []string{"a@example.test", "b@example.test"},
				Subject: "no pipelining", Text: "t", Headers: []*postflowv1.Header{{Name: interopCase, Value: "nopipe"}}}),
		}
		for _, id := range ids {
			for i, rs := range interopWait(t, s, id, 30*time.Second, interopAllFinal) {
				if rs.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
					t.Errorf("message %s recipient %d: state %v (%v), want DELIVERED", id, i, rs.GetState(), rs.GetLastReply())
				}
			}
		}
		if got := interopWaitDelivered(t, np, "nopipe-raw", 1); !bytes.Equal(got[0], []byte(raw)) {
			t.Errorf("raw message at the receiver, trace headers removed:\n%q\nwant the submission:\n%q", got[0], raw)
		}
		interopWaitDelivered(t, np, "nopipe", 1)
		log := np.Log()
		if !mta.offeredPipelining.MatchString(r.Log()) || mta.offeredPipelining.MatchString(log) {
			t.Errorf("PIPELINING offered by the default receiver: %v, by this one: %v; want true, false",
				mta.offeredPipelining.MatchString(r.Log()), mta.offeredPipelining.MatchString(log))
		}
		if m := mta.pipelinedInput.FindString(log); m != "" {
			t.Errorf("the receiver saw pipelined commands (%q) although it did not offer PIPELINING", m)
		}
	})
}

// interopSend submits req and returns the message id. Unlike stack.send it
// reports to the subtest's t.
func interopSend(t *testing.T, s *stack, req *postflowv1.SendRequest) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := s.mail.Send(ctx, req)
	if err != nil {
		t.Fatalf("Send(%v): %v", req.GetTo(), err)
	}
	return resp.GetMessageId()
}

// interopWait polls GetMessage until done accepts the recipients and
// returns them; unlike stack.waitState it reports to the subtest's t.
func interopWait(t *testing.T, s *stack, id string, timeout time.Duration, done func([]*postflowv1.RecipientStatus) bool) []*postflowv1.RecipientStatus {
	t.Helper()
	var last *postflowv1.GetMessageResponse
	if eventually(timeout, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := s.status.GetMessage(ctx, &postflowv1.GetMessageRequest{MessageId: id})
		if err != nil || len(resp.GetRecipients()) == 0 {
			return false
		}
		last = resp
		return done(resp.GetRecipients())
	}) {
		return last.GetRecipients()
	}
	t.Fatalf("message %s not in the expected state within %v; last status: %v", id, timeout, last)
	return nil
}

func interopAllFinal(rs []*postflowv1.RecipientStatus) bool {
	for _, r := range rs {
		if !eventlog.Final(r.GetState()) {
			return false
		}
	}
	return true
}

// interopQueued reads every job in OUTBOUND and returns the bodies by
// message id: what Postflow will hand to the receiver, DKIM aside.
func interopQueued(t *testing.T, s *stack) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := s.stream.Stream(ctx, queue.OutboundStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bodies := map[string][]byte{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("OUTBOUND message %d: %v", seq, err)
		}
		var job queuev1.DeliveryJob
		if err := proto.Unmarshal(m.Data, &job); err != nil {
			t.Fatalf("OUTBOUND message %d: %v", seq, err)
		}
		bodies[job.GetMessageId()] = job.GetBody()
	}
	return bodies
}

// interopTraceHeaders are the fields a receiver puts on top of a message it
// accepts (RFC 5321 §4.4, and the local delivery agent's).
var interopTraceHeaders = []string{"Received", "Return-Path", "Delivered-To", "X-Original-To"}

// interopStripTrace removes the trace header fields at the top of msg,
// with their continuation lines.
func interopStripTrace(msg []byte) []byte {
	for {
		colon, nl := bytes.IndexByte(msg, ':'), bytes.IndexByte(msg, '\n')
		if colon < 0 || nl < colon || !slices.ContainsFunc(interopTraceHeaders, func(h string) bool { return strings.EqualFold(h, string(msg[:colon])) }) {
			return msg
		}
		// The field ends at the first line break not followed by white space.
		end := nl + 1
		for end < len(msg) && (msg[end] == ' ' || msg[end] == '\t') {
			next := bytes.IndexByte(msg[end:], '\n')
			if next < 0 {
				return nil
			}
			end += next + 1
		}
		msg = msg[end:]
	}
}

// interopDelivered returns the messages r stored whose interopCase header is
// name, with the receiver's trace headers removed.
func interopDelivered(t *testing.T, r interopReceiver, name string) [][]byte {
	t.Helper()
	var out [][]byte
	for _, m := range r.Messages() {
		m = interopStripTrace(m)
		parsed, err := mail.ReadMessage(bufio.NewReader(bytes.NewReader(m)))
		if err != nil {
			t.Fatalf("receiver stored an unparseable message (%v):\n%q", err, m)
		}
		if parsed.Header.Get(interopCase) == name {
			out = append(out, m)
		}
	}
	return out
}

// interopWaitDelivered polls until r stored n messages of case name and returns
// them. Postflow sees delivered once the receiver answered the final dot;
// Postfix then still writes the mailbox.
func interopWaitDelivered(t *testing.T, r interopReceiver, name string, n int) [][]byte {
	t.Helper()
	var got [][]byte
	if !eventually(10*time.Second, func() bool {
		got = interopDelivered(t, r, name)
		return len(got) >= n
	}) {
		t.Fatalf("receiver stored %d messages of case %q, want %d", len(got), name, n)
	}
	return got
}
