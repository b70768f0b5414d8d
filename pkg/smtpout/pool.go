package smtpout

import (
	"bufio"
	"container/list"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"slices"
	"time"

	"github.com/emersion/go-smtp"
)

// resetTimeout bounds the RSET that checks an idle session before reuse. A
// live server answers RSET at once and a fresh connection is always an
// alternative, so waiting as long as for a real command (Postfix's
// smtp_rset_timeout is 20s) would only delay the message.
const resetTimeout = 10 * time.Second

// abandonTimeout bounds the write of the QUIT sent, without waiting for the
// reply, to a session closed from the pool. An idle session has nothing
// queued, so the write does not block unless the socket is wedged.
const abandonTimeout = time.Second

// poolKey identifies the idle sessions that may carry a message to a target.
// host is part of it because a TLS session was set up (SNI and certificate
// check) for one name and must not serve another; the TLS mode and the
// login because a session set up under a weaker policy, or for another
// account, must not carry mail that asks for a stronger one or a different
// account.
type poolKey struct {
	addr netip.AddrPort
	host string
	tls  TLSMode
	user string
}

func keyOf(t Target) poolKey {
	k := poolKey{addr: t.Addr, host: t.Host, tls: t.TLS}
	if t.Auth != nil {
		k.user = t.Auth.Username
	}
	return k
}

// smtpConn is an established SMTP session with one target: greeted, EHLO
// done and, when offered, STARTTLS done. One goroutine uses it at a time;
// while idle it belongs to the Client's pool.
type smtpConn struct {
	key    poolKey
	raw    net.Conn     // the TCP connection; closing it ends the session
	sc     *sessionConn // raw, with the current Deliver's ctx deadline
	wire   net.Conn     // what client speaks over: sc, or TLS over sc
	client *smtp.Client
	tls    TLSInfo
	// noReuse marks a session that must end after this message: it
	// continued in plain text after the server refused STARTTLS, and a new
	// connection may find TLS working again.
	noReuse bool
	// pipelining records that the EHLO reply listed PIPELINING (RFC
	// 2920): every transaction on this session is then sent as one group
	// on the raw connection, and the idle check RSET joins that group.
	pipelining bool
	// resetDue marks a pipelining session taken from the pool: its next
	// group starts with RSET, and a failed RSET there means a dead idle
	// session rather than a failed delivery.
	resetDue bool
	br       *bufio.Reader     // replies read by smtpout itself; see replies
	text     *textproto.Reader // over br
	uses     int               // Deliver calls this session has served
	maxUses  int               // Deliver calls it may serve (MaxMessagesPerConn or Target.MaxMessages)
	stop     func() bool       // disarms the current Deliver's ctx AfterFunc

	idleSince time.Time
	elem      *list.Element // in Client.lru while idle
}

// arm makes ctx bound the session: deadlines are clamped to ctx's deadline
// and cancelling ctx closes the socket, which is the only way to interrupt
// go-smtp, whose client takes no context.
func (pc *smtpConn) arm(ctx context.Context) {
	pc.sc.limit, _ = ctx.Deadline()
	pc.stop = context.AfterFunc(ctx, func() { _ = pc.raw.Close() })
}

// replies returns the reader for the replies smtpout reads itself, on
// wire: to RSET, STARTTLS refusals aside, and from DATA on in lock-step
// sessions, to the whole transaction in pipelining ones. It is kept for the
// session's life, so that no reply is lost in a discarded buffer.
//
// It shares the connection with go-smtp's Client, which reads through its
// own buffer. Neither buffer holds anything when the other reads, because
// an SMTP server speaks only to answer a command (RFC 5321 §4.2; the banner
// is the one exception, read by go-smtp before anything else) and each
// side reads exactly the replies to the commands it sent: go-smtp's
// textproto reader stops at the last line of the EHLO, MAIL or RCPT reply
// it waits for, and anything that came after it in the same read would
// have been sent unasked. inStep checks that this side ends empty.
func (pc *smtpConn) replies() *textproto.Reader {
	if pc.text == nil {
		pc.br = bufio.NewReaderSize(&lineLimitReader{r: pc.wire, max: maxReplyLine}, 1024)
		pc.text = textproto.NewReader(pc.br)
	}
	return pc.text
}

// inStep reports that no unread byte is left in smtpout's reply buffer:
// anything there arrived unasked, and the session is out of step.
func (pc *smtpConn) inStep() bool {
	return pc.br == nil || pc.br.Buffered() == 0
}

// reset sends RSET and waits for its 250. go-smtp's Client.Reset is not used
// because it also forgets the EHLO, so the next MAIL would repeat EHLO: one
// more round trip on every reused message. The command is spoken directly,
// as for STARTTLS; go-smtp's reader is empty between commands.
func (pc *smtpConn) reset(timeout time.Duration) error {
	_ = pc.wire.SetDeadline(time.Now().Add(timeout))
	defer func() { _ = pc.wire.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(pc.wire, "RSET\r\n"); err != nil {
		return err
	}
	if _, _, err := pc.replies().ReadResponse(250); err != nil {
		return err
	}
	if !pc.inStep() {
		return errors.New("smtpout: unexpected data after RSET reply")
	}
	return nil
}

// abandon ends an idle session without waiting for the server: QUIT is
// written so that the server logs a clean end, and the socket is closed.
func (pc *smtpConn) abandon() error {
	pc.sc.limit = time.Time{}
	_ = pc.wire.SetWriteDeadline(time.Now().Add(abandonTimeout))
	_, _ = io.WriteString(pc.wire, "QUIT\r\n")
	return pc.raw.Close()
}

// reusable reports whether a failed command left the session in step with
// the server: it answered, and not with 421, which announces that it is
// closing the connection (RFC 5321 §3.8). Any other error (network, timeout,
// cancellation) leaves the protocol state unknown.
func reusable(err error) bool {
	var se *smtp.SMTPError
	return errors.As(err, &se) && se.Code != 421
}

// checkout returns a pooled session for key, armed with ctx, or nil if
// there is none. A lock-step session has answered RSET; one that fails is
// closed and the next one is tried. A pipelining session is returned
// unchecked with resetDue set: its RSET goes out with the next transaction,
// which saves the round trip, and the session's user replaces it if that
// RSET fails.
func (c *Client) checkout(ctx context.Context, key poolKey) *smtpConn {
	for ctx.Err() == nil {
		pc := c.take(key)
		if pc == nil {
			return nil
		}
		pc.arm(ctx)
		if pc.pipelining {
			pc.resetDue = true
			return pc
		}
		if err := pc.reset(min(c.cfg.CommandTimeout, resetTimeout)); err != nil {
			pc.stop()
			_ = pc.raw.Close()
			continue
		}
		return pc
	}
	return nil
}

// take removes and returns the most recently used idle session for key, so
// that the older ones age out when traffic drops.
func (c *Client) take(key poolKey) *smtpConn {
	if c.cfg.MaxIdlePerHost < 0 {
		return nil
	}
	c.mu.Lock()
	expired := c.expireLocked()
	var pc *smtpConn
	if idle := c.idle[key]; len(idle) > 0 {
		pc = idle[len(idle)-1]
		idle[len(idle)-1] = nil
		c.setIdleLocked(key, idle[:len(idle)-1])
		c.lru.Remove(pc.elem)
		pc.elem = nil
	}
	c.mu.Unlock()
	_ = abandonAll(expired) // closing stale sockets: nothing to do about a failure
	return pc
}

// checkin puts pc, already disarmed, into the pool. It reports false, and
// leaves pc to the caller, when reuse is off, the Client is closed, pc has
// served MaxMessagesPerConn messages, or MaxIdlePerHost sessions for its
// key are already idle.
func (c *Client) checkin(pc *smtpConn) bool {
	if c.cfg.MaxIdlePerHost < 0 || pc.noReuse || pc.uses >= pc.maxUses {
		return false
	}
	c.mu.Lock()
	expired := c.expireLocked()
	ok := !c.closed && len(c.idle[pc.key]) < c.cfg.MaxIdlePerHost
	if ok {
		if c.idle == nil {
			c.idle = make(map[poolKey][]*smtpConn)
		}
		pc.idleSince = c.now()
		pc.elem = c.lru.PushBack(pc)
		c.idle[pc.key] = append(c.idle[pc.key], pc)
	}
	c.mu.Unlock()
	_ = abandonAll(expired) // closing stale sockets: nothing to do about a failure
	return ok
}

// expireLocked removes every session idle for IdleTimeout or longer and
// returns them for closing outside the lock. c.lru is in check-in order, so
// the expired sessions are at its front, and each is the oldest of its key.
func (c *Client) expireLocked() []*smtpConn {
	var expired []*smtpConn
	now := c.now()
	for e := c.lru.Front(); e != nil; e = c.lru.Front() {
		pc := e.Value.(*smtpConn)
		if now.Sub(pc.idleSince) < c.cfg.IdleTimeout {
			break
		}
		c.lru.Remove(e)
		pc.elem = nil
		// Both lists are in check-in order, so pc is normally idle[0].
		idle := c.idle[pc.key]
		if i := slices.Index(idle, pc); i >= 0 {
			c.setIdleLocked(pc.key, slices.Delete(idle, i, i+1))
		}
		expired = append(expired, pc)
	}
	return expired
}

func (c *Client) setIdleLocked(key poolKey, idle []*smtpConn) {
	if len(idle) == 0 {
		delete(c.idle, key)
		return
	}
	c.idle[key] = idle
}

// HasIdle reports whether an idle session to t is waiting in the pool. It
// is advice, not a claim: another Deliver may take the session first.
func (c *Client) HasIdle(t Target) bool {
	if c.cfg.MaxIdlePerHost < 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.idle[keyOf(t)]) > 0
}

// idleLen returns how many sessions are idle in the pool.
func (c *Client) idleLen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Close closes the idle sessions and stops the Client from keeping any
// more: a Deliver call in progress or made later still works, but ends its
// session when done. Close does not wait for the servers' replies to QUIT.
// The error joins the failures to close sockets, which affect no delivery.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	all := make([]*smtpConn, 0, c.lru.Len())
	for e := c.lru.Front(); e != nil; e = e.Next() {
		pc := e.Value.(*smtpConn)
		pc.elem = nil
		all = append(all, pc)
	}
	c.lru.Init()
	c.idle = nil
	c.mu.Unlock()
	return abandonAll(all)
}

func abandonAll(pcs []*smtpConn) error {
	var errs []error
	for _, pc := range pcs {
		if err := pc.abandon(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
