package main

import (
	"context"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

const campaignUsage = `usage:
  postflow campaign send --from F --subject S (--text FILE | --html FILE) --recipients LIST.csv [--tag T] [--follow]
      create a campaign, upload its recipients and start it; the CSV's
      header row names the variables, and an "email" column is required
  postflow campaign status|pause|resume|cancel [--follow] ID
  postflow campaign list
every subcommand takes --server, --json and --timeout`

func campaignCmd(ctx context.Context, args []string, out io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		return errors.New(campaignUsage)
	}
	sub := args[0]
	fs := flag.NewFlagSet("campaign "+sub, flag.ContinueOnError)
	var cf clientFlags
	var tags stringList
	from := fs.String("from", "", "send: sender address")
	subject := fs.String("subject", "", "send: subject template (Go text/template)")
	textFile := fs.String("text", "", "send: file with the text/plain template (Go text/template)")
	htmlFile := fs.String("html", "", "send: file with the text/html template (Go html/template)")
	list := fs.String("recipients", "", "send: CSV file of recipients (- for stdin)")
	fs.Var(&tags, "tag", "send: tag (repeatable)")
	follow := fs.Bool("follow", false, "send, status: show progress until the campaign is finished or canceled")
	if help, err := parseClientFlags(fs, &cf, args[1:], getenv); help || err != nil {
		return err
	}
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	client := postflowv1.NewCampaignServiceClient(conn)
	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, cf.timeout) }
	show := func(c *postflowv1.Campaign) error {
		if cf.json {
			return printJSON(out, c)
		}
		return printCampaign(out, c)
	}

	switch sub {
	case "send":
		if fs.NArg() != 0 || *from == "" || *list == "" || *textFile == "" && *htmlFile == "" {
			return errors.New(campaignUsage)
		}
		req := &postflowv1.CreateCampaignRequest{From: *from, Subject: *subject, Tags: tags}
		for _, f := range []struct {
			path string
			dst  *string
		}{{*textFile, &req.Text}, {*htmlFile, &req.Html}} {
			if f.path == "" {
				continue
			}
			b, err := os.ReadFile(f.path)
			if err != nil {
				return err
			}
			*f.dst = string(b)
		}
		rows, err := readRecipients(*list)
		if err != nil {
			return err
		}
		cctx, cancel := call()
		created, err := client.CreateCampaign(cctx, req)
		cancel()
		if err != nil {
			return rpcError(err)
		}
		id := created.GetCampaign().GetCampaignId()
		added, err := upload(ctx, client, id, rows)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "campaign %s: %d recipients added, %d duplicates dropped, %d refused\n", id, added.GetAdded(), added.GetDuplicates(), added.GetRefused())
		for _, e := range added.GetErrors() {
			fmt.Fprintf(os.Stderr, "  row %d (%s): %s\n", e.GetRow()+1, e.GetEmail(), e.GetReason())
		}
		cctx, cancel = call()
		started, err := client.StartCampaign(cctx, &postflowv1.StartCampaignRequest{CampaignId: id})
		cancel()
		if err != nil {
			return rpcError(err)
		}
		if *follow {
			return followCampaign(ctx, client, id, out, cf.timeout)
		}
		return show(started.GetCampaign())
	case "status", "pause", "resume", "cancel":
		if fs.NArg() != 1 {
			return errors.New(campaignUsage)
		}
		id := fs.Arg(0)
		if sub == "status" && *follow {
			return followCampaign(ctx, client, id, out, cf.timeout)
		}
		ops := map[string]func(context.Context) (*postflowv1.Campaign, error){
			"status": func(ctx context.Context) (*postflowv1.Campaign, error) {
				r, err := client.GetCampaign(ctx, &postflowv1.GetCampaignRequest{CampaignId: id})
				return r.GetCampaign(), err
			},
			"pause": func(ctx context.Context) (*postflowv1.Campaign, error) {
				r, err := client.PauseCampaign(ctx, &postflowv1.PauseCampaignRequest{CampaignId: id})
				return r.GetCampaign(), err
			},
			"resume": func(ctx context.Context) (*postflowv1.Campaign, error) {
				r, err := client.ResumeCampaign(ctx, &postflowv1.ResumeCampaignRequest{CampaignId: id})
				return r.GetCampaign(), err
			},
			"cancel": func(ctx context.Context) (*postflowv1.Campaign, error) {
				r, err := client.CancelCampaign(ctx, &postflowv1.CancelCampaignRequest{CampaignId: id})
				return r.GetCampaign(), err
			},
		}
		cctx, cancel := call()
		defer cancel()
		c, err := ops[sub](cctx)
		if err != nil {
			return rpcError(err)
		}
		return show(c)
	case "list":
		cctx, cancel := call()
		defer cancel()
		r, err := client.ListCampaigns(cctx, &postflowv1.ListCampaignsRequest{})
		if err != nil {
			return rpcError(err)
		}
		if cf.json {
			return printJSON(out, r)
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CAMPAIGN\tSTATE\tRECIPIENTS\tCREATED\tSUBJECT")
		for _, c := range r.GetCampaigns() {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", c.GetCampaignId(), campaignState(c.GetState()), c.GetCounts().GetRecipients(),
				c.GetCreatedAt().AsTime().Format(time.RFC3339), c.GetSubject())
		}
		return tw.Flush()
	}
	return fmt.Errorf("unknown campaign command %q\n%s", sub, campaignUsage)
}

// readRecipients reads a CSV whose header row names the variables; the
// "email" column is the address and is not a variable.
func readRecipients(path string) ([]*postflowv1.RecipientRow, error) {
	var in io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer func() { _ = f.Close() }()
		in = f
	}
	r := csv.NewReader(in)
	r.TrimLeadingSpace = true
	header, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("%s: header row: %w", path, err)
	}
	email := -1
	for i, h := range header {
		header[i] = strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")) // a spreadsheet's byte-order mark
		if strings.EqualFold(header[i], "email") {
			email = i
		}
	}
	if email < 0 {
		return nil, fmt.Errorf("%s: no \"email\" column in the header row", path)
	}
	var rows []*postflowv1.RecipientRow
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return rows, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		row := &postflowv1.RecipientRow{Email: strings.TrimSpace(rec[email]), Vars: map[string]string{}}
		for i, v := range rec {
			if i != email {
				row.Vars[header[i]] = v
			}
		}
		rows = append(rows, row)
	}
}

// upload streams rows in messages of 1,000, with a progress line.
func upload(ctx context.Context, client postflowv1.CampaignServiceClient, id string, rows []*postflowv1.RecipientRow) (*postflowv1.AddRecipientsResponse, error) {
	stream, err := client.AddRecipients(ctx)
	if err != nil {
		return nil, rpcError(err)
	}
	for lo := 0; lo < len(rows); lo += 1000 {
		hi := min(lo+1000, len(rows))
		if err := stream.Send(&postflowv1.AddRecipientsRequest{CampaignId: id, Rows: rows[lo:hi]}); err != nil {
			_, err = stream.CloseAndRecv() // the server's reason
			return nil, rpcError(err)
		}
		fmt.Fprintf(os.Stderr, "\ruploading %s %d/%d", bar(float64(hi)/float64(len(rows))), hi, len(rows))
	}
	fmt.Fprintln(os.Stderr)
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, rpcError(err)
	}
	return resp, nil
}

// followCampaign shows the campaign's progress every second until it is
// finished or canceled.
func followCampaign(ctx context.Context, client postflowv1.CampaignServiceClient, id string, out io.Writer, timeout time.Duration) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		r, err := client.GetCampaign(cctx, &postflowv1.GetCampaignRequest{CampaignId: id})
		cancel()
		if err != nil {
			return rpcError(err)
		}
		c, n := r.GetCampaign(), r.GetCampaign().GetCounts()
		final := n.GetRecipients() - n.GetQueued() - n.GetDeferred()
		frac := 1.0
		if n.GetRecipients() > 0 {
			frac = float64(final) / float64(n.GetRecipients())
		}
		fmt.Fprintf(os.Stderr, "\r%s %s %d/%d  delivered %d  bounced %d  deferred %d  failed %d", campaignState(c.GetState()), bar(frac), final, n.GetRecipients(),
			n.GetDelivered(), n.GetBounced(), n.GetDeferred(), n.GetFailed())
		switch c.GetState() {
		case postflowv1.CampaignState_CAMPAIGN_STATE_FINISHED, postflowv1.CampaignState_CAMPAIGN_STATE_CANCELED:
			fmt.Fprintln(os.Stderr)
			return printCampaign(out, c)
		}
		select {
		case <-ctx.Done():
			fmt.Fprintln(os.Stderr)
			return nil
		case <-time.After(time.Second):
		}
	}
}

func bar(frac float64) string {
	const width = 30
	n := int(frac * width)
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}

func campaignState(s postflowv1.CampaignState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "CAMPAIGN_STATE_"))
}

func printCampaign(out io.Writer, c *postflowv1.Campaign) error {
	n := c.GetCounts()
	fmt.Fprintf(out, "campaign %s %s\n", c.GetCampaignId(), campaignState(c.GetState()))
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, kv := range []struct {
		k string
		v int64
	}{
		{"recipients", n.GetRecipients()}, {"duplicates dropped", n.GetDuplicatesDropped()}, {"queued", n.GetQueued()},
		{"deferred", n.GetDeferred()}, {"delivered", n.GetDelivered()}, {"bounced", n.GetBounced()}, {"expired", n.GetExpired()},
		{"suppressed", n.GetSuppressed()}, {"canceled", n.GetCanceled()}, {"failed", n.GetFailed()},
	} {
		fmt.Fprintf(tw, "  %s\t%d\n", kv.k, kv.v)
	}
	return tw.Flush()
}
