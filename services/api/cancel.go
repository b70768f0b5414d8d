package api

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/eventlog"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// Cancel implements MailService.Cancel: a CANCELED event for every
// recipient without a final state. Workers read a recipient's events before
// each attempt, so a canceled recipient is never attempted again; its job
// is acked when next delivered. Each canceled event's id derives from the
// recipient's latest attempt, so repeating Cancel writes nothing new.
func (s *Server) Cancel(ctx context.Context, req *postflowv1.CancelRequest) (*postflowv1.CancelResponse, error) {
	id := strings.TrimSpace(req.GetMessageId())
	if !validMessageID(id) {
		return nil, badField("message_id", errMessageIDFormat.Error())
	}
	tenant := s.cfg.Tenant
	evs, err := s.reader.Message(ctx, tenant, id)
	if err != nil {
		return nil, s.fail(ctx, "cancel", err)
	}
	now := timestamppb.New(s.now())
	last := map[string]int32{}
	for _, ev := range evs {
		last[ev.GetRecipientId()] = max(last[ev.GetRecipientId()], ev.GetAttempt())
	}
	var cancels []*postflowv1.Event
	for _, rs := range eventlog.Summarize(evs) {
		if eventlog.Final(rs.GetState()) {
			continue
		}
		attempt := last[rs.GetRecipientId()]
		cancels = append(cancels, &postflowv1.Event{
			EventId:     eventlog.EventID(rs.GetRecipientId(), attempt, postflowv1.RecipientState_RECIPIENT_STATE_CANCELED),
			Tenant:      tenant,
			MessageId:   id,
			RecipientId: rs.GetRecipientId(),
			Recipient:   rs.GetRecipient(),
			State:       postflowv1.RecipientState_RECIPIENT_STATE_CANCELED,
			Time:        now,
			Attempt:     attempt,
			Tags:        rs.GetEvents()[0].GetTags(),
			CampaignId:  rs.GetEvents()[0].GetCampaignId(),
		})
	}
	if len(cancels) > 0 {
		pctx, cancel := context.WithTimeout(ctx, s.cfg.PublishTimeout)
		defer cancel()
		if err := s.events.Write(pctx, cancels...); err != nil {
			return nil, s.fail(ctx, "cancel", err)
		}
		// Read again: an attempt that finished meanwhile may have made a
		// recipient final first, and the answer must say so.
		if evs, err = s.reader.Message(ctx, tenant, id); err != nil {
			return nil, s.fail(ctx, "cancel", err)
		}
	}
	resp := &postflowv1.CancelResponse{MessageId: id}
	for _, rs := range eventlog.Summarize(evs) {
		resp.Recipients = append(resp.Recipients, &postflowv1.CanceledRecipient{RecipientId: rs.GetRecipientId(), Recipient: rs.GetRecipient(), State: rs.GetState()})
	}
	s.log.InfoContext(ctx, "api: canceled", slog.String("message_id", id), slog.Int("recipients", len(cancels)))
	return resp, nil
}

// fail logs an unexpected error of op and returns its gRPC status.
func (s *Server) fail(ctx context.Context, op string, err error) error {
	if !isClientError(err) {
		s.log.WarnContext(ctx, fmt.Sprintf("api: %s failed", op), slog.Any("error", err))
	}
	return toStatus(err).Err()
}
