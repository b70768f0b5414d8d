package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/campaign"
	"github.com/postflow/postflow/pkg/campaign/render"
	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/mailmsg"
	queuev1 "github.com/postflow/postflow/proto/postflow/queue/v1"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// campaignServer implements CampaignService.
type campaignServer struct {
	postflowv1.UnimplementedCampaignServiceServer
	store  *campaign.Store
	reader *eventlog.Reader
	tenant string
	limits mailmsg.Limits
	now    func() time.Time
	log    *slog.Logger

	mu      sync.Mutex
	tallies map[string]*tally // by <tenant>.<campaign id>
}

// maxRowErrors bounds the refused rows AddRecipients describes.
const maxRowErrors = 100

var errCampaignIDFormat = errors.New("campaign_id must be 24 characters of [a-z2-7]")

func (s *campaignServer) CreateCampaign(ctx context.Context, req *postflowv1.CreateCampaignRequest) (*postflowv1.CreateCampaignResponse, error) {
	var v []mailmsg.FieldError
	if _, err := mailmsg.ParseAddress(req.GetFrom()); err != nil {
		v = append(v, mailmsg.FieldError{Field: "from", Description: err.Error()})
	}
	if req.GetText() == "" && req.GetHtml() == "" {
		v = append(v, mailmsg.FieldError{Field: "text", Description: "text or html is required"})
	}
	if _, err := render.Parse(render.Source{Subject: req.GetSubject(), Text: req.GetText(), HTML: req.GetHtml()}, s.renderLimits()); err != nil {
		var pe *render.ParseError
		field := "subject"
		if errors.As(err, &pe) {
			field = pe.Field
		}
		v = append(v, mailmsg.FieldError{Field: field, Description: err.Error()})
	}
	for i, tag := range req.GetTags() {
		if !validTag(tag) {
			v = append(v, mailmsg.FieldError{Field: fmt.Sprintf("tags[%d]", i), Description: "at most 64 characters of [A-Za-z0-9_.-]"})
		}
	}
	if len(req.GetTags()) > 10 {
		v = append(v, mailmsg.FieldError{Field: "tags", Description: "at most 10 tags"})
	}
	if len(v) > 0 {
		return nil, toStatus(&mailmsg.ValidationError{Violations: v}).Err()
	}
	c := &queuev1.Campaign{
		Id:        newMessageID(s.tenant, ""),
		Tenant:    s.tenant,
		From:      req.GetFrom(),
		Subject:   req.GetSubject(),
		Text:      req.GetText(),
		Html:      req.GetHtml(),
		Tags:      req.GetTags(),
		State:     queuev1.CampaignState_CAMPAIGN_STATE_DRAFT,
		CreatedAt: timestamppb.New(s.now()),
	}
	if err := s.store.Create(ctx, c); err != nil {
		return nil, s.fail(ctx, err)
	}
	s.log.InfoContext(ctx, "api: campaign created", slog.String("campaign_id", c.GetId()))
	return &postflowv1.CreateCampaignResponse{Campaign: publicCampaign(c, nil)}, nil
}

func (s *campaignServer) renderLimits() render.Limits {
	return render.Limits{MaxOutputBytes: s.limits.MaxMessageBytes}
}

func validTag(t string) bool {
	if t == "" || len(t) > 64 {
		return false
	}
	for _, c := range t {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// AddRecipients stores the streamed rows through one campaign.Adder.
func (s *campaignServer) AddRecipients(stream grpc.ClientStreamingServer[postflowv1.AddRecipientsRequest, postflowv1.AddRecipientsResponse]) error {
	ctx := stream.Context()
	var (
		id    string
		adder *campaign.Adder
		vars  []string
		resp  = &postflowv1.AddRecipientsResponse{}
		row   int64
	)
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if id == "" {
			if id = req.GetCampaignId(); !validMessageID(id) {
				return badField("campaign_id", errCampaignIDFormat.Error())
			}
			c, err := s.store.Get(ctx, s.tenant, id)
			if err != nil {
				return s.fail(ctx, err)
			}
			t, err := render.Parse(render.Source{Subject: c.GetSubject(), Text: c.GetText(), HTML: c.GetHtml()}, s.renderLimits())
			if err != nil {
				return s.fail(ctx, fmt.Errorf("stored campaign %s does not parse: %w", id, err))
			}
			vars = slices.DeleteFunc(t.Vars(), func(v string) bool { return v == "email" })
			if adder, err = s.store.NewAdder(ctx, s.tenant, id); err != nil {
				return s.fail(ctx, err)
			}
		} else if req.GetCampaignId() != "" && req.GetCampaignId() != id {
			return badField("campaign_id", "must not change within the stream")
		}
		for _, r := range req.GetRows() {
			if addr, reason := checkRow(r, vars); reason != "" {
				resp.Refused++
				if len(resp.Errors) < maxRowErrors {
					resp.Errors = append(resp.Errors, &postflowv1.RowError{Row: row, Email: r.GetEmail(), Reason: reason})
				}
			} else if err := adder.Add(ctx, addr, r.GetVars()); err != nil {
				return s.fail(ctx, err)
			}
			row++
		}
	}
	if adder != nil {
		added, dup, err := adder.Flush(ctx)
		if err != nil {
			return s.fail(ctx, err)
		}
		resp.Added, resp.Duplicates = added, dup
	}
	s.log.InfoContext(ctx, "api: campaign recipients added", slog.String("campaign_id", id),
		slog.Int64("added", resp.GetAdded()), slog.Int64("duplicates", resp.GetDuplicates()), slog.Int64("refused", resp.GetRefused()))
	return stream.SendAndClose(resp)
}

// checkRow returns a row's address in mailmsg's canonical form (the
// domain in lower-case A-label form, as Send queues it), or why the row is
// refused.
func checkRow(r *postflowv1.RecipientRow, vars []string) (addr, reason string) {
	in := strings.TrimSpace(r.GetEmail())
	a, err := mailmsg.ParseAddress(in)
	if err != nil {
		return "", "email: " + err.Error()
	}
	if a.Name != "" || strings.ContainsAny(in, "<>") {
		return "", "email: give the bare address, without a display name"
	}
	for _, v := range vars {
		if _, ok := r.GetVars()[v]; !ok {
			return "", "missing variable " + v
		}
	}
	return a.Addr, ""
}

// transition moves a campaign from one of the states in from to to.
func (s *campaignServer) transition(ctx context.Context, id string, to queuev1.CampaignState, from ...queuev1.CampaignState) (*postflowv1.Campaign, error) {
	if !validMessageID(id) {
		return nil, badField("campaign_id", errCampaignIDFormat.Error())
	}
	c, err := s.store.Update(ctx, s.tenant, id, func(c *queuev1.Campaign) error {
		if !slices.Contains(from, c.GetState()) {
			return status.Errorf(codes.FailedPrecondition, "campaign is %s", stateWord(c.GetState()))
		}
		if to == queuev1.CampaignState_CAMPAIGN_STATE_RUNNING && c.GetState() == queuev1.CampaignState_CAMPAIGN_STATE_DRAFT {
			if c.GetRecipientsAdded() == 0 {
				return status.Error(codes.FailedPrecondition, "campaign has no recipients")
			}
			c.StartedAt = timestamppb.New(s.now())
		}
		if to == queuev1.CampaignState_CAMPAIGN_STATE_CANCELED {
			c.FinishedAt = timestamppb.New(s.now())
		}
		c.State = to
		return nil
	})
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.log.InfoContext(ctx, "api: campaign "+stateWord(to), slog.String("campaign_id", id))
	return publicCampaign(c, nil), nil
}

func stateWord(st queuev1.CampaignState) string {
	return strings.ToLower(strings.TrimPrefix(st.String(), "CAMPAIGN_STATE_"))
}

func (s *campaignServer) StartCampaign(ctx context.Context, req *postflowv1.StartCampaignRequest) (*postflowv1.StartCampaignResponse, error) {
	c, err := s.transition(ctx, req.GetCampaignId(), queuev1.CampaignState_CAMPAIGN_STATE_RUNNING, queuev1.CampaignState_CAMPAIGN_STATE_DRAFT)
	return &postflowv1.StartCampaignResponse{Campaign: c}, err
}

func (s *campaignServer) PauseCampaign(ctx context.Context, req *postflowv1.PauseCampaignRequest) (*postflowv1.PauseCampaignResponse, error) {
	c, err := s.transition(ctx, req.GetCampaignId(), queuev1.CampaignState_CAMPAIGN_STATE_PAUSED, queuev1.CampaignState_CAMPAIGN_STATE_RUNNING)
	return &postflowv1.PauseCampaignResponse{Campaign: c}, err
}

func (s *campaignServer) ResumeCampaign(ctx context.Context, req *postflowv1.ResumeCampaignRequest) (*postflowv1.ResumeCampaignResponse, error) {
	c, err := s.transition(ctx, req.GetCampaignId(), queuev1.CampaignState_CAMPAIGN_STATE_RUNNING, queuev1.CampaignState_CAMPAIGN_STATE_PAUSED)
	return &postflowv1.ResumeCampaignResponse{Campaign: c}, err
}

func (s *campaignServer) CancelCampaign(ctx context.Context, req *postflowv1.CancelCampaignRequest) (*postflowv1.CancelCampaignResponse, error) {
	c, err := s.transition(ctx, req.GetCampaignId(), queuev1.CampaignState_CAMPAIGN_STATE_CANCELED,
		queuev1.CampaignState_CAMPAIGN_STATE_DRAFT, queuev1.CampaignState_CAMPAIGN_STATE_RUNNING, queuev1.CampaignState_CAMPAIGN_STATE_PAUSED)
	return &postflowv1.CancelCampaignResponse{Campaign: c}, err
}

func (s *campaignServer) GetCampaign(ctx context.Context, req *postflowv1.GetCampaignRequest) (*postflowv1.GetCampaignResponse, error) {
	if !validMessageID(req.GetCampaignId()) {
		return nil, badField("campaign_id", errCampaignIDFormat.Error())
	}
	c, err := s.store.Get(ctx, s.tenant, req.GetCampaignId())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	counts, err := s.counts(ctx, c)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if c.GetState() == queuev1.CampaignState_CAMPAIGN_STATE_RUNNING && counts.GetQueued() == 0 && counts.GetDeferred() == 0 {
		// Every recipient is final: the campaign is finished. Recorded by
		// whichever reader sees it first.
		if done, err := s.store.Update(ctx, s.tenant, c.GetId(), func(c *queuev1.Campaign) error {
			if c.GetState() == queuev1.CampaignState_CAMPAIGN_STATE_RUNNING {
				c.State = queuev1.CampaignState_CAMPAIGN_STATE_FINISHED
				c.FinishedAt = timestamppb.New(s.now())
			}
			return nil
		}); err == nil {
			c = done
		}
	}
	return &postflowv1.GetCampaignResponse{Campaign: publicCampaign(c, counts)}, nil
}

// tally is one campaign's recipient states, folded from its events by a
// watch that follows them for the life of the process: each event is read
// once, in order, and counted once however often it was redelivered
// (eventlog.Apply keeps the first final state).
type tally struct {
	mu     sync.Mutex
	states []postflowv1.RecipientState // by recipient index
}

func (t *tally) fold(it eventlog.Item) error {
	_, i, err := eventlog.ParseRecipientID(it.Event.GetRecipientId())
	if err != nil || i > 1<<30 {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if i >= len(t.states) {
		t.states = append(t.states, make([]postflowv1.RecipientState, i+1-len(t.states))...)
	}
	t.states[i] = eventlog.Apply(t.states[i], it.Event)
	return nil
}

// counts returns the campaign's counts per state as its watch has folded
// them so far. The first call starts the watch, from the campaign's
// creation; counts then trail the events by the time the watch takes to
// read them (milliseconds), like every status read from EVENTS.
func (s *campaignServer) counts(_ context.Context, c *queuev1.Campaign) (*postflowv1.CampaignCounts, error) {
	key := c.GetTenant() + "." + c.GetId()
	s.mu.Lock()
	if s.tallies == nil {
		s.tallies = map[string]*tally{}
	}
	t := s.tallies[key]
	if t == nil {
		t = &tally{}
		s.tallies[key] = t
		f := eventlog.Filter{MessageID: c.GetId(), Since: c.GetCreatedAt().AsTime()}
		go func() {
			// It ends when the connection to NATS closes (the process
			// stops); it is restarted by the next call.
			err := s.reader.Watch(context.Background(), c.GetTenant(), f, 0, t.fold)
			s.log.Info("api: campaign count watch ended", slog.String("campaign_id", c.GetId()), slog.Any("error", err))
			s.mu.Lock()
			delete(s.tallies, key)
			s.mu.Unlock()
		}()
	}
	s.mu.Unlock()

	t.mu.Lock()
	defer t.mu.Unlock()
	n := &postflowv1.CampaignCounts{Recipients: c.GetRecipientsAdded(), DuplicatesDropped: c.GetDuplicatesDropped()}
	seen := int64(0)
	for _, st := range t.states {
		if st == postflowv1.RecipientState_RECIPIENT_STATE_UNSPECIFIED {
			continue
		}
		seen++
		switch st {
		case postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED:
			n.Deferred++
		case postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED:
			n.Delivered++
		case postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED:
			n.Bounced++
		case postflowv1.RecipientState_RECIPIENT_STATE_EXPIRED:
			n.Expired++
		case postflowv1.RecipientState_RECIPIENT_STATE_SUPPRESSED:
			n.Suppressed++
		case postflowv1.RecipientState_RECIPIENT_STATE_CANCELED:
			n.Canceled++
		case postflowv1.RecipientState_RECIPIENT_STATE_FAILED:
			n.Failed++
		default:
			seen-- // queued or no state: counted below
		}
	}
	// Recipients without an event yet are queued; a canceled campaign's
	// unfed rows become canceled as the feeders drain them.
	n.Queued = max(n.GetRecipients()-seen, 0)
	return n, nil
}

func (s *campaignServer) ListCampaigns(ctx context.Context, _ *postflowv1.ListCampaignsRequest) (*postflowv1.ListCampaignsResponse, error) {
	list, err := s.store.List(ctx, s.tenant)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &postflowv1.ListCampaignsResponse{}
	for _, c := range list {
		resp.Campaigns = append(resp.Campaigns, publicCampaign(c, nil))
	}
	slices.SortFunc(resp.Campaigns, func(a, b *postflowv1.Campaign) int {
		return b.GetCreatedAt().AsTime().Compare(a.GetCreatedAt().AsTime())
	})
	return resp, nil
}

func publicCampaign(c *queuev1.Campaign, counts *postflowv1.CampaignCounts) *postflowv1.Campaign {
	if counts == nil {
		counts = &postflowv1.CampaignCounts{Recipients: c.GetRecipientsAdded(), DuplicatesDropped: c.GetDuplicatesDropped()}
	}
	progress := 0.0
	if n := counts.GetRecipients(); n > 0 {
		progress = float64(n-counts.GetQueued()-counts.GetDeferred()) / float64(n)
	}
	return &postflowv1.Campaign{
		Progress:   progress,
		CampaignId: c.GetId(),
		From:       c.GetFrom(),
		Subject:    c.GetSubject(),
		Text:       c.GetText(),
		Html:       c.GetHtml(),
		Tags:       c.GetTags(),
		State:      postflowv1.CampaignState(c.GetState()),
		CreatedAt:  c.GetCreatedAt(),
		StartedAt:  c.GetStartedAt(),
		FinishedAt: c.GetFinishedAt(),
		Counts:     counts,
	}
}

// fail maps store errors to statuses and logs the unexpected ones.
func (s *campaignServer) fail(ctx context.Context, err error) error {
	var grpcErr interface{ GRPCStatus() *status.Status }
	switch {
	case errors.As(err, &grpcErr):
		return err
	case errors.Is(err, campaign.ErrNotFound):
		return status.Error(codes.NotFound, "campaign not found")
	case errors.Is(err, campaign.ErrNotDraft):
		return status.Error(codes.FailedPrecondition, "recipients can be added to a draft only")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	s.log.WarnContext(ctx, "api: campaign store", slog.Any("error", err))
	return unavailable("campaign store unavailable: retry")
}
