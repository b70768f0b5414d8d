package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

const eventsUsage = `usage: postflow events [flags]
  list events, oldest first; with --follow, keep printing new ones until
  interrupted (resumable with --cursor)`

func eventsCmd(ctx context.Context, args []string, out io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("events", flag.ContinueOnError)
	var cf clientFlags
	var states stringList
	message := fs.String("message", "", "only this message id")
	recipient := fs.String("recipient", "", "only this recipient address")
	campaign := fs.String("campaign", "", "only this campaign id")
	tag := fs.String("tag", "", "only messages with this tag")
	fs.Var(&states, "state", "only this state: queued, deferred, delivered, bounced, expired, suppressed, canceled, failed (repeatable)")
	since := fs.String("since", "", "only events at or after this time (RFC 3339, or a duration ago like 1h)")
	until := fs.String("until", "", "only events before this time (RFC 3339, or a duration ago)")
	follow := fs.Bool("follow", false, "keep streaming new events")
	cursor := fs.String("cursor", "", "with --follow: resume after this cursor (printed with --json)")
	limit := fs.Int("limit", 0, "without --follow: stop after this many events (0: all)")
	fs.Usage = func() { fmt.Fprintln(fs.Output(), eventsUsage); fs.PrintDefaults() }
	if help, err := parseClientFlags(fs, &cf, args, getenv); help || err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return errors.New(eventsUsage)
	}
	filter := &postflowv1.EventFilter{MessageId: *message, Recipient: *recipient, CampaignId: *campaign, Tag: *tag}
	for _, s := range states {
		v, ok := postflowv1.RecipientState_value["RECIPIENT_STATE_"+strings.ToUpper(s)]
		if !ok {
			return fmt.Errorf("--state %q: unknown state", s)
		}
		filter.States = append(filter.States, postflowv1.RecipientState(v))
	}
	now := time.Now()
	var err error
	if filter.Since, err = timeFlag("--since", *since, now); err != nil {
		return err
	}
	if filter.Until, err = timeFlag("--until", *until, now); err != nil {
		return err
	}
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	client := postflowv1.NewStatusServiceClient(conn)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if !cf.json && !*follow {
		fmt.Fprintln(tw, "TIME\tMESSAGE\tRECIPIENT\tEVENT\tATTEMPT\tREPLY")
	}
	print := func(ev *postflowv1.Event, cursor string) error {
		if cf.json {
			return printJSON(out, &postflowv1.WatchEventsResponse{Event: ev, Cursor: cursor})
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", ev.GetTime().AsTime().Format(time.RFC3339Nano), ev.GetMessageId(), ev.GetRecipient(), eventName(ev), ev.GetAttempt(), replyString(ev.GetReply()))
		return nil
	}
	if *follow && !cf.json {
		// A follower prints each line as it comes, so the columns are
		// fixed rather than fitted to lines not seen yet.
		fmt.Fprintf(out, "%-30s  %-24s  %-32s  %-16s  %-7s  %s\n", "TIME", "MESSAGE", "RECIPIENT", "EVENT", "ATTEMPT", "REPLY")
		print = func(ev *postflowv1.Event, _ string) error {
			_, err := fmt.Fprintf(out, "%-30s  %-24s  %-32s  %-16s  %-7d  %s\n", ev.GetTime().AsTime().Format(time.RFC3339Nano), ev.GetMessageId(), ev.GetRecipient(), eventName(ev), ev.GetAttempt(), replyString(ev.GetReply()))
			return err
		}
	}
	if *follow {
		stream, err := client.WatchEvents(ctx, &postflowv1.WatchEventsRequest{Filter: filter, Cursor: *cursor})
		if err != nil {
			return rpcError(err)
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				_ = tw.Flush()
				if ctx.Err() != nil {
					return nil
				}
				return rpcError(err)
			}
			if err := print(resp.GetEvent(), resp.GetCursor()); err != nil {
				return err
			}
			// One line at a time: a follower wants each event as it comes.
			if err := tw.Flush(); err != nil {
				return err
			}
		}
	}
	n := 0
	for token := ""; ; {
		cctx, cancel := context.WithTimeout(ctx, cf.timeout)
		resp, err := client.ListEvents(cctx, &postflowv1.ListEventsRequest{Filter: filter, PageSize: 1000, PageToken: token})
		cancel()
		if err != nil {
			return rpcError(err)
		}
		for _, ev := range resp.GetEvents() {
			if err := print(ev, ""); err != nil {
				return err
			}
			if n++; *limit > 0 && n >= *limit {
				return tw.Flush()
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			return tw.Flush()
		}
	}
}

// eventName is an event's state, or its type when it records a report.
func eventName(ev *postflowv1.Event) string {
	switch ev.GetType() {
	case postflowv1.EventType_EVENT_TYPE_COMPLAINT:
		return "complaint"
	case postflowv1.EventType_EVENT_TYPE_DSN:
		return stateName(ev.GetState()) + " (dsn)"
	}
	return stateName(ev.GetState())
}

// timeFlag parses an RFC 3339 time or a duration before now; "" is unset.
func timeFlag(name, v string, now time.Time) (*timestamppb.Timestamp, error) {
	if v == "" {
		return nil, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		return timestamppb.New(now.Add(-d)), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return nil, fmt.Errorf("%s %q: want RFC 3339 (2026-11-26T10:00:00Z) or a duration (1h)", name, v)
	}
	return timestamppb.New(t), nil
}

func cancelCmd(ctx context.Context, args []string, out io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("cancel", flag.ContinueOnError)
	var cf clientFlags
	if help, err := parseClientFlags(fs, &cf, args, getenv); help || err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: postflow cancel [flags] MESSAGE_ID")
	}
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	cctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	resp, err := postflowv1.NewMailServiceClient(conn).Cancel(cctx, &postflowv1.CancelRequest{MessageId: fs.Arg(0)})
	if err != nil {
		return rpcError(err)
	}
	if cf.json {
		return printJSON(out, resp)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RECIPIENT\tSTATE")
	for _, r := range resp.GetRecipients() {
		fmt.Fprintf(tw, "%s\t%s\n", r.GetRecipient(), stateName(r.GetState()))
	}
	return tw.Flush()
}
