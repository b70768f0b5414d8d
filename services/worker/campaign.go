package worker

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/campaign/render"
	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/mailmsg"
	"github.com/postflow/postflow/pkg/telemetry"
	queuev1 "github.com/postflow/postflow/proto/postflow/queue/v1"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// pausedDelay is how long a job of a paused campaign goes back to the
// queue: resuming takes effect within about this long, and only the
// feeding window of jobs is ever waiting.
const pausedDelay = 2 * time.Second

// campaignJob prepares a campaign job: it returns true when the job is
// settled here (the campaign is paused, canceled or gone, or the message
// cannot be rendered), and otherwise fills job.Body with the recipient's
// rendered message.
func (w *Worker) campaignJob(ctx context.Context, msg jetstream.Msg, job *queuev1.DeliveryJob, attempt int32) (settled bool) {
	c := w.campaigns.Get(job.GetTenant(), job.GetCampaignId())
	state := queuev1.CampaignState_CAMPAIGN_STATE_UNSPECIFIED
	if c != nil {
		state = c.GetState()
	}
	switch state {
	case queuev1.CampaignState_CAMPAIGN_STATE_PAUSED:
		_ = msg.NakWithDelay(jitter(pausedDelay))
		return true
	case queuev1.CampaignState_CAMPAIGN_STATE_RUNNING, queuev1.CampaignState_CAMPAIGN_STATE_FINISHED:
	case queuev1.CampaignState_CAMPAIGN_STATE_CANCELED:
		w.settleCampaign(ctx, msg, job, attempt, postflowv1.RecipientState_RECIPIENT_STATE_CANCELED, nil, "")
		return true
	default:
		w.settleCampaign(ctx, msg, job, attempt, postflowv1.RecipientState_RECIPIENT_STATE_FAILED,
			&postflowv1.SMTPReply{Code: 554, EnhancedCode: "5.3.0", Text: "campaign no longer exists"}, "")
		return true
	}
	t, err := w.templates.Get(c.GetId(), func() (render.Source, render.Limits, error) {
		return render.Source{Subject: c.GetSubject(), Text: c.GetText(), HTML: c.GetHtml()}, render.Limits{MaxOutputBytes: w.cfg.Limits.MaxMessageBytes}, nil
	})
	var body []byte
	var smtputf8 bool
	if err == nil {
		body, smtputf8, err = w.renderOne(c, t, job)
	}
	if err != nil {
		// Like SES's RENDERING_FAILURE: the recipient fails, the campaign
		// goes on.
		w.log.InfoContext(ctx, "worker: campaign message not rendered", slog.String("campaign_id", c.GetId()), slog.Any("error", err))
		w.settleCampaign(ctx, msg, job, attempt, postflowv1.RecipientState_RECIPIENT_STATE_FAILED,
			&postflowv1.SMTPReply{Code: 554, EnhancedCode: "5.6.0", Text: "rendering failed: " + err.Error()}, "rendering")
		return true
	}
	job.Body, job.Smtputf8 = body, smtputf8
	return false
}

// renderOne renders and builds one recipient's message.
func (w *Worker) renderOne(c *queuev1.Campaign, t *render.Template, job *queuev1.DeliveryJob) ([]byte, bool, error) {
	rcpt := job.GetRecipients()[0].GetAddress()
	vars := make(map[string]string, len(job.GetVars())+1)
	for k, v := range job.GetVars() {
		vars[k] = v
	}
	vars["email"] = rcpt
	m, err := t.Execute(vars)
	if err != nil {
		return nil, false, err
	}
	in := mailmsg.Input{From: c.GetFrom(), To: []string{rcpt}, Subject: m.Subject, Text: m.Text, HTML: m.HTML, Tags: c.GetTags()}
	if w.unsubscribe != nil {
		idx := int(job.GetRecipients()[0].GetIndex())
		lu, post, err := w.unsubscribe(job.GetTenant(), c.GetId(), idx, rcpt)
		if err != nil {
			return nil, false, err
		}
		in.Headers = append(in.Headers, mailmsg.Header{Name: "List-Unsubscribe", Value: lu}, mailmsg.Header{Name: "List-Unsubscribe-Post", Value: post})
	}
	// Message-IDs on the sender's domain, as Send makes them.
	built, err := mailmsg.Build(in, w.cfg.Limits, w.now(), mailmsg.SenderDomain(c.GetFrom()))
	if err != nil {
		var ve *mailmsg.ValidationError
		if errors.As(err, &ve) {
			return nil, false, errors.New(strings.TrimPrefix(ve.Error(), "invalid message: "))
		}
		return nil, false, err
	}
	return built.Body, built.SMTPUTF8, nil
}

// settleCampaign records state for the job's recipients that are not
// final yet and settles the job: its recipients will not be attempted.
func (w *Worker) settleCampaign(ctx context.Context, msg jetstream.Msg, job *queuev1.DeliveryJob, attempt int32, state postflowv1.RecipientState, reply *postflowv1.SMTPReply, category string) {
	var evs []*postflowv1.Event
	for _, r := range job.GetRecipients() {
		rid := eventlog.RecipientID(job.GetMessageId(), int(r.GetIndex()))
		evs = append(evs, &postflowv1.Event{
			EventId:     eventlog.EventID(rid, attempt, state),
			Tenant:      job.GetTenant(),
			MessageId:   job.GetMessageId(),
			RecipientId: rid,
			Recipient:   r.GetAddress(),
			State:       state,
			Time:        timestamppb.New(w.now()),
			Attempt:     attempt,
			Reply:       reply,
			Tags:        job.GetTags(),
			CampaignId:  job.GetCampaignId(),
			Category:    category,
		})
		if state == postflowv1.RecipientState_RECIPIENT_STATE_FAILED {
			telemetry.Failed(ctx)
		}
	}
	if err := w.writeEvents(ctx, evs); err != nil {
		w.log.ErrorContext(ctx, "worker: recording campaign outcome", slog.Any("error", err))
		_ = msg.NakWithDelay(w.cfg.Retry.Min / 10)
		return
	}
	_ = msg.Ack()
}
