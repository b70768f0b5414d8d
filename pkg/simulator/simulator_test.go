package simulator

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postflow/postflow/pkg/deliveryerr"
	"github.com/postflow/postflow/pkg/smtpout"
)

const body = "From: a@example.org\r\nTo: x@" + Domain + "\r\nSubject: sim\r\n\r\nhello\r\n"

func start(t *testing.T) *Server {
	t.Helper()
	s, err := Start("127.0.0.1:0", nil)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func deliver(t *testing.T, s *Server, to ...string) smtpout.Result {
	t.Helper()
	c := smtpout.New(smtpout.Config{HelloName: "client.test", CommandTimeout: 10 * time.Second, DataTimeout: 10 * time.Second})
	target := smtpout.Target{Host: Domain, Addr: netip.MustParseAddrPort(s.Addr())}
	return c.Deliver(context.Background(), []smtpout.Target{target}, smtpout.Envelope{From: "sender@example.org", To: to}, []byte(body))
}

// outcome renders a recipient result as "delivered" or "<code> <enhanced>".
func outcome(t *testing.T, r smtpout.RcptResult) string {
	t.Helper()
	if r.Delivered {
		return "delivered"
	}
	var de *deliveryerr.Error
	if !errors.As(r.Err, &de) {
		t.Fatalf("Err = %v (%T), want *deliveryerr.Error", r.Err, r.Err)
	}
	if !de.Remote {
		t.Fatalf("Err = %v, want a reply from the simulator", de)
	}
	return strings.TrimSpace(strconv.Itoa(de.Code) + " " + de.Enhanced)
}

func TestLocalParts(t *testing.T) {
	t.Parallel()
	s := start(t)
	tests := []struct {
		to   string
		want string
		text string // substring of the reply text
	}{
		{"success@" + Domain, "delivered", ""},
		{"success+42@" + Domain, "delivered", ""},
		{"SUCCESS@SIMULATOR.postflow.TEST", "delivered", ""},
		{"bounce@" + Domain, "550 5.1.1", "simulated: mailbox does not exist"},
		{"Bounce+x@" + Domain, "550 5.1.1", "simulated: mailbox does not exist"},
		{"nobody@" + Domain, "550 5.1.1", "success, bounce, tempfail, slow"},
		{"success@example.com", "550 5.7.1", "relay"},
		{"success@sub." + Domain, "550 5.7.1", "relay"},
	}
	for _, tc := range tests {
		t.Run(tc.to, func(t *testing.T) {
			t.Parallel()
			res := deliver(t, s, tc.to)
			r := res.Recipients[0]
			if got := outcome(t, r); got != tc.want {
				t.Fatalf("deliver to %s = %s (%v), want %s", tc.to, got, r.Err, tc.want)
			}
			if tc.want == "delivered" {
				if res.Reply == nil || res.Reply.Enhanced != "2.0.0" || !strings.HasPrefix(res.Reply.Message, "Ok: queued as ") ||
					len(res.Reply.Message) <= len("Ok: queued as ") {
					t.Fatalf("deliver to %s: Reply = %#v, want 250 2.0.0 Ok: queued as <id>", tc.to, res.Reply)
				}
				return
			}
			if !strings.Contains(r.Err.Error(), tc.text) {
				t.Fatalf("deliver to %s: Err = %q, want it to contain %q", tc.to, r.Err, tc.text)
			}
		})
	}
}

func TestQueueIDsDiffer(t *testing.T) {
	t.Parallel()
	s := start(t)
	a := deliver(t, s, "success@"+Domain)
	b := deliver(t, s, "success@"+Domain)
	if a.Reply == nil || b.Reply == nil || a.Reply.Message == b.Reply.Message {
		t.Fatalf("replies %v and %v, want two different queue ids", a.Reply, b.Reply)
	}
}

func TestTempfailTwiceThenSuccess(t *testing.T) {
	t.Parallel()
	s := start(t)
	a := "tempfail+a@" + Domain
	b := "tempfail+b@" + Domain
	steps := []struct {
		to   string
		want string
	}{
		{a, "451 4.7.1"},
		{a, "451 4.7.1"},
		{b, "451 4.7.1"}, // labels count separately
		{a, "delivered"},
		{a, "delivered"},
		{b, "451 4.7.1"},
		{b, "delivered"},
		{"tempfail@" + Domain, "451 4.7.1"},
	}
	for i, st := range steps {
		r := deliver(t, s, st.to).Recipients[0]
		if got := outcome(t, r); got != st.want {
			t.Fatalf("step %d: deliver to %s = %s (%v), want %s", i, st.to, got, r.Err, st.want)
		}
	}
}

func TestMixedRecipientsInOneTransaction(t *testing.T) {
	t.Parallel()
	s := start(t)
	res := deliver(t, s, "success@"+Domain, "bounce@"+Domain, "tempfail+mixed@"+Domain)
	want := []string{"delivered", "550 5.1.1", "451 4.7.1"}
	for i, r := range res.Recipients {
		if got := outcome(t, r); got != want[i] {
			t.Fatalf("Recipients[%d] = %s (%v), want %s", i, got, r.Err, want[i])
		}
	}
}

func TestSlowDelaysReplyAfterDot(t *testing.T) {
	t.Parallel()
	s := start(t)
	begin := time.Now()
	res := deliver(t, s, "slow+1@"+Domain)
	took := time.Since(begin)
	if got := outcome(t, res.Recipients[0]); got != "delivered" {
		t.Fatalf("deliver to slow = %s, want delivered", got)
	}
	if took < slowDelay || took > slowDelay+5*time.Second {
		t.Fatalf("deliver to slow took %v, want about %v", took, slowDelay)
	}
}

func TestCloseEndsSlowWait(t *testing.T) {
	t.Parallel()
	s, err := Start("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan smtpout.Result, 1)
	go func() { done <- deliver(t, s, "slow@"+Domain) }()

	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for s.slowWaiting.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no session reached the slow wait within 10s")
		}
		<-tick.C
	}
	begin := time.Now()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case res := <-done:
		if res.Recipients[0].Delivered {
			t.Fatal("slow message delivered although the server closed first")
		}
	case <-time.After(slowDelay):
		t.Fatal("delivery still waiting after Close")
	}
	if took := time.Since(begin); took >= slowDelay {
		t.Fatalf("Close and the client's failure took %v, want less than the slow delay %v", took, slowDelay)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestAdvertisesSizeAndSMTPUTF8(t *testing.T) {
	t.Parallel()
	s := start(t)
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if size, ok := c.MaxMessageSize(); !ok || size != MaxMessageBytes {
		t.Fatalf("SIZE = %d, %v; want %d", size, ok, MaxMessageBytes)
	}
	if ok, _ := c.Extension("SMTPUTF8"); !ok {
		t.Fatal("SMTPUTF8 not advertised")
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("Quit: %v", err)
	}
}

func TestTempfailCounterBounded(t *testing.T) {
	t.Parallel()
	s := &Server{offers: make(map[string]int)}
	for i := range maxTracked + 10 {
		s.offer("tempfail+" + strconv.Itoa(i%1000) + strings.Repeat("x", i/1000) + "@" + Domain)
	}
	if n := len(s.offers); n > maxTracked {
		t.Fatalf("tracked %d addresses, want at most %d", n, maxTracked)
	}
}
