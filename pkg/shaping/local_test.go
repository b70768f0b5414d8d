package shaping

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLocalConnectionCapNeverExceeded(t *testing.T) {
	l := NewLocal(Limits{Connections: 3})
	var cur, peak atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			release, err := l.Acquire(context.Background(), "example.com")
			if err != nil {
				t.Error(err)
				return
			}
			n := cur.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			cur.Add(-1)
			release()
			release() // a second release must not free a second slot
		}()
	}
	wg.Wait()
	if got := peak.Load(); got > 3 {
		t.Fatalf("peak concurrent sessions = %d, want <= 3", got)
	}
}

func TestLocalDestinationsAreIndependent(t *testing.T) {
	l := NewLocal(Limits{Connections: 1})
	release, err := l.Acquire(context.Background(), "a.example")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r2, err := l.Acquire(ctx, "b.example")
	if err != nil {
		t.Fatalf("Acquire(b.example) while a.example is full: %v", err)
	}
	r2()
	short, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := l.Acquire(short, "a.example"); err == nil {
		t.Fatal("Acquire(a.example) with its only slot held and ctx canceled succeeded")
	}
}
