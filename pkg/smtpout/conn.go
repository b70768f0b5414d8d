package smtpout

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"time"
)

// sessionConn keeps every deadline go-smtp and smtpout set within the
// caller's ctx deadline (go-smtp resets deadlines to "none" after each
// command). It is used by one goroutine; Close may come from another.
type sessionConn struct {
	net.Conn
	limit time.Time // zero: no ctx deadline
}

func (c *sessionConn) clamp(t time.Time) time.Time {
	if c.limit.IsZero() || (!t.IsZero() && t.Before(c.limit)) {
		return t
	}
	return c.limit
}

func (c *sessionConn) SetDeadline(t time.Time) error {
	return c.Conn.SetDeadline(c.clamp(t))
}

func (c *sessionConn) SetReadDeadline(t time.Time) error {
	return c.Conn.SetReadDeadline(c.clamp(t))
}

func (c *sessionConn) SetWriteDeadline(t time.Time) error {
	return c.Conn.SetWriteDeadline(c.clamp(t))
}

// greetedConn replays a local 220 banner before the connection's own data,
// so that a fresh go-smtp client can take over after STARTTLS.
type greetedConn struct {
	net.Conn
	greeting *strings.Reader
}

func (c *greetedConn) Read(p []byte) (int, error) {
	if c.greeting.Len() > 0 {
		return c.greeting.Read(p)
	}
	return c.Conn.Read(p)
}

// maxReplyLine bounds a reply line read by smtpout itself. RFC 5321
// §4.5.3.1.5 allows 512 bytes; twice the 1000-byte text line limit is
// go-smtp's bound for the replies it reads, kept here so that a server
// cannot make the client buffer an endless line.
const maxReplyLine = 2000

var errLongReply = errors.New("smtpout: reply line too long")

// lineLimitReader fails once a line read through it exceeds max bytes.
type lineLimitReader struct {
	r   io.Reader
	max int
	cur int // bytes of the current line so far
}

func (l *lineLimitReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	for b := p[:n]; len(b) > 0; {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			l.cur += len(b)
			break
		}
		if l.cur+i > l.max {
			return 0, errLongReply
		}
		l.cur = 0
		b = b[i+1:]
	}
	if l.cur > l.max {
		return 0, errLongReply
	}
	return n, err
}
