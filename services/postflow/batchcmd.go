package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

const batchUsage = `usage: postflow batch [flags] FILE
  send the messages in FILE (JSON Lines: one SendRequest per line, in the
  proto's JSON form, e.g. {"from":"a@x","to":["b@y"],"subject":"s","text":"t"};
  - for stdin) with SendBatch, 1,000 per call; prints one line per message:
  its line number and message id, or its error`

func batchCmd(ctx context.Context, args []string, out io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("batch", flag.ContinueOnError)
	var cf clientFlags
	fs.Usage = func() { fmt.Fprintln(fs.Output(), batchUsage); fs.PrintDefaults() }
	if help, err := parseClientFlags(fs, &cf, args, getenv); help || err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New(batchUsage)
	}
	var in io.Reader = os.Stdin
	if fs.Arg(0) != "-" {
		f, err := os.Open(fs.Arg(0))
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }()
		in = f
	}
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	client := postflowv1.NewMailServiceClient(conn)

	var batch []*postflowv1.SendRequest
	var lines []int
	failed := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		cctx, cancel := context.WithTimeout(ctx, cf.timeout)
		defer cancel()
		resp, err := client.SendBatch(cctx, &postflowv1.SendBatchRequest{Messages: batch})
		if err != nil {
			return fmt.Errorf("lines %d-%d: %w", lines[0], lines[len(lines)-1], rpcError(err))
		}
		for i, r := range resp.GetResults() {
			if cf.json {
				if err := printJSON(out, r); err != nil {
					return err
				}
				continue
			}
			if e := r.GetError(); e != nil {
				failed++
				var v []string
				for _, fv := range e.GetViolations() {
					v = append(v, fv.GetField()+": "+fv.GetDescription())
				}
				fmt.Fprintf(out, "%d\terror\t%s\t%s\n", lines[i], e.GetMessage(), strings.Join(v, "; "))
				continue
			}
			fmt.Fprintf(out, "%d\t%s\n", lines[i], r.GetAccepted().GetMessageId())
		}
		batch, lines = batch[:0], lines[:0]
		return nil
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		req := &postflowv1.SendRequest{}
		if err := protojson.Unmarshal([]byte(line), req); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		batch, lines = append(batch, req), append(lines, n)
		if len(batch) == 1000 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d messages not accepted", failed)
	}
	return nil
}
