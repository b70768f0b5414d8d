package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/bounceclass"
	"github.com/postflow/postflow/pkg/deliveryerr"
	"github.com/postflow/postflow/pkg/dkim"
	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/mailmsg"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/retry"
	"github.com/postflow/postflow/pkg/shaping"
	"github.com/postflow/postflow/pkg/smtpout"
	"github.com/postflow/postflow/pkg/telemetry"
	queuev1 "github.com/postflow/postflow/proto/postflow/queue/v1"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// outcome is one recipient's result of one attempt.
type outcome struct {
	rcpt      *queuev1.JobRecipient
	delivered bool
	reply     *deliveryerr.Error // the 2xx reply when delivered, else the failure
	target    smtpout.Target
	tls       smtpout.TLSInfo
	possDup   bool
}

// handle processes one delivery of one job. It always settles msg: Ack,
// NakWithDelay or Term, except when the process dies, in which case
// JetStream redelivers after AckWait.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg) {
	stop := w.heartbeat(msg)
	defer stop()

	job := &queuev1.DeliveryJob{}
	if err := proto.Unmarshal(msg.Data(), job); err != nil {
		// Nothing to deliver and no recipients to report: drop it loudly.
		w.log.Error("worker: undecodable job terminated", slog.String("subject", msg.Subject()), slog.Any("error", err))
		_ = msg.TermWithReason("undecodable job")
		return
	}
	// deliveries counts every time JetStream handed this job out,
	// throttled hand-backs included; attempt numbers come from EVENTS.
	deliveries := int32(1)
	var streamSeq uint64
	if meta, err := msg.Metadata(); err == nil {
		deliveries = int32(min(meta.NumDelivered, 1<<30))
		streamSeq = meta.Sequence.Stream
	}
	if w.cfg.MaxDeliver > 0 && deliveries > 1 && int(deliveries) >= w.cfg.MaxDeliver-1 {
		// Near the consumer's MaxDeliver, JetStream would stop handing
		// the job out and leave it in the stream. Jobs held back by
		// shaping count deliveries without attempts, so a job may get
		// here long before its max age: it goes back as a fresh copy.
		w.requeue(ctx, msg, streamSeq)
		return
	}
	attempt := int32(1)
	ctx = queue.ExtractTrace(ctx, msg.Headers())
	ctx, span := w.tracer.Start(ctx, "postflow.delivery.attempt")
	defer span.End()
	span.SetAttributes(
		telemetry.KeyMessageID.String(job.GetMessageId()),
		telemetry.KeyDomain.String(job.GetDomain()),
	)

	defer func() {
		if v := recover(); v != nil {
			span.SetStatus(codes.Error, "panic")
			w.log.ErrorContext(ctx, "worker: panic while delivering",
				slog.String("message_id", job.GetMessageId()), slog.Any("panic", v), slog.String("stack", string(debug.Stack())))
			w.poisoned(ctx, msg, job, deliveries, fmt.Sprint(v))
		}
	}()

	rcpts := job.GetRecipients()
	fresh := false
	if deliveries == 1 && job.GetCampaignId() == "" {
		// (A campaign job has one recipient of a message with very many:
		// its own look-up is cheaper than one over the whole message.)
		// One read tells whether anything happened to the message since
		// Send: Cancel, or an attempt by a job of another domain.
		last, err := w.reader.MessageLast(ctx, job.GetTenant(), job.GetMessageId())
		if err != nil {
			w.log.WarnContext(ctx, "worker: reading message state", slog.Any("error", err))
			_ = msg.NakWithDelay(w.cfg.Retry.Min / 10)
			return
		}
		fresh = last.GetState() == postflowv1.RecipientState_RECIPIENT_STATE_QUEUED
	}
	if !fresh {
		prev, pending, err := w.pending(ctx, job)
		if err != nil {
			w.log.WarnContext(ctx, "worker: reading recipient state", slog.Any("error", err))
			_ = msg.NakWithDelay(w.cfg.Retry.Min / 10)
			return
		}
		rcpts, attempt = pending, prev+1
	}
	span.SetAttributes(telemetry.KeyAttempt.Int(int(attempt)))
	if len(rcpts) == 0 {
		// Every recipient already final: an earlier attempt finished but its
		// ack was lost. A plain Ack, for the reason given below.
		_ = msg.Ack()
		return
	}
	if job.GetCampaignId() != "" {
		if w.campaigns == nil {
			// A worker started without campaigns leaves the job to one
			// that has them.
			_ = msg.NakWithDelay(pausedDelay)
			return
		}
		job.Recipients = rcpts
		if w.campaignJob(ctx, msg, job, attempt) {
			return
		}
	}

	start := w.now()
	actx, cancel := context.WithTimeout(ctx, w.cfg.AttemptTimeout)
	outs, later := w.attempt(actx, job, rcpts)
	cancel()
	if outs == nil {
		// The destination's limits hold the job back: no attempt was
		// made, so nothing is recorded; it comes back at its slot.
		span.SetAttributes(telemetry.KeyResult.String("throttled"))
		_ = msg.NakWithDelay(max(later.Sub(w.now()), 0))
		return
	}

	evs, delay, pending, result := w.record(ctx, job, attempt, outs)
	if ctx.Err() != nil {
		// Cut off by shutdown, not by the remote: let another worker
		// retry at once instead of after the backoff.
		delay = 0
	}
	telemetry.Attempt(ctx, result, w.now().Sub(start).Seconds())
	span.SetAttributes(telemetry.KeyResult.String(result))

	if err := w.writeEvents(ctx, evs); err != nil {
		// The outcome is not recorded, so it must not be acked; a retry
		// soon keeps delivered recipients from waiting long, though it
		// may resend to them (counted as a possible duplicate).
		w.log.ErrorContext(ctx, "worker: recording outcome failed", slog.String("message_id", job.GetMessageId()), slog.Any("error", err))
		_ = msg.NakWithDelay(w.cfg.Retry.Min / 10)
		return
	}
	switch {
	case pending:
		_ = msg.NakWithDelay(delay)
	case result == "bounced":
		_ = msg.TermWithReason("bounced")
	default:
		// A plain Ack, not DoubleAck: if it is lost, the redelivery finds
		// every recipient final in EVENTS and is acked without sending, so
		// waiting for the server's confirmation would buy nothing but a
		// round trip per job.
		if err := msg.Ack(); err != nil {
			w.log.WarnContext(ctx, "worker: ack", slog.String("message_id", job.GetMessageId()), slog.Any("error", err))
		}
	}
}

// requeue publishes a copy of msg, which JetStream counts as new, and acks
// msg once the copy is stored. The copy's Nats-Msg-Id is the job's with the
// original's stream sequence appended, unique per requeue; the job's
// events, reservation and attempt count are keyed by message id, so the
// copy carries on where msg left off. If the copy cannot be stored, msg is
// handed back to try again (one delivery of margin remains).
func (w *Worker) requeue(ctx context.Context, msg jetstream.Msg, streamSeq uint64) {
	cp := nats.NewMsg(msg.Subject())
	cp.Data = msg.Data()
	for k, v := range msg.Headers() {
		cp.Header[k] = v
	}
	cp.Header.Set(jetstream.MsgIDHeader, msg.Headers().Get(jetstream.MsgIDHeader)+".requeue."+strconv.FormatUint(streamSeq, 10))
	if err := w.pub.Publish(ctx, cp); err != nil {
		w.log.WarnContext(ctx, "worker: requeue before max deliveries", slog.String("subject", msg.Subject()), slog.Any("error", err))
		_ = msg.NakWithDelay(w.cfg.Retry.Min / 10)
		return
	}
	_ = msg.Ack()
}

// pending returns the job's recipients that have no final state yet, and
// the number of the latest attempt recorded for any of them. For a
// recipient already final it makes sure the BOUNCES record of a failure
// exists: an earlier delivery may have died between storing the event
// and storing the record (TESTPLAN A10).
func (w *Worker) pending(ctx context.Context, job *queuev1.DeliveryJob) (last int32, out []*queuev1.JobRecipient, err error) {
	for _, r := range job.GetRecipients() {
		final, attempt, err := w.reader.Progress(ctx, job.GetTenant(), job.GetMessageId(), int(r.GetIndex()))
		if err != nil {
			return 0, nil, err
		}
		last = max(last, attempt)
		if !final {
			out = append(out, r)
			continue
		}
		ev, err := w.reader.FinalEvent(ctx, job.GetTenant(), job.GetMessageId(), int(r.GetIndex()))
		if err != nil {
			return 0, nil, err
		}
		if ev != nil {
			if err := w.events.RepublishBounce(ctx, ev); err != nil {
				return 0, nil, err
			}
		}
	}
	return last, out, nil
}

// attempt routes the job's domain and runs one SMTP transaction for rcpts.
// When the destination's limits do not let the job go now it returns nil
// outcomes and the time to try again: the job's reserved slot, or a short
// wait for a connection slot.
func (w *Worker) attempt(ctx context.Context, job *queuev1.DeliveryJob, rcpts []*queuev1.JobRecipient) (_ []outcome, later time.Time) {
	outs := make([]outcome, len(rcpts))
	for i, r := range rcpts {
		outs[i].rcpt = r
	}
	fail := func(err error) ([]outcome, time.Time) {
		_, de := deliveryerr.Classify(err)
		for i := range outs {
			outs[i].reply = de
		}
		return outs, time.Time{}
	}
	targets, err := w.targets(ctx, job.GetDomain())
	if err != nil {
		return fail(err)
	}
	// The destination's limits decide first: a job held back costs only
	// these lookups, not the signing and envelope work below. A
	// connection comes before a rate slot, so that a slot is claimed
	// only when the message can go at once.
	dest := w.destination(job.GetDomain(), targets)
	key := job.GetMessageId() + "." + job.GetDomain()
	if later, held := w.tenantHeld(ctx, job.GetTenant(), key); held {
		return nil, later
	}
	dctx := shaping.WithDestination(ctx, dest)
	lease, ok, err := w.connection(ctx, dest, targets[0])
	if err != nil {
		return fail(deliveryerr.Temporary(451, "4.3.0", "connection limiter unavailable", err))
	}
	if !ok {
		// No connection now. Waiting for a rate slot instead of polling
		// keeps a destination that is short of connections (a few shared
		// by many workers) fetched no faster than its rate; the slot is
		// given up if there is still no connection then.
		if ok, at, err := w.limit.Reserve(ctx, dest, key); err == nil && !ok {
			telemetry.Held(ctx, "rate")
			return nil, at
		}
		telemetry.Held(ctx, "connections")
		return nil, w.now().Add(jitter(w.cfg.BusyDelay))
	}
	if lease != nil {
		var held *shaping.HeldLease
		dctx, held = shaping.WithLease(dctx, lease)
		defer held.ReleaseUnused(context.WithoutCancel(ctx))
	}
	ok, at, err := w.limit.Reserve(ctx, dest, key)
	if err != nil {
		return fail(deliveryerr.Temporary(451, "4.3.0", "rate limiter unavailable", err))
	}
	if !ok {
		telemetry.Held(ctx, "rate")
		return nil, at
	}
	env := smtpout.Envelope{From: job.GetEnvelopeFrom(), SMTPUTF8: job.GetSmtputf8()}
	for _, r := range rcpts {
		env.To = append(env.To, r.GetAddress())
	}
	// A server without 8BITMIME gets the message made 7-bit, and signed
	// again: a signature over the 8-bit body would not verify.
	env.SevenBit = func() ([]byte, error) {
		conv, err := mailmsg.SevenBit(job.GetBody())
		if err != nil || w.sign == nil {
			return conv, err
		}
		return w.sign.Sign(conv)
	}
	body := job.GetBody()
	if w.sign != nil {
		if body, err = w.sign.Sign(body); err != nil {
			if errors.Is(err, dkim.ErrMalformed) {
				// The message cannot be signed however often we try.
				return fail(deliveryerr.Permanent(554, "5.6.0", "message cannot be DKIM-signed", err))
			}
			return fail(deliveryerr.Temporary(451, "4.3.0", "DKIM signing failed", err))
		}
	}
	for i := range targets {
		targets[i].MaxMessages = dest.Limits.MessagesPerConnection
	}
	// A destination may take fewer recipients per transaction than the
	// job holds: one transaction per chunk, in order.
	chunk := len(rcpts)
	if n := dest.Limits.RecipientsPerTransaction; n > 0 && n < chunk {
		chunk = n
	}
	if w.verp != nil {
		// Each recipient has its own return path, so its own transaction
		// (on the same session).
		chunk = 1
	}
	all := env.To
	for lo := 0; lo < len(all); lo += chunk {
		env.To = all[lo:min(lo+chunk, len(all))]
		if w.verp != nil {
			env.From = w.verp.ReturnPath(job.GetMessageId(), int(rcpts[lo].GetIndex()))
		}
		res := w.sender.Deliver(dctx, targets, env, body)
		for busy(res) && w.gate.wait(ctx, dest.Name, dest.Limits.Connections, w.cfg.BusyDelay) {
			// A rate grant is good for now only: a job that waited for a
			// connection asks again, or jobs held up together (a slow
			// receiver, a starved process) would go out in a burst.
			if lo == 0 {
				if ok, at, err := w.limit.Reserve(ctx, dest, key); err == nil && !ok {
					telemetry.Held(ctx, "rate")
					return nil, at
				}
			}
			res = w.sender.Deliver(dctx, targets, env, body)
		}
		if len(res.Recipients) != len(env.To) {
			return fail(fmt.Errorf("worker: sender returned %d results for %d recipients", len(res.Recipients), len(env.To)))
		}
		if busy(res) && lo == 0 {
			// Nothing was tried: hand the job back for a while.
			telemetry.Held(ctx, "connections")
			return nil, w.now().Add(jitter(w.cfg.BusyDelay))
		}
		if !busy(res) {
			w.gate.ended(dest.Name)
		}
		for i, rr := range res.Recipients {
			o := &outs[lo+i]
			o.target, o.tls, o.possDup = res.Target, res.TLS, rr.PossibleDuplicate
			if rr.Delivered {
				o.delivered, o.reply = true, res.Reply
				continue
			}
			// A later chunk that found every slot held is deferred with
			// the rest of the attempt's outcome.
			_, o.reply = deliveryerr.Classify(rr.Err)
		}
	}
	w.feedback(ctx, dest, outs)
	return outs, time.Time{}
}

// record turns outcomes into events and decides the job's fate: pending
// reports whether any recipient was deferred (the job is retried after
// delay); result summarises the attempt for metrics ("delivered",
// "deferred", "bounced", "expired" or "mixed").
func (w *Worker) record(ctx context.Context, job *queuev1.DeliveryJob, attempt int32, outs []outcome) (evs []*postflowv1.Event, delay time.Duration, pending bool, result string) {
	now := w.now()
	expireAt := job.GetExpireAt().AsTime()
	// One delay for the job: the longest any deferred recipient's server
	// asked for, or the schedule's.
	delay = w.cfg.Retry.Delay(int(attempt))
	hinted := time.Duration(0)
	for _, o := range outs {
		if !o.delivered && o.reply != nil && o.reply.Temporary() {
			if _, ok := retry.Hint(o.reply.Message); ok {
				hinted = max(hinted, w.cfg.Retry.After(int(attempt), o.reply.Message))
			}
		}
	}
	if hinted > 0 {
		delay = hinted
	}
	next := now.Add(delay)
	if next.After(expireAt) {
		// The last attempt happens at expiry; failing then, it expires.
		next = expireAt
		delay = max(expireAt.Sub(now), time.Second)
	}
	results := map[string]bool{}
	for _, o := range outs {
		rid := eventlog.RecipientID(job.GetMessageId(), int(o.rcpt.GetIndex()))
		ev := &postflowv1.Event{
			Tenant:            job.GetTenant(),
			MessageId:         job.GetMessageId(),
			RecipientId:       rid,
			Recipient:         o.rcpt.GetAddress(),
			Time:              timestamppb.New(now),
			Attempt:           attempt,
			Reply:             replyOf(o.reply),
			MxHost:            o.target.Host,
			PossibleDuplicate: o.possDup,
			Tags:              job.GetTags(),
			CampaignId:        job.GetCampaignId(),
		}
		if o.target.Addr.IsValid() {
			ev.RemoteAddr = o.target.Addr.String()
		}
		if o.tls.Version != "" {
			ev.Tls = &postflowv1.TLSInfo{Version: o.tls.Version, Cipher: o.tls.Cipher, Verified: o.tls.Verified}
		}
		var state postflowv1.RecipientState
		var class bounceclass.Result
		if !o.delivered {
			// The classifier, not the reply class alone, decides: some
			// receivers send 5xx for conditions that pass (552 "too many
			// recipients", daily quotas), see pkg/bounceclass/rules.txt.
			class = bounceclass.ClassifyError(o.reply)
			ev.Category = string(class.Category)
		}
		switch {
		case o.delivered:
			state = postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED
			telemetry.Delivered(ctx, now.Sub(job.GetAcceptedAt().AsTime()).Seconds())
		case class.Outcome == bounceclass.Bounced:
			state = postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED
			telemetry.Bounced(ctx)
		case !now.Before(expireAt):
			state = postflowv1.RecipientState_RECIPIENT_STATE_EXPIRED
			ev.Reply = expiredReply(ev.Reply, now.Sub(job.GetAcceptedAt().AsTime()))
			ev.Category = string(bounceclass.CategoryExpired)
			telemetry.Expired(ctx)
		default:
			state = postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED
			ev.NextAttemptAt = timestamppb.New(next)
			pending = true
			telemetry.Deferred(ctx)
		}
		ev.State = state
		ev.EventId = eventlog.EventID(rid, attempt, state)
		evs = append(evs, ev)
		results[resultName(state)] = true
		w.log.InfoContext(ctx, "worker: attempt",
			slog.String("message_id", job.GetMessageId()),
			slog.String("recipient_id", rid),
			slog.String("state", resultName(state)),
			slog.Int("attempt", int(attempt)),
			slog.String("mx", o.target.Host),
			slog.String("reply", replyText(o.reply)),
			slog.String("category", ev.GetCategory()),
			slog.String("rule", class.Rule))
	}
	result = "mixed"
	if len(results) == 1 {
		for k := range results {
			result = k
		}
	}
	return evs, delay, pending, result
}

// writeEvents publishes evs, retrying for up to two minutes: the SMTP outcome
// already happened, and giving up early turns a slow NATS into duplicates.
// It gives up when ctx ends (the worker's hard shutdown deadline); the job is
// then not acked and JetStream redelivers it.
func (w *Worker) writeEvents(ctx context.Context, evs []*postflowv1.Event) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	backoff := 100 * time.Millisecond
	for {
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		err := w.events.Write(wctx, evs...)
		wcancel()
		if err == nil {
			return nil
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// poisoned settles a job whose processing panicked: retried a few times
// (the cause may be transient), then its open recipients are marked failed
// and the job terminated so it cannot wedge the queue (TESTPLAN A11).
func (w *Worker) poisoned(ctx context.Context, msg jetstream.Msg, job *queuev1.DeliveryJob, attempt int32, cause string) {
	if int(attempt) < w.cfg.PoisonAttempts {
		_ = msg.NakWithDelay(w.cfg.Retry.Delay(int(attempt)))
		return
	}
	var evs []*postflowv1.Event
	for _, r := range job.GetRecipients() {
		rid := eventlog.RecipientID(job.GetMessageId(), int(r.GetIndex()))
		evs = append(evs, &postflowv1.Event{
			EventId:     eventlog.EventID(rid, attempt, postflowv1.RecipientState_RECIPIENT_STATE_FAILED),
			Tenant:      job.GetTenant(),
			MessageId:   job.GetMessageId(),
			RecipientId: rid,
			Recipient:   r.GetAddress(),
			State:       postflowv1.RecipientState_RECIPIENT_STATE_FAILED,
			Time:        timestamppb.New(w.now()),
			Attempt:     attempt,
			Reply:       &postflowv1.SMTPReply{Code: 554, EnhancedCode: "5.3.0", Text: "internal error processing message"},
			Tags:        job.GetTags(),
			CampaignId:  job.GetCampaignId(),
		})
		telemetry.Failed(ctx)
	}
	if err := w.writeEvents(ctx, evs); err != nil {
		w.log.ErrorContext(ctx, "worker: recording failure", slog.Any("error", err))
		_ = msg.NakWithDelay(w.cfg.Retry.Min)
		return
	}
	_ = msg.TermWithReason("panic: " + cause)
}

func replyOf(e *deliveryerr.Error) *postflowv1.SMTPReply {
	if e == nil {
		return nil
	}
	return &postflowv1.SMTPReply{Code: int32(e.Code), EnhancedCode: e.Enhanced, Text: e.Message, Remote: e.Remote}
}

func replyText(e *deliveryerr.Error) string {
	if e == nil {
		return ""
	}
	return e.Error()
}

// expiredReply keeps the last diagnostic and marks it with RFC 3463's 4.4.7
// "delivery time expired".
func expiredReply(last *postflowv1.SMTPReply, age time.Duration) *postflowv1.SMTPReply {
	text := "message expired after " + age.Round(time.Second).String()
	code := int32(451)
	if last != nil {
		text += "; last error: " + strconv.Itoa(int(last.GetCode()))
		if last.GetEnhancedCode() != "" {
			text += " " + last.GetEnhancedCode()
		}
		text += " " + last.GetText()
		code = last.GetCode()
	}
	return &postflowv1.SMTPReply{Code: code, EnhancedCode: "4.4.7", Text: text}
}

func resultName(s postflowv1.RecipientState) string {
	switch s {
	case postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED:
		return "delivered"
	case postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED:
		return "bounced"
	case postflowv1.RecipientState_RECIPIENT_STATE_EXPIRED:
		return "expired"
	case postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED:
		return "deferred"
	default:
		return "failed"
	}
}
