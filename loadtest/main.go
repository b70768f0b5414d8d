// Command loadtest measures Postflow, and the MTAs users would pick instead,
// on this machine: it starts the system under test, an SMTP sink and a DNS
// stub on loopback, drives a bounded number of messages through it, and
// reports throughput, latency, the acceptance oracle (lost, duplicate,
// phantom) and the CPU and memory of every process. See loadtest/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

type options struct {
	systems     []string
	messages    int
	concurrency int
	size        int
	rate        float64
	timeout     time.Duration
	drain       time.Duration
	target      string
	outJSON     string
	docs        string
	plot        bool
	profile     bool
	workerConc  int
	postflowBin string
	warmup      int
	batch       int
	campaign    bool
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

func run() error {
	var o options
	systems := flag.String("systems", "postflow", "comma-separated: postflow, postflow-sync (sync_interval: always), postfix, haraka")
	compare := flag.Bool("compare", false, "run the default comparison: postflow, postflow-sync, postfix, haraka")
	flag.IntVar(&o.messages, "messages", 20000, "messages per system")
	flag.IntVar(&o.concurrency, "concurrency", 64, "concurrent clients")
	flag.IntVar(&o.size, "size", 2048, "body size in bytes")
	flag.Float64Var(&o.rate, "rate", 0, "offered messages per second (0: as fast as the system accepts)")
	flag.DurationVar(&o.timeout, "timeout", 3*time.Minute, "longest time spent submitting to one system")
	flag.DurationVar(&o.drain, "drain", 90*time.Second, "longest wait for deliveries after submission ends")
	flag.StringVar(&o.target, "target", "", "gRPC address of a running Postflow to measure instead of starting one (it must route to this run's sink and DNS stub: see README)")
	flag.StringVar(&o.outJSON, "out", "loadtest/results/latest.json", "JSON report path")
	flag.StringVar(&o.docs, "docs", "", "update the section named after the JSON file (e.g. latest) in this Markdown file")
	flag.BoolVar(&o.plot, "plot", false, "draw a PNG of throughput and latency beside the JSON (needs gnuplot)")
	flag.BoolVar(&o.profile, "profile", false, "save Postflow CPU and allocation profiles beside the JSON")
	flag.IntVar(&o.workerConc, "worker-concurrency", 64, "Postflow worker --concurrency")
	flag.IntVar(&o.warmup, "warmup", 2000, "messages sent to each system before measuring, not counted (connections, processes, JetStream files)")
	flag.BoolVar(&o.campaign, "campaign", false, "Postflow: send the messages as one campaign (CampaignService): upload every recipient, then start it")
	flag.IntVar(&o.batch, "batch", 0, "Postflow: submit with SendBatch, this many messages per call (0: one Send per message)")
	flag.StringVar(&o.postflowBin, "postflow-bin", "", "use this postflow binary instead of building ./services/postflow (to measure an older build)")
	flag.Parse()
	o.systems = strings.Split(*systems, ",")
	if *compare {
		o.systems = []string{"postflow", "postflow-sync", "postfix", "haraka"}
	}
	if o.messages < 1 || o.concurrency < 1 || o.size < 0 {
		return errors.New("--messages and --concurrency must be positive")
	}
	if _, err := os.Stat("go.mod"); err != nil {
		return errors.New("run from the repository root (go run ./loadtest)")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	work, err := os.MkdirTemp("", "postflow-loadtest-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(work) }()

	run := fmt.Sprintf("r%d", time.Now().UnixNano())
	snk, err := startSink(run, o.messages)
	if err != nil {
		return fmt.Errorf("sink: %w", err)
	}
	defer snk.close()
	dns, err := startDNSStub()
	if err != nil {
		return fmt.Errorf("dns stub: %w", err)
	}
	defer dns.close()
	fmt.Fprintf(os.Stderr, "sink on %s, DNS stub on %s\n", snk.addr, dns.addr)

	rep := &report{Machine: machine(), Command: "go run ./loadtest " + strings.Join(os.Args[1:], " "), Date: time.Now().UTC().Format(time.RFC3339)}

	// The sink's own ceiling: a raw SMTP blast at it, same count and
	// concurrency, so a result near it is known to be sink-bound.
	ceiling, err := measureSink(ctx, snk, o)
	if err != nil {
		return err
	}
	rep.SinkCeiling = ceiling
	fmt.Fprintf(os.Stderr, "sink ceiling: %.0f msgs/s\n", ceiling)

	var bin *binaries
	for _, name := range o.systems {
		name = strings.TrimSpace(name)
		if (name == "postflow" || name == "postflow-sync") && o.target == "" && bin == nil {
			fmt.Fprintln(os.Stderr, "building postflow and nats-server")
			if bin, err = buildBinaries(ctx, filepath.Join(work, "bin")); err != nil {
				return err
			}
			if o.postflowBin != "" {
				bin.postflow = o.postflowBin
			}
		}
		r, err := runSystem(ctx, name, o, bin, work, snk, dns, run+"-"+name)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		r.SinkBound = ceiling > 0 && r.DeliveredPerS >= 0.8*ceiling
		rep.Runs = append(rep.Runs, r)
		if ctx.Err() != nil {
			break
		}
	}
	printTable(os.Stdout, rep)
	if err := rep.write(o.outJSON); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "wrote", o.outJSON)
	if o.plot {
		png := strings.TrimSuffix(o.outJSON, filepath.Ext(o.outJSON)) + ".png"
		if err := plot(rep, png, work); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "wrote", png)
	}
	if o.docs != "" {
		section := strings.TrimSuffix(filepath.Base(o.outJSON), filepath.Ext(o.outJSON))
		if err := updateDocs(o.docs, section, rep); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "updated", o.docs)
	}
	return nil
}

func numCPU() int { return runtime.NumCPU() }

func goVersion() string { return runtime.Version() }
