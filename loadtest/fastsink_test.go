package main

import (
	"bufio"
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
)

// stuff dot-stuffs a CRLF body and appends the end-of-data line, as a
// client does.
func stuff(body string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(body, "\r\n") {
		if strings.HasPrefix(line, ".") {
			b.WriteByte('.')
		}
		b.WriteString(line)
	}
	return b.String() + ".\r\n"
}

func TestReadDataUndoesDotStuffing(t *testing.T) {
	bodies := []string{
		"",
		"hello\r\n",
		".\r\n",
		"..\r\n",
		".leading dot\r\n",
		"a\r\n.\r\nb\r\n",
		"a\r\n..\r\n...x\r\n",
		"bare\rCR and bare\nLF stay\r\n",
		strings.Repeat("x", 200_000) + "\r\n.end\r\n",
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		var b strings.Builder
		for range rnd.IntN(50) {
			switch rnd.IntN(4) {
			case 0:
				b.WriteString(".")
			case 1:
				b.WriteString("\r\n")
			case 2:
				b.WriteString("\r")
			default:
				b.WriteString("text")
			}
		}
		body := b.String()
		if body != "" && !strings.HasSuffix(body, "\r\n") {
			body += "\r\n"
		}
		bodies = append(bodies, body)
	}
	for _, body := range bodies {
		wire := stuff(body) + "NEXT COMMAND\r\n"
		for _, r := range []*bufio.Reader{
			bufio.NewReaderSize(strings.NewReader(wire), 16),
			bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(wire)), 16),
			bufio.NewReaderSize(strings.NewReader(wire), 64<<10),
		} {
			var got bytes.Buffer
			if err := readData(r, &got); err != nil {
				t.Fatalf("readData(%q): %v", wire[:min(len(wire), 60)], err)
			}
			if got.String() != body {
				t.Fatalf("readData(%q) = %q, want %q", wire[:min(len(wire), 60)], got.String()[:min(got.Len(), 60)], body[:min(len(body), 60)])
			}
			rest, _ := r.ReadString('\n')
			if rest != "NEXT COMMAND\r\n" {
				t.Fatalf("after readData(%q) the reader holds %q, want the next command", wire[:min(len(wire), 60)], rest)
			}
		}
	}
}
