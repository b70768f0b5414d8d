// Package smtpout delivers one message over SMTP to the mail exchangers of one
// destination domain: it tries the given targets in order, negotiates
// opportunistic STARTTLS, sends the envelope and the body, and reports a
// per-recipient outcome as *deliveryerr.Error values.
//
// Sessions outlive a Deliver call: a session that ended in step with the
// server is kept idle and carries the next message to the same target after
// an RSET, as Postfix's connection cache does, which saves the connect,
// banner, EHLO and STARTTLS round trips. Close the Client to end them.
//
// When the server lists PIPELINING (RFC 2920), a transaction is one command
// group, written at once: RSET (on a reused session), MAIL, every RCPT and
// DATA; its replies are then read in order, and the body follows a 354.
// Other servers get one command per round trip. Either way the body is
// dot-stuffed in large writes, not byte by byte.
//
// Each Target carries its TLS policy: opportunistic STARTTLS (the default),
// required STARTTLS with a verified certificate, or implicit TLS; and
// optionally credentials for a relay, sent only over TLS.
//
// It does not resolve MX records, choose or order targets, retry later,
// look up MTA-STS or DANE policies, or queue anything: callers pass the
// targets with the policy they decided on and handle temporary failures. It is built on the
// github.com/emersion/go-smtp client and adds what that client lacks:
// contexts, per-phase deadlines and reply classification.
package smtpout

import (
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/postflow/postflow/pkg/deliveryerr"
	"github.com/postflow/postflow/pkg/mailmsg"
)

// Defaults for Config. The timeouts follow RFC 5321 §4.5.3.2 and Postfix,
// which the RFC's minimums were written for: a shorter wait after the final
// dot makes duplicate deliveries more likely.
const (
	// DefaultConnectTimeout is Postfix's smtp_connect_timeout.
	DefaultConnectTimeout = 30 * time.Second
	// DefaultCommandTimeout is the RFC 5321 §4.5.3.2 minimum for the banner,
	// MAIL and RCPT replies (5 minutes); it also bounds EHLO, STARTTLS, the
	// 354 reply to DATA and each block of the body.
	DefaultCommandTimeout = 5 * time.Minute
	// DefaultDataTimeout is the RFC 5321 §4.5.3.2.6 minimum wait for the
	// reply after the final dot (10 minutes).
	DefaultDataTimeout = 10 * time.Minute
	// DefaultMaxSessions is Postfix's smtp_mx_session_limit: how many hosts
	// one delivery attempt may try before it gives up until the next retry.
	DefaultMaxSessions = 2
	// DefaultMaxIdlePerHost is how many idle sessions are kept per target.
	// Each one holds a slot in the receiver's connection limit (Postfix
	// smtpd's default process limit of 100 is shared by every client), so
	// only enough are kept for a worker's usual concurrency per destination;
	// busier moments dial more and close the surplus.
	DefaultMaxIdlePerHost = 8
	// DefaultIdleTimeout is how long an idle session is kept. Postfix keeps
	// cached sessions for 2s (smtp_connection_cache_time_limit) because it
	// caches on demand, for a backlog already queued to the destination; a
	// worker's traffic to a big receiver or a relay arrives at a steady
	// rate instead, with gaps of seconds between messages. RFC 5321
	// §4.5.3.2.7 has servers wait at least 5 minutes for a command, but
	// busy servers cut that (Postfix smtpd under stress waits 10s): the
	// longer a session sits, the likelier the server has dropped it, and a
	// failed RSET costs a round trip on top of the new dial.
	DefaultIdleTimeout = 30 * time.Second
	// DefaultMaxMessagesPerConn is how many messages one session carries
	// before it is ended with QUIT. By then the connect, EHLO and STARTTLS
	// cost is shared a hundredfold; a bound lets DNS and load-balancer
	// changes take effect, spreads long-running traffic over the MX hosts,
	// and stays under the per-connection message caps receivers enforce.
	// Postfix's smtp_connection_reuse_count_limit is unlimited by default
	// but its smtp_connection_reuse_time_limit (300s) plays the same role.
	DefaultMaxMessagesPerConn = 100
)

// quitTimeout bounds the wait for the reply to QUIT. The outcome is decided
// by then, so a slow QUIT must not hold the caller for a command timeout.
const quitTimeout = 30 * time.Second

// Target is one host to try: Addr is dialled as is (never resolved again)
// and Host is the name the address was found under, used for SNI and for
// certificate verification.
type Target struct {
	Host string
	Addr netip.AddrPort
	// TLS is the policy for this target; the zero value is opportunistic.
	TLS TLSMode
	// Auth, when set, authenticates the session (a smarthost). Credentials
	// are only ever sent over TLS: with TLSOpportunistic a session that
	// did not get TLS fails instead of authenticating in plain text.
	Auth *Auth
	// MaxMessages, if positive, caps the messages a session opened for
	// this target carries, in place of Config.MaxMessagesPerConn (a
	// receiver's per-connection limit, such as Yahoo's 20).
	MaxMessages int
}

// TLSMode is how a session uses TLS.
type TLSMode uint8

const (
	// TLSOpportunistic uses STARTTLS when the server offers it and accepts
	// any certificate, recording whether it verified (RFC 7435); it goes on
	// in plain text when STARTTLS is not offered or is refused.
	TLSOpportunistic TLSMode = iota
	// TLSRequire needs STARTTLS and a certificate that verifies for
	// Target.Host against the configured roots (RFC 3207 §4.1, and the
	// rule MTA-STS enforce mode applies, RFC 8461 §4.2). Otherwise the
	// session ends before MAIL with a temporary 4.7.4 (no STARTTLS) or
	// 4.7.5 (certificate) failure and the next target is tried.
	TLSRequire
	// TLSImplicit speaks TLS from the first byte (submissions on port 465,
	// RFC 8314 §3.3), with the certificate verified as for TLSRequire.
	TLSImplicit
)

// String returns the policy name used in configuration and logs.
func (m TLSMode) String() string {
	switch m {
	case TLSOpportunistic:
		return "opportunistic"
	case TLSRequire:
		return "require"
	case TLSImplicit:
		return "implicit"
	}
	return "TLSMode(" + strconv.Itoa(int(m)) + ")"
}

// verify reports whether the mode refuses an unverified certificate.
func (m TLSMode) verify() bool { return m == TLSRequire || m == TLSImplicit }

// Auth holds SMTP AUTH credentials (RFC 4954). PLAIN is used when the
// server offers it, else LOGIN. A refused login fails the attempt
// temporarily (4.7.8): it is the relay's configuration that is wrong, not
// the message, as Postfix's smtp_sasl_auth_soft_bounce also assumes.
type Auth struct {
	Username string
	Password string
}

// String hides the password, so that logging a Target or a Config cannot
// leak it.
func (a *Auth) String() string {
	if a == nil {
		return "<nil>"
	}
	return a.Username + ":REDACTED"
}

// GoString hides the password from %#v as well.
func (a *Auth) GoString() string { return "&smtpout.Auth{" + a.String() + "}" }

// Config configures a Client. Zero fields take the defaults above.
type Config struct {
	// HelloName is sent with EHLO. Default: os.Hostname, or "localhost" if
	// that fails.
	HelloName string
	// ConnectTimeout bounds the TCP connect. Default DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// CommandTimeout bounds the wait for each reply before the body and for
	// each write of the body. Default DefaultCommandTimeout.
	CommandTimeout time.Duration
	// DataTimeout bounds the wait for the reply after the final dot.
	// Default DefaultDataTimeout.
	DataTimeout time.Duration
	// TLSConfig is the base configuration for STARTTLS; its RootCAs decide
	// whether a certificate counts as verified (nil means the system pool).
	// ServerName, InsecureSkipVerify and VerifyConnection are set per target.
	TLSConfig *tls.Config
	// MaxSessions caps how many targets one Deliver call connects to.
	// Default DefaultMaxSessions.
	MaxSessions int
	// Dialer opens TCP connections. Default (&net.Dialer{}).DialContext.
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxIdlePerHost caps the idle sessions kept per target (address and
	// host name) for later messages. Default DefaultMaxIdlePerHost; a
	// negative value turns connection reuse off, so that every Deliver
	// call opens and ends its own sessions.
	MaxIdlePerHost int
	// IdleTimeout is how long a session may stay idle and still be reused.
	// Default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxMessagesPerConn caps how many Deliver calls one session serves.
	// Default DefaultMaxMessagesPerConn.
	MaxMessagesPerConn int
}

// Validate reports every invalid field, joined. Zero values are valid: they
// select the defaults.
func (cfg Config) Validate() error {
	var errs []error
	if strings.ContainsAny(cfg.HelloName, " \t\r\n") {
		errs = append(errs, errors.New("smtpout: hello name must not contain white space"))
	}
	if cfg.ConnectTimeout < 0 {
		errs = append(errs, errors.New("smtpout: connect timeout must not be negative"))
	}
	if cfg.CommandTimeout < 0 {
		errs = append(errs, errors.New("smtpout: command timeout must not be negative"))
	}
	if cfg.DataTimeout < 0 {
		errs = append(errs, errors.New("smtpout: data timeout must not be negative"))
	}
	if cfg.MaxSessions < 0 {
		errs = append(errs, errors.New("smtpout: max sessions must not be negative"))
	}
	if cfg.IdleTimeout < 0 {
		errs = append(errs, errors.New("smtpout: idle timeout must not be negative"))
	}
	if cfg.MaxMessagesPerConn < 0 {
		errs = append(errs, errors.New("smtpout: max messages per connection must not be negative"))
	}
	return errors.Join(errs...)
}

func (cfg Config) withDefaults() Config {
	if cfg.HelloName == "" || strings.ContainsAny(cfg.HelloName, " \t\r\n") {
		cfg.HelloName = "localhost"
		if h, err := os.Hostname(); err == nil && h != "" && !strings.ContainsAny(h, " \t\r\n") {
			cfg.HelloName = h
		}
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.CommandTimeout <= 0 {
		cfg.CommandTimeout = DefaultCommandTimeout
	}
	if cfg.DataTimeout <= 0 {
		cfg.DataTimeout = DefaultDataTimeout
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.Dialer == nil {
		cfg.Dialer = (&net.Dialer{}).DialContext
	}
	if cfg.MaxIdlePerHost == 0 {
		cfg.MaxIdlePerHost = DefaultMaxIdlePerHost
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxMessagesPerConn <= 0 {
		cfg.MaxMessagesPerConn = DefaultMaxMessagesPerConn
	}
	return cfg
}

// Client delivers messages. It is safe for concurrent use. Between calls it
// keeps idle sessions, at most MaxIdlePerHost per target, each for at most
// IdleTimeout; they expire when the Client is next used, not on a timer, so
// the Client starts no goroutines. Call Close when done with it.
type Client struct {
	cfg Config
	now func() time.Time // replaced by tests

	mu     sync.Mutex
	idle   map[poolKey][]*smtpConn // idle sessions per key, oldest first
	lru    list.List               // every idle *smtpConn, oldest first
	closed bool
}

// New returns a Client. Zero or invalid fields of cfg are replaced by their
// defaults; call Config.Validate first to reject bad configuration.
func New(cfg Config) *Client {
	return &Client{cfg: cfg.withDefaults(), now: time.Now}
}

// Envelope is the SMTP envelope of one message.
type Envelope struct {
	// From is the reverse-path; empty means the null sender <>.
	From string
	// To lists the recipients, all at the domain the targets serve.
	To []string
	// SMTPUTF8 requests the RFC 6531 extension; a server without it fails
	// every recipient permanently with 5.6.7.
	SMTPUTF8 bool
	// SevenBit, if set, returns the message converted to 7-bit (for
	// example mailmsg.SevenBit, then signed again). It is called, once
	// per session at most, only when the body has 8-bit octets, SMTPUTF8 is
	// not requested and the server does not offer 8BITMIME. Without it
	// such a message fails permanently with 5.6.3 at that server.
	SevenBit func() ([]byte, error)
}

// TLSInfo describes the STARTTLS session, if any. Version and Cipher are
// empty when the session ran in plain text.
type TLSInfo struct {
	Version string
	Cipher  string
	// Verified reports whether the certificate chained to the configured
	// roots and matched Target.Host. Delivery does not depend on it.
	Verified bool
}

// RcptResult is the outcome for one recipient.
type RcptResult struct {
	// Delivered reports that the server accepted the message for this
	// recipient after the final dot.
	Delivered bool
	// Err is a *deliveryerr.Error when Delivered is false.
	Err error
	// PossibleDuplicate reports that the whole body and the final dot were
	// sent but no reply arrived, so the server may have accepted the message
	// and a retry may deliver it twice.
	PossibleDuplicate bool
}

// Result is the outcome of one Deliver call.
type Result struct {
	// Target is the host that produced the final outcome: the one that got
	// past MAIL, or the last one tried.
	Target Target
	// TLS describes the session with Target.
	TLS TLSInfo
	// Recipients has one entry per Envelope.To, in the same order.
	Recipients []RcptResult
	// Reply is the server's 250 reply after the final dot when at least one
	// recipient was delivered, nil otherwise.
	Reply *deliveryerr.Error
}

// Deliver makes one delivery attempt of body to env.To through targets. body
// must be the complete message with CRLF line endings; any bare CR or LF is
// sent as CRLF so that none reaches the wire.
//
// Targets are tried in order, at most MaxSessions of them. A session to a
// target may be an idle one left by an earlier call; one that no longer
// answers RSET (sent alone, or at the head of the pipelined group) is closed
// and replaced by a new connection without counting as a failure. A failed
// connect, a 4xx reply to the banner, EHLO, STARTTLS or MAIL, or a dropped
// connection before RCPT moves on to the next target; a 5xx reply to the
// banner, EHLO or MAIL fails every recipient permanently. The first session
// that gets past MAIL decides every recipient's outcome for this attempt.
// A pipelined group behaves the same: a refused MAIL decides even though
// RCPT and DATA were sent with it (their replies are read and dropped). When
// ctx ends the session is aborted and the unfinished recipients fail
// temporarily.
//
// Every failure is a *deliveryerr.Error: the server's reply (Remote set), or
// for local and network failures a synthesised one, temporary unless retrying
// cannot help.
func (c *Client) Deliver(ctx context.Context, targets []Target, env Envelope, body []byte) Result {
	res := Result{Recipients: make([]RcptResult, len(env.To))}
	if len(env.To) == 0 {
		return res
	}
	if !validPath(env.From) {
		res.failAll(allIndexes(len(env.To)), deliveryerr.Permanent(553, "5.1.7", "invalid sender address", nil))
		return res
	}
	var pending []int
	for i, rcpt := range env.To {
		if rcpt == "" || !validPath(rcpt) {
			res.Recipients[i].Err = deliveryerr.Permanent(553, "5.1.3", "invalid recipient address", nil)
			continue
		}
		pending = append(pending, i)
	}
	if len(pending) == 0 {
		return res
	}
	if len(targets) == 0 {
		res.failAll(pending, deliveryerr.Temporary(451, "4.4.4", "no delivery targets", nil))
		return res
	}
	body = canonicalCRLF(body)

	var last *deliveryerr.Error
	for _, t := range targets[:min(len(targets), c.cfg.MaxSessions)] {
		res.Target = t
		res.TLS = TLSInfo{}
		s := &session{client: c, cfg: &c.cfg, target: t, env: env, body: body, pending: pending, res: &res}
		final, err := s.run(ctx)
		if final {
			return res
		}
		last = err
		if ctx.Err() != nil {
			break
		}
	}
	res.failAll(pending, last)
	return res
}

func (r *Result) failAll(idx []int, err *deliveryerr.Error) {
	for _, i := range idx {
		r.Recipients[i] = RcptResult{Err: err}
	}
}

func allIndexes(n int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// validPath rejects what would corrupt the command line: go-smtp writes the
// address between angle brackets without checking it.
func validPath(addr string) bool {
	return !strings.ContainsAny(addr, "<>\r\n\x00\t")
}

// canonicalCRLF returns body with every bare CR and bare LF replaced by CRLF.
// The DotWriter only repairs bare LF, and a bare CR on the wire enables SMTP
// smuggling. A canonical body is returned unchanged without copying.
func canonicalCRLF(body []byte) []byte {
	if mailmsg.IsCanonicalCRLF(body) {
		return body
	}
	return mailmsg.NormalizeCRLF(body)
}
