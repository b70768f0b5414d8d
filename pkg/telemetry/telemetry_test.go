package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
)

func TestSetupServesPrometheusMetrics(t *testing.T) {
	ctx := context.Background()
	prov, err := Setup(ctx, Config{ServiceName: "postflow-test", Version: "test"})
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	defer func() { _ = prov.Shutdown(ctx) }()
	Accepted(ctx, 3)
	Delivered(ctx, 0.042)
	Deferred(ctx)
	Bounced(ctx)

	rec := httptest.NewRecorder()
	prov.Metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		"postflow_submit_accepted_total 3",
		"postflow_delivery_delivered_total 1",
		"postflow_delivery_deferred_total 1",
		"postflow_delivery_bounced_total 1",
		`postflow_delivery_latency_seconds_bucket{le="0.05"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if otel.GetTextMapPropagator().Fields() == nil {
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
