package api

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/postflow/postflow/pkg/eventlog"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// digestHeader carries, on every event Send publishes for a message with
// an idempotency key, a digest of the request: a later Send with the same
// key is compared against it (TESTPLAN A5).
const digestHeader = "Postflow-Request-Digest"

// errConflict is a reused idempotency key with a different request.
var errConflict = status.Error(codes.AlreadyExists, "idempotency_key was used for a different request; use a new key")

// requestDigest identifies a request's content: deterministic protobuf
// encoding, so map order does not matter.
func requestDigest(req *postflowv1.SendRequest) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		// A request that was decoded always encodes; fall back to a digest
		// that matches nothing stored.
		return "unencodable"
	}
	h := sha256.Sum256(b)
	return base64.RawURLEncoding.EncodeToString(h[:16])
}

// replay answers a Send whose message id already has events: the original
// response when the request is the same, ALREADY_EXISTS when it is not. It
// returns nil, nil when the message is new.
func (s *Server) replay(ctx context.Context, tenant, msgID, digest string) (*postflowv1.SendResponse, error) {
	got, err := s.reader.Header(ctx, tenant, msgID, digestHeader)
	if errors.Is(err, eventlog.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("api: idempotency look-up: %w", err)
	}
	if got != digest {
		s.log.InfoContext(ctx, "api: idempotency key reused with a different request", slog.String("message_id", msgID))
		return nil, errConflict
	}
	evs, err := s.reader.Message(ctx, tenant, msgID)
	if err != nil {
		return nil, fmt.Errorf("api: idempotency look-up: %w", err)
	}
	// The recipients as Send accepted them: their attempt-0 events
	// (queued, or suppressed), in recipient order.
	type acc struct {
		index int
		r     *postflowv1.AcceptedRecipient
	}
	var out []acc
	seen := map[string]bool{}
	for _, ev := range evs {
		if ev.GetAttempt() != 0 || seen[ev.GetRecipientId()] || ev.GetType() != postflowv1.EventType_EVENT_TYPE_UNSPECIFIED {
			continue
		}
		switch ev.GetState() {
		case postflowv1.RecipientState_RECIPIENT_STATE_QUEUED, postflowv1.RecipientState_RECIPIENT_STATE_SUPPRESSED:
		default:
			continue
		}
		_, i, err := eventlog.ParseRecipientID(ev.GetRecipientId())
		if err != nil {
			continue
		}
		seen[ev.GetRecipientId()] = true
		out = append(out, acc{i, &postflowv1.AcceptedRecipient{Address: ev.GetRecipient(), RecipientId: ev.GetRecipientId(), State: ev.GetState()}})
	}
	slices.SortFunc(out, func(a, b acc) int { return a.index - b.index })
	resp := &postflowv1.SendResponse{MessageId: msgID}
	for _, a := range out {
		resp.Recipients = append(resp.Recipients, a.r)
	}
	return resp, nil
}
