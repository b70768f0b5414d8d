package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postflow/postflow/pkg/eventlog"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// eventFilter validates an EventFilter and converts it.
func eventFilter(f *postflowv1.EventFilter) (eventlog.Filter, error) {
	out := eventlog.Filter{
		MessageID:  strings.TrimSpace(f.GetMessageId()),
		Recipient:  strings.TrimSpace(f.GetRecipient()),
		CampaignID: f.GetCampaignId(),
		Tag:        f.GetTag(),
		States:     f.GetStates(),
		Types:      f.GetTypes(),
	}
	if out.MessageID != "" && !validMessageID(out.MessageID) {
		return out, badField("filter.message_id", errMessageIDFormat.Error())
	}
	for i, st := range out.States {
		if _, ok := postflowv1.RecipientState_name[int32(st)]; !ok || st == postflowv1.RecipientState_RECIPIENT_STATE_UNSPECIFIED {
			return out, badField(fmt.Sprintf("filter.states[%d]", i), "unknown state")
		}
	}
	for i, t := range out.Types {
		if _, ok := postflowv1.EventType_name[int32(t)]; !ok {
			return out, badField(fmt.Sprintf("filter.types[%d]", i), "unknown event type")
		}
	}
	if ts := f.GetSince(); ts != nil {
		if ts.CheckValid() != nil {
			return out, badField("filter.since", "not a valid timestamp")
		}
		out.Since = ts.AsTime()
	}
	if ts := f.GetUntil(); ts != nil {
		if ts.CheckValid() != nil {
			return out, badField("filter.until", "not a valid timestamp")
		}
		out.Until = ts.AsTime()
		if !out.Since.IsZero() && !out.Until.After(out.Since) {
			return out, badField("filter.until", "must be after since")
		}
	}
	return out, nil
}

// ListEvents implements StatusService.ListEvents.
func (s *Server) ListEvents(ctx context.Context, req *postflowv1.ListEventsRequest) (*postflowv1.ListEventsResponse, error) {
	f, err := eventFilter(req.GetFilter())
	if err != nil {
		return nil, err
	}
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	after, err := eventlog.DecodeCursor(req.GetPageToken())
	if err != nil {
		return nil, badField("page_token", "not a token this service returned")
	}
	items, next, more, err := s.reader.List(ctx, s.cfg.Tenant, f, after, size)
	if err != nil {
		return nil, s.fail(ctx, "list events", err)
	}
	resp := &postflowv1.ListEventsResponse{Events: make([]*postflowv1.Event, 0, len(items))}
	for _, it := range items {
		resp.Events = append(resp.Events, it.Event)
	}
	if more {
		resp.NextPageToken = eventlog.EncodeCursor(next)
	}
	return resp, nil
}

// WatchEvents implements StatusService.WatchEvents.
func (s *Server) WatchEvents(req *postflowv1.WatchEventsRequest, stream grpc.ServerStreamingServer[postflowv1.WatchEventsResponse]) error {
	ctx := stream.Context()
	f, err := eventFilter(req.GetFilter())
	if err != nil {
		return err
	}
	f.Until = time.Time{}
	after, err := eventlog.DecodeCursor(req.GetCursor())
	if err != nil {
		return badField("cursor", "not a cursor this service returned")
	}
	err = s.reader.Watch(ctx, s.cfg.Tenant, f, after, func(it eventlog.Item) error {
		return stream.Send(&postflowv1.WatchEventsResponse{Event: it.Event, Cursor: eventlog.EncodeCursor(it.Seq)})
	})
	switch {
	case errors.Is(err, eventlog.ErrCursorExpired):
		return status.Error(codes.OutOfRange, "cursor is older than the events retained; start again with filter.since")
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case err != nil:
		if status.Code(err) == codes.Unknown {
			s.log.WarnContext(ctx, "api: watch events", slog.Any("error", err))
			return unavailable("event stream interrupted: resume from the last cursor")
		}
		return err
	}
	return nil
}
