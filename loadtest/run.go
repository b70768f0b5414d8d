package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// measureSink blasts the sink directly over SMTP and returns its msgs/s.
func measureSink(ctx context.Context, snk *sink, o options) (float64, error) {
	snk.reset("ceiling")
	l := newLoad("ceiling", o.messages, o.concurrency, o.size, 0)
	if err := l.runSMTP(ctx, snk.addr.String()); err != nil {
		return 0, err
	}
	if n := l.accepted.Load(); n > 0 {
		return float64(n) / l.end.Sub(l.start).Seconds(), nil
	}
	return 0, fmt.Errorf("sink ceiling: nothing accepted: %v", l.firstError.Load())
}

func runSystem(ctx context.Context, name string, o options, bin *binaries, work string, snk *sink, dns *dnsStub, run string) (*result, error) {
	snk.reset(run)
	res := &result{System: name, Mode: "send", Durability: "default", Messages: o.messages, SizeBytes: o.size, Concurrency: o.concurrency, OfferedRate: o.rate}
	var sys system
	var addr string
	var pf *postflowSystem
	switch name {
	case "postflow", "postflow-sync":
		res.System = "postflow"
		if name == "postflow-sync" {
			res.Durability = "sync_always"
		}
		if o.target != "" {
			addr = o.target
			break
		}
		dir := filepath.Join(work, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		var err error
		pf, err = startPostflow(ctx, bin, dir, postflowOptions{syncAlways: name == "postflow-sync", pprof: o.profile, sinkPort: snk.addr.Port, dnsAddr: dns.addr, concurrency: o.workerConc})
		if err != nil {
			return nil, err
		}
		sys, addr = pf, pf.grpcAddr
	case "postfix", "haraka":
		res.Mode = "smtp"
		res.Durability = map[string]string{"postfix": "fsync", "haraka": "fsync"}[name]
		p, err := startPeer(ctx, name, snk.addr.Port)
		if err != nil {
			return nil, err
		}
		sys, addr = p, p.addr
	default:
		return nil, fmt.Errorf("unknown system %q", name)
	}
	defer func() {
		if sys != nil {
			if err := sys.stop(); err != nil {
				fmt.Fprintln(os.Stderr, "warning:", err)
			}
		}
	}()

	if o.warmup > 0 {
		if err := warmUp(ctx, name, res.Mode, addr, o, snk, run); err != nil {
			return nil, err
		}
	}
	snk.reset(run)

	watchers := []*procStats{watchProcess("loadtest", os.Getpid(), true)}
	if sys != nil {
		names := make([]string, 0)
		procs := sys.processes()
		for n := range procs {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			watchers = append(watchers, watchProcess(n, procs[n], false))
		}
	}
	var js *jsSampler
	if pf != nil {
		var err error
		if js, err = sampleJetStream(pf.natsURL); err != nil {
			return nil, err
		}
	}
	var profWG sync.WaitGroup
	if o.profile && pf != nil {
		profWG.Add(1)
		go func() {
			defer profWG.Done()
			secs := min(30, max(5, o.messages/2000))
			fetch(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", pf.httpAddr, secs), profilePath(o.outJSON, name, "cpu"))
		}()
	}

	fmt.Fprintf(os.Stderr, "%s: %d messages of %d bytes at concurrency %d\n", name, o.messages, o.size, o.concurrency)
	l := newLoad(run, o.messages, o.concurrency, o.size, o.rate)
	if res.Mode == "send" && o.batch > 0 {
		res.Mode, l.batch = "batch", o.batch
	}
	if res.Mode == "send" && o.campaign {
		res.Mode, l.campaign = "campaign", true
	}
	gctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	stopBar := progress(name, l, snk)
	var err error
	if res.Mode != "smtp" {
		err = l.runSend(gctx, addr)
	} else {
		err = l.runSMTP(gctx, addr)
	}
	if err != nil {
		stopBar()
		return nil, err
	}
	// Wait until every accepted message has reached the sink, or the drain
	// deadline: what is still missing then is lost.
	deadline := time.Now().Add(o.drain)
	for int64(snk.unique(l)) < l.accepted.Load() && time.Now().Before(deadline) && ctx.Err() == nil {
		_ = sleepCtx(ctx, 20*time.Millisecond)
	}
	stopBar()
	for _, w := range watchers {
		cpu, rss := w.finish()
		res.Processes = append(res.Processes, procResult{Name: w.name, CPUSeconds: round(cpu, 2), PeakRSSMB: round(float64(rss)/(1<<20), 1)})
	}
	profWG.Wait()
	if o.profile && pf != nil {
		fetch(fmt.Sprintf("http://%s/debug/pprof/allocs", pf.httpAddr), profilePath(o.outJSON, name, "allocs"))
	}
	if js != nil {
		res.JSBytesPerMsg = js.finish()
	}
	res.fill(l, snk)
	return res, nil
}

// unique counts accepted messages that reached the sink at least once.
func (s *sink) unique(l *load) int {
	n := 0
	for i := range l.messages {
		if s.counts[i].Load() > 0 {
			n++
		}
	}
	return n
}

func profilePath(jsonPath, system, kind string) string {
	return filepath.Join(filepath.Dir(jsonPath), system+"."+kind+".pprof")
}

func fetch(url, path string) {
	resp, err := http.Get(url) //nolint:gosec,noctx // loopback URL built from our own listener
	if err != nil {
		fmt.Fprintln(os.Stderr, "warning: profile:", err)
		return
	}
	defer func() { _ = resp.Body.Close() }()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "warning: profile:", err)
		return
	}
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "warning: profile:", err)
		return
	}
	defer func() { _ = f.Close() }()
	_, _ = io.Copy(f, resp.Body)
}

// jsSampler watches OUTBOUND while jobs are queued and reports stored bytes
// per queued job at the fullest sample.
type jsSampler struct {
	nc        *nats.Conn
	mu        sync.Mutex
	maxMsgs   uint64
	bytesAtMx uint64
	stop      chan struct{}
	done      chan struct{}
}

func sampleJetStream(url string) (*jsSampler, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	s := &jsSampler{nc: nc, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if st, err := js.Stream(ctx, "OUTBOUND"); err == nil {
				if info, err := st.Info(ctx); err == nil && info.State.Msgs > 0 {
					s.mu.Lock()
					if info.State.Msgs > s.maxMsgs {
						s.maxMsgs, s.bytesAtMx = info.State.Msgs, info.State.Bytes
					}
					s.mu.Unlock()
				}
			}
			cancel()
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s, nil
}

func (s *jsSampler) finish() float64 {
	close(s.stop)
	<-s.done
	s.nc.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.maxMsgs == 0 {
		return 0
	}
	return round(float64(s.bytesAtMx)/float64(s.maxMsgs), 0)
}

// progress draws a one-line progress bar on stderr until stopped.
func progress(name string, l *load, snk *sink) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		start := time.Now()
		for {
			acc, del := l.accepted.Load(), snk.total.Load()
			const width = 30
			filled := int(float64(width) * float64(del) / float64(l.messages))
			bar := strings.Repeat("#", min(filled, width)) + strings.Repeat(".", width-min(filled, width))
			fmt.Fprintf(os.Stderr, "\r%-14s [%s] accepted %6d  delivered %6d / %d  errors %d  %5.1fs ",
				name, bar, acc, del, l.messages, l.errors.Load(), time.Since(start).Seconds())
			select {
			case <-done:
				fmt.Fprintln(os.Stderr)
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// warmUp sends o.warmup messages the same way as the measured run and waits
// for them, so that every system starts measured with its connections,
// processes and files in place. Nothing of it is counted.
func warmUp(ctx context.Context, name, mode, addr string, o options, snk *sink, run string) error {
	n := min(o.warmup, o.messages)
	snk.reset(run + "-warmup")
	l := newLoad(run+"-warmup", n, o.concurrency, o.size, 0)
	wctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var err error
	if mode == "send" {
		err = l.runSend(wctx, addr)
	} else {
		err = l.runSMTP(wctx, addr)
	}
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	deadline := time.Now().Add(o.drain)
	for int64(snk.unique(l)) < l.accepted.Load() && time.Now().Before(deadline) && ctx.Err() == nil {
		_ = sleepCtx(ctx, 20*time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "%s: warmed up with %d messages (%d accepted, %d errors)\n", name, n, l.accepted.Load(), l.errors.Load())
	return nil
}
