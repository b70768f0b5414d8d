package main

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// dsnLocalZone makes Postfix (on 127.0.0.1, at cfg.SMTPPort) the MX of
// local.test, the domain it delivers with local(8).
const dsnLocalZone = zone + `
local.test.      60 IN MX 10 mx.local.test.
mx.local.test.   60 IN A  127.0.0.1
`

// TestPostfixDSNEndToEnd is the asynchronous bounce of the issue, with a
// real Postfix on both sides of it: Postfix accepts a message for an
// unknown local user at RCPT (250, DELIVERED), local(8) then bounces it,
// and Postfix's own RFC 3464 DSN, sent to the VERP return path, reaches
// the bounce listener, which correlates it with the recipient: BOUNCED by
// an EVENT_TYPE_DSN event, one BOUNCES record, and a suppression entry.
// The message's other recipient, a user Postfix knows, stays DELIVERED.
func TestPostfixDSNEndToEnd(t *testing.T) {
	const bounceDomain = "bounces.postflow.test"
	// The api and bounce roles start first: Postfix's transport map needs
	// the bounce listener's port, and the worker, started last, Postfix's.
	s := startStack(t, testenv.SinkScript{}, withBounce(t, bounceDomain), func(c *serveConfig) { c.Roles = []string{"api", "bounce"} })
	bouncePort := s.api.app.bounceLis.Addr().(*net.TCPAddr).Port
	pf := testenv.StartPostfix(t, testenv.ReceiverOptions{
		LocalDomains: []string{"local.test"},
		// The bounce domain has no MX in the test DNS: Postfix sends its
		// DSNs straight to the listener.
		Transport: map[string]string{bounceDomain: fmt.Sprintf("smtp:[127.0.0.1]:%d", bouncePort)},
	})
	s.dns.Update(dsnLocalZone)
	w := s.cfg
	w.Roles = []string{"worker"}
	w.SMTPPort = int(pf.Addr().Port())
	s.startApp(w)

	start := time.Now()
	const subject = "dsn interop"
	// With VERP each recipient has a transaction of its own, and the
	// worker records the job's outcomes after the last one. The unknown
	// user comes last, so that its DELIVERED is recorded as soon as
	// Postfix answers 250, well before Postfix's DSN can make it round.
	resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"root@local.test", "nosuch@local.test"}, Subject: subject, Text: "t"})
	id := resp.GetMessageId()
	st := s.waitState(id, 60*time.Second, func(r *postflowv1.GetMessageResponse) bool {
		rs := r.GetRecipients()
		return len(rs) == 2 && rs[0].GetState() == postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED &&
			rs[1].GetState() == postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED
	})
	t.Logf("sent to BOUNCED by Postfix's DSN in %v", time.Since(start).Round(time.Millisecond))

	root, nosuch := st.GetRecipients()[0], st.GetRecipients()[1]
	evs := nosuch.GetEvents()
	delivered := -1
	for i, ev := range evs {
		if ev.GetState() == postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
			delivered = i
		}
	}
	if delivered < 0 || evs[delivered].GetReply().GetCode() != 250 || !strings.Contains(evs[delivered].GetReply().GetText(), "queued as") {
		t.Errorf("nosuch@: events %v; want Postfix's 250 queued as recorded as DELIVERED before the DSN", evs)
	}
	dsnEvents := 0
	for _, ev := range evs {
		if ev.GetType() == postflowv1.EventType_EVENT_TYPE_DSN {
			dsnEvents++
		}
	}
	last := evs[len(evs)-1]
	rep := last.GetReply()
	t.Logf("DSN event: %v", last)
	if last.GetType() != postflowv1.EventType_EVENT_TYPE_DSN || last.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED || dsnEvents != 1 {
		t.Errorf("nosuch@: last event %v (%d DSN events); want the one DSN event, BOUNCED", last, dsnEvents)
	}
	if rep.GetEnhancedCode() != "5.1.1" || !strings.Contains(rep.GetText(), "unknown user") || !rep.GetRemote() {
		t.Errorf("nosuch@: DSN reply %v; want Postfix's 5.1.1 unknown user, remote", rep)
	}
	if last.GetReportingMta() != pf.Hostname() {
		t.Errorf("nosuch@: reporting MTA %q, want Postfix's %q", last.GetReportingMta(), pf.Hostname())
	}
	if last.GetCategory() != "bad_mailbox" || nosuch.GetCategory() != "bad_mailbox" {
		t.Errorf("nosuch@: category %q (status %q), want bad_mailbox", last.GetCategory(), nosuch.GetCategory())
	}
	for _, ev := range root.GetEvents() {
		if ev.GetType() == postflowv1.EventType_EVENT_TYPE_DSN {
			t.Errorf("root@: DSN event %v; Postfix delivered it", ev)
		}
	}

	// The bounce role puts the address on the list from the BOUNCES
	// record the DSN event made.
	var entry *postflowv1.Suppression
	if !eventually(10*time.Second, func() bool {
		entry = s.checkSuppressed("nosuch@local.test").GetSuppression()
		return entry != nil
	}) {
		t.Fatal("nosuch@local.test did not reach the suppression list within 10s")
	}
	if entry.GetReason() != postflowv1.SuppressionReason_SUPPRESSION_REASON_BOUNCE || entry.GetMessageId() != id || !strings.Contains(entry.GetDetail(), "5.1.1") {
		t.Errorf("suppression entry %v, want a bounce naming %s and 5.1.1", entry, id)
	}
	if got := s.checkSuppressed("root@local.test").GetSuppression(); got != nil {
		t.Errorf("root@local.test suppressed (%v); it was delivered", got)
	}
	if recs := s.bounceRecords(); len(recs) != 1 || recs[0].GetRecipient() != "nosuch@local.test" || recs[0].GetType() != postflowv1.EventType_EVENT_TYPE_DSN {
		t.Errorf("BOUNCES = %v, want one DSN record for nosuch@local.test", recs)
	}

	// Postfix's side: local(8) bounced the unknown user, its smtp client
	// delivered the DSN to the listener at the recipient's own return
	// path (index 1), and root's copy, with its own return path (index 0),
	// is in root's mailbox.
	bounced := regexp.MustCompile(`postfix/local\[\d+\]: \w+: to=<nosuch@local\.test>, relay=local, .*dsn=5\.1\.1, status=bounced \(unknown user: "nosuch"\)`)
	sent := regexp.MustCompile(`(?i)postfix/smtp\[\d+\]: \w+: to=<b\+` + regexp.QuoteMeta(id) + `-1-[^@>]+@` + regexp.QuoteMeta(bounceDomain) +
		`>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:` + fmt.Sprint(bouncePort) + `, .*status=sent \(250 `)
	// postlogd writes asynchronously; the listener's 250 can come first.
	if !eventually(10*time.Second, func() bool { return bounced.MatchString(pf.Log()) && sent.MatchString(pf.Log()) }) {
		t.Errorf("Postfix's log shows the local bounce: %v, the DSN sent to the listener: %v; want both",
			bounced.MatchString(pf.Log()), sent.MatchString(pf.Log()))
	}
	mbox := pf.LocalMailbox("root")
	if !strings.Contains(mbox, "Subject: "+subject) || !regexp.MustCompile(`(?im)^Return-Path: <b\+`+regexp.QuoteMeta(id)+`-0-[^@>]+@`+regexp.QuoteMeta(bounceDomain)+`>$`).MatchString(mbox) {
		t.Errorf("root's mailbox:\n%s\nwant the message with its VERP return path (index 0)", mbox)
	}
}
