package testenv

import (
	"bufio"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func sinkDial(t *testing.T, s *SMTPSink) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(s.Addr().String())
	if err != nil {
		t.Fatalf("dial sink: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	return c
}

func sinkSend(t *testing.T, c *smtp.Client, from string, to []string, body string) error {
	t.Helper()
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return err
	}
	return w.Close()
}

func TestSMTPSinkRecordsMessageAsReceived(t *testing.T) {
	t.Parallel()
	s := StartSMTPSink(t, SinkScript{})
	c := sinkDial(t, s)
	body := "Subject: x\r\n\r\n.dot line\r\n..two\r\n\xc3\xa9\r\n"
	if err := sinkSend(t, c, "a@example.org", []string{"b@example.net", "c@example.net"}, body); err != nil {
		t.Fatalf("send: %v", err)
	}
	s.WaitForCount(t, 1, 5*time.Second)
	msgs := s.Messages()
	if len(msgs) != 1 {
		t.Fatalf("Messages() has %d entries, want 1", len(msgs))
	}
	m := msgs[0]
	if string(m.Data) != body || m.From != "a@example.org" || strings.Join(m.To, ",") != "b@example.net,c@example.net" {
		t.Fatalf("message = from %q to %q data %q; want from a@example.org to b,c data %q", m.From, m.To, m.Data, body)
	}
	if m.Received.IsZero() {
		t.Fatal("Received is zero")
	}
	// Messages returns copies.
	msgs[0].Data[0] = 'X'
	if s.Messages()[0].Data[0] != 'S' {
		t.Fatal("Messages() shares its buffers with the caller")
	}
}

func TestSMTPSinkRcptScript(t *testing.T) {
	t.Parallel()
	s := StartSMTPSink(t, SinkScript{Rcpt: func(addr string, n int) *smtp.SMTPError {
		if addr == "grey@example.net" && n < 2 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted"}
		}
		return nil
	}})
	c := sinkDial(t, s)
	for i, want := range []int{451, 451, 0} {
		err := sinkSend(t, c, "a@example.org", []string{"grey@example.net"}, "x\r\n")
		var se *smtp.SMTPError
		switch {
		case want == 0 && err != nil:
			t.Fatalf("offer %d: %v, want accepted", i, err)
		case want != 0 && (!errors.As(err, &se) || se.Code != want):
			t.Fatalf("offer %d: %v, want %d", i, err, want)
		}
		if want != 0 {
			if err := c.Reset(); err != nil {
				t.Fatalf("RSET: %v", err)
			}
		}
	}
	if n := s.RcptAttempts("grey@example.net"); n != 3 {
		t.Fatalf("RcptAttempts = %d, want 3", n)
	}
	if s.Count() != 1 {
		t.Fatalf("Count = %d, want 1", s.Count())
	}
}

func TestSMTPSinkDataAndMailScripts(t *testing.T) {
	t.Parallel()
	s := StartSMTPSink(t, SinkScript{
		Mail: func(from string) *smtp.SMTPError {
			if from == "blocked@example.org" {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "no"}
			}
			return nil
		},
		Data: func(rcpts []string, body []byte) *smtp.SMTPError {
			if strings.Contains(string(body), "spam") {
				return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "rejected"}
			}
			return nil
		},
	})
	c := sinkDial(t, s)
	var se *smtp.SMTPError
	if err := sinkSend(t, c, "blocked@example.org", []string{"b@example.net"}, "x\r\n"); !errors.As(err, &se) || se.Code != 550 {
		t.Fatalf("blocked sender: %v, want 550", err)
	}
	if err := sinkSend(t, c, "a@example.org", []string{"b@example.net"}, "spam\r\n"); !errors.As(err, &se) || se.Code != 554 {
		t.Fatalf("spam: %v, want 554", err)
	}
	if err := sinkSend(t, c, "a@example.org", []string{"b@example.net"}, "ham\r\n"); err != nil {
		t.Fatalf("ham: %v", err)
	}
	if got := s.Messages(); len(got) != 1 || string(got[0].Data) != "ham\r\n" {
		t.Fatalf("Messages() = %+v, want only the accepted message", got)
	}
}

func TestSMTPSinkGreetRefusal(t *testing.T) {
	t.Parallel()
	var refuse atomic.Bool
	refuse.Store(true)
	s := StartSMTPSink(t, SinkScript{Greet: func() *smtp.SMTPError {
		if refuse.Load() {
			return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "busy"}
		}
		return nil
	}})
	conn, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != "421 4.3.2 busy\r\n" {
		t.Fatalf("banner = %q, %v; want 421 4.3.2 busy", line, err)
	}
	refuse.Store(false)
	sinkDial(t, s)
	if n := s.Sessions(); n != 2 {
		t.Fatalf("Sessions = %d, want 2", n)
	}
}

func TestSMTPSinkSessionCounts(t *testing.T) {
	t.Parallel()
	s := StartSMTPSink(t, SinkScript{})
	a := sinkDial(t, s)
	b := sinkDial(t, s)
	if n := s.MaxConcurrentSessions(); n != 2 {
		t.Fatalf("MaxConcurrentSessions = %d with two open sessions, want 2", n)
	}
	if err := a.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
	if err := b.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
	sinkDial(t, s)
	if n := s.Sessions(); n != 3 {
		t.Fatalf("Sessions = %d, want 3", n)
	}
}

func TestSMTPSinkExtensions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		script   SinkScript
		utf8     bool
		size     int
		starttls bool
	}{
		{"default", SinkScript{}, true, 0, false},
		{"no smtputf8, size limit", SinkScript{DisableSMTPUTF8: true, MaxMessageBytes: 1000}, false, 1000, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := sinkDial(t, StartSMTPSink(t, tc.script))
			for _, ext := range []string{"PIPELINING", "8BITMIME"} {
				if ok, _ := c.Extension(ext); !ok {
					t.Errorf("%s not advertised", ext)
				}
			}
			if ok, _ := c.Extension("SMTPUTF8"); ok != tc.utf8 {
				t.Errorf("SMTPUTF8 advertised = %v, want %v", ok, tc.utf8)
			}
			if size, _ := c.MaxMessageSize(); size != tc.size {
				t.Errorf("SIZE = %d, want %d", size, tc.size)
			}
			if ok, _ := c.Extension("STARTTLS"); ok != tc.starttls {
				t.Errorf("STARTTLS advertised = %v, want %v", ok, tc.starttls)
			}
		})
	}
}

func TestSMTPSinkWaitForCount(t *testing.T) {
	t.Parallel()
	s := StartSMTPSink(t, SinkScript{})
	errc := make(chan error, 1)
	go func() {
		c, err := smtp.Dial(s.Addr().String())
		if err != nil {
			errc <- err
			return
		}
		defer func() { _ = c.Close() }()
		errc <- c.SendMail("a@example.org", []string{"b@example.net"}, strings.NewReader("x\r\n"))
	}()
	s.WaitForCount(t, 1, 10*time.Second)
	if err := <-errc; err != nil {
		t.Fatalf("SendMail: %v", err)
	}
}
