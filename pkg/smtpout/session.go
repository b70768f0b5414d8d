package smtpout

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postflow/postflow/pkg/deliveryerr"
)

// session is one attempt at one target, over a pooled or a new connection.
// It fills in res for the recipients it decides.
type session struct {
	client  *Client
	cfg     *Config
	target  Target
	env     Envelope
	body    []byte
	pending []int // indexes into env.To still undecided
	res     *Result
}

// run connects and delivers. final reports that the recipients' outcomes are
// decided and recorded in res; otherwise err says why this target failed
// and the caller may try the next one.
func (s *session) run(ctx context.Context) (final bool, err *deliveryerr.Error) {
	if !s.target.Addr.IsValid() {
		return false, deliveryerr.Temporary(451, "4.4.1", "connection failed",
			fmt.Errorf("smtpout: invalid address for target %q", s.target.Host))
	}
	key := keyOf(s.target)
	for {
		pc := s.client.checkout(ctx, key)
		if pc == nil {
			pc, final, err = s.connect(ctx)
			if pc == nil {
				return final, err
			}
		}
		final, err, stale := s.deliver(ctx, pc)
		if !stale {
			return final, err
		}
		// A pooled session failed the RSET at the head of its group:
		// it died while idle, so nothing was decided. Take the next
		// one, as checkout does for lock-step sessions; every stale
		// session leaves the pool, so this ends with a new connection
		// at the latest.
	}
}

// deliver runs one transaction on pc, then releases it. It returns as run
// does, or stale when pc was a pooled session that failed its folded RSET
// and has been closed without deciding anything.
func (s *session) deliver(ctx context.Context, pc *smtpConn) (final bool, err *deliveryerr.Error, stale bool) {
	s.res.TLS = pc.tls
	// keep records that the session ended in step with the server, so it
	// may serve another message; every path that does not set it closes
	// the connection without QUIT, as after a network error.
	keep := false
	defer func() {
		if stale {
			pc.stop()
			_ = pc.raw.Close()
			return
		}
		s.release(ctx, pc, keep && pc.inStep())
	}()
	c := pc.client

	if s.env.SMTPUTF8 {
		if ok, _ := c.Extension("SMTPUTF8"); !ok {
			err := deliveryerr.Permanent(550, "5.6.7", "recipient server does not support SMTPUTF8", nil)
			s.res.failAll(s.pending, err)
			keep = true
			return true, err, false
		}
	}
	if ok, _ := c.Extension("8BITMIME"); !ok && !s.env.SMTPUTF8 && has8Bit(s.body) {
		if err := s.sevenBit(); err != nil {
			s.res.failAll(s.pending, err)
			keep = true
			return true, err, false
		}
	}
	if maxSize, ok := c.MaxMessageSize(); ok && maxSize > 0 && len(s.body) > maxSize {
		err := deliveryerr.Permanent(552, "5.3.4", "message size exceeds fixed maximum message size",
			fmt.Errorf("smtpout: %d bytes, server limit %d", len(s.body), maxSize))
		s.res.failAll(s.pending, err)
		keep = true
		return true, err, false
	}

	if pc.pipelining {
		final, err, keep, stale = s.pipelined(ctx, pc)
		return final, err, stale
	}
	if err := c.Mail(s.env.From, &smtp.MailOptions{Size: int64(len(s.body)), UTF8: s.env.SMTPUTF8}); err != nil {
		keep = reusable(err)
		final, de := s.early(ctx, err, "MAIL")
		return final, de, false
	}
	var de *deliveryerr.Error
	de, keep = s.transaction(ctx, pc)
	return true, de, false
}

// sevenBit replaces the body with its 7-bit form for a server without
// 8BITMIME (RFC 6152 §3: 8-bit data must not be sent to it), through
// Envelope.SevenBit. Without that hook, or when it fails, the message
// cannot go to this server, which is permanent (5.6.3).
func (s *session) sevenBit() *deliveryerr.Error {
	if s.env.SevenBit == nil {
		return deliveryerr.Permanent(554, "5.6.3", "the message has 8-bit content and the server does not offer 8BITMIME", nil)
	}
	body, err := s.env.SevenBit()
	if err != nil {
		return deliveryerr.Permanent(554, "5.6.3", "8-bit content could not be converted for a server without 8BITMIME", err)
	}
	s.body = canonicalCRLF(body)
	return nil
}

// has8Bit reports whether b holds an octet above 127.
func has8Bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// connect dials the target, reads the banner, sends EHLO and negotiates
// STARTTLS. It returns the session armed with ctx, or nil with the outcome
// as for run.
func (s *session) connect(ctx context.Context) (*smtpConn, bool, *deliveryerr.Error) {
	dctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	raw, derr := s.cfg.Dialer(dctx, "tcp", s.target.Addr.String())
	cancel()
	if derr != nil {
		return nil, false, netFailure(ctx, "4.4.1", "connection failed", derr)
	}
	conn := &sessionConn{Conn: raw}
	pc := &smtpConn{key: keyOf(s.target), raw: raw, sc: conn, wire: conn, maxUses: s.cfg.MaxMessagesPerConn}
	if s.target.MaxMessages > 0 {
		pc.maxUses = s.target.MaxMessages
	}
	pc.arm(ctx)
	fail := func(final bool, err *deliveryerr.Error) (*smtpConn, bool, *deliveryerr.Error) {
		pc.stop()
		_ = raw.Close()
		return nil, final, err
	}

	var c *smtp.Client
	if s.target.TLS == TLSImplicit {
		tc, err := s.handshake(ctx, conn)
		if err != nil {
			return fail(false, err)
		}
		c = s.newClient(tc)
		pc.wire = tc
	} else {
		c = s.newClient(conn)
	}
	if err := c.Hello(s.cfg.HelloName); err != nil {
		return fail(s.early(ctx, err, "banner or EHLO"))
	}
	if s.target.TLS != TLSImplicit {
		if ok, _ := c.Extension("STARTTLS"); ok {
			tc, wire, final, err := s.startTLS(ctx, conn)
			if err != nil {
				return fail(final, err)
			}
			if tc != nil {
				c = tc
				pc.wire = wire
			} else {
				pc.noReuse = true
			}
		}
		if s.target.TLS == TLSRequire && s.res.TLS.Version == "" {
			return fail(false, deliveryerr.Temporary(451, "4.7.4", "TLS is required, but the server did not offer STARTTLS or refused it", nil))
		}
	}
	if s.target.Auth != nil {
		if s.res.TLS.Version == "" {
			return fail(false, deliveryerr.Temporary(451, "4.7.4", "refusing to send credentials without TLS", nil))
		}
		if err := s.auth(ctx, c); err != nil {
			return fail(false, err)
		}
	}
	pc.client = c
	pc.tls = s.res.TLS
	// Asked after STARTTLS: the EHLO over TLS is the one that counts.
	pc.pipelining, _ = c.Extension("PIPELINING")
	return pc, false, nil
}

// release ends the session's use by this Deliver call: back to the pool if
// keep allows and there is room, otherwise QUIT (if in step) and close.
func (s *session) release(ctx context.Context, pc *smtpConn, keep bool) {
	pc.uses++
	// Disarm first: once pooled, the session must not be closed by this
	// ctx ending. stop reports false if ctx already closed the socket.
	if keep && pc.stop() {
		if s.client.checkin(pc) {
			return
		}
		pc.arm(ctx)
	}
	if keep {
		s.quit(pc.client)
	}
	pc.stop()
	_ = pc.raw.Close()
}

// transaction runs RCPT, DATA and the body once MAIL is accepted, one
// command at a time, for a server without PIPELINING. From here on every
// recipient's outcome is decided by this session. keep reports that the
// session ended in step with the server and may be reused.
//
// RCPT goes through go-smtp; DATA and the body are spoken on the raw
// connection, as in the pipelined path, so that the body is stuffed by
// writeBody rather than byte by byte in net/textproto's DotWriter.
// go-smtp's DataCommand cannot be used for that: its pending DotWriter
// would write a second end-of-data line before the next go-smtp command.
func (s *session) transaction(ctx context.Context, pc *smtpConn) (de *deliveryerr.Error, keep bool) {
	c := pc.client
	closing := false // a 421 reply: the server is ending the session
	var accepted []int
	for k, i := range s.pending {
		err := c.Rcpt(s.env.To[i], nil)
		if err == nil {
			accepted = append(accepted, i)
			continue
		}
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			s.res.Recipients[i] = RcptResult{Err: fromSMTP(se)}
			closing = closing || se.Code == 421
			continue
		}
		de := netFailure(ctx, "4.4.2", "connection dropped during RCPT", err)
		s.res.failAll(accepted, de)
		s.res.failAll(s.pending[k:], de)
		return de, false
	}
	if len(accepted) == 0 {
		// The transaction stays open; the RSET before reuse ends it.
		return nil, !closing
	}

	defer func() { _ = pc.wire.SetDeadline(time.Time{}) }()
	_ = pc.wire.SetDeadline(time.Now().Add(s.cfg.CommandTimeout))
	if _, err := io.WriteString(pc.wire, "DATA\r\n"); err != nil {
		return s.dropped(ctx, accepted, "connection dropped during DATA", err), false
	}
	code, msg, err := pc.replies().ReadResponse(0)
	switch {
	case err != nil:
		return s.dropped(ctx, accepted, "connection dropped during DATA", err), false
	case code != 354:
		de := parseReply(code, msg)
		s.res.failAll(accepted, de)
		return de, !closing && code != 421
	}
	de, keep = s.sendBody(ctx, pc, accepted)
	return de, keep && !closing
}

// sendBody writes the body and the final dot after a 354 and reads the
// final reply, which decides the accepted recipients. keep is as for
// transaction.
func (s *session) sendBody(ctx context.Context, pc *smtpConn, accepted []int) (de *deliveryerr.Error, keep bool) {
	if err := writeBody(pc.wire, s.body, s.cfg.CommandTimeout); err != nil {
		// The final dot may not have gone out whole, so the server
		// cannot have taken the message.
		return s.dropped(ctx, accepted, "connection dropped during DATA", err), false
	}
	_ = pc.wire.SetReadDeadline(time.Now().Add(s.cfg.DataTimeout))
	code, msg, err := pc.replies().ReadResponse(0)
	if err != nil {
		// The whole body and the final dot went out but no reply came
		// back: the server may have taken the message.
		de := netFailure(ctx, "4.4.2", "no reply after end of data; the message may have been delivered", err)
		for _, i := range accepted {
			s.res.Recipients[i] = RcptResult{Err: de, PossibleDuplicate: true}
		}
		return de, false
	}
	if code != 250 {
		de := parseReply(code, msg)
		s.res.failAll(accepted, de)
		return de, code != 421
	}
	s.res.Reply = parseReply(250, msg)
	for _, i := range accepted {
		s.res.Recipients[i] = RcptResult{Delivered: true}
	}
	return nil, true
}

// dropped records a connection lost (or ctx ended) while the accepted
// recipients' outcome was still open.
func (s *session) dropped(ctx context.Context, accepted []int, msg string, err error) *deliveryerr.Error {
	de := netFailure(ctx, "4.4.2", msg, err)
	s.res.failAll(accepted, de)
	return de
}

// early classifies a failure before RCPT: a 5xx reply is final for every
// recipient (and, at MAIL, deliberately not remembered for other messages);
// a 4xx reply or a network error lets the caller try the next target.
func (s *session) early(ctx context.Context, err error, phase string) (bool, *deliveryerr.Error) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		final, de := s.earlyReply(fromSMTP(se))
		return final, de
	}
	return false, netFailure(ctx, "4.4.2", "connection dropped during "+phase, err)
}

// earlyReply is early for a reply already converted.
func (s *session) earlyReply(de *deliveryerr.Error) (bool, *deliveryerr.Error) {
	if de.Temporary() {
		return false, de
	}
	s.res.failAll(s.pending, de)
	return true, de
}

// startTLS upgrades the connection. go-smtp only offers STARTTLS as part of
// its own dialling, before our EHLO name is set, so the command is spoken
// here and a new client continues over the TLS connection, which is
// returned with it. A nil client with a nil error means the server refused
// STARTTLS and the session continues in plain text on the old client, as
// RFC 3207 §4 allows opportunistic clients to do.
func (s *session) startTLS(ctx context.Context, conn *sessionConn) (*smtp.Client, net.Conn, bool, *deliveryerr.Error) {
	_ = conn.SetDeadline(time.Now().Add(s.cfg.CommandTimeout))
	if _, err := io.WriteString(conn, "STARTTLS\r\n"); err != nil {
		return nil, nil, false, netFailure(ctx, "4.4.2", "connection dropped during STARTTLS", err)
	}
	// The go-smtp client's buffer is empty here: it has read the EHLO reply
	// and the server may not send anything before our next command.
	br := bufio.NewReader(conn)
	code, msg, err := textproto.NewReader(br).ReadResponse(220)
	var pe *textproto.Error
	switch {
	case errors.As(err, &pe) && code != 421 && br.Buffered() == 0:
		_ = conn.SetDeadline(time.Time{})
		return nil, nil, false, nil
	case errors.As(err, &pe):
		// 421: the server is closing the connection; try the next target.
		return nil, nil, false, parseReply(code, msg)
	case err != nil:
		return nil, nil, false, netFailure(ctx, "4.4.2", "connection dropped during STARTTLS", err)
	case br.Buffered() > 0:
		// Bytes after the 220 were sent in plain text and would be read
		// as if they came over TLS (STARTTLS command injection, CVE-2011-0411).
		return nil, nil, false, deliveryerr.Temporary(451, "4.7.0", "unexpected data after STARTTLS reply",
			errors.New("smtpout: plaintext data after 220 to STARTTLS"))
	}

	tc, de := s.handshake(ctx, conn)
	if de != nil {
		return nil, nil, false, de
	}

	// The new client expects a banner; the server sends none after
	// STARTTLS, so one is supplied locally. EHLO is then repeated as RFC
	// 3207 §4.2 requires.
	c := s.newClient(&greetedConn{Conn: tc, greeting: strings.NewReader("220 TLS session started\r\n")})
	if err := c.Hello(s.cfg.HelloName); err != nil {
		final, de := s.early(ctx, err, "EHLO after STARTTLS")
		return nil, nil, final, de
	}
	return c, tc, false, nil
}

// handshake runs the TLS client handshake on conn, bounded by the command
// timeout, and records the session's TLS details in res. Opportunistic TLS
// (RFC 7435) accepts any certificate, since any is better than plain text,
// and records whether it verified; the stricter modes abort the handshake
// on a certificate that does not verify for the target's host, so that not
// even the EHLO is sent over an unauthenticated channel.
func (s *session) handshake(ctx context.Context, conn *sessionConn) (*tls.Conn, *deliveryerr.Error) {
	host := strings.TrimSuffix(s.target.Host, ".")
	var cfg *tls.Config
	if s.cfg.TLSConfig != nil {
		cfg = s.cfg.TLSConfig.Clone()
	} else {
		cfg = &tls.Config{}
	}
	cfg.ServerName = host
	cfg.InsecureSkipVerify = true
	verified := false
	roots := cfg.RootCAs
	errUnverified := errors.New("smtpout: certificate does not verify for " + host)
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		verified = verifyPeer(cs, roots, host)
		if !verified && s.target.TLS.verify() {
			return errUnverified
		}
		return nil
	}
	_ = conn.SetDeadline(time.Now().Add(s.cfg.CommandTimeout))
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		var ne net.Error
		switch {
		case errors.Is(err, errUnverified):
			return nil, deliveryerr.Temporary(451, "4.7.5", "TLS is required, but the server certificate did not verify", err)
		case ctx.Err() != nil, errors.As(err, &ne) && ne.Timeout(), errors.Is(err, io.EOF):
			// A server that stops answering or hangs up is a network
			// failure, not a cryptographic one (RFC 3463 X.7.5).
			return nil, netFailure(ctx, "4.4.2", "connection dropped during TLS handshake", err)
		}
		return nil, deliveryerr.Temporary(451, "4.7.5", "TLS handshake failed", err)
	}
	_ = conn.SetDeadline(time.Time{})
	state := tc.ConnectionState()
	s.res.TLS = TLSInfo{
		Version:  tls.VersionName(state.Version),
		Cipher:   tls.CipherSuiteName(state.CipherSuite),
		Verified: verified,
	}
	return tc, nil
}

// auth logs in with the target's credentials, PLAIN when offered, else
// LOGIN. Every failure is temporary (see Auth); the server's reply text is
// kept, the credentials never appear in the error.
func (s *session) auth(ctx context.Context, c *smtp.Client) *deliveryerr.Error {
	a := s.target.Auth
	var mech sasl.Client
	switch {
	case c.SupportsAuth("PLAIN"):
		mech = sasl.NewPlainClient("", a.Username, a.Password)
	case c.SupportsAuth("LOGIN"):
		mech = sasl.NewLoginClient(a.Username, a.Password)
	default:
		return deliveryerr.Temporary(451, "4.7.8", "the relay offers neither AUTH PLAIN nor AUTH LOGIN", nil)
	}
	err := c.Auth(mech)
	if err == nil {
		return nil
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		r := fromSMTP(se)
		return deliveryerr.Temporary(451, "4.7.8", fmt.Sprintf("authentication as %q failed: %d %s %s", a.Username, r.Code, r.Enhanced, r.Message), nil)
	}
	return netFailure(ctx, "4.4.2", "connection dropped during AUTH", err)
}

func (s *session) newClient(conn net.Conn) *smtp.Client {
	c := smtp.NewClient(conn)
	c.CommandTimeout = s.cfg.CommandTimeout
	c.SubmissionTimeout = s.cfg.DataTimeout
	return c
}

// quit ends the session politely; its failure changes nothing.
func (s *session) quit(c *smtp.Client) {
	c.CommandTimeout = min(s.cfg.CommandTimeout, quitTimeout)
	_ = c.Quit()
}

func verifyPeer(cs tls.ConnectionState, roots *x509.CertPool, host string) bool {
	if host == "" || len(cs.PeerCertificates) == 0 {
		return false
	}
	inter := x509.NewCertPool()
	for _, cert := range cs.PeerCertificates[1:] {
		inter.AddCert(cert)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		DNSName:       host,
		Intermediates: inter,
	})
	return err == nil
}

// netFailure synthesises the temporary error for a failure without a reply.
func netFailure(ctx context.Context, enhanced, msg string, err error) *deliveryerr.Error {
	if ctx.Err() != nil {
		return deliveryerr.Temporary(451, enhanced, "delivery attempt cancelled: "+msg, errors.Join(err, context.Cause(ctx)))
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		msg = "timeout: " + msg
	}
	return deliveryerr.Temporary(451, enhanced, msg, err)
}

// fromSMTP converts a server reply.
func fromSMTP(e *smtp.SMTPError) *deliveryerr.Error {
	enhanced := ""
	if ec := e.EnhancedCode; ec != smtp.NoEnhancedCode && ec != smtp.EnhancedCodeNotSet {
		enhanced = deliveryerr.FormatEnhanced(ec[0], ec[1], ec[2])
	}
	return &deliveryerr.Error{
		Code:     e.Code,
		Enhanced: enhanced,
		Message:  strings.ReplaceAll(e.Message, "\n", " "),
		Remote:   true,
	}
}

// parseReply builds a reply record from a code and its text as
// textproto.Reader.ReadResponse returns them (lines joined by "\n"),
// splitting off a leading enhanced status code and its repetition on the
// continuation lines (RFC 2034 §4) as go-smtp does for the errors it
// returns, so that a reply read by smtpout reads like one read by go-smtp
// and converted by fromSMTP.
func parseReply(code int, text string) *deliveryerr.Error {
	r := &deliveryerr.Error{Code: code, Message: strings.ReplaceAll(text, "\n", " "), Remote: true}
	first, rest, _ := strings.Cut(text, " ")
	var class, subject, detail int
	if n, err := fmt.Sscanf(first, "%d.%d.%d", &class, &subject, &detail); err == nil && n == 3 &&
		(class == 2 || class == 4 || class == 5) && fmt.Sprintf("%d.%d.%d", class, subject, detail) == first {
		r.Enhanced = first
		r.Message = strings.ReplaceAll(strings.ReplaceAll(rest, "\n"+first+" ", "\n"), "\n", " ")
	}
	return r
}
