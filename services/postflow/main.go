// Command postflow is Postflow's single binary: `postflow serve` runs the
// roles (api, worker, bounce) and the client commands (send, status) use the
// public gRPC API like any other client. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
)

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		if !errors.Is(err, errUsage) {
			fmt.Fprintln(os.Stderr, "postflow:", err)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

const usage = `postflow: self-hosted outbound email delivery

Usage:
  postflow serve  [flags]                 run the service (all roles by default)
  postflow send   [flags]                 send a message through the API
  postflow batch  [flags] FILE            send JSON Lines of messages with SendBatch
  postflow status [flags] MESSAGE_ID      show a message's per-recipient status
  postflow events [flags] [--follow]      list or follow events (filters: message, recipient, tag, state, time)
  postflow cancel [flags] MESSAGE_ID      cancel a message's undelivered recipients
  postflow suppress add|remove|check|list manage the suppression list
  postflow campaign send|status|pause|resume|cancel|list   bulk campaigns from a CSV
  postflow shaping check|status           validate shaping limits; show them live
  postflow version

Run "postflow COMMAND -h" for a command's flags.
`

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return errUsage
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], os.Getenv)
	case "send":
		return sendCmd(ctx, args[1:], os.Stdout, os.Getenv)
	case "status":
		return statusCmd(ctx, args[1:], os.Stdout, os.Getenv)
	case "batch":
		return batchCmd(ctx, args[1:], os.Stdout, os.Getenv)
	case "events":
		return eventsCmd(ctx, args[1:], os.Stdout, os.Getenv)
	case "cancel":
		return cancelCmd(ctx, args[1:], os.Stdout, os.Getenv)
	case "campaign":
		return campaignCmd(ctx, args[1:], os.Stdout, os.Getenv)
	case "suppress":
		return suppressCmd(ctx, args[1:], os.Stdout, os.Getenv)
	case "shaping":
		return shapingCmd(ctx, args[1:], os.Stdout, os.Getenv)
	case "version":
		fmt.Println("postflow", version)
		return nil
	case "-h", "--help", "help":
		fmt.Print(usage)
		return nil
	default:
		fmt.Fprintf(os.Stderr, "postflow: unknown command %q\n\n%s", args[0], usage)
		return errUsage
	}
}

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"
