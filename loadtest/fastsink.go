package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"time"
)

// The sink speaks just enough SMTP for senders under test, and reads DATA
// by scanning whole buffers for the end-of-data line instead of going byte
// by byte as go-smtp's server does (its DotReader caps a 100 KiB blast at
// about 1,600 msgs/s on this machine, below what the systems under test
// reach). It advertises PIPELINING and 8BITMIME, answers every command in
// order, and keeps nothing but the counters in sink.

// serveFast accepts connections on l until it is closed.
func (s *sink) serveFast(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go s.session(c)
	}
}

func (s *sink) session(c net.Conn) {
	s.sessions.Add(1)
	n := s.active.Add(1)
	for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
	}
	defer func() { s.active.Add(-1); _ = c.Close() }()
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriterSize(c, 4<<10)
	reply := func(line string) { _, _ = w.WriteString(line + "\r\n") }
	reply("220 sink.loadtest.test ESMTP")
	_ = w.Flush()
	var msg bytes.Buffer
	for {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(string(bytes.TrimRight(line, "\r\n")))
		verb, _, _ := strings.Cut(cmd, " ")
		switch verb {
		case "EHLO":
			reply("250-sink.loadtest.test")
			reply("250-PIPELINING")
			reply("250-8BITMIME")
			reply("250-SMTPUTF8")
			reply("250 SIZE 104857600")
		case "HELO":
			reply("250 sink.loadtest.test")
		case "MAIL", "RCPT", "RSET", "NOOP":
			reply("250 2.0.0 ok")
		case "QUIT":
			reply("221 2.0.0 bye")
			_ = w.Flush()
			return
		case "DATA":
			reply("354 go ahead")
			_ = w.Flush()
			msg.Reset()
			if err := readData(r, &msg); err != nil {
				return
			}
			s.record(msg.Bytes(), time.Now().UnixNano())
			reply("250 2.0.0 queued")
		default:
			reply("502 5.5.2 command not implemented")
		}
		// Pipelined commands are answered together: flush only when the
		// client has nothing more buffered (RFC 2920 §3.2 server side).
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

var errDataTooLong = errors.New("sink: message too long")

// readData copies the DATA section into msg, undoing dot-stuffing, up to and
// excluding the terminating "." line.
func readData(r *bufio.Reader, msg *bytes.Buffer) error {
	atLineStart := true
	for {
		buf, err := r.Peek(r.Buffered())
		if len(buf) == 0 {
			if _, err = r.Peek(1); err != nil {
				return err
			}
			continue
		}
		// Handle a line start (end marker or a stuffed dot) one byte at a time;
		// everything else is copied in bulk up to the next line start.
		if atLineStart {
			if len(buf) < 3 && buf[0] == '.' {
				if _, err := r.Peek(3); err != nil && !errors.Is(err, io.EOF) {
					return err
				}
				buf, _ = r.Peek(r.Buffered())
			}
			if bytes.HasPrefix(buf, []byte(".\r\n")) {
				_, _ = r.Discard(3)
				return nil
			}
			if buf[0] == '.' {
				_, _ = r.Discard(1) // dot-stuffing
				buf = buf[1:]
				if len(buf) == 0 {
					atLineStart = false
					continue
				}
			}
		}
		i := bytes.Index(buf, []byte("\r\n"))
		var n int
		if i >= 0 {
			n = i + 2
			atLineStart = true
		} else {
			// Keep a trailing CR back in case its LF has not arrived.
			n = len(buf)
			if buf[n-1] == '\r' {
				n--
			}
			atLineStart = false
			if n == 0 {
				if _, err := r.Peek(r.Buffered() + 1); err != nil {
					return err
				}
				continue
			}
		}
		msg.Write(buf[:n])
		_, _ = r.Discard(n)
		if msg.Len() > 128<<20 {
			return errDataTooLong
		}
		_ = err
	}
}
