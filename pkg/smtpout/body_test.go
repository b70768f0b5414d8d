package smtpout

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// recordWriter records each write and whether a deadline was set before it.
type recordWriter struct {
	writes      [][]byte
	armed       bool // a deadline was set since the last write
	unarmed     int  // writes made without a fresh deadline
	failAfter   int  // fail the write after this many; 0 never
	deadlineSet []time.Time
}

func (w *recordWriter) SetWriteDeadline(t time.Time) error {
	w.armed = true
	w.deadlineSet = append(w.deadlineSet, t)
	return nil
}

func (w *recordWriter) Write(p []byte) (int, error) {
	if w.failAfter > 0 && len(w.writes) == w.failAfter {
		return 0, errors.New("write failed")
	}
	if !w.armed {
		w.unarmed++
	}
	w.armed = false
	w.writes = append(w.writes, bytes.Clone(p))
	return len(p), nil
}

func (w *recordWriter) joined() []byte { return bytes.Join(w.writes, nil) }

// unstuff reverses writeBody's encoding the way a receiver does (RFC 5321
// §4.5.2) and reports a problem with the encoding: a missing or early
// end-of-data line, a bare CR or LF, or a write larger than bodyChunk.
func unstuff(out []byte) ([]byte, string) {
	if !bytes.HasSuffix(out, []byte(".\r\n")) || (len(out) > 3 && !bytes.HasSuffix(out, []byte("\r\n.\r\n"))) {
		return nil, "does not end with the end-of-data line"
	}
	if bytes.HasPrefix(out, []byte(".\r\n")) && len(out) > 3 {
		return nil, `starts with the end-of-data line`
	}
	if i := bytes.Index(out, []byte("\r\n.\r\n")); i >= 0 && i != len(out)-5 {
		return nil, `contains "\r\n.\r\n" before the end`
	}
	if !isCanonical(out) {
		return nil, "contains a bare CR or LF"
	}
	data := out[:len(out)-3]
	var got []byte
	for line := range bytes.Lines(data) {
		if line[0] == '.' {
			line = line[1:]
		}
		got = append(got, line...)
	}
	return got, ""
}

func isCanonical(b []byte) bool {
	for i, c := range b {
		if c == '\r' && (i+1 == len(b) || b[i+1] != '\n') || c == '\n' && (i == 0 || b[i-1] != '\r') {
			return false
		}
	}
	return true
}

// wantReceived is what a receiver gets for body: body itself, with a CRLF
// added to a last line that lacks one.
func wantReceived(body []byte) []byte {
	if len(body) > 0 && !bytes.HasSuffix(body, []byte("\r\n")) {
		return append(bytes.Clone(body), '\r', '\n')
	}
	return body
}

// checkWriteBody writes body and checks the wire image.
func checkWriteBody(t *testing.T, body []byte) {
	t.Helper()
	var w recordWriter
	if err := writeBody(&w, body, time.Minute); err != nil {
		t.Fatalf("writeBody(%.40q) = %v", body, err)
	}
	out := w.joined()
	got, problem := unstuff(out)
	if problem != "" {
		t.Fatalf("writeBody(%.40q): output %.80q %s", body, out, problem)
	}
	if want := wantReceived(body); !bytes.Equal(got, want) {
		t.Fatalf("writeBody(%.40q): unstuffed %.80q, want %.80q", body, got, want)
	}
	for i, p := range w.writes {
		if len(p) > bodyChunk {
			t.Fatalf("writeBody(%.40q): write %d is %d bytes, want <= %d", body, i, len(p), bodyChunk)
		}
	}
	if w.unarmed > 0 {
		t.Fatalf("writeBody(%.40q): %d writes without a fresh deadline", body, w.unarmed)
	}
}

func TestWriteBody(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, body, wire string
	}{
		{"empty", "", ".\r\n"},
		{"only dot", ".", "..\r\n.\r\n"},
		{"only dot line", ".\r\n", "..\r\n.\r\n"},
		{"two dots", "..\r\n", "...\r\n.\r\n"},
		{"dot word first", ".x\r\ny\r\n", "..x\r\ny\r\n.\r\n"},
		{"dot lines inside", "a\r\n.\r\n..\r\n.x\r\nb\r\n", "a\r\n..\r\n...\r\n..x\r\nb\r\n.\r\n"},
		{"dot last without CRLF", "a\r\n.", "a\r\n..\r\n.\r\n"},
		{"dot word last without CRLF", "a\r\n.x", "a\r\n..x\r\n.\r\n"},
		{"no CRLF at end", "a", "a\r\n.\r\n"},
		{"empty lines", "\r\n\r\n", "\r\n\r\n.\r\n"},
		{"dot not at line start", "a.b\r\n x.\r\n", "a.b\r\n x.\r\n.\r\n"},
		{"CRLF dot CRLF across lines", "a\r\n.\r\n.\r\n", "a\r\n..\r\n..\r\n.\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var w recordWriter
			if err := writeBody(&w, []byte(tc.body), time.Minute); err != nil {
				t.Fatalf("writeBody(%q) = %v", tc.body, err)
			}
			if got := string(w.joined()); got != tc.wire {
				t.Fatalf("writeBody(%q) wrote %q, want %q", tc.body, got, tc.wire)
			}
			if len(w.writes) != 1 {
				t.Fatalf("writeBody(%q) made %d writes, want 1", tc.body, len(w.writes))
			}
			checkWriteBody(t, []byte(tc.body))
		})
	}
}

func TestWriteBodyChunks(t *testing.T) {
	t.Parallel()
	line := strings.Repeat("x", 62) + "\r\n"
	tests := []struct {
		name   string
		body   []byte
		writes int
	}{
		{"exactly one chunk with the dot", []byte(strings.Repeat(line, (bodyChunk-3)/64) + strings.Repeat("y", (bodyChunk-3)%64)), 2},
		{"100 KiB", []byte(strings.Repeat(line, 100<<10/64)), 2},
		{"100 KiB of dot lines", []byte(strings.Repeat(".\r\n", 100<<10/3)), 3},
		{"one long line", bytes.Repeat([]byte("z"), 3*bodyChunk), 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			checkWriteBody(t, tc.body)
			var w recordWriter
			_ = writeBody(&w, tc.body, time.Minute)
			if len(w.writes) != tc.writes {
				t.Fatalf("writeBody(%d bytes) made %d writes, want %d", len(tc.body), len(w.writes), tc.writes)
			}
		})
	}
}

func TestWriteBodyStopsAtError(t *testing.T) {
	t.Parallel()
	w := recordWriter{failAfter: 1}
	err := writeBody(&w, bytes.Repeat([]byte("a\r\n"), bodyChunk), time.Minute)
	if err == nil || len(w.writes) != 1 {
		t.Fatalf("writeBody with a failing second write = %v after %d writes, want an error after 1", err, len(w.writes))
	}
}

// TestWriteBodyRandom checks the encoding for random canonical bodies
// built from the pieces that matter: dots, line breaks and text, at sizes
// around the chunk boundary.
func TestWriteBodyRandom(t *testing.T) {
	t.Parallel()
	pieces := []string{".", "\r\n", "a", "\r\n.", ".\r\n", "..", "xyz"}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		size := rng.IntN(200)
		if rng.IntN(10) == 0 {
			size = bodyChunk - 8 + rng.IntN(16)
		}
		var b []byte
		for len(b) < size {
			b = append(b, pieces[rng.IntN(len(pieces))]...)
		}
		checkWriteBody(t, b)
	}
}

func FuzzWriteBody(f *testing.F) {
	for _, s := range []string{"", ".", ".\r\n", "a\r\n.\r\nb", "..\r\n.x", "\r\n.\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		checkWriteBody(t, canonicalCRLF(body))
	})
}
