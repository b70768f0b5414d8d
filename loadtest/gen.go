package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// load is what one generator run offers and what it observed.
type load struct {
	run         string
	messages    int
	concurrency int
	size        int
	rate        float64 // messages per second offered; 0 = as fast as accepted
	batch       int     // messages per SendBatch call; 0 = one Send each
	campaign    bool    // all messages as one campaign

	accepted   atomic.Int64
	errors     atomic.Int64
	firstError atomic.Value // string
	acceptedAt []atomic.Int64
	latencies  []int64 // Send/SMTP call latency in ns, by sequence; 0 = not accepted
	start, end time.Time
}

func newLoad(run string, messages, concurrency, size int, rate float64) *load {
	return &load{run: run, messages: messages, concurrency: concurrency, size: size, rate: rate,
		acceptedAt: make([]atomic.Int64, messages), latencies: make([]int64, messages)}
}

// body returns ~size bytes of 7-bit text in 76-character lines.
func body(size int) string {
	const line = "The quick brown fox jumps over the lazy dog; pack my box with five dozen.\r\n"
	var b strings.Builder
	b.Grow(size + len(line))
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.String()
}

func recipient(seq int) string { return fmt.Sprintf("u%d@d%d.loadtest.test", seq, seq%100) }

// dispatch feeds sequence numbers to the workers, paced when a rate is set,
// until every message is offered or ctx ends.
func (l *load) dispatch(ctx context.Context) <-chan int {
	ch := make(chan int, l.concurrency)
	go func() {
		defer close(ch)
		var tick *time.Ticker
		var interval time.Duration
		if l.rate > 0 {
			interval = time.Duration(float64(time.Second) / l.rate)
			tick = time.NewTicker(min(interval, 10*time.Millisecond))
			defer tick.Stop()
		}
		next := time.Now()
		for seq := 0; seq < l.messages; seq++ {
			if tick != nil {
				for time.Now().Before(next) {
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
				}
				next = next.Add(interval)
			}
			select {
			case ch <- seq:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

func (l *load) fail(err error) {
	l.errors.Add(1)
	l.firstError.CompareAndSwap(nil, err.Error())
}

func (l *load) ok(seq int, began time.Time) {
	now := time.Now()
	l.acceptedAt[seq].Store(now.UnixNano())
	l.latencies[seq] = int64(now.Sub(began))
	l.accepted.Add(1)
}

// runSend drives Postflow's MailService.Send.
func (l *load) runSend(ctx context.Context, addr string) error {
	const conns = 4
	clients := make([]postflowv1.MailServiceClient, conns)
	ccs := make([]*grpc.ClientConn, conns)
	for i := range clients {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer func() { _ = cc.Close() }()
		clients[i], ccs[i] = postflowv1.NewMailServiceClient(cc), cc
	}
	text := body(l.size)
	if l.campaign {
		return l.runCampaign(ctx, postflowv1.NewCampaignServiceClient(ccs[0]), text)
	}
	seqs := l.dispatch(ctx)
	l.start = time.Now()
	var wg sync.WaitGroup
	for w := range l.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := clients[w%conns]
			if l.batch > 0 {
				l.sendBatches(ctx, client, seqs, text)
				return
			}
			for seq := range seqs {
				req := l.request(seq, text)
				began := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := client.Send(cctx, req)
				cancel()
				if err != nil {
					l.fail(fmt.Errorf("send: %s", status.Convert(err).Message()))
					continue
				}
				l.ok(seq, began)
			}
		}()
	}
	wg.Wait()
	l.end = time.Now()
	return nil
}

// campaignSubject makes each campaign message name its run and sequence
// number, which the sink reads in place of the headers Send would add.
const campaignSubject = "loadtest {{.run}} {{.seq}}"

// runCampaign sends the run's messages as one campaign: it creates it,
// uploads every recipient (1,000 rows per stream message), then starts
// it. Accepted means uploaded; each message's latency is the upload's
// share, and end-to-end latency counts from the start.
func (l *load) runCampaign(ctx context.Context, client postflowv1.CampaignServiceClient, text string) error {
	l.start = time.Now()
	c, err := client.CreateCampaign(ctx, &postflowv1.CreateCampaignRequest{From: "loadtest@sender.loadtest.test", Subject: campaignSubject, Text: text})
	if err != nil {
		return fmt.Errorf("create campaign: %s", status.Convert(err).Message())
	}
	id := c.GetCampaign().GetCampaignId()
	stream, err := client.AddRecipients(ctx)
	if err != nil {
		return err
	}
	for lo := 0; lo < l.messages; lo += 1000 {
		req := &postflowv1.AddRecipientsRequest{CampaignId: id}
		for seq := lo; seq < min(lo+1000, l.messages); seq++ {
			req.Rows = append(req.Rows, &postflowv1.RecipientRow{Email: recipient(seq), Vars: map[string]string{"run": l.run, "seq": strconv.Itoa(seq)}})
		}
		if err := stream.Send(req); err != nil {
			break // the reason comes with CloseAndRecv
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("add recipients: %s", status.Convert(err).Message())
	}
	uploaded := time.Now()
	if _, err := client.StartCampaign(ctx, &postflowv1.StartCampaignRequest{CampaignId: id}); err != nil {
		return fmt.Errorf("start campaign: %s", status.Convert(err).Message())
	}
	started := time.Now()
	share := uploaded.Sub(l.start) / time.Duration(max(l.messages, 1))
	for seq := range l.messages {
		l.acceptedAt[seq].Store(started.UnixNano())
		l.latencies[seq] = int64(share)
	}
	l.accepted.Store(resp.GetAdded())
	l.end = uploaded
	fmt.Fprintf(os.Stderr, "campaign %s: %d recipients uploaded in %v (%.0f/s)\n", id, resp.GetAdded(), uploaded.Sub(l.start).Round(time.Millisecond),
		float64(resp.GetAdded())/uploaded.Sub(l.start).Seconds())
	return nil
}

// request is message seq of the run.
func (l *load) request(seq int, text string) *postflowv1.SendRequest {
	return &postflowv1.SendRequest{
		From:    "loadtest@sender.loadtest.test",
		To:      []string{recipient(seq)},
		Subject: "loadtest " + strconv.Itoa(seq),
		Text:    text,
		Headers: []*postflowv1.Header{{Name: seqHeader, Value: strconv.Itoa(seq)}, {Name: runHeader, Value: l.run}},
	}
}

// batchLinger is how long a partly filled batch waits for more offered
// messages before it goes, as a client batching a stream would.
const batchLinger = 5 * time.Millisecond

// sendBatches takes up to l.batch offered messages at a time (waiting at
// most batchLinger for more once one is in hand) and submits them with
// SendBatch; each message's latency is its call's.
func (l *load) sendBatches(ctx context.Context, client postflowv1.MailServiceClient, seqs <-chan int, text string) {
	for seq := range seqs {
		batch := []int{seq}
		linger := time.NewTimer(batchLinger)
	fill:
		for len(batch) < l.batch {
			select {
			case s, ok := <-seqs:
				if !ok {
					break fill
				}
				batch = append(batch, s)
			case <-linger.C:
				break fill
			}
		}
		linger.Stop()
		req := &postflowv1.SendBatchRequest{}
		for _, s := range batch {
			req.Messages = append(req.Messages, l.request(s, text))
		}
		began := time.Now()
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		resp, err := client.SendBatch(cctx, req)
		cancel()
		if err != nil {
			for range batch {
				l.fail(fmt.Errorf("send batch: %s", status.Convert(err).Message()))
			}
			continue
		}
		for i, r := range resp.GetResults() {
			if e := r.GetError(); e != nil {
				l.fail(fmt.Errorf("send batch entry: %s", e.GetMessage()))
				continue
			}
			l.ok(batch[i], began)
		}
	}
}

// runSMTP injects over SMTP (for Postfix, Haraka and the sink's own
// ceiling), one connection per worker, reused for every message it sends.
func (l *load) runSMTP(ctx context.Context, addr string) error {
	text := body(l.size)
	seqs := l.dispatch(ctx)
	l.start = time.Now()
	var wg sync.WaitGroup
	for range l.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *smtp.Client
			defer func() {
				if c != nil {
					_ = c.Quit()
				}
			}()
			for seq := range seqs {
				began := time.Now()
				if c == nil {
					conn, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", addr)
					if err != nil {
						l.fail(err)
						continue
					}
					c = smtp.NewClient(conn)
					c.CommandTimeout, c.SubmissionTimeout = 30*time.Second, 60*time.Second
					if err := c.Hello("loadtest.test"); err != nil {
						l.fail(err)
						_ = c.Close()
						c = nil
						continue
					}
				}
				msg := rawMessage(l.run, seq, text)
				if err := c.SendMail("loadtest@sender.loadtest.test", []string{recipient(seq)}, strings.NewReader(msg)); err != nil {
					l.fail(err)
					_ = c.Close()
					c = nil
					continue
				}
				l.ok(seq, began)
			}
		}()
	}
	wg.Wait()
	l.end = time.Now()
	return nil
}

func rawMessage(run string, seq int, text string) string {
	return "From: loadtest@sender.loadtest.test\r\n" +
		"To: " + recipient(seq) + "\r\n" +
		"Subject: loadtest " + strconv.Itoa(seq) + "\r\n" +
		"Date: " + time.Now().Format(time.RFC1123Z) + "\r\n" +
		"Message-ID: <" + run + "." + strconv.Itoa(seq) + "@sender.loadtest.test>\r\n" +
		seqHeader + ": " + strconv.Itoa(seq) + "\r\n" +
		runHeader + ": " + run + "\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + text
}
