package worker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/campaign"
	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/mailmsg"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/suppression"
	queuev1 "github.com/postflow/postflow/proto/postflow/queue/v1"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// Feeding: every worker feeds every running campaign from the campaign's
// durable consumer on CAMPAIGN_RECIPIENTS (shared, so workers split the
// rows), moving rows to OUTBOUND as jobs while OUTBOUND holds fewer than
// FeedWindow jobs. A row is acked only once its job (or its suppressed or
// canceled event) is stored; a row fed twice after a crash makes one job,
// deduplicated by its Nats-Msg-Id.
const (
	feedBatch    = 500
	feedIdle     = 250 * time.Millisecond // wait when the window is full or a campaign has no rows
	feedConsumer = "feed-"
)

// feeder runs the feeding of campaigns.
type feeder struct {
	js     jetstream.JetStream
	cache  *campaign.Cache
	supp   *suppression.Store
	pub    *queue.Publisher
	events *eventlog.Writer
	log    *slog.Logger
	now    func() time.Time
	window uint64
	maxAge time.Duration
}

// run feeds until ctx ends: one loop per campaign that is running, or
// canceled with rows left.
func (f *feeder) run(ctx context.Context) {
	active := map[string]context.CancelFunc{}
	updates := f.cache.Subscribe()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		for _, c := range f.cache.All() {
			key := c.GetTenant() + "." + c.GetId()
			wanted := c.GetState() == queuev1.CampaignState_CAMPAIGN_STATE_RUNNING || c.GetState() == queuev1.CampaignState_CAMPAIGN_STATE_CANCELED
			if cancel, ok := active[key]; ok && !wanted {
				cancel()
				delete(active, key)
			}
			if _, ok := active[key]; wanted && !ok {
				cctx, cancel := context.WithCancel(ctx)
				active[key] = cancel
				go f.feed(cctx, c.GetTenant(), c.GetId())
			}
		}
		select {
		case <-ctx.Done():
			for _, cancel := range active {
				cancel()
			}
			return
		case <-updates:
		case <-tick.C:
		}
	}
}

// feed moves one campaign's rows until its context ends or the rows run
// out. The campaign's state is read from the cache before each batch, so
// a pause stops it within one batch.
func (f *feeder) feed(ctx context.Context, tenant, id string) {
	cons, err := f.js.CreateOrUpdateConsumer(ctx, campaign.RecipientsStream, jetstream.ConsumerConfig{
		Durable:       feedConsumer + id,
		FilterSubject: campaign.RowsFilter(tenant, id),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxAckPending: 4 * feedBatch,
		// A finished campaign's consumer goes by itself.
		InactiveThreshold: time.Hour,
	})
	if err != nil {
		if ctx.Err() == nil {
			f.log.Warn("feeder: consumer", slog.String("campaign_id", id), slog.Any("error", err))
		}
		return
	}
	for ctx.Err() == nil {
		c := f.cache.Get(tenant, id)
		if c == nil {
			return
		}
		canceled := c.GetState() == queuev1.CampaignState_CAMPAIGN_STATE_CANCELED
		if !canceled && !f.room(ctx) {
			wait(ctx, feedIdle)
			continue
		}
		batch, err := cons.FetchNoWait(feedBatch)
		if err != nil {
			f.log.Warn("feeder: fetch", slog.String("campaign_id", id), slog.Any("error", err))
			wait(ctx, feedIdle)
			continue
		}
		var rows []jetstream.Msg
		for m := range batch.Messages() {
			rows = append(rows, m)
		}
		if len(rows) == 0 {
			info, err := cons.Info(ctx)
			if err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
				return // every row fed
			}
			wait(ctx, feedIdle)
			continue
		}
		// A move that started finishes even if the campaign is paused
		// meanwhile: stopped half-way, its jobs could be stored with their
		// rows handed back, and a later cancel would then mark canceled
		// recipients that are being delivered.
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		err = f.move(mctx, c, rows, canceled)
		cancel()
		if err != nil {
			f.log.Warn("feeder: moving rows", slog.String("campaign_id", id), slog.Any("error", err))
			for _, m := range rows {
				_ = m.NakWithDelay(time.Second)
			}
			wait(ctx, feedIdle)
		}
	}
}

// room reports whether OUTBOUND has room below the feeding window.
func (f *feeder) room(ctx context.Context) bool {
	st, err := f.js.Stream(ctx, queue.OutboundStream)
	if err != nil {
		return false
	}
	// js.Stream has just read the stream's info.
	return st.CachedInfo().State.Msgs < f.window
}

// move turns rows into jobs (or suppressed events, or canceled events for
// a canceled campaign), stores them, then acks the rows.
func (f *feeder) move(ctx context.Context, c *queuev1.Campaign, rows []jetstream.Msg, canceled bool) error {
	now := f.now()
	recs := make([]*queuev1.CampaignRecipient, 0, len(rows))
	addrs := make([]string, 0, len(rows))
	for _, m := range rows {
		r := &queuev1.CampaignRecipient{}
		if err := proto.Unmarshal(m.Data(), r); err != nil {
			f.log.Error("feeder: undecodable row terminated", slog.String("subject", m.Subject()), slog.Any("error", err))
			_ = m.TermWithReason("undecodable")
			continue
		}
		recs = append(recs, r)
		addrs = append(addrs, r.GetAddress())
	}
	var suppressed map[string]*postflowv1.Suppression
	if !canceled && f.supp != nil {
		var err error
		if suppressed, err = f.supp.Check(ctx, c.GetTenant(), addrs); err != nil {
			return err
		}
	}
	from, err := mailmsg.ParseAddress(c.GetFrom())
	if err != nil {
		return fmt.Errorf("campaign %s: from: %w", c.GetId(), err)
	}
	var evs []*postflowv1.Event
	var msgs []*nats.Msg
	for _, r := range recs {
		rid := eventlog.RecipientID(c.GetId(), int(r.GetIndex()))
		ev := &postflowv1.Event{Tenant: c.GetTenant(), MessageId: c.GetId(), RecipientId: rid, Recipient: r.GetAddress(),
			Time: timestamppb.New(now), Tags: c.GetTags(), CampaignId: c.GetId()}
		norm, _ := suppression.Normalize(r.GetAddress())
		switch {
		case canceled:
			ev.State = postflowv1.RecipientState_RECIPIENT_STATE_CANCELED
			ev.EventId = eventlog.EventID(rid, 0, ev.State)
			evs = append(evs, ev)
			continue
		case suppressed[norm] != nil:
			evs = append(evs, eventlog.Suppressed(ev, suppressed[norm]))
			continue
		}
		// Rows hold mailmsg's canonical address (checked by the api role):
		// its domain is already the lower-case A-label the subject and MX
		// look-ups want.
		domain := r.GetAddress()[strings.LastIndexByte(r.GetAddress(), '@')+1:]
		job := &queuev1.DeliveryJob{
			Tenant:       c.GetTenant(),
			MessageId:    c.GetId(),
			Domain:       domain,
			EnvelopeFrom: from.Addr,
			Recipients:   []*queuev1.JobRecipient{{Address: r.GetAddress(), Index: int32(r.GetIndex())}},
			AcceptedAt:   timestamppb.New(now),
			ExpireAt:     timestamppb.New(now.Add(f.maxAge)),
			Tags:         c.GetTags(),
			CampaignId:   c.GetId(),
			Vars:         r.GetVars(),
		}
		data, err := proto.Marshal(job)
		if err != nil {
			return err
		}
		m := nats.NewMsg(queue.OutboundSubject(c.GetTenant(), domain))
		m.Data = data
		m.Header.Set(jetstream.MsgIDHeader, c.GetId()+"."+fmt.Sprint(r.GetIndex()))
		msgs = append(msgs, m)
	}
	if len(evs) > 0 {
		ems, err := eventlog.Msgs(evs...)
		if err != nil {
			return err
		}
		msgs = append(msgs, ems...)
	}
	if err := f.pub.Publish(ctx, msgs...); err != nil {
		return err
	}
	for _, m := range rows {
		_ = m.Ack()
	}
	return nil
}

// wait sleeps for d or until ctx ends.
func wait(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
