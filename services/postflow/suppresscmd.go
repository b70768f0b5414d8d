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

const suppressUsage = `usage:
  postflow suppress add [--reason R] [--detail TEXT] [--expires DURATION|TIME] ADDRESS...
      put addresses on the suppression list (reason: manual by default;
      bounce, complaint, unsubscribe)
  postflow suppress remove ADDRESS...
  postflow suppress check ADDRESS...
  postflow suppress list [--reason R]
every subcommand takes --server, --json and --timeout`

func suppressCmd(ctx context.Context, args []string, out io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		return errors.New(suppressUsage)
	}
	sub := args[0]
	fs := flag.NewFlagSet("suppress "+sub, flag.ContinueOnError)
	var cf clientFlags
	reason := fs.String("reason", "", "reason: manual, bounce, complaint, unsubscribe")
	detail := fs.String("detail", "", "add: free text kept with the entry")
	expires := fs.String("expires", "", "add: expiry, a duration from now (720h) or an RFC 3339 time")
	if help, err := parseClientFlags(fs, &cf, args[1:], getenv); help || err != nil {
		return err
	}
	var r postflowv1.SuppressionReason
	if *reason != "" {
		v, ok := postflowv1.SuppressionReason_value["SUPPRESSION_REASON_"+strings.ToUpper(*reason)]
		if !ok || v == 0 {
			return fmt.Errorf("--reason %q: want manual, bounce, complaint or unsubscribe", *reason)
		}
		r = postflowv1.SuppressionReason(v)
	}
	switch sub {
	case "add", "remove", "check":
		if fs.NArg() == 0 {
			return errors.New(suppressUsage)
		}
	case "list":
		if fs.NArg() != 0 {
			return errors.New(suppressUsage)
		}
	default:
		return fmt.Errorf("unknown suppress command %q\n%s", sub, suppressUsage)
	}
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	client := postflowv1.NewSuppressionServiceClient(conn)
	call := func(f func(context.Context) error) error {
		cctx, cancel := context.WithTimeout(ctx, cf.timeout)
		defer cancel()
		if err := f(cctx); err != nil {
			return rpcError(err)
		}
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer func() { _ = tw.Flush() }()
	switch sub {
	case "add":
		req := &postflowv1.AddSuppressionRequest{Reason: r, Detail: *detail}
		if req.Reason == postflowv1.SuppressionReason_SUPPRESSION_REASON_UNSPECIFIED {
			req.Reason = postflowv1.SuppressionReason_SUPPRESSION_REASON_MANUAL
		}
		if *expires != "" {
			if d, err := time.ParseDuration(*expires); err == nil {
				req.ExpiresAt = timestamppb.New(time.Now().Add(d))
			} else if t, err := time.Parse(time.RFC3339, *expires); err == nil {
				req.ExpiresAt = timestamppb.New(t)
			} else {
				return fmt.Errorf("--expires %q: want a duration (720h) or an RFC 3339 time", *expires)
			}
		}
		for _, a := range fs.Args() {
			req.Address = a
			if err := call(func(c context.Context) error {
				resp, err := client.AddSuppression(c, req)
				if err == nil {
					err = printEntry(out, tw, cf.json, resp.GetSuppression())
				}
				return err
			}); err != nil {
				return fmt.Errorf("%s: %w", a, err)
			}
		}
	case "remove":
		for _, a := range fs.Args() {
			if err := call(func(c context.Context) error {
				resp, err := client.RemoveSuppression(c, &postflowv1.RemoveSuppressionRequest{Address: a})
				if err == nil {
					if resp.GetRemoved() {
						fmt.Fprintf(tw, "%s\tremoved\n", a)
					} else {
						fmt.Fprintf(tw, "%s\tnot on the list\n", a)
					}
				}
				return err
			}); err != nil {
				return fmt.Errorf("%s: %w", a, err)
			}
		}
	case "check":
		for _, a := range fs.Args() {
			if err := call(func(c context.Context) error {
				resp, err := client.CheckSuppression(c, &postflowv1.CheckSuppressionRequest{Address: a})
				switch {
				case err != nil:
				case cf.json:
					err = printJSON(out, resp)
				case resp.GetSuppressed():
					err = printEntry(out, tw, false, resp.GetSuppression())
				default:
					fmt.Fprintf(tw, "%s\tnot suppressed\n", a)
				}
				return err
			}); err != nil {
				return fmt.Errorf("%s: %w", a, err)
			}
		}
	case "list":
		if !cf.json {
			fmt.Fprintln(tw, "ADDRESS\tREASON\tSINCE\tEXPIRES\tMESSAGE\tDETAIL")
		}
		for token := ""; ; {
			var resp *postflowv1.ListSuppressionsResponse
			if err := call(func(c context.Context) (err error) {
				resp, err = client.ListSuppressions(c, &postflowv1.ListSuppressionsRequest{PageSize: 1000, PageToken: token, Reason: r})
				return err
			}); err != nil {
				return err
			}
			for _, e := range resp.GetSuppressions() {
				if err := printEntry(out, tw, cf.json, e); err != nil {
					return err
				}
			}
			if token = resp.GetNextPageToken(); token == "" {
				break
			}
		}
	}
	return tw.Flush()
}

func printEntry(out io.Writer, tw io.Writer, asJSON bool, e *postflowv1.Suppression) error {
	if asJSON {
		return printJSON(out, e)
	}
	expires := "-"
	if e.GetExpiresAt() != nil {
		expires = e.GetExpiresAt().AsTime().Format(time.RFC3339)
	}
	msg := e.GetMessageId()
	if msg == "" {
		msg = "-"
	}
	_, err := fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.GetAddress(),
		strings.ToLower(strings.TrimPrefix(e.GetReason().String(), "SUPPRESSION_REASON_")),
		e.GetCreatedAt().AsTime().Format(time.RFC3339), expires, msg, e.GetDetail())
	return err
}
