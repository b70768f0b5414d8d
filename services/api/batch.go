package api

import (
	"context"
	"sync"

	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/postflow/postflow/pkg/telemetry"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// MaxBatch is the most messages one SendBatch takes.
const MaxBatch = 1000

// batchParallelism bounds the entries of one batch in flight at once: each
// waits for its own PubAcks, so this many publish rounds overlap.
const batchParallelism = 64

// SendBatch implements MailService.SendBatch: every entry goes through
// Send's path, concurrently, and gets its own result.
func (s *Server) SendBatch(ctx context.Context, req *postflowv1.SendBatchRequest) (*postflowv1.SendBatchResponse, error) {
	n := len(req.GetMessages())
	if n == 0 || n > MaxBatch {
		return nil, badField("messages", "must hold 1 to 1000 messages")
	}
	results := make([]*postflowv1.SendBatchResult, n)
	sem := make(chan struct{}, batchParallelism)
	var wg sync.WaitGroup
	for i, m := range req.GetMessages() {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			results[i] = s.sendEntry(ctx, m)
		})
	}
	wg.Wait()
	return &postflowv1.SendBatchResponse{Results: results}, nil
}

// sendEntry runs one batch entry through Send's path and turns its
// outcome into a result.
func (s *Server) sendEntry(ctx context.Context, m *postflowv1.SendRequest) *postflowv1.SendBatchResult {
	resp, err := s.send(ctx, m)
	if err == nil {
		telemetry.Accepted(ctx, 1)
		return &postflowv1.SendBatchResult{Result: &postflowv1.SendBatchResult_Accepted{Accepted: resp}}
	}
	st := toStatus(err)
	telemetry.Rejected(ctx, st.Code().String())
	if !isClientError(err) {
		s.log.WarnContext(ctx, "api: batch entry failed", "error", err)
	}
	e := &postflowv1.EntryError{Code: int32(st.Code()), Message: st.Message()}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				e.Violations = append(e.Violations, &postflowv1.FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
			}
		}
	}
	return &postflowv1.SendBatchResult{Result: &postflowv1.SendBatchResult_Error{Error: e}}
}
