package smtpout

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/postflow/postflow/pkg/testenv"
)

// countingConn counts the writes made on a connection: one per write
// system call on plain TCP, one per TLS record batch over TLS.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// benchBody returns a canonical body of about size bytes in 64-byte lines,
// one line in 32 starting with a dot so that dot-stuffing has work to do.
func benchBody(size int) []byte {
	var b strings.Builder
	b.WriteString("Subject: bench\r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		if i%32 == 31 {
			b.WriteString("." + strings.Repeat("y", 61) + "\r\n")
			continue
		}
		b.WriteString(strings.Repeat("x", 62) + "\r\n")
	}
	return []byte(b.String())
}

// BenchmarkDeliverPipelined sends messages one after another over a reused
// session to the sink, which advertises PIPELINING, and reports the writes
// the client made per message.
func BenchmarkDeliverPipelined(b *testing.B) {
	cert, pool := selfSigned(b)
	tests := []struct {
		mode  string
		size  int
		rcpts int
	}{
		{"plain", 2 << 10, 1},
		{"plain", 2 << 10, 5},
		{"plain", 100 << 10, 1},
		{"starttls", 2 << 10, 1},
		{"starttls", 100 << 10, 1},
	}
	for _, tc := range tests {
		b.Run(fmt.Sprintf("%s/%dKiB/rcpt%d", tc.mode, tc.size>>10, tc.rcpts), func(b *testing.B) {
			script := testenv.SinkScript{}
			if tc.mode == "starttls" {
				script.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
			}
			sink := testenv.StartSMTPSink(b, script)
			var writes atomic.Int64
			cfg := testConfig()
			cfg.TLSConfig = &tls.Config{RootCAs: pool}
			cfg.MaxMessagesPerConn = 1 << 30
			dial := (&net.Dialer{}).DialContext
			cfg.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
				conn, err := dial(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &countingConn{Conn: conn, writes: &writes}, nil
			}
			c := newPoolClient(b, cfg)
			targets := []Target{sinkTarget(sink)}
			body := benchBody(tc.size)
			var to []string
			for i := range tc.rcpts {
				to = append(to, fmt.Sprintf("r%d@example.net", i))
			}
			e := env(to...)
			// Warm the pool so that the connect and handshake are not
			// counted.
			if res := c.Deliver(context.Background(), targets, e, body); !res.Recipients[0].Delivered {
				b.Fatalf("Deliver: %+v", res.Recipients[0])
			}
			writes.Store(0)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				res := c.Deliver(context.Background(), targets, e, body)
				if !res.Recipients[0].Delivered {
					b.Fatalf("Deliver: %+v", res.Recipients[0])
				}
			}
			b.ReportMetric(float64(writes.Load())/float64(b.N), "writes/op")
		})
	}
}
