package testenv

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// receiver is what StartPostfix and StartHaraka return.
type receiver interface {
	Addr() netip.AddrPort
	Messages() [][]byte
	WaitForMessages(t testing.TB, n int, timeout time.Duration) [][]byte
	Log() string
}

// TestReceivers checks the starters themselves, with a plain go-smtp
// client: the EHLO reply follows the options, an unknown user is refused
// with the receiver's 5.1.1, and an accepted message is stored as sent,
// under the receiver's trace headers.
func TestReceivers(t *testing.T) {
	t.Parallel()
	certFile, keyFile := WriteKeyPair(t, SelfSigned(t, "localhost"))
	opts := ReceiverOptions{
		Domains:          []string{"example.test"},
		RejectRecipients: []string{"nobody@example.test"},
		CertFile:         certFile, KeyFile: keyFile,
		MessageSizeLimit: 20000,
		NoPipelining:     true,
	}
	tests := []struct {
		name  string
		start func(t *testing.T) receiver
	}{
		{"postfix", func(t *testing.T) receiver { return StartPostfix(t, opts) }},
		{"haraka", func(t *testing.T) receiver { return StartHaraka(t, opts) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := tc.start(t)
			c, err := smtp.Dial(r.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Hello("client.test"); err != nil {
				t.Fatalf("EHLO: %v", err)
			}
			size, _ := c.MaxMessageSize()
			starttls, _ := c.Extension("STARTTLS")
			pipelining, _ := c.Extension("PIPELINING")
			if size != 20000 || !starttls || pipelining {
				t.Errorf("EHLO: SIZE %d, STARTTLS %v, PIPELINING %v; want 20000, true, false", size, starttls, pipelining)
			}
			_ = c.Quit()
			c, err = smtp.DialStartTLS(r.Addr().String(), &tls.Config{InsecureSkipVerify: true})
			if err != nil {
				t.Fatalf("STARTTLS: %v", err)
			}
			defer func() { _ = c.Close() }()
			if err := c.Mail("a@sender.test", nil); err != nil {
				t.Fatalf("MAIL: %v", err)
			}
			var se *smtp.SMTPError
			if err := c.Rcpt("nobody@example.test", nil); !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
				t.Errorf("RCPT nobody@example.test = %v, want 550 5.1.1", err)
			}
			if err := c.Rcpt("b@example.test", nil); err != nil {
				t.Fatalf("RCPT b@example.test: %v", err)
			}
			body := []byte("Subject: t\r\nMessage-ID: <t@sender.test>\r\n\r\nline 1\r\n.dot\r\n")
			w, err := c.Data()
			if err != nil {
				t.Fatalf("DATA: %v", err)
			}
			if _, err := w.Write(body); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatalf("end of DATA: %v", err)
			}
			msgs := r.WaitForMessages(t, 1, 10*time.Second)
			if len(msgs) != 1 || !bytes.HasSuffix(msgs[0], body) || !bytes.HasPrefix(msgs[0], []byte("Re")) {
				t.Errorf("stored messages = %q, want one: trace headers, then %q", msgs, body)
			}
		})
	}
}
