package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/mailmsg"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/suppression"
	"github.com/postflow/postflow/pkg/telemetry"
	queuev1 "github.com/postflow/postflow/proto/postflow/queue/v1"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// Send implements MailService.Send. See the proto for the contract.
func (s *Server) Send(ctx context.Context, req *postflowv1.SendRequest) (*postflowv1.SendResponse, error) {
	resp, err := s.send(ctx, req)
	if err != nil {
		st := toStatus(err)
		telemetry.Rejected(ctx, st.Code().String())
		if !isClientError(err) {
			s.log.WarnContext(ctx, "api: send failed", slog.Any("error", err))
		}
		return nil, st.Err()
	}
	telemetry.Accepted(ctx, 1)
	return resp, nil
}

func (s *Server) send(ctx context.Context, req *postflowv1.SendRequest) (*postflowv1.SendResponse, error) {
	in := mailmsg.Input{
		From:           req.GetFrom(),
		To:             req.GetTo(),
		Cc:             req.GetCc(),
		Bcc:            req.GetBcc(),
		ReplyTo:        req.GetReplyTo(),
		Subject:        req.GetSubject(),
		Text:           req.GetText(),
		HTML:           req.GetHtml(),
		Tags:           req.GetTags(),
		Metadata:       req.GetMetadata(),
		IdempotencyKey: req.GetIdempotencyKey(),
		Raw:            req.GetRaw(),
	}
	for _, h := range req.GetHeaders() {
		in.Headers = append(in.Headers, mailmsg.Header{Name: h.GetName(), Value: h.GetValue()})
	}
	now := s.now()
	idDomain := s.cfg.MessageIDDomain
	if idDomain == "" {
		idDomain = mailmsg.SenderDomain(req.GetFrom())
	}
	built, err := mailmsg.Build(in, s.cfg.Limits, now, idDomain)
	if err != nil {
		return nil, err
	}

	tenant := s.cfg.Tenant
	msgID := newMessageID(tenant, req.GetIdempotencyKey())
	var digest string
	if req.GetIdempotencyKey() != "" {
		// Past JetStream's duplicate window, EVENTS still knows the
		// message: answer from it instead of queueing it again.
		digest = requestDigest(req)
		if resp, err := s.replay(ctx, tenant, msgID, digest); resp != nil || err != nil {
			return resp, err
		}
	}
	suppressed, err := s.suppressed(ctx, tenant, built.Recipients)
	if err != nil {
		return nil, err
	}
	acceptedAt := timestamppb.New(now)
	expireAt := timestamppb.New(now.Add(s.cfg.MaxAge))
	if req.GetExpireAt() != nil {
		if err := validExpireAt(req.GetExpireAt(), now, s.cfg.MaxAge); err != nil {
			return nil, err
		}
		expireAt = req.GetExpireAt()
	}

	resp := &postflowv1.SendResponse{MessageId: msgID}
	queued := make([]*postflowv1.Event, 0, len(built.Recipients))
	var jobs []*queuev1.DeliveryJob
	byDomain := map[string]*queuev1.DeliveryJob{}
	for i, rcpt := range built.Recipients {
		rid := eventlog.RecipientID(msgID, i)
		if sup := suppressed[i]; sup != nil {
			resp.Recipients = append(resp.Recipients, &postflowv1.AcceptedRecipient{Address: rcpt.Addr, RecipientId: rid, State: postflowv1.RecipientState_RECIPIENT_STATE_SUPPRESSED})
			queued = append(queued, eventlog.Suppressed(&postflowv1.Event{Tenant: tenant, MessageId: msgID, RecipientId: rid, Recipient: rcpt.Addr, Time: acceptedAt, Tags: req.GetTags()}, sup))
			continue
		}
		resp.Recipients = append(resp.Recipients, &postflowv1.AcceptedRecipient{Address: rcpt.Addr, RecipientId: rid, State: postflowv1.RecipientState_RECIPIENT_STATE_QUEUED})
		queued = append(queued, &postflowv1.Event{
			EventId:     eventlog.EventID(rid, 0, postflowv1.RecipientState_RECIPIENT_STATE_QUEUED),
			Tenant:      tenant,
			MessageId:   msgID,
			RecipientId: rid,
			Recipient:   rcpt.Addr,
			State:       postflowv1.RecipientState_RECIPIENT_STATE_QUEUED,
			Time:        acceptedAt,
			Tags:        req.GetTags(),
		})
		job := byDomain[rcpt.Domain]
		if job == nil {
			job = &queuev1.DeliveryJob{
				Tenant:       tenant,
				MessageId:    msgID,
				Domain:       rcpt.Domain,
				EnvelopeFrom: built.EnvelopeFrom,
				Body:         built.Body,
				AcceptedAt:   acceptedAt,
				ExpireAt:     expireAt,
				Tags:         req.GetTags(),
				Smtputf8:     built.SMTPUTF8,
			}
			byDomain[rcpt.Domain] = job
			jobs = append(jobs, job)
		}
		job.Recipients = append(job.Recipients, &queuev1.JobRecipient{Address: rcpt.Addr, Index: int32(i)})
	}

	pctx, cancel := context.WithTimeout(ctx, s.cfg.PublishTimeout)
	defer cancel()
	// Events and jobs go out together and are awaited together: one round
	// trip per Send. A "queued" event may therefore land after a fast
	// worker's outcome; package eventlog tolerates that order.
	msgs, err := eventlog.Msgs(queued...)
	if err != nil {
		return nil, err
	}
	if digest != "" {
		for _, m := range msgs {
			m.Header.Set(digestHeader, digest)
		}
	}
	for _, job := range jobs {
		data, err := proto.Marshal(job)
		if err != nil {
			return nil, fmt.Errorf("api: marshal job: %w", err)
		}
		m := nats.NewMsg(queue.OutboundSubject(tenant, job.GetDomain()))
		m.Data = data
		// Deterministic: a retried Send with the same idempotency key is
		// deduplicated by JetStream within the Duplicates window.
		m.Header.Set(jetstream.MsgIDHeader, msgID+"."+job.GetDomain())
		msgs = append(msgs, m)
	}
	if err := s.pub.Publish(pctx, msgs...); err != nil {
		return nil, err
	}
	if len(suppressed) > 0 {
		telemetry.SuppressedAtSend(ctx, len(suppressed))
	}
	s.log.InfoContext(ctx, "api: accepted",
		slog.String("message_id", msgID),
		slog.Int("recipients", len(built.Recipients)),
		slog.Int("suppressed", len(suppressed)),
		slog.Int("jobs", len(jobs)),
		slog.Int("bytes", len(built.Body)))
	return resp, nil
}

// GetMessage implements StatusService.GetMessage.
func (s *Server) GetMessage(ctx context.Context, req *postflowv1.GetMessageRequest) (*postflowv1.GetMessageResponse, error) {
	id := strings.TrimSpace(req.GetMessageId())
	if !validMessageID(id) {
		return nil, badField("message_id", errMessageIDFormat.Error())
	}
	evs, err := s.reader.Message(ctx, s.cfg.Tenant, id)
	if err != nil {
		if !errors.Is(err, eventlog.ErrNotFound) {
			s.log.WarnContext(ctx, "api: get message failed", slog.String("message_id", id), slog.Any("error", err))
		}
		return nil, toStatus(err).Err()
	}
	resp := &postflowv1.GetMessageResponse{MessageId: id, Recipients: eventlog.Summarize(evs)}
	for _, ev := range evs {
		if resp.AcceptedAt == nil || ev.GetTime().AsTime().Before(resp.AcceptedAt.AsTime()) {
			resp.AcceptedAt = ev.GetTime()
		}
	}
	return resp, nil
}

// validExpireAt checks a caller's expire_at: a valid timestamp after now
// and no later than maxAge from now.
func validExpireAt(ts *timestamppb.Timestamp, now time.Time, maxAge time.Duration) error {
	violation := func(desc string) error {
		return &mailmsg.ValidationError{Violations: []mailmsg.FieldError{{Field: "expire_at", Description: desc}}}
	}
	if err := ts.CheckValid(); err != nil {
		return violation("not a valid timestamp")
	}
	t := ts.AsTime()
	switch {
	case !t.After(now):
		return violation("must be in the future")
	case t.After(now.Add(maxAge)):
		return violation(fmt.Sprintf("must be within the maximum age (%v) from now", maxAge))
	}
	return nil
}

// suppressed returns, by recipient index, the suppression entries of the
// recipients on the tenant's list.
func (s *Server) suppressed(ctx context.Context, tenant string, rcpts []mailmsg.Address) (map[int]*postflowv1.Suppression, error) {
	if s.supp == nil {
		return nil, nil
	}
	addrs := make([]string, len(rcpts))
	for i, r := range rcpts {
		addrs[i] = r.Addr
	}
	found, err := s.supp.Check(ctx, tenant, addrs)
	if err != nil {
		return nil, fmt.Errorf("%w: suppression list: %w", queue.ErrUnavailable, err)
	}
	if len(found) == 0 {
		return nil, nil
	}
	out := map[int]*postflowv1.Suppression{}
	for i, a := range addrs {
		if norm, err := suppression.Normalize(a); err == nil && found[norm] != nil {
			out[i] = found[norm]
		}
	}
	return out, nil
}
