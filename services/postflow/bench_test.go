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

// BenchmarkCampaignQueue100k uploads 100,000 recipients to a campaign
// through the API, as `postflow campaign send` does (rows of address and
// two variables, 1,000 per stream message), and reports the seconds it
// took: the target is under 10 s on 2 cores.
func BenchmarkCampaignQueue100k(b *testing.B) {
	const rows = 100000
	s := startStack(b, testenv.SinkScript{}, func(c *serveConfig) { c.Roles = []string{"api"} })
	list := make([]*postflowv1.RecipientRow, rows)
	for i := range list {
		list[i] = &postflowv1.RecipientRow{Email: fmt.Sprintf("customer.%d@mail%d.example.com", i, i%50), Vars: map[string]string{"first_name": fmt.Sprintf("Name%d", i), "plan": "premium"}}
	}
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		ctx := context.Background()
		c, err := s.campaigns.CreateCampaign(ctx, &postflowv1.CreateCampaignRequest{From: "news@sender.test", Subject: "Hi {{.first_name}}", Text: "Your plan: {{.plan}}"})
		if err != nil {
			b.Fatal(err)
		}
		stream, err := s.campaigns.AddRecipients(ctx)
		if err != nil {
			b.Fatal(err)
		}
		for lo := 0; lo < rows; lo += 1000 {
			if err := stream.Send(&postflowv1.AddRecipientsRequest{CampaignId: c.GetCampaign().GetCampaignId(), Rows: list[lo : lo+1000]}); err != nil {
				b.Fatal(err)
			}
		}
		resp, err := stream.CloseAndRecv()
		if err != nil || resp.GetAdded() != rows {
			b.Fatalf("AddRecipients = %v, %v", resp, err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/100k")
	}
}
