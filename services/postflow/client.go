package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/postflow/postflow/pkg/eventlog"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// clientFlags are shared by every client command.
type clientFlags struct {
	server  string
	json    bool
	timeout time.Duration
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.server, "server", "127.0.0.1:8025", "Postflow gRPC address")
	fs.BoolVar(&c.json, "json", false, "print machine-readable JSON")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "deadline of each call")
}

func (c *clientFlags) dial() (*grpc.ClientConn, error) {
	return grpc.NewClient(c.server, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(128<<20)))
}

// parseClientFlags registers the client flags on fs, next to the
// command's own, and parses args with the client environment. help
// reports -h, whose usage fs has printed.
func parseClientFlags(fs *flag.FlagSet, cf *clientFlags, args []string, getenv func(string) string) (help bool, err error) {
	cf.register(fs)
	if err := parseWithEnv(fs, args, clientEnv(getenv)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return false, err
	}
	return false, nil
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// rpcError formats a gRPC failure with its code and field violations, for
// stderr.
func rpcError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", st.Code(), st.Message())
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fmt.Fprintf(&b, "\n  %s: %s", v.GetField(), v.GetDescription())
			}
		}
	}
	return errors.New(b.String())
}

func sendCmd(ctx context.Context, args []string, out io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	var cf clientFlags
	var to, cc, bcc, replyTo, headers, tags stringList
	from := fs.String("from", "", "sender address (required)")
	fs.Var(&to, "to", "recipient (repeatable)")
	fs.Var(&cc, "cc", "cc recipient (repeatable)")
	fs.Var(&bcc, "bcc", "bcc recipient, envelope only (repeatable)")
	fs.Var(&replyTo, "reply-to", "Reply-To address (repeatable)")
	subject := fs.String("subject", "", "subject")
	text := fs.String("text", "", "text/plain body")
	html := fs.String("html", "", "text/html body")
	fs.Var(&headers, "header", `custom header "Name: value" (repeatable)`)
	fs.Var(&tags, "tag", "tag (repeatable)")
	key := fs.String("idempotency-key", "", "idempotency key: retries with the same key never send twice")
	raw := fs.String("raw", "", "send this file as a complete MIME message (- for stdin)")
	if help, err := parseClientFlags(fs, &cf, args, getenv); help || err != nil {
		return err
	}
	req := &postflowv1.SendRequest{
		From: *from, To: to, Cc: cc, Bcc: bcc, ReplyTo: replyTo,
		Subject: *subject, Text: *text, Html: *html, Tags: tags, IdempotencyKey: *key,
	}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return fmt.Errorf("--header %q: want \"Name: value\"", h)
		}
		req.Headers = append(req.Headers, &postflowv1.Header{Name: strings.TrimSpace(name), Value: strings.TrimSpace(value)})
	}
	if *raw != "" {
		var err error
		if *raw == "-" {
			req.Raw, err = io.ReadAll(os.Stdin)
		} else {
			req.Raw, err = os.ReadFile(*raw)
		}
		if err != nil {
			return fmt.Errorf("--raw: %w", err)
		}
	}
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	resp, err := postflowv1.NewMailServiceClient(conn).Send(ctx, req)
	if err != nil {
		return rpcError(err)
	}
	if cf.json {
		return printJSON(out, resp)
	}
	_, err = fmt.Fprintln(out, resp.GetMessageId())
	return err
}

func statusCmd(ctx context.Context, args []string, out io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var cf clientFlags
	wait := fs.Duration("wait", 0, "poll until every recipient is final, up to this long")
	events := fs.Bool("events", false, "list every event, not just the current state")
	if help, err := parseClientFlags(fs, &cf, args, getenv); help || err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: postflow status [flags] MESSAGE_ID")
	}
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	client := postflowv1.NewStatusServiceClient(conn)
	deadline := time.Now().Add(*wait)
	for {
		cctx, cancel := context.WithTimeout(ctx, cf.timeout)
		resp, err := client.GetMessage(cctx, &postflowv1.GetMessageRequest{MessageId: fs.Arg(0)})
		cancel()
		if err != nil {
			return rpcError(err)
		}
		if allFinal(resp) || !time.Now().Before(deadline) {
			if cf.json {
				return printJSON(out, resp)
			}
			return printStatus(out, resp, *events)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func allFinal(resp *postflowv1.GetMessageResponse) bool {
	for _, r := range resp.GetRecipients() {
		if !eventlog.Final(r.GetState()) {
			return false
		}
	}
	return true
}

// stateName turns RECIPIENT_STATE_DELIVERED into "delivered".
func stateName(s postflowv1.RecipientState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "RECIPIENT_STATE_"))
}

func replyString(r *postflowv1.SMTPReply) string {
	if r == nil {
		return ""
	}
	s := fmt.Sprint(r.GetCode())
	if r.GetEnhancedCode() != "" {
		s += " " + r.GetEnhancedCode()
	}
	return s + " " + r.GetText()
}

func printStatus(out io.Writer, resp *postflowv1.GetMessageResponse, events bool) error {
	fmt.Fprintf(out, "message %s accepted %s\n\n", resp.GetMessageId(), resp.GetAcceptedAt().AsTime().Format(time.RFC3339))
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RECIPIENT\tSTATE\tATTEMPTS\tMX\tCATEGORY\tREPLY")
	for _, r := range resp.GetRecipients() {
		reply := replyString(r.GetLastReply())
		if r.GetNextAttemptAt() != nil && r.GetState() == postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED {
			reply += " (next attempt " + r.GetNextAttemptAt().AsTime().Format(time.RFC3339) + ")"
		}
		category := r.GetCategory()
		if category == "" {
			category = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", r.GetRecipient(), stateName(r.GetState()), r.GetAttempts(), r.GetMxHost(), category, reply)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if !events {
		return nil
	}
	fmt.Fprintln(out, "\nEVENTS")
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, r := range resp.GetRecipients() {
		for _, ev := range r.GetEvents() {
			fmt.Fprintf(tw, "%s\t%s\t%s\tattempt %d\t%s\n", ev.GetTime().AsTime().Format(time.RFC3339Nano), ev.GetRecipient(), stateName(ev.GetState()), ev.GetAttempt(), replyString(ev.GetReply()))
		}
	}
	return tw.Flush()
}

func printJSON(out io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, string(b))
	return err
}

// clientEnv exposes only the client flags' variables (POSTFLOW_SERVER,
// POSTFLOW_JSON) so that a server's POSTFLOW_* settings in the same shell do
// not leak into client commands.
func clientEnv(getenv func(string) string) func(string) string {
	return func(name string) string {
		switch name {
		case envName("server"), envName("json"), envName("timeout"):
			return getenv(name)
		}
		return ""
	}
}
