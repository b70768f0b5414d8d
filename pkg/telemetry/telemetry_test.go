package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
)

// The OTel API binds package-level instruments to the first SDK installed,
// so the test binary installs it once and tests compare counter deltas.
var (
	setupOnce sync.Once
	prov      *Providers
	setupErr  error
)

func providers(t *testing.T) *Providers {
	t.Helper()
	setupOnce.Do(func() {
		prov, setupErr = Setup(context.Background(), Config{ServiceName: "postflow-test", Version: "test"})
	})
	if setupErr != nil {
		t.Fatalf("Setup: %v", setupErr)
	}
	return prov
}

// scrape returns every sample of /metrics by its series text.
func scrape(t *testing.T, p *Providers) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	p.Metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := map[string]float64{}
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("unparseable sample %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

func TestSetupServesPrometheusMetrics(t *testing.T) {
	ctx := context.Background()
	p := providers(t)
	before := scrape(t, p)
	Accepted(ctx, 3)
	Delivered(ctx, 0.042)
	Deferred(ctx)
	Bounced(ctx)
	Held(ctx, "rate")
	RateCut(ctx)
	ShapingFallback(ctx)
	Report(ctx, "complaint")
	SuppressionAdded(ctx, "bounce")
	SuppressedAtSend(ctx, 2)
	after := scrape(t, p)
	for series, delta := range map[string]float64{
		"postflow_submit_accepted_total":                             3,
		"postflow_delivery_delivered_total":                          1,
		"postflow_delivery_deferred_total":                           1,
		"postflow_delivery_bounced_total":                            1,
		`postflow_delivery_latency_seconds_bucket{le="0.05"}`:        1,
		`postflow_delivery_latency_seconds_bucket{le="0.025"}`:       0,
		`postflow_shaping_held_total{postflow_reason="rate"}`:        1,
		"postflow_shaping_cuts_total":                                1,
		"postflow_shaping_fallbacks_total":                           1,
		`postflow_bounce_reports_total{postflow_reason="complaint"}`: 1,
		`postflow_suppression_added_total{postflow_reason="bounce"}`: 1,
		"postflow_submit_suppressed_total":                           2,
	} {
		if got := after[series] - before[series]; got != delta {
			t.Errorf("%s grew by %v, want %v", series, got, delta)
		}
	}
	if len(otel.GetTextMapPropagator().Fields()) == 0 {
		t.Error("no propagator installed")
	}
}

func TestLoggerAddsTraceIDs(t *testing.T) {
	var buf bytes.Buffer
	log := NewLogger(&buf, slog.LevelInfo)
	tid, _ := trace.TraceIDFromHex("0102030405060708090a0b0c0d0e0f10")
	sid, _ := trace.SpanIDFromHex("0102030405060708")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}))
	log.With("k", "v").InfoContext(ctx, "hello")
	log.Info("no span")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d log lines, want 2", len(lines))
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["trace_id"] != tid.String() || rec["span_id"] != sid.String() || rec["k"] != "v" {
		t.Errorf("log record = %v, want trace_id %s, span_id %s and k=v", rec, tid, sid)
	}
	if strings.Contains(lines[1], "trace_id") {
		t.Errorf("record without a span carries a trace id: %s", lines[1])
	}
}
