package main

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// BenchmarkSendToDelivered measures the whole pipeline in one process:
// Send (16 concurrent clients) → JetStream → worker → SMTP sink on loopback,
// until the sink has every message. It reports delivered messages per second.
func BenchmarkSendToDelivered(b *testing.B) {
	s := startStack(b, testenv.SinkScript{})
	text := string(make([]byte, 0))
	for len(text) < 2048 {
		text += "The quick brown fox jumps over the lazy dog. "
	}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	const clients = 16
	for g := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < b.N; i += clients {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := s.mail.Send(ctx, &postflowv1.SendRequest{
					From: "me@sender.test", To: []string{fmt.Sprintf("u%d@example.test", i)}, Subject: "bench", Text: text,
				})
				cancel()
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	s.sink.WaitForCount(b, b.N, 10*time.Minute)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "delivered/s")
}
