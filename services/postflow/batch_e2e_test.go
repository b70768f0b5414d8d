package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// TestSendBatch: 1,000 entries of which 10 are invalid give 990 accepted
// messages, each delivered exactly once, and 10 errors naming their
// fields, in request order; nothing of the invalid ones is queued.
func TestSendBatch(t *testing.T) {
	const total = 1000
	s := startStack(t, testenv.SinkScript{})
	req := &postflowv1.SendBatchRequest{}
	bad := map[int]string{}
	for i := range total {
		m := &postflowv1.SendRequest{From: "me@sender.test", To: []string{fmt.Sprintf("b%d@example.test", i)}, Subject: fmt.Sprintf("batch %d", i), Text: "t"}
		if i%100 == 7 {
			m.To = []string{"not an address"}
			bad[i] = "to[0]"
		}
		req.Messages = append(req.Messages, m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := s.mail.SendBatch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResults()) != total {
		t.Fatalf("%d results for %d messages", len(resp.GetResults()), total)
	}
	ids := map[string]bool{}
	for i, r := range resp.GetResults() {
		field, isBad := bad[i]
		switch {
		case isBad:
			e := r.GetError()
			if e == nil || codes.Code(e.GetCode()) != codes.InvalidArgument || len(e.GetViolations()) == 0 || e.GetViolations()[0].GetField() != field {
				t.Errorf("entry %d: %v, want INVALID_ARGUMENT naming %s", i, r, field)
			}
		case r.GetAccepted() == nil:
			t.Errorf("entry %d not accepted: %v", i, r.GetError())
		default:
			if rcpt := r.GetAccepted().GetRecipients(); len(rcpt) != 1 || rcpt[0].GetAddress() != fmt.Sprintf("b%d@example.test", i) {
				t.Errorf("entry %d: result %v is not its own", i, r.GetAccepted())
			}
			ids[r.GetAccepted().GetMessageId()] = true
		}
	}
	if len(ids) != total-len(bad) {
		t.Errorf("%d distinct message ids, want %d", len(ids), total-len(bad))
	}
	s.sink.WaitForCount(t, total-len(bad), 60*time.Second)
	s.waitQueueEmpty(30 * time.Second)
	lost, dup, phantom := s.oracle(t, "batch ", total)
	if lost != len(bad) || dup != 0 || phantom != 0 {
		t.Errorf("lost %d (the %d invalid), duplicates %d, phantoms %d", lost, len(bad), dup, phantom)
	}

	for _, n := range []int{0, total + 1} {
		big := &postflowv1.SendBatchRequest{}
		for range n {
			big.Messages = append(big.Messages, req.GetMessages()[0])
		}
		if _, err := s.mail.SendBatch(ctx, big); status.Code(err) != codes.InvalidArgument {
			t.Errorf("batch of %d: %v, want INVALID_ARGUMENT", n, err)
		}
	}
}

// TestCLIBatch sends JSON Lines through `postflow batch`.
func TestCLIBatch(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	file := filepath.Join(t.TempDir(), "msgs.jsonl")
	lines := `{"from":"me@sender.test","to":["one@example.test"],"subject":"cli 0","text":"t"}

{"from":"me@sender.test","to":["two@example.test"],"subject":"cli 1","text":"t","idempotencyKey":"k-2"}
{"from":"bad","to":["three@example.test"],"subject":"cli 2","text":"t"}
`
	if err := os.WriteFile(file, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := batchCmd(context.Background(), []string{"--server=" + s.api.app.grpcLis.Addr().String(), file}, &out, func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), "1 messages not accepted") {
		t.Errorf("batch returned %v, want it to count the invalid line", err)
	}
	got := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(got) != 3 || !strings.HasPrefix(got[0], "1\t") || !strings.HasPrefix(got[1], "3\t") || !strings.HasPrefix(got[2], "4\terror\t") || !strings.Contains(got[2], "from:") {
		t.Fatalf("batch printed %q", out.String())
	}
	s.sink.WaitForCount(t, 2, 30*time.Second)
}
