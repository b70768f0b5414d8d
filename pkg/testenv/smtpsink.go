package testenv

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// SinkScript decides how an SMTPSink answers. The zero value accepts every
// recipient and every message. The functions run on the sink's session
// goroutines, possibly concurrently, so they must be safe for concurrent use.
type SinkScript struct {
	// Mail, if set, decides the reply to MAIL FROM; nil accepts with 250.
	Mail func(from string) *smtp.SMTPError
	// Rcpt, if set, decides the reply to RCPT TO. addr is the address as the
	// client sent it; n is how many times that address was offered before
	// (0 on the first offer), counted across all sessions. A nil reply
	// accepts the recipient with 250.
	Rcpt func(addr string, n int) *smtp.SMTPError
	// Data, if set, decides the reply after the final dot; rcpts are the
	// recipients accepted in this transaction and body is the message as
	// received. A nil reply accepts the message with 250 and records it. Data
	// may block, for instance to simulate a server stuck after the dot; it
	// must return once the test ends (close a channel in t.Cleanup).
	Data func(rcpts []string, body []byte) *smtp.SMTPError
	// Greet, if set and it returns non-nil, is sent in place of the 220
	// banner and the connection is closed, the way a server answers 421 or
	// 554 at connection time.
	Greet func() *smtp.SMTPError
	// TLS, if set, makes the sink offer STARTTLS with this configuration.
	TLS *tls.Config
	// DisableSMTPUTF8 stops the sink advertising SMTPUTF8 (RFC 6531); by
	// default it advertises it.
	DisableSMTPUTF8 bool
	// MaxMessageBytes, if positive, is advertised with SIZE and enforced.
	MaxMessageBytes int64
	// ImplicitTLS makes the sink speak TLS from the first byte with the
	// TLS configuration, as a submission server on port 465 does.
	ImplicitTLS bool
	// Auth, if set, makes the sink a relay that wants a login: it offers
	// AUTH (over TLS only) with the mechanisms in AuthMechanisms, accepts
	// these username → password pairs, and answers MAIL before a login
	// with go-smtp's 502 5.7.0.
	Auth map[string]string
	// AuthMechanisms lists the mechanisms offered; default PLAIN and LOGIN.
	AuthMechanisms []string
}

// SinkMessage is one message the sink accepted.
type SinkMessage struct {
	// From is the reverse-path from MAIL FROM.
	From string
	// To holds the recipients accepted in the transaction, in RCPT order.
	To []string
	// Data is the message exactly as received: dot-unstuffing undone, line
	// endings as they were on the wire, the terminating ".\r\n" removed.
	Data []byte
	// Received is when the sink accepted the message.
	Received time.Time
	// AuthUser is the username the session logged in as, if any.
	AuthUser string
}

// SMTPSink is a scripted go-smtp server on a loopback port that records
// every message it accepts. Messages refused by SinkScript.Data are not
// recorded. It advertises PIPELINING and 8BITMIME (go-smtp always does),
// SMTPUTF8 unless disabled, SIZE, and STARTTLS when SinkScript.TLS is set.
type SMTPSink struct {
	script SinkScript
	server *smtp.Server
	ln     *sinkListener
	addr   netip.AddrPort
	served chan struct{}

	mu       sync.Mutex
	messages []SinkMessage
	attempts map[string]int
	sessions int
	open     int
	maxOpen  int
}

// StartSMTPSink starts a sink on 127.0.0.1 with a kernel-chosen port and
// stops it in t.Cleanup. It fails the test if it cannot listen.
func StartSMTPSink(t testing.TB, script SinkScript) *SMTPSink {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: smtp sink listen: %v", err)
	}
	s := &SMTPSink{
		script:   script,
		attempts: make(map[string]int),
		addr:     l.Addr().(*net.TCPAddr).AddrPort(),
		served:   make(chan struct{}),
	}
	s.ln = &sinkListener{Listener: l, sink: s}

	logger := &sinkLogger{t: t}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = "sink.test"
	srv.TLSConfig = script.TLS
	srv.EnableSMTPUTF8 = !script.DisableSMTPUTF8
	srv.MaxMessageBytes = script.MaxMessageBytes
	srv.ErrorLog = logger
	// A stuck client must not keep a session goroutine forever.
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	s.server = srv

	var ln net.Listener = s.ln
	if script.ImplicitTLS {
		if script.TLS == nil {
			t.Fatal("testenv: smtp sink: ImplicitTLS needs a TLS configuration")
		}
		ln = tls.NewListener(s.ln, script.TLS)
	}
	go func() {
		defer close(s.served)
		_ = srv.Serve(ln)
	}()

	t.Cleanup(func() {
		_ = srv.Close()
		<-s.served
		// Server.Close closes the connections it tracks; the rest close
		// when their session goroutine ends. Bound the wait so a script
		// that never returns fails the test instead of hanging it.
		closed := make(chan struct{})
		go func() {
			s.ln.wg.Wait()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Errorf("testenv: smtp sink connections still open 10s after close")
		}
		logger.stop()
	})
	return s
}

// Addr returns the address the sink listens on.
func (s *SMTPSink) Addr() netip.AddrPort { return s.addr }

// Messages returns a copy of the messages accepted so far, in order.
func (s *SMTPSink) Messages() []SinkMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SinkMessage, len(s.messages))
	for i, m := range s.messages {
		m.To = slices.Clone(m.To)
		m.Data = bytes.Clone(m.Data)
		out[i] = m
	}
	return out
}

// Count returns how many messages the sink has accepted.
func (s *SMTPSink) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.messages)
}

// RcptAttempts returns how many times addr was offered in RCPT TO, whatever
// the reply.
func (s *SMTPSink) RcptAttempts(addr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts[addr]
}

// Sessions returns how many connections the sink has accepted, including
// those refused at the banner.
func (s *SMTPSink) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

// MaxConcurrentSessions returns the largest number of connections that were
// open at the same time.
func (s *SMTPSink) MaxConcurrentSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxOpen
}

// WaitForCount polls until the sink has accepted at least n messages and
// fails the test with the count reached if timeout passes first.
func (s *SMTPSink) WaitForCount(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		got := s.Count()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtp sink: %d messages after %v, want %d", got, timeout, n)
		}
		<-tick.C
	}
}

func (s *SMTPSink) newSession(*smtp.Conn) (smtp.Session, error) {
	ss := &sinkSession{sink: s}
	if s.script.Auth != nil {
		return &authSinkSession{sinkSession: ss}, nil
	}
	return ss, nil
}

func (s *SMTPSink) connOpened() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions++
	s.open++
	s.maxOpen = max(s.maxOpen, s.open)
}

func (s *SMTPSink) connClosed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.open--
}

// sinkSession is one SMTP session; go-smtp calls it from one goroutine.
type sinkSession struct {
	sink     *SMTPSink
	from     string
	rcpts    []string
	authUser string
}

func (ss *sinkSession) Reset() {
	ss.from = ""
	ss.rcpts = nil
}

func (ss *sinkSession) Logout() error { return nil }

func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.from = ""
	ss.rcpts = nil
	if ss.sink.script.Auth != nil && ss.authUser == "" {
		return smtp.ErrAuthRequired
	}
	if f := ss.sink.script.Mail; f != nil {
		if reply := f(from); reply != nil {
			return reply
		}
	}
	ss.from = from
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s := ss.sink
	s.mu.Lock()
	n := s.attempts[to]
	s.attempts[to] = n + 1
	s.mu.Unlock()
	if s.script.Rcpt != nil {
		// Compare the typed pointer: a nil *SMTPError stored in an error
		// interface would read as a failure.
		if reply := s.script.Rcpt(to, n); reply != nil {
			return reply
		}
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	body, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s := ss.sink
	rcpts := slices.Clone(ss.rcpts)
	if s.script.Data != nil {
		if reply := s.script.Data(rcpts, body); reply != nil {
			return reply
		}
	}
	s.mu.Lock()
	s.messages = append(s.messages, SinkMessage{From: ss.from, To: rcpts, Data: body, Received: time.Now(), AuthUser: ss.authUser})
	s.mu.Unlock()
	return nil
}

// authSinkSession is a sinkSession that offers AUTH (go-smtp offers it for
// every session type that has these methods, hence the separate type).
type authSinkSession struct {
	*sinkSession
}

func (ss *authSinkSession) AuthMechanisms() []string {
	if m := ss.sink.script.AuthMechanisms; m != nil {
		return m
	}
	return []string{sasl.Plain, sasl.Login}
}

func (ss *authSinkSession) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		if want, ok := ss.sink.script.Auth[user]; !ok || want != pass {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
		}
		ss.authUser = user
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, user, pass string) error { return check(user, pass) }), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// loginServer is the server side of the obsolete but common LOGIN
// mechanism (draft-murchison-sasl-login), which go-sasl only implements as
// a client: a username and a password, each after a challenge.
type loginServer struct {
	check      func(user, pass string) error
	user       string
	gotUser    bool
	challenged bool
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch {
	case !l.challenged && resp == nil:
		l.challenged = true
		return []byte("Username:"), false, nil
	case !l.gotUser:
		l.user, l.gotUser = string(resp), true
		return []byte("Password:"), false, nil
	}
	return nil, true, l.check(l.user, string(resp))
}

// sinkListener counts connections and answers SinkScript.Greet refusals
// itself, because go-smtp always sends 220 and only consults the backend at
// EHLO.
type sinkListener struct {
	net.Listener
	sink *SMTPSink
	wg   sync.WaitGroup
}

func (l *sinkListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.sink.connOpened()
		l.wg.Add(1)
		sc := &sinkConn{Conn: c, l: l}
		greet := l.sink.script.Greet
		if greet == nil {
			return sc, nil
		}
		reply := greet()
		if reply == nil {
			return sc, nil
		}
		_ = sc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(sc, sinkFormatReply(reply))
		_ = sc.Close()
	}
}

// sinkConn reports its closing to the listener exactly once.
type sinkConn struct {
	net.Conn
	l    *sinkListener
	once sync.Once
}

func (c *sinkConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.sink.connClosed()
		c.l.wg.Done()
	})
	return err
}

func sinkFormatReply(e *smtp.SMTPError) string {
	ec := e.EnhancedCode
	if ec == smtp.NoEnhancedCode || ec == smtp.EnhancedCodeNotSet {
		return fmt.Sprintf("%03d %s\r\n", e.Code, e.Message)
	}
	return fmt.Sprintf("%03d %d.%d.%d %s\r\n", e.Code, ec[0], ec[1], ec[2], e.Message)
}

// sinkLogger forwards go-smtp's error log to the test log while the test
// runs; testing panics on logging after a test has completed.
type sinkLogger struct {
	mu      sync.Mutex
	t       testing.TB
	stopped bool
}

func (l *sinkLogger) Printf(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.stopped {
		l.t.Logf("smtp sink: "+format, v...)
	}
}

func (l *sinkLogger) Println(v ...any) {
	l.Printf("%s", fmt.Sprintln(v...))
}

func (l *sinkLogger) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
}
