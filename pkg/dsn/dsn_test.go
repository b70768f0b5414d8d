package dsn

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestKindString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		kind Kind
		want string
	}{
		{KindUnknown, "unknown"},
		{KindFailed, "failed"},
		{KindDelayed, "delayed"},
		{KindDelivered, "delivered"},
		{KindComplaint, "complaint"},
		{Kind(42), "Kind(42)"},
	}
	for _, tc := range tests {
		if got := tc.kind.String(); got != tc.want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(tc.kind), got, tc.want)
		}
	}
}

func TestStatusFromText(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, text string
		status     string
		code       int
	}{
		{"reply and enhanced", "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown", "5.1.1", 550},
		{"multi-line reply", "550-5.1.1 The email account that you tried to reach does not exist. 550 5.1.1 https://support.google.com", "5.1.1", 550},
		{"colon after reply code", "554: 5.7.9 Message not accepted for policy reasons", "5.7.9", 554},
		{"qmail code in parentheses", "Sorry, no mailbox here by that name. (#5.1.1)", "5.1.1", 0},
		{"qmail temporary code", "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)", "4.4.1", 0},
		{"reply code only", "554 delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0] - mta1047.mail.ne1.yahoo.com", "5.0.0", 554},
		{"temporary reply code only", "451 Temporary local problem - please try later", "4.0.0", 451},
		{"success", "250 2.0.0 Ok: queued as 4VgD2c0Yx1z2Ppq", "2.0.0", 250},
		{"three-digit detail", "550 5.1.351 Remote server returned unknown recipient", "5.1.351", 550},
		{"Exchange hash code", "<mx.example.org #5.1.1 smtp;550 5.1.1 User unknown>", "5.1.1", 550},
		{"IP address is no code", "Connection to 10.5.1.1 timed out", "", 0},
		{"IP literal before the reply", "host mx.example.org [203.0.113.40]: 550 5.7.1 Blocked", "5.7.1", 550},
		{"enhanced code of another class is skipped", "550 Requested action not taken (was 4.2.2 yesterday)", "5.0.0", 550},
		{"version number is no code", "(Postfix 2.5.6) 550 User unknown", "5.0.0", 550},
		{"digits inside a host name are no code", "mta1047.mail.ne1.yahoo.com said nothing", "", 0},
		{"empty", "", "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			status, code := statusFromText(tc.text)
			if status != tc.status || code != tc.code {
				t.Errorf("statusFromText(%q) = %q, %d, want %q, %d", tc.text, status, code, tc.status, tc.code)
			}
		})
	}
}

func TestValidStatus(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"5.1.1", "5.1.1"},
		{" 4.4.7 ", "4.4.7"},
		{"5.0.0 (permanent failure)", "5.0.0"},
		{"2.1.5", "2.1.5"},
		{"5.1.10", "5.1.10"},
		{"5.1", ""},
		{"6.1.1", ""},
		{"5.1.1234", ""},
		{"5.x.1", ""},
		{"failed", ""},
		{"", ""},
	}
	for _, tc := range tests {
		if got := validStatus(tc.in); got != tc.want {
			t.Errorf("validStatus(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestKindOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		actions []string
		want    Kind
	}{
		{"one failed among delivered", []string{"delivered", "failed"}, KindFailed},
		{"failed wins over delayed", []string{"delayed", "failed"}, KindFailed},
		{"all delayed", []string{"delayed", "delayed"}, KindDelayed},
		{"delayed with delivered is still a warning", []string{"delivered", "delayed"}, KindDelayed},
		{"delivered relayed expanded", []string{"delivered", "relayed", "expanded"}, KindDelivered},
		{"relayed only", []string{"relayed"}, KindDelivered},
		{"unknown action only", []string{"bogus"}, KindUnknown},
		{"no recipients", nil, KindUnknown},
	}
	for _, tc := range tests {
		var rs []Recipient
		for _, a := range tc.actions {
			rs = append(rs, Recipient{Action: a})
		}
		if got := kindOf(rs); got != tc.want {
			t.Errorf("%s: kindOf(%v) = %v, want %v", tc.name, tc.actions, got, tc.want)
		}
	}
}

func TestTextAction(t *testing.T) {
	t.Parallel()
	tests := []struct{ text, want string }{
		{"This is a permanent error; I've given up. Sorry it didn't work out.", ActionFailed},
		{"I'm not going to try again; this message has been in the queue too long. (#4.4.1)", ActionFailed},
		{"This is only a warning: I'm still trying.", ActionDelayed},
		{"A message that you sent has not yet been delivered to one or more of its recipients", ActionDelayed},
		{"Delivery to the following recipient has been delayed:", ActionDelayed},
		{"Something went wrong.", ActionFailed},
	}
	for _, tc := range tests {
		if got := textAction(strings.ToLower(tc.text)); got != tc.want {
			t.Errorf("textAction(%q) = %q, want %q", tc.text, got, tc.want)
		}
	}
}

// report builds a multipart/report message around a delivery-status body.
func report(reportType, statusType, status string) string {
	return "From: MAILER-DAEMON@mx.example.org\r\n" +
		"To: b+tok@bounces.example.net\r\n" +
		"Subject: Undelivered Mail Returned to Sender\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/report; report-type=" + reportType + "; boundary=\"b1\"\r\n" +
		"\r\n" +
		"--b1\r\n" +
		"Content-Type: text/plain\r\n" +
		"\r\n" +
		"Delivery failed.\r\n" +
		"--b1\r\n" +
		"Content-Type: " + statusType + "\r\n" +
		"\r\n" +
		strings.ReplaceAll(status, "\n", "\r\n") +
		"\r\n--b1--\r\n"
}

func mustParse(t *testing.T, msg string) *Report {
	t.Helper()
	r, err := Parse(strings.NewReader(msg))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return r
}

func TestParseDeliveryStatusFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		statusType string
		status     string
		kind       Kind
		want       []Recipient
	}{
		{
			name:       "status missing: derived from the diagnostic",
			statusType: "message/delivery-status",
			status:     "Reporting-MTA: dns; mx.example.org\n\nFinal-Recipient: rfc822; a@example.org\nAction: failed\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\n",
			kind:       KindFailed,
			want:       []Recipient{{FinalRecipient: "a@example.org", Action: "failed", Status: "5.1.1", DiagnosticCode: "550 5.1.1 user unknown", SMTPCode: 550}},
		},
		{
			name:       "status invalid: reply code gives class.0.0",
			statusType: "message/delivery-status",
			status:     "Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1\nDiagnostic-Code: smtp; 550 user unknown\n",
			kind:       KindFailed,
			want:       []Recipient{{FinalRecipient: "a@example.org", Action: "failed", Status: "5.0.0", DiagnosticCode: "550 user unknown", SMTPCode: 550}},
		},
		{
			name:       "action missing: derived from the status class",
			statusType: "message/delivery-status",
			status:     "Final-Recipient: rfc822; a@example.org\nStatus: 4.4.1\n",
			kind:       KindDelayed,
			want:       []Recipient{{FinalRecipient: "a@example.org", Action: "delayed", Status: "4.4.1"}},
		},
		{
			name:       "action with comment, upper case types",
			statusType: "message/delivery-status",
			status:     "Final-Recipient: RFC822; <a@example.org>\nAction: Failed (bad destination)\nStatus: 5.1.2\nRemote-MTA: DNS; [203.0.113.5]\n",
			kind:       KindFailed,
			want:       []Recipient{{FinalRecipient: "a@example.org", Action: "failed", Status: "5.1.2", RemoteMTA: "203.0.113.5"}},
		},
		{
			name:       "recipients without a blank line between them",
			statusType: "message/delivery-status",
			status:     "Reporting-MTA: dns; mx.example.org\nFinal-Recipient: rfc822; a@example.org\nAction: expanded\nStatus: 2.0.0\nFinal-Recipient: rfc822; b@example.org\nAction: delivered\nStatus: 2.0.0\n",
			kind:       KindDelivered,
			want: []Recipient{
				{FinalRecipient: "a@example.org", Action: "expanded", Status: "2.0.0"},
				{FinalRecipient: "b@example.org", Action: "delivered", Status: "2.0.0"},
			},
		},
		{
			name:       "global delivery status with a UTF-8 address",
			statusType: "message/global-delivery-status",
			status:     "Final-Recipient: utf-8; δοκιμή@παράδειγμα.example\nAction: failed\nStatus: 5.1.1\n",
			kind:       KindFailed,
			want:       []Recipient{{FinalRecipient: "δοκιμή@παράδειγμα.example", Action: "failed", Status: "5.1.1"}},
		},
		{
			name:       "untyped diagnostic with a semicolon is kept whole",
			statusType: "message/delivery-status",
			status:     "Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.7.1\nDiagnostic-Code: 550 5.7.1 blocked; see https://example.org/why\n",
			kind:       KindFailed,
			want:       []Recipient{{FinalRecipient: "a@example.org", Action: "failed", Status: "5.7.1", DiagnosticCode: "550 5.7.1 blocked; see https://example.org/why", SMTPCode: 550}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := mustParse(t, report("delivery-status", tc.statusType, tc.status))
			if r.Kind != tc.kind {
				t.Errorf("Kind = %v, want %v", r.Kind, tc.kind)
			}
			if !slices.Equal(r.Recipients, tc.want) {
				t.Errorf("Recipients =\n  %+v\nwant\n  %+v", r.Recipients, tc.want)
			}
		})
	}
}

func TestParseNotAReport(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, msg string
	}{
		{
			name: "ordinary message",
			msg:  "From: Ann <ann@example.org>\nTo: b+tok@bounces.example.net\nSubject: hello\n\nHi there.\n",
		},
		{
			name: "auto-reply from a null sender",
			msg: "Return-Path: <>\nFrom: Ann <ann@example.org>\nSubject: Out of Office: hello\n" +
				"Auto-Submitted: auto-replied\n\nI am away until Monday and will reply on my return.\n",
		},
		{
			name: "person quoting a qmail bounce",
			msg: "From: Ann <ann@example.org>\nSubject: this address is dead\n\n" +
				"Hi. This is the qmail-send program at mx.example.org.\n<old@example.org>:\n" +
				"Sorry, no mailbox here by that name. (#5.1.1)\n",
		},
		{
			name: "mail system notice in no known wording",
			msg:  "From: MAILER-DAEMON@mx.example.org\nSubject: Undeliverable\n\nSomething happened to your mail.\n",
		},
		{
			name: "feedback report type missing, delivery status unreadable",
			msg:  report("delivery-status", "message/delivery-status", "this is not a field block\n"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := mustParse(t, tc.msg)
			if r.Kind != KindUnknown || len(r.Recipients) != 0 {
				t.Errorf("Parse = Kind %v with %d recipients, want KindUnknown and none", r.Kind, len(r.Recipients))
			}
		})
	}
}

func TestParseQmailMultiLineReply(t *testing.T) {
	t.Parallel()
	msg := "From: MAILER-DAEMON@mx.example.net\nSubject: failure notice\n\n" +
		"Hi. This is the qmail-send program at mx.example.net.\n" +
		"I'm afraid I wasn't able to deliver your message to the following addresses.\n" +
		"This is a permanent error; I've given up. Sorry it didn't work out.\n\n" +
		"<a@example.org>:\n203.0.113.9 does not like recipient.\n" +
		"Remote host said: 550-5.2.1 The email account that you tried to reach is\n" +
		"550 5.2.1 disabled.\nGiving up on 203.0.113.9.\n"
	r := mustParse(t, msg)
	want := []Recipient{{
		FinalRecipient: "a@example.org", Action: "failed", Status: "5.2.1", SMTPCode: 550, RemoteMTA: "203.0.113.9",
		DiagnosticCode: "550-5.2.1 The email account that you tried to reach is 550 5.2.1 disabled.",
	}}
	if r.Kind != KindFailed || !slices.Equal(r.Recipients, want) || r.ReportingMTA != "mx.example.net" {
		t.Errorf("Parse = Kind %v, ReportingMTA %q, Recipients\n  %+v\nwant failed, mx.example.net,\n  %+v", r.Kind, r.ReportingMTA, r.Recipients, want)
	}
}

func TestParseComplaintByReportType(t *testing.T) {
	t.Parallel()
	// RFC 6522 §3: report-type alone says it is a feedback report, even
	// when the feedback-report part is cut off.
	msg := "From: fbl@isp.example.org\nMIME-Version: 1.0\n" +
		"Content-Type: multipart/report; report-type=feedback-report; boundary=x\n\n" +
		"--x\nContent-Type: text/plain\n\nThis is an abuse report.\n--x--\n"
	r := mustParse(t, msg)
	if r.Kind != KindComplaint {
		t.Errorf("Kind = %v, want complaint", r.Kind)
	}
}

type failingReader struct{}

var errBroken = errors.New("broken pipe")

func (failingReader) Read([]byte) (int, error) { return 0, errBroken }

func TestParseErrors(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"", "\n\n", "no header here at all\n", "   \n"} {
		if _, err := Parse(strings.NewReader(in)); !errors.Is(err, ErrNotMessage) {
			t.Errorf("Parse(%q) error = %v, want ErrNotMessage", in, err)
		}
	}
	if _, err := Parse(failingReader{}); !errors.Is(err, errBroken) {
		t.Errorf("Parse(failing reader) error = %v, want it to wrap %v", err, errBroken)
	}
}

// countingReader serves n bytes of a repeated line and counts what is read.
type countingReader struct {
	left, read int
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.left == 0 {
		return 0, io.EOF
	}
	n := min(len(p), c.left)
	for i := range n {
		p[i] = "x-filler: 0123456789abcdef\n"[(c.read+i)%27]
	}
	c.left -= n
	c.read += n
	return n, nil
}

func TestParseReadsAtMostMaxSize(t *testing.T) {
	t.Parallel()
	c := &countingReader{left: MaxSize + 1<<20}
	if _, err := Parse(c); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c.read > MaxSize {
		t.Errorf("Parse read %d bytes, want at most MaxSize = %d", c.read, MaxSize)
	}
}

func TestParseDeepNesting(t *testing.T) {
	t.Parallel()
	// A delivery-status part nested deeper than MaxDepth is not reached;
	// the same part within the bound is.
	nest := func(depth int) string {
		boundary := func(i int) string { return "n" + strings.Repeat("z", i) }
		var b strings.Builder
		b.WriteString("From: MAILER-DAEMON@mx.example.org\nMIME-Version: 1.0\n")
		for i := range depth {
			b.WriteString("Content-Type: multipart/mixed; boundary=\"" + boundary(i) + "\"\n\n--" + boundary(i) + "\n")
		}
		b.WriteString("Content-Type: message/delivery-status\n\nFinal-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\n")
		for i := depth - 1; i >= 0; i-- {
			b.WriteString("\n--" + boundary(i) + "--\n")
		}
		return b.String()
	}
	if r := mustParse(t, nest(MaxDepth)); r.Kind != KindFailed {
		t.Errorf("at depth %d: Kind = %v, want failed", MaxDepth, r.Kind)
	}
	if r := mustParse(t, nest(MaxDepth+1)); r.Kind != KindUnknown {
		t.Errorf("at depth %d: Kind = %v, want unknown", MaxDepth+1, r.Kind)
	}
}

func TestParseAddressesFromReturnedMessage(t *testing.T) {
	t.Parallel()
	msg := report("delivery-status", "message/delivery-status",
		"Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\n")
	msg = strings.TrimSuffix(msg, "--b1--\r\n") +
		"--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n" +
		"Return-Path: <b+one@bounces.example.net>\r\n" +
		"X-Original-Return-Path: <b+two@bounces.example.net>\r\n" +
		"Received-SPF: pass client-ip=192.0.2.1; envelope-from=\"b+three@bounces.example.net\";\r\n" +
		"Received: from h (h [192.0.2.1]) by mx (envelope-from <b+four@bounces.example.net>) id 1\r\n" +
		"Message-ID: <id-1@shop.example.com> (comment)\r\n" +
		"\r\n--b1--\r\n"
	r := mustParse(t, msg)
	want := []string{
		"b+one@bounces.example.net", "b+two@bounces.example.net", "b+three@bounces.example.net",
		"b+four@bounces.example.net", "b+tok@bounces.example.net",
	}
	if !slices.Equal(r.Addresses, want) {
		t.Errorf("Addresses = %q, want %q", r.Addresses, want)
	}
	if r.OriginalMessageID != "id-1@shop.example.com" {
		t.Errorf("OriginalMessageID = %q, want id-1@shop.example.com", r.OriginalMessageID)
	}
}

func TestCleanAddr(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"<b+x@bounces.example.net>", "b+x@bounces.example.net"},
		{" b+x@bounces.example.net ", "b+x@bounces.example.net"},
		{"\"b+x@bounces.example.net\";", "b+x@bounces.example.net"},
		{"mailto:a@example.org", "a@example.org"},
		{"<>", ""},
		{"bounces.example.net", ""},
		{"a b@example.org", ""},
		{"@example.org", ""},
		{"a@", ""},
	}
	for _, tc := range tests {
		if got := cleanAddr(tc.in); got != tc.want {
			t.Errorf("cleanAddr(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
