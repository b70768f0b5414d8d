package smtpout

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postflow/postflow/pkg/deliveryerr"
	"github.com/postflow/postflow/pkg/testenv"
)

const testBody = "From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\n" +
	"line one\r\n.leading dot\r\n..two dots\r\n.\r\n\xc3\xa9t\xc3\xa9 8-bit\r\nlast\r\n"

// testConfig uses short timeouts so failures surface quickly; tests that
// exercise a timeout set their own.
func testConfig() Config {
	return Config{HelloName: "client.test", CommandTimeout: 10 * time.Second, DataTimeout: 10 * time.Second, ConnectTimeout: 5 * time.Second}
}

func sinkTarget(s *testenv.SMTPSink) Target {
	return Target{Host: "mx.test", Addr: s.Addr()}
}

// closedTarget returns a loopback address where nothing listens.
func closedTarget(t *testing.T) Target {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr).AddrPort()
	_ = l.Close()
	return Target{Host: "closed.test", Addr: addr}
}

func env(to ...string) Envelope {
	return Envelope{From: "bounce@example.org", To: to}
}

// wantErr checks that r failed with the given temporariness and code.
func wantErr(t *testing.T, what string, r RcptResult, temporary bool, code int, enhanced string) *deliveryerr.Error {
	t.Helper()
	if r.Delivered {
		t.Fatalf("%s: Delivered = true, want a failure %d %s", what, code, enhanced)
	}
	var de *deliveryerr.Error
	if !errors.As(r.Err, &de) {
		t.Fatalf("%s: Err = %v (%T), want *deliveryerr.Error", what, r.Err, r.Err)
	}
	if de.Temporary() != temporary || de.Code != code || de.Enhanced != enhanced {
		t.Fatalf("%s: Err = %q (temporary %v), want %d %s (temporary %v)", what, de, de.Temporary(), code, enhanced, temporary)
	}
	return de
}

func TestDeliverBodyByteIdentical(t *testing.T) {
	t.Parallel()
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{})
	c := New(testConfig())
	res := c.Deliver(context.Background(), []Target{sinkTarget(sink)}, env("b@example.net", "c@example.net"), []byte(testBody))
	for i, r := range res.Recipients {
		if !r.Delivered || r.Err != nil {
			t.Fatalf("Recipients[%d] = %+v, want delivered", i, r)
		}
	}
	if res.Reply == nil || res.Reply.Code != 250 || res.Reply.Enhanced != "2.0.0" || !res.Reply.Remote {
		t.Fatalf("Reply = %#v, want remote 250 2.0.0", res.Reply)
	}
	if res.Target != sinkTarget(sink) {
		t.Fatalf("Target = %v, want %v", res.Target, sinkTarget(sink))
	}
	msgs := sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("sink got %d messages, want 1", len(msgs))
	}
	if got := string(msgs[0].Data); got != testBody {
		t.Fatalf("sink body = %q, want %q", got, testBody)
	}
	if msgs[0].From != "bounce@example.org" || strings.Join(msgs[0].To, ",") != "b@example.net,c@example.net" {
		t.Fatalf("sink envelope = %q -> %q", msgs[0].From, msgs[0].To)
	}
}

func TestDeliverNullSenderAndBareLineEndings(t *testing.T) {
	t.Parallel()
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{})
	res := New(testConfig()).Deliver(context.Background(), []Target{sinkTarget(sink)},
		Envelope{To: []string{"b@example.net"}}, []byte("a\nb\rc\r\n.\nd"))
	if !res.Recipients[0].Delivered {
		t.Fatalf("Recipients[0] = %+v, want delivered", res.Recipients[0])
	}
	m := sink.Messages()[0]
	if want := "a\r\nb\r\nc\r\n.\r\nd\r\n"; string(m.Data) != want || m.From != "" {
		t.Fatalf("sink got from %q body %q, want <> and %q", m.From, m.Data, want)
	}
}

func TestDeliverPerRecipientReplies(t *testing.T) {
	t.Parallel()
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{
		Rcpt: func(addr string, _ int) *smtp.SMTPError {
			switch addr {
			case "gone@example.net":
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			case "full@example.net":
				return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "too many recipients"}
			}
			return nil
		},
	})
	res := New(testConfig()).Deliver(context.Background(), []Target{sinkTarget(sink)},
		env("ok@example.net", "gone@example.net", "full@example.net"), []byte(testBody))
	if !res.Recipients[0].Delivered {
		t.Fatalf("ok: %+v, want delivered", res.Recipients[0])
	}
	de := wantErr(t, "gone", res.Recipients[1], false, 550, "5.1.1")
	if !de.Remote || de.Message != "no such user" {
		t.Fatalf("gone: %#v, want remote reply text", de)
	}
	checkErr(t, "full", res.Recipients[2], true, 452, "4.5.3")
	msgs := sink.Messages()
	if len(msgs) != 1 || strings.Join(msgs[0].To, ",") != "ok@example.net" {
		t.Fatalf("sink messages = %+v, want one to ok@example.net", msgs)
	}
}

func TestDeliverNoRecipientAccepted(t *testing.T) {
	t.Parallel()
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{
		Rcpt: func(string, int) *smtp.SMTPError {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no"}
		},
	})
	res := New(testConfig()).Deliver(context.Background(), []Target{sinkTarget(sink)}, env("a@example.net"), []byte(testBody))
	checkErr(t, "a", res.Recipients[0], false, 550, "5.1.1")
	if res.Reply != nil || sink.Count() != 0 {
		t.Fatalf("Reply = %v, sink count = %d; want nil and 0", res.Reply, sink.Count())
	}
}

func TestDeliverDataReplies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		reply     *smtp.SMTPError
		temporary bool
		code      int
		enhanced  string
	}{
		{"554 after dot", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "content rejected"}, false, 554, "5.6.0"},
		{"451 after dot", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}, true, 451, "4.3.0"},
		{"no enhanced code", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.NoEnhancedCode, Message: "no"}, false, 554, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := testenv.StartSMTPSink(t, testenv.SinkScript{
				Data: func([]string, []byte) *smtp.SMTPError { return tc.reply },
			})
			res := New(testConfig()).Deliver(context.Background(), []Target{sinkTarget(sink)},
				env("a@example.net", "b@example.net"), []byte(testBody))
			for i, r := range res.Recipients {
				checkErr(t, fmt.Sprintf("Recipients[%d]", i), r, tc.temporary, tc.code, tc.enhanced)
				if r.PossibleDuplicate {
					t.Fatalf("Recipients[%d].PossibleDuplicate = true after a reply", i)
				}
			}
		})
	}
}

func TestDeliverFallsBackToNextTarget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		first func(t *testing.T) Target
	}{
		{"421 at banner", func(t *testing.T) Target {
			s := testenv.StartSMTPSink(t, testenv.SinkScript{Greet: func() *smtp.SMTPError {
				return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "busy"}
			}})
			return sinkTarget(s)
		}},
		{"451 at MAIL", func(t *testing.T) Target {
			s := testenv.StartSMTPSink(t, testenv.SinkScript{Mail: func(string) *smtp.SMTPError {
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "later"}
			}})
			return sinkTarget(s)
		}},
		{"connection refused", closedTarget},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			first := tc.first(t)
			second := testenv.StartSMTPSink(t, testenv.SinkScript{})
			want := Target{Host: "mx2.test", Addr: second.Addr()}
			res := New(testConfig()).Deliver(context.Background(), []Target{first, want}, env("a@example.net"), []byte(testBody))
			if !res.Recipients[0].Delivered {
				t.Fatalf("Recipients[0] = %+v, want delivered via second target", res.Recipients[0])
			}
			if res.Target != want || second.Count() != 1 {
				t.Fatalf("Target = %v, second sink count %d; want %v and 1", res.Target, second.Count(), want)
			}
		})
	}
}

func TestDeliverPermanentBeforeRcptStops(t *testing.T) {
	t.Parallel()
	reject := &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "go away"}
	tests := []struct {
		name   string
		script testenv.SinkScript
	}{
		{"554 at banner", testenv.SinkScript{Greet: func() *smtp.SMTPError { return reject }}},
		{"554 at MAIL", testenv.SinkScript{Mail: func(string) *smtp.SMTPError { return reject }}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			first := testenv.StartSMTPSink(t, tc.script)
			second := testenv.StartSMTPSink(t, testenv.SinkScript{})
			res := New(testConfig()).Deliver(context.Background(), []Target{sinkTarget(first), sinkTarget(second)},
				env("a@example.net", "b@example.net"), []byte(testBody))
			for i, r := range res.Recipients {
				checkErr(t, fmt.Sprintf("Recipients[%d]", i), r, false, 554, "5.7.1")
			}
			if second.Sessions() != 0 {
				t.Fatalf("second target got %d sessions, want 0", second.Sessions())
			}
		})
	}
}

func TestDeliverMailRejectionNotCached(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{Mail: func(string) *smtp.SMTPError {
		if calls.Add(1) == 1 {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "sender refused"}
		}
		return nil
	}})
	c := New(testConfig())
	first := c.Deliver(context.Background(), []Target{sinkTarget(sink)}, env("a@example.net"), []byte(testBody))
	checkErr(t, "first", first.Recipients[0], false, 550, "5.7.1")
	second := c.Deliver(context.Background(), []Target{sinkTarget(sink)}, env("a@example.net"), []byte(testBody))
	if !second.Recipients[0].Delivered {
		t.Fatalf("second message: %+v, want delivered (MAIL rejection must not be cached)", second.Recipients[0])
	}
}

func TestDeliverAllTargetsFail(t *testing.T) {
	t.Parallel()
	a, b := closedTarget(t), closedTarget(t)
	res := New(testConfig()).Deliver(context.Background(), []Target{a, b}, env("x@example.net", "y@example.net"), []byte(testBody))
	for i, r := range res.Recipients {
		de := wantErr(t, fmt.Sprintf("Recipients[%d]", i), r, true, 451, "4.4.1")
		if de.Remote || de.Err == nil {
			t.Fatalf("Recipients[%d].Err = %#v, want a local error with a cause", i, de)
		}
	}
	if res.Target != b {
		t.Fatalf("Target = %v, want last tried %v", res.Target, b)
	}
}

func TestDeliverMaxSessions(t *testing.T) {
	t.Parallel()
	third := testenv.StartSMTPSink(t, testenv.SinkScript{})
	targets := []Target{closedTarget(t), closedTarget(t), sinkTarget(third)}
	res := New(testConfig()).Deliver(context.Background(), targets, env("x@example.net"), []byte(testBody))
	checkErr(t, "x", res.Recipients[0], true, 451, "4.4.1")
	if third.Sessions() != 0 {
		t.Fatalf("third target got %d sessions, want 0 with MaxSessions 2", third.Sessions())
	}

	cfg := testConfig()
	cfg.MaxSessions = 3
	res = New(cfg).Deliver(context.Background(), targets, env("x@example.net"), []byte(testBody))
	if !res.Recipients[0].Delivered {
		t.Fatalf("MaxSessions 3: %+v, want delivered", res.Recipients[0])
	}
}

func TestDeliverNoTargets(t *testing.T) {
	t.Parallel()
	res := New(testConfig()).Deliver(context.Background(), nil, env("x@example.net"), []byte(testBody))
	checkErr(t, "x", res.Recipients[0], true, 451, "4.4.4")
}

func TestDeliverInvalidAddresses(t *testing.T) {
	t.Parallel()
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{})
	res := New(testConfig()).Deliver(context.Background(), []Target{sinkTarget(sink)},
		env("ok@example.net", "bad\r\nRCPT TO:<x@example.net>"), []byte(testBody))
	if !res.Recipients[0].Delivered {
		t.Fatalf("ok: %+v, want delivered", res.Recipients[0])
	}
	checkErr(t, "bad", res.Recipients[1], false, 553, "5.1.3")

	res = New(testConfig()).Deliver(context.Background(), []Target{sinkTarget(sink)},
		Envelope{From: "a>b@example.org", To: []string{"ok@example.net"}}, []byte(testBody))
	checkErr(t, "bad sender", res.Recipients[0], false, 553, "5.1.7")
}

func TestDeliverContextCancelReturnsPromptly(t *testing.T) {
	t.Parallel()
	inRcpt := make(chan struct{}, 1)
	release := make(chan struct{})
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{Rcpt: func(string, int) *smtp.SMTPError {
		inRcpt <- struct{}{}
		<-release
		return nil
	}})
	t.Cleanup(func() { close(release) })

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Result, 1)
	go func() {
		done <- New(testConfig()).Deliver(ctx, []Target{sinkTarget(sink)}, env("a@example.net"), []byte(testBody))
	}()
	select {
	case <-inRcpt:
	case <-time.After(10 * time.Second):
		t.Fatal("sink never saw RCPT")
	}
	cancel()
	select {
	case res := <-done:
		de := wantErr(t, "a", res.Recipients[0], true, 451, "4.4.2")
		if !errors.Is(de, context.Canceled) {
			t.Fatalf("Err = %v, want it to wrap context.Canceled", de)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Deliver did not return within 2s of cancel")
	}
}

func TestDeliverContextDeadlineBoundsSession(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{Mail: func(string) *smtp.SMTPError {
		<-release
		return nil
	}})
	t.Cleanup(func() { close(release) })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	res := New(testConfig()).Deliver(ctx, []Target{sinkTarget(sink)}, env("a@example.net"), []byte(testBody))
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Deliver took %v with a 200ms context, want it bounded by the context", took)
	}
	checkErr(t, "a", res.Recipients[0], true, 451, "4.4.2")
}

func TestDeliverTimeoutAfterDotIsPossibleDuplicate(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{Data: func([]string, []byte) *smtp.SMTPError {
		<-release
		return nil
	}})
	t.Cleanup(func() { close(release) })
	cfg := testConfig()
	cfg.DataTimeout = 300 * time.Millisecond
	start := time.Now()
	res := New(cfg).Deliver(context.Background(), []Target{sinkTarget(sink)}, env("a@example.net", "b@example.net"), []byte(testBody))
	took := time.Since(start)
	for i, r := range res.Recipients {
		checkErr(t, fmt.Sprintf("Recipients[%d]", i), r, true, 451, "4.4.2")
		if !r.PossibleDuplicate {
			t.Fatalf("Recipients[%d].PossibleDuplicate = false, want true after a post-dot timeout", i)
		}
	}
	if took < cfg.DataTimeout || took > cfg.DataTimeout+3*time.Second {
		t.Fatalf("Deliver took %v, want about DataTimeout %v", took, cfg.DataTimeout)
	}
}

// startScriptedServer runs a one-connection server for protocol edge cases
// go-smtp's server cannot produce. reply answers each command line (CRLF
// trimmed) by writing to conn; it returns false to end the session.
func startScriptedServer(t *testing.T, reply func(cmd string, conn net.Conn, r *bufio.Reader) bool) Target {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		_ = l.Close()
		<-done
	})
	go func() {
		defer close(done)
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer func() { _ = conn.Close() }()
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		r := bufio.NewReader(conn)
		_, _ = io.WriteString(conn, "220 scripted.test ESMTP\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil || !reply(strings.TrimRight(line, "\r\n"), conn, r) {
				return
			}
		}
	}()
	return Target{Host: "scripted.test", Addr: l.Addr().(*net.TCPAddr).AddrPort()}
}

// basicReply answers like a minimal server without extensions.
// readDataLines reads a DATA body up to the lone "." line and returns it
// as sent (still dot-stuffed), or false if the connection ended first.
func readDataLines(r *bufio.Reader) (string, bool) {
	var b strings.Builder
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", false
		}
		if line == ".\r\n" {
			return b.String(), true
		}
		b.WriteString(line)
	}
}

func basicReply(cmd string, conn net.Conn) bool {
	switch {
	case strings.HasPrefix(cmd, "EHLO"):
		_, _ = io.WriteString(conn, "250-scripted.test\r\n250 8BITMIME\r\n")
	case cmd == "QUIT":
		_, _ = io.WriteString(conn, "221 bye\r\n")
		return false
	default:
		_, _ = io.WriteString(conn, "250 ok\r\n")
	}
	return true
}

func TestDeliverDropMidDataNotPossibleDuplicate(t *testing.T) {
	t.Parallel()
	target := startScriptedServer(t, func(cmd string, conn net.Conn, r *bufio.Reader) bool {
		if cmd != "DATA" {
			return basicReply(cmd, conn)
		}
		_, _ = io.WriteString(conn, "354 go ahead\r\n")
		_, _ = io.ReadFull(r, make([]byte, 1024))
		// Closing with unread data makes the kernel reset the connection.
		return false
	})
	// Larger than any loopback socket buffers, so the drop is seen while
	// the body is still being written.
	body := bytes.Repeat([]byte("0123456789012345678901234567890123456789012345678901234567890123456789\r\n"), 64<<20/72)
	res := New(testConfig()).Deliver(context.Background(), []Target{target}, env("a@example.net"), body)
	r := res.Recipients[0]
	checkErr(t, "a", r, true, 451, "4.4.2")
	if r.PossibleDuplicate {
		t.Fatal("PossibleDuplicate = true for a drop before the final dot")
	}
}

func TestDeliverSMTPUTF8NotOffered(t *testing.T) {
	t.Parallel()
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{DisableSMTPUTF8: true})
	e := env("j\u00f6rg@example.net")
	e.SMTPUTF8 = true
	res := New(testConfig()).Deliver(context.Background(), []Target{sinkTarget(sink)}, e, []byte(testBody))
	checkErr(t, "jörg", res.Recipients[0], false, 550, "5.6.7")
	if sink.RcptAttempts("j\u00f6rg@example.net") != 0 || sink.Count() != 0 {
		t.Fatal("recipient was offered to a server without SMTPUTF8")
	}

	utf8Sink := testenv.StartSMTPSink(t, testenv.SinkScript{})
	res = New(testConfig()).Deliver(context.Background(), []Target{sinkTarget(utf8Sink)}, e, []byte(testBody))
	if !res.Recipients[0].Delivered {
		t.Fatalf("with SMTPUTF8 offered: %+v, want delivered", res.Recipients[0])
	}
}

func TestDeliverMessageTooLargeForServer(t *testing.T) {
	t.Parallel()
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{MaxMessageBytes: 100})
	res := New(testConfig()).Deliver(context.Background(), []Target{sinkTarget(sink)}, env("a@example.net"), bytes.Repeat([]byte("x\r\n"), 100))
	checkErr(t, "a", res.Recipients[0], false, 552, "5.3.4")
	if sink.RcptAttempts("a@example.net") != 0 {
		t.Fatal("recipient offered although the message exceeds the advertised SIZE")
	}
}

// selfSigned returns a server certificate for mx.test and 127.0.0.1 and a
// pool that trusts it, from a throwaway CA.
func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	ca := testenv.NewCA(t)
	return ca.Issue("mx.test", "127.0.0.1"), ca.Pool()
}

func TestDeliverSTARTTLS(t *testing.T) {
	t.Parallel()
	cert, pool := selfSigned(t)
	tests := []struct {
		name         string
		roots        *x509.CertPool
		host         string
		wantVerified bool
	}{
		{"trusted", pool, "mx.test", true},
		{"trusted with trailing dot", pool, "mx.test.", true},
		{"untrusted", x509.NewCertPool(), "mx.test", false},
		{"name mismatch", pool, "other.test", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := testenv.StartSMTPSink(t, testenv.SinkScript{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
			cfg := testConfig()
			cfg.TLSConfig = &tls.Config{RootCAs: tc.roots}
			target := Target{Host: tc.host, Addr: sink.Addr()}
			res := New(cfg).Deliver(context.Background(), []Target{target}, env("a@example.net"), []byte(testBody))
			if !res.Recipients[0].Delivered {
				t.Fatalf("Recipients[0] = %+v, want delivered", res.Recipients[0])
			}
			if res.TLS.Version != "TLS 1.3" || res.TLS.Cipher == "" || res.TLS.Verified != tc.wantVerified {
				t.Fatalf("TLS = %+v, want TLS 1.3 with a cipher and Verified %v", res.TLS, tc.wantVerified)
			}
			if got := sink.Messages()[0].Data; !bytes.Equal(got, []byte(testBody)) {
				t.Fatalf("sink body over TLS = %q, want %q", got, testBody)
			}
		})
	}
}

func TestDeliverPlaintextHasNoTLSInfo(t *testing.T) {
	t.Parallel()
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{})
	res := New(testConfig()).Deliver(context.Background(), []Target{sinkTarget(sink)}, env("a@example.net"), []byte(testBody))
	if res.TLS != (TLSInfo{}) {
		t.Fatalf("TLS = %+v, want zero for a plain-text session", res.TLS)
	}
}

func TestFromSMTP(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in        *smtp.SMTPError
		code      int
		enhanced  string
		msg       string
		temporary bool
	}{
		{&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no"}, 550, "5.1.1", "no", false},
		{&smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "full"}, 452, "4.5.3", "full", true},
		{&smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "too many recipients"}, 552, "4.5.3", "too many recipients", true},
		{&smtp.SMTPError{Code: 421, EnhancedCode: smtp.NoEnhancedCode, Message: "bye"}, 421, "", "bye", true},
		{&smtp.SMTPError{Code: 554, Message: "line1\nline2"}, 554, "", "line1 line2", false},
	}
	for _, tc := range tests {
		got := fromSMTP(tc.in)
		if got.Code != tc.code || got.Enhanced != tc.enhanced || got.Message != tc.msg || !got.Remote || got.Temporary() != tc.temporary {
			t.Errorf("fromSMTP(%+v) = %#v (temporary %v), want %d %q %q temporary %v", tc.in, got, got.Temporary(), tc.code, tc.enhanced, tc.msg, tc.temporary)
		}
	}
}

func TestParseReply(t *testing.T) {
	t.Parallel()
	tests := []struct {
		text, enhanced, msg string
	}{
		{"2.0.0 Ok: queued as ABC", "2.0.0", "Ok: queued as ABC"},
		{"Ok queued", "", "Ok queued"},
		{"2.0 partial", "", "2.0 partial"},
		{"9.9.9 odd", "", "9.9.9 odd"},
		{"2.0.0", "2.0.0", ""},
	}
	for _, tc := range tests {
		got := parseReply(250, tc.text)
		if got.Enhanced != tc.enhanced || got.Message != tc.msg {
			t.Errorf("parseReply(250, %q) = %q %q, want %q %q", tc.text, got.Enhanced, got.Message, tc.enhanced, tc.msg)
		}
	}
}

func TestCanonicalCRLF(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"", ""},
		{"a\r\nb\r\n", "a\r\nb\r\n"},
		{"a\nb", "a\r\nb"},
		{"a\rb", "a\r\nb"},
		{"a\r\r\n", "a\r\n\r\n"},
		{"\n\r", "\r\n\r\n"},
	}
	for _, tc := range tests {
		if got := string(canonicalCRLF([]byte(tc.in))); got != tc.want {
			t.Errorf("canonicalCRLF(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero", Config{}, true},
		{"negative timeout", Config{CommandTimeout: -1}, false},
		{"hello with space", Config{HelloName: "a b"}, false},
		{"negative sessions", Config{MaxSessions: -1}, false},
	}
	for _, tc := range tests {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}

func TestDefaultsMeetRFC5321(t *testing.T) {
	t.Parallel()
	c := New(Config{})
	// RFC 5321 §4.5.3.2: at least 5 minutes for MAIL and RCPT replies and
	// 10 minutes after the final dot.
	if c.cfg.CommandTimeout < 5*time.Minute || c.cfg.DataTimeout < 10*time.Minute {
		t.Fatalf("defaults: command %v, data %v; want >= 5m and >= 10m", c.cfg.CommandTimeout, c.cfg.DataTimeout)
	}
	if c.cfg.HelloName == "" || c.cfg.MaxSessions != 2 || c.cfg.ConnectTimeout != 30*time.Second {
		t.Fatalf("defaults = %+v", c.cfg)
	}
}

func TestDeliverSTARTTLSRefusedContinuesInPlaintext(t *testing.T) {
	t.Parallel()
	var got strings.Builder
	target := startScriptedServer(t, func(cmd string, conn net.Conn, r *bufio.Reader) bool {
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			_, _ = io.WriteString(conn, "250-scripted.test\r\n250 STARTTLS\r\n")
		case cmd == "STARTTLS":
			_, _ = io.WriteString(conn, "454 4.7.0 TLS not available\r\n")
		case cmd == "DATA":
			_, _ = io.WriteString(conn, "354 go ahead\r\n")
			body, ok := readDataLines(r)
			if !ok {
				return false
			}
			got.WriteString(body)
			_, _ = io.WriteString(conn, "250 2.0.0 queued\r\n")
		default:
			return basicReply(cmd, conn)
		}
		return true
	})
	res := New(testConfig()).Deliver(context.Background(), []Target{target}, env("a@example.net"), []byte("x\r\n"))
	if !res.Recipients[0].Delivered || res.TLS != (TLSInfo{}) {
		t.Fatalf("Recipients[0] = %+v, TLS = %+v; want delivered in plain text", res.Recipients[0], res.TLS)
	}
	if got.String() != "x\r\n" {
		t.Fatalf("server got body %q, want %q", got.String(), "x\r\n")
	}
}

func TestDeliverSTARTTLSInjectionRejected(t *testing.T) {
	t.Parallel()
	target := startScriptedServer(t, func(cmd string, conn net.Conn, r *bufio.Reader) bool {
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			_, _ = io.WriteString(conn, "250-scripted.test\r\n250 STARTTLS\r\n")
		case cmd == "STARTTLS":
			// A reply plus plaintext that would be read as if it came
			// over TLS.
			_, _ = io.WriteString(conn, "220 go ahead\r\n250 injected\r\n")
		default:
			return basicReply(cmd, conn)
		}
		return true
	})
	second := testenv.StartSMTPSink(t, testenv.SinkScript{})
	res := New(testConfig()).Deliver(context.Background(), []Target{target, sinkTarget(second)}, env("a@example.net"), []byte(testBody))
	if !res.Recipients[0].Delivered || res.Target != sinkTarget(second) {
		t.Fatalf("Recipients[0] = %+v via %v, want delivered via the second target", res.Recipients[0], res.Target)
	}
}

// checkErr is wantErr for callers that need only the assertion.
func checkErr(t *testing.T, what string, r RcptResult, temporary bool, code int, enhanced string) {
	t.Helper()
	_ = wantErr(t, what, r, temporary, code, enhanced)
}
