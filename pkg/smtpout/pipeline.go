package smtpout

import (
	"context"
	"strconv"
	"time"

	"github.com/postflow/postflow/pkg/deliveryerr"
)

// pipelined runs the transaction as one RFC 2920 command group on a session
// whose server listed PIPELINING: RSET (for a session taken from the pool),
// MAIL, one RCPT per pending recipient and DATA leave in a single write,
// then the replies are read in command order (RFC 2920 §3.1). The body
// follows only after a 354 to DATA with MAIL and at least one RCPT
// accepted. Compared with lock-step this saves a round trip per command
// and, with writeBody, makes a small message two writes: the group and the
// body with its final dot.
//
// go-smtp's Client has no pipelining API, so the group is spoken on the raw
// connection (pc.wire) and the replies are read with pc.replies; go-smtp's
// own reader is empty at this point (see replies) and never reads again
// except for the QUIT reply. Each reply gets CommandTimeout (RFC 5321
// §4.5.3.2 sets the timeouts per command), the RSET reply the shorter
// resetTimeout, the reply after the final dot DataTimeout; all stay within
// ctx's deadline through sessionConn.
//
// The outcomes are those of the lock-step path:
//   - RSET not answered with 250 (or the group not written) on a pooled
//     session: stale, the session died while idle; nothing is decided.
//   - MAIL refused: the RCPT and DATA replies are still read to stay in
//     step (they are errors such as 503 or 554), and MAIL's reply decides,
//     as early does: 4xx lets the caller try the next target, 5xx fails
//     every recipient. The session stays reusable: the next group starts
//     with RSET.
//   - Each RCPT reply decides its recipient: 25x accepts, anything else is
//     recorded as its *deliveryerr.Error.
//   - No recipient accepted: DATA is expected to fail and no body is sent.
//   - 354 although MAIL or every RCPT failed (a broken server): a lone
//     "." ends the empty transaction, as RFC 2920 §3.1 asks ("if the DATA
//     command was accepted the client SMTP should send a single dot"); it
//     carries no recipient, so it delivers nothing, and its reply keeps
//     the session in step. Closing the connection instead would also be
//     safe but would waste a session that still works.
//   - 421 anywhere: the server is closing the connection (RFC 5321 §3.8)
//     and will not answer the rest of the group, so reading stops; the
//     recipients not yet refused take the 421, a temporary failure.
//   - A lost connection or ctx ending: a temporary failure as in
//     lock-step; after the final dot it is a possible duplicate.
//
// keep reports that the session ended in step and may be reused.
func (s *session) pipelined(ctx context.Context, pc *smtpConn) (final bool, de *deliveryerr.Error, keep, stale bool) {
	rset := pc.resetDue
	pc.resetDue = false
	defer func() { _ = pc.wire.SetDeadline(time.Time{}) }()

	// The group is at most a few hundred bytes per recipient, which fits
	// in the socket buffers, so writing it whole before reading cannot
	// deadlock against a server that answers as it reads (RFC 2920 §3.1).
	bp := chunkBufs.Get().(*[]byte)
	group := s.appendGroup((*bp)[:0], pc, rset)
	_ = pc.wire.SetWriteDeadline(time.Now().Add(s.cfg.CommandTimeout))
	_, err := pc.wire.Write(group)
	chunkBufs.Put(bp)
	if err != nil {
		if rset && ctx.Err() == nil {
			return false, nil, false, true
		}
		return false, netFailure(ctx, "4.4.2", "connection dropped during MAIL", err), false, false
	}

	r := pc.replies()
	read := func(timeout time.Duration) (int, string, error) {
		_ = pc.wire.SetReadDeadline(time.Now().Add(timeout))
		return r.ReadResponse(0) // any code: each is classified below
	}

	if rset {
		code, _, err := read(min(s.cfg.CommandTimeout, resetTimeout))
		if err != nil && ctx.Err() != nil {
			return false, netFailure(ctx, "4.4.2", "connection dropped during RSET", err), false, false
		}
		if err != nil || code != 250 {
			return false, nil, false, true
		}
	}

	code, msg, err := read(s.cfg.CommandTimeout)
	if err != nil {
		return false, netFailure(ctx, "4.4.2", "connection dropped during MAIL", err), false, false
	}
	var mailErr *deliveryerr.Error
	if code != 250 {
		mailErr = parseReply(code, msg)
		if code == 421 {
			final, de = s.earlyReply(mailErr)
			return final, de, false, false
		}
	}
	// failMail returns MAIL's outcome once its group has been read as far
	// as it will be.
	failMail := func(keep bool) (bool, *deliveryerr.Error, bool, bool) {
		final, de := s.earlyReply(mailErr)
		return final, de, keep, false
	}

	var accepted []int
	for k, i := range s.pending {
		code, msg, err := read(s.cfg.CommandTimeout)
		switch {
		case err != nil && mailErr != nil:
			return failMail(false)
		case err != nil:
			de := netFailure(ctx, "4.4.2", "connection dropped during RCPT", err)
			s.res.failAll(accepted, de)
			s.res.failAll(s.pending[k:], de)
			return true, de, false, false
		case mailErr != nil:
			if code == 421 {
				return failMail(false)
			}
		case code/10 == 25:
			accepted = append(accepted, i)
		default:
			de := parseReply(code, msg)
			s.res.Recipients[i] = RcptResult{Err: de}
			if code == 421 {
				s.res.failAll(accepted, de)
				s.res.failAll(s.pending[k+1:], de)
				return true, de, false, false
			}
		}
	}

	code, msg, err = read(s.cfg.CommandTimeout)
	switch {
	case err != nil && mailErr != nil:
		return failMail(false)
	case err != nil && len(accepted) == 0:
		return true, nil, false, false
	case err != nil:
		return true, s.dropped(ctx, accepted, "connection dropped during DATA", err), false, false
	case code == 354 && (mailErr != nil || len(accepted) == 0):
		keep = s.emptyData(pc)
		if mailErr != nil {
			return failMail(keep)
		}
		return true, nil, keep, false
	case mailErr != nil:
		return failMail(code != 421)
	case len(accepted) == 0:
		// The recipients' replies decided; the transaction stays open
		// until the RSET at the head of the next group.
		return true, nil, code != 421, false
	case code != 354:
		de := parseReply(code, msg)
		s.res.failAll(accepted, de)
		return true, de, code != 421, false
	}
	de, keep = s.sendBody(ctx, pc, accepted)
	return true, de, keep, false
}

// appendGroup appends the command group to b: RSET if rset, then MAIL with
// the parameters go-smtp's Client.Mail would send for the same options
// (BODY=8BITMIME and SIZE when offered, SMTPUTF8 when requested; deliver
// has checked that it is offered), one RCPT per pending recipient, and
// DATA, which must end a group (RFC 2920 §3.1). The addresses passed
// validPath, so they cannot break a command line.
func (s *session) appendGroup(b []byte, pc *smtpConn, rset bool) []byte {
	c := pc.client
	if rset {
		b = append(b, "RSET\r\n"...)
	}
	b = append(b, "MAIL FROM:<"...)
	b = append(b, s.env.From...)
	b = append(b, '>')
	if ok, _ := c.Extension("8BITMIME"); ok {
		b = append(b, " BODY=8BITMIME"...)
	}
	if ok, _ := c.Extension("SIZE"); ok && len(s.body) > 0 {
		b = append(b, " SIZE="...)
		b = strconv.AppendInt(b, int64(len(s.body)), 10)
	}
	if s.env.SMTPUTF8 {
		b = append(b, " SMTPUTF8"...)
	}
	b = append(b, "\r\n"...)
	for _, i := range s.pending {
		b = append(b, "RCPT TO:<"...)
		b = append(b, s.env.To[i]...)
		b = append(b, ">\r\n"...)
	}
	return append(b, "DATA\r\n"...)
}

// emptyData ends a DATA that the server accepted with no transaction to
// carry (see pipelined) by sending the end-of-data line alone, and reports
// whether the server answered it in step. Whatever it answers, no
// recipient was accepted, so nothing is delivered.
func (s *session) emptyData(pc *smtpConn) bool {
	_ = pc.wire.SetWriteDeadline(time.Now().Add(s.cfg.CommandTimeout))
	if _, err := pc.wire.Write(endData); err != nil {
		return false
	}
	_ = pc.wire.SetReadDeadline(time.Now().Add(s.cfg.DataTimeout))
	code, _, err := pc.replies().ReadResponse(0)
	return err == nil && code != 421
}
