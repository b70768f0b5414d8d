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

	"github.com/postflow/postflow/pkg/shaping"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

const shapingUsage = `usage:
  postflow shaping check [--domain D [--mx HOST,...]] [FILE]
      validate a shaping file (default: the shipped limits alone) and print
      what each destination matches; with --domain, say which rule a domain
      (with those MX hosts) falls under
  postflow shaping status [--server ADDR] [--json]
      list destinations: configured and current rate, connections in use,
      queued jobs, last throttling`

func shapingCmd(ctx context.Context, args []string, out io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		return errors.New(shapingUsage)
	}
	switch args[0] {
	case "check":
		return shapingCheck(args[1:], out)
	case "status":
		return shapingStatus(ctx, args[1:], out, getenv)
	}
	return fmt.Errorf("unknown shaping command %q\n%s", args[0], shapingUsage)
}

func shapingCheck(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("shaping check", flag.ContinueOnError)
	domain := fs.String("domain", "", "explain which destination this recipient domain falls under")
	mxHosts := fs.String("mx", "", "comma-separated MX host names of --domain")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	cfg := shaping.Builtin()
	source := "the shipped limits"
	switch fs.NArg() {
	case 0:
	case 1:
		var err error
		if cfg, err = shaping.Load(fs.Arg(0)); err != nil {
			return err
		}
		source = fs.Arg(0) + " over the shipped limits"
	default:
		return errors.New(shapingUsage)
	}
	fmt.Fprintf(out, "%s: valid\n\n", source)
	for _, line := range cfg.Describe() {
		fmt.Fprintln(out, line)
	}
	if *domain != "" {
		var hosts []string
		if *mxHosts != "" {
			hosts = strings.Split(*mxHosts, ",")
		}
		fmt.Fprintf(out, "\n%s\n", cfg.Explain(*domain, hosts))
	}
	return nil
}

func shapingStatus(ctx context.Context, args []string, out io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("shaping status", flag.ContinueOnError)
	var cf clientFlags
	if help, err := parseClientFlags(fs, &cf, args, getenv); help || err != nil {
		return err
	}
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	cctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	resp, err := postflowv1.NewShapingServiceClient(conn).ListDestinations(cctx, &postflowv1.ListDestinationsRequest{})
	if err != nil {
		return rpcError(err)
	}
	if cf.json {
		return printJSON(out, resp)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DESTINATION\tRATE\tCURRENT\tCONNECTIONS\tQUEUED\tLAST THROTTLED")
	for _, d := range resp.GetDestinations() {
		conns := fmt.Sprintf("%d", d.GetConnectionsInUse())
		if d.GetConnectionLimit() > 0 {
			conns += fmt.Sprintf("/%d", d.GetConnectionLimit())
		}
		throttled := "-"
		if d.GetLastThrottled() != nil {
			throttled = d.GetLastThrottled().AsTime().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", d.GetName(), d.GetConfiguredRate(), d.GetCurrentRate(), conns, d.GetQueuedJobs(), throttled)
	}
	return tw.Flush()
}
