// Package simulator is an SMTP mailbox simulator, like Amazon SES's: an
// in-memory server for Domain whose replies are chosen by the recipient's
// local part, so that developers and end-to-end tests can exercise
// delivery, bounces, deferrals and slow servers without sending real mail.
//
// Local parts are matched without case and without a "+label" suffix:
//
//	success   250 at RCPT and after DATA
//	bounce    550 5.1.1 at RCPT
//	tempfail  451 4.7.1 at RCPT for the first two offers of the exact
//	          address (label included), then 250
//	slow      250 at RCPT, and 250 two seconds after the final dot
//
// Any other local part gets 550 5.1.1 naming the valid ones, and any other
// domain 550 5.7.1 (no relaying). Accepted messages are discarded. The
// simulator keeps no state but the tempfail counters and does no
// authentication, TLS or DNS; it is not a general-purpose mail server.
package simulator

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// Domain is the only domain the simulator accepts mail for. The .test TLD
// (RFC 2606) guarantees it never collides with a real domain.
const Domain = "simulator.postflow.test"

// MaxMessageBytes is the largest message accepted, advertised with SIZE.
const MaxMessageBytes = 25 << 20

const (
	// slowDelay is how long "slow" holds the reply after the final dot.
	slowDelay = 2 * time.Second
	// tempfailOffers is how many offers of a "tempfail" address are refused.
	tempfailOffers = 2
	// maxTracked bounds the tempfail counters. Past it the counters start
	// over, which at worst refuses a few addresses twice more.
	maxTracked = 100_000
	// maxRecipients is RFC 5321 §4.5.3.1.8's minimum recipient buffer.
	maxRecipients = 100
)

// validLocalParts is listed in the reply to an unknown local part.
const validLocalParts = "success, bounce, tempfail, slow"

// Server is a running simulator. Close stops it.
type Server struct {
	srv    *smtp.Server
	ln     net.Listener
	logger *slog.Logger
	served chan struct{}
	done   chan struct{}
	close  sync.Once

	mu     sync.Mutex
	offers map[string]int // tempfail offers per exact address

	slowWaiting atomic.Int32 // sessions holding a "slow" reply; for tests
}

// Start listens on addr (host:port, "127.0.0.1:0" for a kernel-chosen port)
// and serves in a goroutine until Close. A nil logger discards logs.
func Start(addr string, logger *slog.Logger) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("simulator: listen: %w", err)
	}
	s := &Server{
		ln:     ln,
		logger: logger,
		served: make(chan struct{}),
		done:   make(chan struct{}),
		offers: make(map[string]int),
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &session{s: s, closed: make(chan struct{})}, nil
	}))
	srv.Domain = Domain
	srv.MaxMessageBytes = MaxMessageBytes
	srv.MaxRecipients = maxRecipients
	srv.EnableSMTPUTF8 = true
	// RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for a command.
	srv.ReadTimeout = 5 * time.Minute
	srv.WriteTimeout = time.Minute
	srv.ErrorLog = logAdapter{logger}
	s.srv = srv
	go func() {
		defer close(s.served)
		_ = srv.Serve(ln)
	}()
	logger.Info("simulator listening", slog.String("addr", ln.Addr().String()), slog.String("domain", Domain))
	return s, nil
}

// Addr returns the host:port the server is bound to.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops accepting connections, closes the open ones (ending any
// "slow" wait) and waits for the accept loop to end. Calling it again
// returns nil.
func (s *Server) Close() error {
	var err error
	s.close.Do(func() {
		close(s.done)
		err = s.srv.Close()
		<-s.served
	})
	return err
}

// offer counts one more offer of a tempfail address and returns how many
// came before it.
func (s *Server) offer(addr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.offers[addr]
	if !ok && len(s.offers) >= maxTracked {
		clear(s.offers)
	}
	if n < tempfailOffers {
		s.offers[addr] = n + 1
	}
	return n
}

// Replies. The 250 after DATA is returned as an *smtp.SMTPError because
// that is how a go-smtp backend chooses the text of its DATA reply.
var (
	errRelayDenied = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "simulated: relay access denied; only " + Domain + " is served"}
	errNoMailbox = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
		Message: "simulated: mailbox does not exist"}
	errUnknownLocal = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
		Message: "simulated: unknown mailbox; valid local parts are " + validLocalParts + " (with an optional +label)"}
	errTempfail = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1},
		Message: "simulated: temporary failure, try again later"}
	errShuttingDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
		Message: "simulated: shutting down"}
)

// session is one SMTP session; go-smtp calls its methods from one
// goroutine, except Logout, which may come from Server.Close.
type session struct {
	s      *Server
	rcpts  int
	slow   bool
	closed chan struct{}
	once   sync.Once
}

func (ss *session) Reset() {
	ss.rcpts = 0
	ss.slow = false
}

func (ss *session) Logout() error {
	ss.once.Do(func() { close(ss.closed) })
	return nil
}

func (ss *session) Mail(string, *smtp.MailOptions) error {
	ss.Reset()
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	local, domain, ok := cutLast(to, "@")
	if !ok || !strings.EqualFold(domain, Domain) {
		return errRelayDenied
	}
	base, _, _ := strings.Cut(local, "+")
	switch strings.ToLower(base) {
	case "success":
	case "slow":
		ss.slow = true
	case "bounce":
		return errNoMailbox
	case "tempfail":
		if ss.s.offer(to) < tempfailOffers {
			return errTempfail
		}
	default:
		return errUnknownLocal
	}
	ss.rcpts++
	return nil
}

func (ss *session) Data(r io.Reader) error {
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		// go-smtp's size limit error is an *SMTPError (552) and passes
		// through as the reply.
		return err
	}
	if ss.slow {
		ss.s.slowWaiting.Add(1)
		t := time.NewTimer(slowDelay)
		select {
		case <-t.C:
		case <-ss.closed:
		case <-ss.s.done:
		}
		t.Stop()
		ss.s.slowWaiting.Add(-1)
		select {
		case <-ss.closed:
			return errShuttingDown
		case <-ss.s.done:
			return errShuttingDown
		default:
		}
	}
	id := queueID()
	ss.s.logger.Info("simulator accepted message", slog.String("queue_id", id),
		slog.Int("recipients", ss.rcpts), slog.Int64("bytes", n))
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + id}
}

func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

func queueID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return strings.ToUpper(hex.EncodeToString(b[:]))
}

// logAdapter sends go-smtp's error log (accept errors, recovered panics)
// to slog.
type logAdapter struct{ l *slog.Logger }

func (a logAdapter) Printf(format string, v ...any) {
	a.l.Warn("simulator smtp server", slog.String("detail", strings.TrimSpace(fmt.Sprintf(format, v...))))
}

func (a logAdapter) Println(v ...any) {
	a.l.Warn("simulator smtp server", slog.String("detail", strings.TrimSpace(fmt.Sprintln(v...))))
}
