package smtpout

import (
	"bytes"
	"io"
	"sync"
	"time"
)

// bodyChunk is how much of the body is written under one write deadline, so
// that a large message on a slow but live link does not time out while a
// stalled one does (Postfix's smtp_data_xfer_timeout works per block too).
// It is also the size of the buffer the body is stuffed into, so a body of
// up to 64 KiB, final dot included, leaves in one write.
const bodyChunk = 64 << 10

var (
	crlf    = []byte("\r\n")
	crlfDot = []byte("\r\n.")
	dot     = []byte(".")
	endData = []byte(".\r\n")
)

// chunkBufs holds the bodyChunk-sized buffers writeBody fills, so that a
// steady stream of messages allocates none.
var chunkBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, bodyChunk)
	return &b
}}

// deadlineWriter is the part of a connection writeBody needs: pc.wire, a
// *sessionConn or the *tls.Conn over one, both keeping the deadlines within
// the caller's ctx.
type deadlineWriter interface {
	io.Writer
	SetWriteDeadline(t time.Time) error
}

// writeBody sends body as the content of DATA (RFC 5321 §4.5.2): a dot is
// added at the start of every line that begins with one, a CRLF is added
// if body does not end with one, and the end-of-data line ".\r\n" follows.
// An empty body is sent as ".\r\n" alone.
//
// body must be canonical CRLF (every CR followed by LF, every LF preceded
// by CR; Deliver canonicalises it): then every line break written is a
// CRLF and no bare CR or LF reaches the wire. The stuffed body is written
// in writes of at most bodyChunk bytes, each under its own write deadline
// of timeout, the last one carrying the final dot. It returns the first
// write error; a nil error means the final dot was handed to the
// connection.
func writeBody(conn deadlineWriter, body []byte, timeout time.Duration) error {
	bp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bp)
	w := chunkWriter{conn: conn, buf: (*bp)[:0], timeout: timeout}
	if len(body) > 0 && body[0] == '.' {
		w.write(dot)
	}
	// Lines start only after a CRLF, so "\r\n." finds every other line
	// that needs a dot; the text between is copied as it is.
	rest := body
	for {
		i := bytes.Index(rest, crlfDot)
		if i < 0 {
			break
		}
		w.write(rest[:i+2])
		w.write(dot)
		rest = rest[i+2:] // still starts with the line's own dot
	}
	w.write(rest)
	if len(body) > 0 && !bytes.HasSuffix(body, crlf) {
		w.write(crlf)
	}
	w.write(endData)
	w.flush()
	return w.err
}

// chunkWriter gathers bytes into writes of at most bodyChunk bytes, each
// under its own deadline. After the first error it discards everything.
type chunkWriter struct {
	conn    deadlineWriter
	buf     []byte // cap bodyChunk
	timeout time.Duration
	err     error
}

func (w *chunkWriter) write(p []byte) {
	for len(p) > 0 && w.err == nil {
		if len(w.buf) == 0 && len(p) >= cap(w.buf) {
			// A whole chunk of the body as it is: no copy.
			w.send(p[:cap(w.buf)])
			p = p[cap(w.buf):]
			continue
		}
		n := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+n]
		p = p[n:]
		if len(w.buf) == cap(w.buf) {
			w.flush()
		}
	}
}

func (w *chunkWriter) flush() {
	if len(w.buf) > 0 && w.err == nil {
		w.send(w.buf)
	}
	w.buf = w.buf[:0]
}

func (w *chunkWriter) send(p []byte) {
	_ = w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
	_, w.err = w.conn.Write(p)
}
