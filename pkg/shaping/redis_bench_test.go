package shaping

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postflow/postflow/pkg/testenv"
)

// The benchmarks measure limiter decisions per second against a real
// redis-server on loopback, each decision one script run (one round trip):
//
//	go test ./pkg/shaping -run '^$' -bench Redis -benchtime 3s
//
// RunParallel keeps GOMAXPROCS×parallelism decisions in flight, as many
// delivery goroutines of one worker would.

const benchParallelism = 8

func BenchmarkRedisReserve(b *testing.B) {
	srv := testenv.StartRedis(b)
	w := newTestRedis(b, srv, RedisConfig{Heartbeat: time.Second})
	tests := []struct {
		name string
		lim  Limits
		jobs bool
	}{
		// A rate no load reaches: every decision grants.
		{"granted", Limits{Rate: Rate{N: 1 << 30, Per: time.Second}}, false},
		// A low rate without jobs: every decision refuses, writing nothing.
		{"refused", Limits{Rate: Rate{N: 10, Per: time.Second}}, false},
		// A low rate with a job each: every decision reserves a slot and
		// writes a reservation key.
		{"reserved", Limits{Rate: Rate{N: 10, Per: time.Second}}, true},
	}
	for _, tc := range tests {
		b.Run(tc.name, func(b *testing.B) {
			dest := Destination{Name: "bench-" + tc.name, Limits: tc.lim}
			var seq atomic.Int64
			b.SetParallelism(benchParallelism)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					job := ""
					if tc.jobs {
						job = strconv.FormatInt(seq.Add(1), 10)
					}
					if _, _, err := w.Reserve(b.Context(), dest, job); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
			if s := w.Stats(); s.FallbackDecisions != 0 {
				b.Fatalf("Stats = %+v: decisions went to the fallback", s)
			}
		})
	}
}

// BenchmarkRedisAcquireRelease measures a lease taken and given back: two
// round trips per operation.
func BenchmarkRedisAcquireRelease(b *testing.B) {
	srv := testenv.StartRedis(b)
	w := newTestRedis(b, srv, RedisConfig{Heartbeat: time.Second})
	dest := Destination{Name: "bench-conn", Limits: Limits{Connections: 1 << 20}}
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l, ok, err := w.Acquire(b.Context(), dest, time.Minute)
			if err != nil || !ok {
				b.Errorf("Acquire = %v, %v", ok, err)
				return
			}
			if err := l.Release(b.Context()); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "leases/s")
	if s := w.Stats(); s.FallbackDecisions != 0 {
		b.Fatalf("Stats = %+v: decisions went to the fallback", s)
	}
}
