package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

type report struct {
	Machine     string    `json:"machine"`
	Date        string    `json:"date"`
	Command     string    `json:"command"`
	SinkCeiling float64   `json:"sink_ceiling_per_s"`
	Runs        []*result `json:"runs"`
}

type procResult struct {
	Name       string  `json:"name"`
	CPUSeconds float64 `json:"cpu_seconds"`
	PeakRSSMB  float64 `json:"peak_rss_mb"`
}

type result struct {
	System        string       `json:"system"`
	Mode          string       `json:"mode"`
	Durability    string       `json:"durability"`
	Messages      int          `json:"messages"`
	SizeBytes     int          `json:"size_bytes"`
	Concurrency   int          `json:"concurrency"`
	OfferedRate   float64      `json:"offered_per_s,omitempty"`
	Seconds       float64      `json:"seconds"`
	AcceptedPerS  float64      `json:"accepted_per_s"`
	DeliveredPerS float64      `json:"delivered_per_s"`
	SendP50ms     float64      `json:"send_p50_ms"`
	SendP95ms     float64      `json:"send_p95_ms"`
	SendP99ms     float64      `json:"send_p99_ms"`
	E2EP50ms      float64      `json:"e2e_p50_ms"`
	E2EP95ms      float64      `json:"e2e_p95_ms"`
	E2EP99ms      float64      `json:"e2e_p99_ms"`
	Accepted      int64        `json:"accepted"`
	Delivered     int          `json:"delivered"`
	Errors        int64        `json:"errors"`
	FirstError    string       `json:"first_error,omitempty"`
	Lost          int          `json:"lost"`
	Duplicates    int          `json:"duplicates"`
	Phantom       int64        `json:"phantom"`
	Processes     []procResult `json:"processes"`
	JSBytesPerMsg float64      `json:"jetstream_bytes_per_queued_msg,omitempty"`
	SinkSessions  int64        `json:"sink_sessions"`
	SinkPeakConc  int64        `json:"sink_peak_concurrent_sessions"`
	SinkBound     bool         `json:"sink_bound"`
}

// fill computes the figures of one run from the generator and the sink.
func (r *result) fill(l *load, snk *sink) {
	r.Accepted = l.accepted.Load()
	r.Errors = l.errors.Load()
	if v, ok := l.firstError.Load().(string); ok {
		r.FirstError = v
	}
	r.Phantom = snk.phantom.Load()
	r.SinkSessions = snk.sessions.Load()
	r.SinkPeakConc = snk.peak.Load()
	var sendLat, e2e []float64
	var last int64
	for seq := range l.messages {
		n := int(snk.counts[seq].Load())
		acc := l.acceptedAt[seq].Load()
		if n > 0 {
			r.Delivered++
			r.Duplicates += n - 1
			recv := snk.received[seq].Load()
			last = max(last, recv)
			if acc > 0 {
				e2e = append(e2e, float64(max(recv-acc, 0))/1e6)
			}
		}
		if acc > 0 {
			sendLat = append(sendLat, float64(l.latencies[seq])/1e6)
			if n == 0 {
				r.Lost++
			}
		} else if n > 0 {
			// Delivered though the client saw an error: "recovered" in
			// TESTPLAN's terms, allowed; not counted as phantom.
			_ = n
		}
	}
	elapsed := l.end.Sub(l.start).Seconds()
	if last > 0 {
		elapsed = max(elapsed, time.Unix(0, last).Sub(l.start).Seconds())
	}
	r.Seconds = round(elapsed, 2)
	if gen := l.end.Sub(l.start).Seconds(); gen > 0 {
		r.AcceptedPerS = round(float64(r.Accepted)/gen, 0)
	}
	if elapsed > 0 {
		r.DeliveredPerS = round(float64(r.Delivered)/elapsed, 0)
	}
	r.SendP50ms, r.SendP95ms, r.SendP99ms = pct(sendLat, 50), pct(sendLat, 95), pct(sendLat, 99)
	r.E2EP50ms, r.E2EP95ms, r.E2EP99ms = pct(e2e, 50), pct(e2e, 95), pct(e2e, 99)
}

func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	i := int(math.Ceil(p/100*float64(len(v)))) - 1
	return round(v[max(0, min(i, len(v)-1))], 2)
}

func round(v float64, digits int) float64 {
	m := math.Pow(10, float64(digits))
	return math.Round(v*m) / m
}

func (rep *report) write(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func label(r *result) string {
	if r.System == "postflow" && r.Durability == "sync_always" {
		return "postflow-sync"
	}
	return r.System
}

func printTable(w io.Writer, rep *report) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\tmode\tmsgs\tsize\tconc\tsecs\taccepted/s\tdelivered/s\tsend p50/p99 ms\te2e p50/p95/p99 ms\tlost\tdup\tphantom\terrors\t")
	for _, r := range rep.Runs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%.1f\t%.0f\t%.0f\t%.1f / %.1f\t%.0f / %.0f / %.0f\t%d\t%d\t%d\t%d\t\n",
			label(r), r.Mode, r.Messages, r.SizeBytes, r.Concurrency, r.Seconds, r.AcceptedPerS, r.DeliveredPerS,
			r.SendP50ms, r.SendP99ms, r.E2EP50ms, r.E2EP95ms, r.E2EP99ms, r.Lost, r.Duplicates, r.Phantom, r.Errors)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\nsink ceiling: %.0f msgs/s (raw SMTP blast at the same concurrency)\n", rep.SinkCeiling)
	for _, r := range rep.Runs {
		var parts []string
		for _, p := range r.Processes {
			parts = append(parts, fmt.Sprintf("%s %.1f CPU-s, %.0f MiB peak", p.Name, p.CPUSeconds, p.PeakRSSMB))
		}
		extra := ""
		extra = fmt.Sprintf("; sink saw %d sessions, at most %d at once", r.SinkSessions, r.SinkPeakConc)
		if r.JSBytesPerMsg > 0 {
			extra += fmt.Sprintf("; JetStream %.0f bytes per queued job", r.JSBytesPerMsg)
		}
		if r.SinkBound {
			extra += "; SINK-BOUND: within 20% of the sink's ceiling"
		}
		if r.FirstError != "" {
			extra += "; first error: " + r.FirstError
		}
		fmt.Fprintf(w, "%s: %s%s\n", label(r), strings.Join(parts, "; "), extra)
	}
}

// updateDocs replaces the generated section named section of a Markdown
// file (between "<!-- loadtest:begin NAME -->" and "<!-- loadtest:end NAME
// -->") with this report's table and ratios, leaving the hand-written text
// around it.
func updateDocs(path, section string, rep *report) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	docsStart, docsEnd := "<!-- loadtest:begin "+section+" -->", "<!-- loadtest:end "+section+" -->"
	i, j := bytes.Index(old, []byte(docsStart)), bytes.Index(old, []byte(docsEnd))
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %s … %s section", path, docsStart, docsEnd)
	}
	var b bytes.Buffer
	b.Write(old[:i+len(docsStart)])
	fmt.Fprintf(&b, "\n\nGenerated by `%s` on %s.\nMachine: %s.\n\n", rep.Command, rep.Date, rep.Machine)
	b.WriteString("| system | mode | durability | msgs | size | conc | seconds | accepted/s | delivered/s | send p99 ms | e2e p50 ms | e2e p99 ms | lost | dup | CPU-s (per process) | peak RSS MiB |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rep.Runs {
		var cpu, rss []string
		for _, p := range r.Processes {
			cpu = append(cpu, fmt.Sprintf("%s %.1f", p.Name, p.CPUSeconds))
			rss = append(rss, fmt.Sprintf("%s %.0f", p.Name, p.PeakRSSMB))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %d | %d | %.1f | %.0f | %.0f | %.1f | %.1f | %.1f | %d | %d | %s | %s |\n",
			label(r), r.Mode, r.Durability, r.Messages, r.SizeBytes, r.Concurrency, r.Seconds, r.AcceptedPerS, r.DeliveredPerS,
			r.SendP99ms, r.E2EP50ms, r.E2EP99ms, r.Lost, r.Duplicates, strings.Join(cpu, ", "), strings.Join(rss, ", "))
	}
	fmt.Fprintf(&b, "\nSink ceiling (raw SMTP blast, same count and concurrency): %.0f msgs/s.\n", rep.SinkCeiling)
	var base *result
	for _, r := range rep.Runs {
		if r.System == "postfix" {
			base = r
		}
	}
	if base != nil && base.DeliveredPerS > 0 {
		b.WriteString("\nRatios of delivered/s to Postfix in this run:\n\n")
		for _, r := range rep.Runs {
			if r != base {
				fmt.Fprintf(&b, "- %s: %.2f×\n", label(r), r.DeliveredPerS/base.DeliveredPerS)
			}
		}
	}
	for _, r := range rep.Runs {
		if r.JSBytesPerMsg > 0 {
			fmt.Fprintf(&b, "\nJetStream storage per queued job (%s): %.0f bytes.\n", label(r), r.JSBytesPerMsg)
		}
		if r.SinkBound {
			fmt.Fprintf(&b, "\n%s ran within 20%% of the sink's ceiling: the sink, not the system, may have been the limit.\n", label(r))
		}
	}
	b.WriteString("\n")
	b.Write(old[j:])
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// plot draws delivered/s and e2e p99 per run with gnuplot.
func plot(rep *report, png, work string) error {
	if _, err := exec.LookPath("gnuplot"); err != nil {
		return fmt.Errorf("plot: gnuplot not found (apt-get install gnuplot-nox): %w", err)
	}
	var data bytes.Buffer
	for _, r := range rep.Runs {
		fmt.Fprintf(&data, "%q %.0f %.1f\n", label(r), r.DeliveredPerS, r.E2EP99ms)
	}
	dat := filepath.Join(work, "plot.dat")
	if err := os.WriteFile(dat, data.Bytes(), 0o644); err != nil {
		return err
	}
	script := fmt.Sprintf(`set terminal pngcairo size 1000,450 font ",10"
set output %q
set multiplot layout 1,2 title "Postflow load test: %d messages of %d bytes at concurrency %d"
set style fill solid 0.6
set boxwidth 0.6
set grid ytics
set yrange [0:*]
set title "delivered messages/s"
plot %q using 0:2:xtic(1) with boxes notitle, '' using 0:2:(sprintf("%%.0f",$2)) with labels offset 0,1 notitle
set title "accepted -> delivered p99 (ms, log scale)"
set logscale y
set yrange [*:*]
plot %q using 0:3:xtic(1) with boxes notitle, '' using 0:3:(sprintf("%%.0f",$3)) with labels offset 0,1 notitle
unset multiplot
`, png, rep.Runs[0].Messages, rep.Runs[0].SizeBytes, rep.Runs[0].Concurrency, dat, dat)
	cmd := exec.Command("gnuplot")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %w\n%s", err, out)
	}
	return nil
}
