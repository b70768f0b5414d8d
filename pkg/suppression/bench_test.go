package suppression_test

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkCheck is Send's lookup: 50 recipients, 5 of them suppressed, on
// a list of 10,000 entries.
func BenchmarkCheck(b *testing.B) {
	e := newEnv(b, nil)
	addMany(b, e.store, "acme", "example.com", 10_000)
	addrs := make([]string, 0, 50)
	for i := range 5 {
		addrs = append(addrs, fmt.Sprintf("user%d@example.com", i*1999))
	}
	for i := range 45 {
		addrs = append(addrs, fmt.Sprintf("clean%d@example.org", i))
	}
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		found, err := e.store.Check(ctx, "acme", addrs)
		if err != nil {
			b.Fatal(err)
		}
		if len(found) != 5 {
			b.Fatalf("Check found %d, want 5", len(found))
		}
	}
}

// BenchmarkGet is one lookup, for comparison with Check's 50.
func BenchmarkGet(b *testing.B) {
	e := newEnv(b, nil)
	addMany(b, e.store, "acme", "example.com", 10_000)
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.store.Get(ctx, "acme", "user42@example.com"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkList reads one page through List's consumer, and through direct
// gets (one per entry, the alternative List does not use) for comparison.
func BenchmarkList(b *testing.B) {
	e := newEnv(b, nil)
	addMany(b, e.store, "acme", "example.com", 10_000)
	ctx := b.Context()
	stream, err := e.js.Stream(ctx, "KV_SUPPRESSION")
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{100, 1000} {
		b.Run(fmt.Sprintf("consumer/page=%d", size), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				entries, _, err := e.store.List(ctx, "acme", anyReason, "", size)
				if err != nil || len(entries) != size {
					b.Fatalf("List: %d entries, %v", len(entries), err)
				}
			}
		})
		b.Run(fmt.Sprintf("directget/page=%d", size), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				seq := uint64(1)
				for range size {
					msg, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject("$KV.SUPPRESSION.acme.>"))
					if err != nil {
						b.Fatal(err)
					}
					seq = msg.Sequence + 1
				}
			}
		})
	}
}
