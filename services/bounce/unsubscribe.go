package bounce

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/suppression"
	"github.com/postflow/postflow/pkg/telemetry"
	"github.com/postflow/postflow/pkg/unsubscribe"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// Unsubscriber records unsubscriptions, from the one-click HTTP endpoint
// or the List-Unsubscribe mailto: the address goes on the tenant's
// suppression list (reason unsubscribe), and the recipient gets an event
// of type unsubscribe. Both writes are idempotent, so a repeated request
// (receivers may POST again) changes nothing.
type Unsubscriber struct {
	store  *suppression.Store
	events *eventlog.Writer
	log    *slog.Logger
	now    func() time.Time
}

// NewUnsubscriber returns an Unsubscriber writing through js and store.
func NewUnsubscriber(js jetstream.JetStream, store *suppression.Store, log *slog.Logger) *Unsubscriber {
	return &Unsubscriber{store: store, events: eventlog.NewWriter(queue.NewPublisher(js)), log: log, now: time.Now}
}

// Unsubscribe implements unsubscribe.Unsubscriber.
func (u *Unsubscriber) Unsubscribe(ctx context.Context, sub unsubscribe.Subject) error {
	if err := addOnce(ctx, u.store, sub.Tenant, &postflowv1.Suppression{
		Address:   sub.Address,
		Reason:    postflowv1.SuppressionReason_SUPPRESSION_REASON_UNSUBSCRIBE,
		MessageId: sub.MessageID,
		Detail:    "List-Unsubscribe",
		CreatedAt: timestamppb.New(u.now()),
	}); err != nil {
		u.log.WarnContext(ctx, "unsubscribe: suppression store", slog.Any("error", err))
		return err
	}
	if sub.MessageID != "" {
		rid := eventlog.RecipientID(sub.MessageID, sub.Index)
		if err := u.events.Write(ctx, &postflowv1.Event{
			EventId:     eventlog.ReportEventID(rid, postflowv1.EventType_EVENT_TYPE_UNSUBSCRIBE, "unsubscribe"),
			Tenant:      sub.Tenant,
			MessageId:   sub.MessageID,
			RecipientId: rid,
			Recipient:   sub.Address,
			Type:        postflowv1.EventType_EVENT_TYPE_UNSUBSCRIBE,
			Time:        timestamppb.New(u.now()),
			CampaignId:  sub.CampaignID,
			Category:    "unsubscribe",
		}); err != nil {
			u.log.WarnContext(ctx, "unsubscribe: event", slog.Any("error", err))
			return err
		}
	}
	telemetry.SuppressionAdded(ctx, "unsubscribe")
	u.log.InfoContext(ctx, "unsubscribe: recorded", slog.String("message_id", sub.MessageID), slog.Int("index", sub.Index))
	return nil
}

// mailto records an unsubscribe that arrived by mail to u+TOKEN@: the
// token names message and index, and the message's events the rest.
func (in *intake) mailto(ctx context.Context, local string) error {
	msgID, index, err := in.unsub.ParseMailto(local[len(unsubscribe.MailtoPrefix):])
	if err != nil {
		return nil // checked at RCPT
	}
	first, err := in.recipient(ctx, "unsubscribe", msgID, index)
	if first == nil || err != nil {
		return err
	}
	return in.unsubscriber.Unsubscribe(ctx, unsubscribe.Subject{Tenant: first.GetTenant(), Address: first.GetRecipient(),
		CampaignID: first.GetCampaignId(), MessageID: msgID, Index: index})
}
