package smtpout

import (
	"net"
	"strings"
	"time"
)

// sessionConn keeps every deadline go-smtp sets within the caller's ctx
// deadline (go-smtp resets deadlines to "none" after each command) and
// counts reads, which tells a failure before the final dot from one after.
// It is used by one goroutine; Close may come from another.
type sessionConn struct {
	net.Conn
	limit time.Time // zero: no ctx deadline
	reads int
}

func (c *sessionConn) clamp(t time.Time) time.Time {
	if c.limit.IsZero() || (!t.IsZero() && t.Before(c.limit)) {
		return t
	}
	return c.limit
}

func (c *sessionConn) Read(p []byte) (int, error) {
	c.reads++
	return c.Conn.Read(p)
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
