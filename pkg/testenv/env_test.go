package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestStartJetStreamRestartKeepsStreams(t *testing.T) {
	js := StartJetStream(t)
	nc := js.Connect(t)
	jsc, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jsc.AddStream(&nats.StreamConfig{Name: "T", Subjects: []string{"t.>"}}); err != nil {
		t.Fatalf("AddStream: %v", err)
	}
	if _, err := jsc.Publish("t.1", []byte("x")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	js.Restart(t)
	nc2 := js.Connect(t)
	jsc2, _ := nc2.JetStream()
	info, err := jsc2.StreamInfo("T")
	if err != nil {
		t.Fatalf("StreamInfo after restart: %v", err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("messages after restart = %d, want 1", info.State.Msgs)
	}
}

func TestStartRedisStopStart(t *testing.T) {
	r := StartRedis(t)
	c := r.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	r.Stop()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatalf("PING after Stop succeeded, want an error")
	}
	r.Start(t)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Start: %v", err)
	}
}
