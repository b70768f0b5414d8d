// Package bounce is the bounce role. It consumes the BOUNCES stream and
// puts hard bounces and complaints on the tenant's suppression list, and
// it receives asynchronous bounces (RFC 3464 DSNs) and complaints (ARF,
// RFC 5965) over SMTP on the bounce domain, correlates each with the
// message and recipient named by its VERP return path, and records it as
// an event (which also makes a BOUNCES record).
//
// Nothing is lost between the two halves: a report is answered 250 only
// after its event is stored in JetStream (else 451, and the sender
// retries), and a BOUNCES record is acked only after its suppression entry
// is stored.
package bounce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/bounceclass"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/suppression"
	"github.com/postflow/postflow/pkg/telemetry"
	"github.com/postflow/postflow/pkg/unsubscribe"
	"github.com/postflow/postflow/pkg/verp"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// DefaultSuppressCategories are the bounce categories that suppress an
// address: the ones that cannot succeed later (RFC 3463 x.1.1, x.1.2 and
// their relatives). Full mailboxes, policy blocks and expiries do not.
var DefaultSuppressCategories = []string{string(bounceclass.CategoryBadMailbox), string(bounceclass.CategoryBadDomain)}

// Config configures the bounce role.
type Config struct {
	// SuppressCategories are the bounce categories that add the address
	// to the suppression list; complaints always do.
	SuppressCategories []string
	// ExemptDomains are recipient domains never put on the list: the
	// mailbox simulator's, whose bounces are rehearsals (as SES exempts
	// its simulator).
	ExemptDomains []string
	// SMTPAddr is the listen address of the report listener, used when
	// Deps.Listener is nil; empty runs no listener.
	SMTPAddr string
	// Hostname is the listener's greeting name.
	Hostname string
	// MaxReportBytes bounds a received report (default 10 MiB).
	MaxReportBytes int64
	// ShutdownTimeout bounds the wait for sessions to end at shutdown.
	ShutdownTimeout time.Duration
}

// Deps are the bounce role's collaborators.
type Deps struct {
	JS          jetstream.JetStream
	Suppression *suppression.Store
	// VERP checks return paths; nil runs no listener.
	VERP *verp.Signer
	// UnsubscribeSigner and Unsubscriber, when set, let the listener take
	// List-Unsubscribe mail to u+TOKEN@<bounce domain>.
	UnsubscribeSigner *unsubscribe.Signer
	Unsubscriber      *Unsubscriber
	// Listener, if set, is served instead of listening on SMTPAddr.
	Listener net.Listener
	Logger   *slog.Logger
	Now      func() time.Time
}

// Run runs the role until ctx ends.
func Run(ctx context.Context, cfg Config, deps Deps) error {
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if cfg.MaxReportBytes <= 0 {
		cfg.MaxReportBytes = 10 << 20
	}
	if cfg.SuppressCategories == nil {
		cfg.SuppressCategories = DefaultSuppressCategories
	}
	errc := make(chan error, 2)
	n := 1
	go func() { errc <- suppress(ctx, cfg, deps) }()
	if deps.VERP != nil && (deps.Listener != nil || cfg.SMTPAddr != "") {
		n++
		go func() { errc <- serveReports(ctx, cfg, deps) }()
	}
	var first error
	for range n {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// suppress consumes BOUNCES until ctx ends.
func suppress(ctx context.Context, cfg Config, deps Deps) error {
	cons, err := deps.JS.Consumer(ctx, queue.BouncesStream, queue.BounceConsumer)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("bounce: consumer: %w", err)
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(64))
	if err != nil {
		return fmt.Errorf("bounce: pull: %w", err)
	}
	stop := context.AfterFunc(ctx, iter.Stop)
	defer stop()
	deps.Logger.Info("bounce: consuming bounce records", slog.Any("suppress_categories", cfg.SuppressCategories))
	for {
		msg, err := iter.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			deps.Logger.Warn("bounce: pull", slog.Any("error", err))
			continue
		}
		handleRecord(ctx, cfg, deps, msg)
	}
}

// handleRecord settles one BOUNCES record: Ack once any suppression it
// calls for is stored, NakWithDelay when the store fails, Term when it
// cannot be decoded.
func handleRecord(ctx context.Context, cfg Config, deps Deps, msg jetstream.Msg) {
	ev := &postflowv1.Event{}
	if err := proto.Unmarshal(msg.Data(), ev); err != nil {
		deps.Logger.Error("bounce: undecodable record terminated", slog.String("subject", msg.Subject()), slog.Any("error", err))
		_ = msg.TermWithReason("undecodable")
		return
	}
	entry := suppressionFor(cfg, ev)
	if entry == nil {
		_ = msg.Ack()
		return
	}
	if err := addOnce(ctx, deps.Suppression, ev.GetTenant(), entry); err != nil {
		deps.Logger.Warn("bounce: suppression store", slog.String("message_id", ev.GetMessageId()), slog.Any("error", err))
		_ = msg.NakWithDelay(time.Second)
		return
	}
	telemetry.SuppressionAdded(ctx, strings.ToLower(strings.TrimPrefix(entry.GetReason().String(), "SUPPRESSION_REASON_")))
	deps.Logger.Info("bounce: suppressed",
		slog.String("message_id", ev.GetMessageId()),
		slog.String("recipient_id", ev.GetRecipientId()),
		slog.String("reason", entry.GetReason().String()),
		slog.String("category", ev.GetCategory()))
	_ = msg.Ack()
}

// suppressionFor returns the entry a record calls for, or nil.
func suppressionFor(cfg Config, ev *postflowv1.Event) *postflowv1.Suppression {
	if at := strings.LastIndexByte(ev.GetRecipient(), '@'); at >= 0 && slices.ContainsFunc(cfg.ExemptDomains, func(d string) bool {
		return strings.EqualFold(d, ev.GetRecipient()[at+1:])
	}) {
		return nil
	}
	e := &postflowv1.Suppression{
		Address:   ev.GetRecipient(),
		MessageId: ev.GetMessageId(),
		CreatedAt: ev.GetTime(),
	}
	switch {
	case ev.GetType() == postflowv1.EventType_EVENT_TYPE_COMPLAINT:
		e.Reason = postflowv1.SuppressionReason_SUPPRESSION_REASON_COMPLAINT
		e.Detail = "complaint"
		if ev.GetFeedbackType() != "" {
			e.Detail += " (" + ev.GetFeedbackType() + ")"
		}
	case ev.GetState() == postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED && slices.Contains(cfg.SuppressCategories, ev.GetCategory()):
		e.Reason = postflowv1.SuppressionReason_SUPPRESSION_REASON_BOUNCE
		e.Detail = replyDetail(ev.GetReply())
	default:
		return nil
	}
	if e.CreatedAt == nil {
		e.CreatedAt = timestamppb.Now()
	}
	return e
}

func replyDetail(r *postflowv1.SMTPReply) string {
	if r == nil {
		return ""
	}
	s := fmt.Sprint(r.GetCode())
	if r.GetEnhancedCode() != "" {
		s += " " + r.GetEnhancedCode()
	}
	s += " " + r.GetText()
	if len(s) > 1000 {
		s = s[:1000]
	}
	return s
}

// addOnce stores e unless the address is already suppressed: the first
// reason is kept (an unsubscribe stays an unsubscribe when a later message
// bounces), and a redelivered record writes nothing.
func addOnce(ctx context.Context, store *suppression.Store, tenant string, e *postflowv1.Suppression) error {
	cur, err := store.Get(ctx, tenant, e.GetAddress())
	if err != nil || cur != nil {
		return err
	}
	_, err = store.Add(ctx, tenant, e)
	return err
}
