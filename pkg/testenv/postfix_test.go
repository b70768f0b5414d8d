package testenv

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// TestPostfixLocalDomainBounces checks LocalDomains and Transport: Postfix
// accepts any user of a local domain at RCPT, delivers a known user to its
// private mbox, and sends an RFC 3464 DSN for the unknown one from the null
// sender through the transport map to the sender's domain, here a sink.
func TestPostfixLocalDomainBounces(t *testing.T) {
	t.Parallel()
	sink := StartSMTPSink(t, SinkScript{})
	p := StartPostfix(t, ReceiverOptions{
		LocalDomains: []string{"local.test"},
		Transport:    map[string]string{"bounce.test": fmt.Sprintf("smtp:[%s]:%d", sink.Addr().Addr(), sink.Addr().Port())},
	})
	c, err := smtp.Dial(p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("sender@bounce.test", nil); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	// Both accepted at RCPT: the unknown user is found only by local(8).
	for _, rcpt := range []string{"nosuch@local.test", "root@local.test"} {
		if err := c.Rcpt(rcpt, nil); err != nil {
			t.Fatalf("RCPT %s: %v", rcpt, err)
		}
	}
	// Mail for any other domain is still refused, the transport map's
	// included: it routes what Postfix sends, not what it relays.
	for _, rcpt := range []string{"x@bounce.test", "x@elsewhere.test"} {
		if err := c.Rcpt(rcpt, nil); err == nil || !strings.Contains(err.Error(), "Relay access denied") {
			t.Errorf("RCPT %s = %v, want Relay access denied", rcpt, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if _, err := w.Write([]byte("Subject: local\r\nMessage-ID: <local@bounce.test>\r\n\r\nhello local\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA: %v", err)
	}
	_ = c.Quit()

	sink.WaitForCount(t, 1, 30*time.Second)
	dsn := sink.Messages()[0]
	t.Logf("DSN as received:\n%s", dsn.Data)
	if dsn.From != "" || len(dsn.To) != 1 || dsn.To[0] != "sender@bounce.test" {
		t.Errorf("DSN envelope MAIL FROM %q RCPT TO %q, want the null sender to sender@bounce.test", dsn.From, dsn.To)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^Content-Type: multipart/report; report-type=delivery-status;`),
		regexp.MustCompile(`(?m)^Content-Type: message/delivery-status\r$`),
		regexp.MustCompile(`(?m)^Reporting-MTA: dns; ` + regexp.QuoteMeta(p.Hostname()) + `\r$`),
		regexp.MustCompile(`(?m)^Final-Recipient: rfc822; nosuch@local.test\r$`),
		regexp.MustCompile(`(?m)^Action: failed\r$`),
		regexp.MustCompile(`(?m)^Status: 5\.1\.1\r$`),
		regexp.MustCompile(`(?m)^Diagnostic-Code: X-Postfix; unknown user: "nosuch"\r$`),
	} {
		if !want.Match(dsn.Data) {
			t.Errorf("DSN does not match %v", want)
		}
	}
	if strings.Contains(string(dsn.Data), "Final-Recipient: rfc822; root@") {
		t.Errorf("DSN names root@local.test, which was delivered")
	}
	if !pollUntil(10*time.Second, func() bool { return strings.Contains(p.LocalMailbox("root"), "hello local") }) {
		t.Errorf("root's mailbox = %q, want the message", p.LocalMailbox("root"))
	}
	// Postfix logs the delivery once the sink has answered: poll for it.
	sent := regexp.MustCompile(`to=<sender@bounce.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent`)
	if !pollUntil(10*time.Second, func() bool { return sent.MatchString(p.Log()) }) {
		t.Errorf("the log does not show the DSN sent through the transport map")
	}
}

// TestPostfixOptionsValidate: each receiver refuses what it does not
// implement, and StartPostfix's options are checked before anything runs.
func TestPostfixOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name              string
		opts              ReceiverOptions
		postfix, receiver bool // valid for StartPostfix, for every receiver
	}{
		{"virtual domains", ReceiverOptions{Domains: []string{"a.test"}}, true, true},
		{"nothing", ReceiverOptions{}, false, false},
		{"local domains only", ReceiverOptions{LocalDomains: []string{"l.test"}}, true, false},
		{"transport", ReceiverOptions{Domains: []string{"a.test"}, Transport: map[string]string{"b.test": "smtp:[127.0.0.1]:25"}}, true, false},
		{"domain both virtual and local", ReceiverOptions{Domains: []string{"a.test"}, LocalDomains: []string{"A.test"}}, false, false},
		{"transport for a local domain", ReceiverOptions{LocalDomains: []string{"l.test"}, Transport: map[string]string{"l.test": "smtp:[127.0.0.1]:25"}}, false, false},
		{"transport without nexthop form", ReceiverOptions{LocalDomains: []string{"l.test"}, Transport: map[string]string{"b.test": "127.0.0.1 25"}}, false, false},
		{"bad local domain", ReceiverOptions{LocalDomains: []string{"l.test,x"}}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.opts.validatePostfix(); (err == nil) != tc.postfix {
				t.Errorf("validatePostfix() = %v, want valid %v", err, tc.postfix)
			}
			if err := tc.opts.validate(); (err == nil) != tc.receiver {
				t.Errorf("validate() = %v, want valid %v", err, tc.receiver)
			}
		})
	}
}
