package smtpout

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postflow/postflow/pkg/testenv"
)

// pipeEHLO is the EHLO reply of the scripted servers below, with and
// without PIPELINING; both offer the extensions that shape MAIL.
const (
	pipeEHLO     = "250-multi.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10000000\r\n"
	lockstepEHLO = "250-multi.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10000000\r\n"
)

// pipeServer is a scripted server that advertises PIPELINING and checks the
// client's side of RFC 2920: a group (RSET or MAIL up to DATA) must arrive
// whole, before any reply, and nothing may follow DATA before its reply.
type pipeServer struct {
	*multiServer
	msgs atomic.Int32 // groups seen, across connections

	mu       sync.Mutex
	groups   [][]string // each group's command lines
	bodies   [][]byte   // each body as received, still dot-stuffed, ".\r\n" removed
	problems []string
}

// pipeReply scripts a pipeServer: the reply to cmd in the msg-th group
// (from 0, across connections; cmd "." is the end of data), written as is.
// "" selects the default: 250 ok, 354 to DATA, "250 2.0.0 queued" after
// the dot. "close" closes the connection instead of replying, and a reply
// ending in "+close" closes it after replying. It may block.
type pipeReply func(msg int, cmd string) string

func startPipeServer(t *testing.T, reply pipeReply) *pipeServer {
	t.Helper()
	s := &pipeServer{}
	s.multiServer = startMultiServer(t, func(_ int, cmd string, conn net.Conn, r *bufio.Reader) bool {
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			_, _ = io.WriteString(conn, pipeEHLO)
			return true
		case cmd == "QUIT":
			_, _ = io.WriteString(conn, "221 bye\r\n")
			return false
		case cmd == "RSET" || strings.HasPrefix(cmd, "MAIL"):
			return s.group(cmd, conn, r, reply)
		default:
			s.problem("command %q outside a group", cmd)
			_, _ = io.WriteString(conn, "500 5.5.2 unexpected\r\n")
			return true
		}
	})
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, p := range s.problems {
			t.Errorf("pipelining server: %s", p)
		}
	})
	return s
}

func (s *pipeServer) problem(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.problems = append(s.problems, fmt.Sprintf(format, args...))
}

// group reads the rest of the group that starts with first, answers every
// command in order, and then takes the body if DATA was accepted.
func (s *pipeServer) group(first string, conn net.Conn, r *bufio.Reader, reply pipeReply) bool {
	group := []string{first}
	for group[len(group)-1] != "DATA" {
		if r.Buffered() == 0 {
			s.problem("group %q not sent whole: waiting for more before any reply", group)
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return false
		}
		group = append(group, strings.TrimRight(line, "\r\n"))
	}
	if r.Buffered() != 0 {
		s.problem("group %q followed by data before the DATA reply", group)
	}
	msg := int(s.msgs.Add(1)) - 1
	s.mu.Lock()
	s.groups = append(s.groups, group)
	s.mu.Unlock()

	dataAccepted := false
	for _, cmd := range group {
		out := reply(msg, cmd)
		if out == "" {
			out = "250 2.0.0 ok\r\n"
			if cmd == "DATA" {
				out = "354 go ahead\r\n"
			}
		}
		out, closing := strings.CutSuffix(out, "close")
		_, _ = io.WriteString(conn, strings.TrimSuffix(out, "+"))
		if closing {
			return false
		}
		dataAccepted = cmd == "DATA" && strings.HasPrefix(out, "354")
	}
	if !dataAccepted {
		return true
	}
	var body []byte
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return false
		}
		if line == ".\r\n" {
			break
		}
		body = append(body, line...)
	}
	s.mu.Lock()
	s.bodies = append(s.bodies, body)
	s.mu.Unlock()
	out := reply(msg, ".")
	if out == "" {
		out = "250 2.0.0 queued\r\n"
	}
	out, closing := strings.CutSuffix(out, "close")
	_, _ = io.WriteString(conn, strings.TrimSuffix(out, "+"))
	return !closing
}

func (s *pipeServer) recorded() (groups [][]string, bodies [][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.groups, s.bodies
}

// wantGroup is the group the client should send for env.
func wantGroup(rset bool, e Envelope, body string) []string {
	var g []string
	if rset {
		g = append(g, "RSET")
	}
	mail := fmt.Sprintf("MAIL FROM:<%s> BODY=8BITMIME SIZE=%d", e.From, len(body))
	if e.SMTPUTF8 {
		mail += " SMTPUTF8"
	}
	g = append(g, mail)
	for _, to := range e.To {
		g = append(g, "RCPT TO:<"+to+">")
	}
	return append(g, "DATA")
}

func TestPipelinedAllAccepted(t *testing.T) {
	t.Parallel()
	srv := startPipeServer(t, func(int, string) string { return "" })
	c := newPoolClient(t, testConfig())
	envs := []Envelope{
		env("a@example.net", "b@example.net", "c@example.net"),
		{From: "bounce@example.org", To: []string{"j\u00f6rg@example.net"}, SMTPUTF8: true},
		env("d@example.net"),
	}
	for i, e := range envs {
		res := c.Deliver(context.Background(), []Target{srv.target}, e, []byte(testBody))
		for k, r := range res.Recipients {
			if !r.Delivered {
				t.Fatalf("message %d, Recipients[%d] = %+v, want delivered", i, k, r)
			}
		}
		if res.Reply == nil || res.Reply.Code != 250 || res.Reply.Enhanced != "2.0.0" || res.Reply.Message != "queued" {
			t.Fatalf("message %d: Reply = %#v, want 250 2.0.0 queued", i, res.Reply)
		}
	}
	if got := srv.accepted.Load(); got != 1 {
		t.Fatalf("server accepted %d connections, want 1", got)
	}
	groups, bodies := srv.recorded()
	for i, e := range envs {
		// The first message runs on a new session; the others start
		// with the pool's RSET, folded into their group.
		want := wantGroup(i > 0, e, testBody)
		if i >= len(groups) || strings.Join(groups[i], "|") != strings.Join(want, "|") {
			t.Fatalf("group %d = %q, want %q", i, groups, want)
		}
		if got, _ := unstuff(append(bodies[i], ".\r\n"...)); string(got) != testBody {
			t.Fatalf("body %d unstuffed = %q, want %q", i, got, testBody)
		}
	}
}

func TestPipelinedMixedRecipients(t *testing.T) {
	t.Parallel()
	srv := startPipeServer(t, func(_ int, cmd string) string {
		switch cmd {
		case "RCPT TO:<gone@example.net>":
			// Multiline, with the enhanced code repeated (RFC 2034 §4).
			return "550-5.1.1 no such\r\n550 5.1.1 user\r\n"
		case "RCPT TO:<full@example.net>":
			return "452 4.5.3 too many recipients\r\n"
		case "RCPT TO:<also@example.net>":
			return "251 2.1.5 will forward\r\n"
		}
		return ""
	})
	res := newPoolClient(t, testConfig()).Deliver(context.Background(), []Target{srv.target},
		env("ok@example.net", "gone@example.net", "full@example.net", "also@example.net"), []byte(testBody))
	if !res.Recipients[0].Delivered || !res.Recipients[3].Delivered {
		t.Fatalf("ok, also: %+v, %+v; want both delivered", res.Recipients[0], res.Recipients[3])
	}
	de := wantErr(t, "gone", res.Recipients[1], false, 550, "5.1.1")
	if !de.Remote || de.Message != "no such user" {
		t.Fatalf("gone: %#v, want remote reply text %q", de, "no such user")
	}
	checkErr(t, "full", res.Recipients[2], true, 452, "4.5.3")
	if _, bodies := srv.recorded(); len(bodies) != 1 {
		t.Fatalf("server got %d bodies, want 1", len(bodies))
	}
}

func TestPipelinedMailRefused(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		mail          string
		temporary     bool
		code          int
		enhanced      string
		wantSecondHit bool // the next target is tried
	}{
		{"451", "451 4.3.0 try later\r\n", true, 451, "4.3.0", true},
		{"550", "550 5.7.1 sender refused\r\n", false, 550, "5.7.1", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startPipeServer(t, func(msg int, cmd string) string {
				if msg > 0 {
					return ""
				}
				switch {
				case strings.HasPrefix(cmd, "MAIL"):
					return tc.mail
				case strings.HasPrefix(cmd, "RCPT"):
					return "503 5.5.1 need MAIL first\r\n"
				case cmd == "DATA":
					return "554 5.5.1 no valid recipients\r\n"
				}
				return ""
			})
			second := testenv.StartSMTPSink(t, testenv.SinkScript{})
			c := newPoolClient(t, testConfig())
			res := c.Deliver(context.Background(), []Target{srv.target, sinkTarget(second)},
				env("a@example.net", "b@example.net"), []byte(testBody))
			for i, r := range res.Recipients {
				if tc.wantSecondHit {
					if !r.Delivered {
						t.Fatalf("Recipients[%d] = %+v, want delivered via the second target", i, r)
					}
					continue
				}
				checkErr(t, fmt.Sprintf("Recipients[%d]", i), r, tc.temporary, tc.code, tc.enhanced)
			}
			if got := second.Sessions() > 0; got != tc.wantSecondHit {
				t.Fatalf("second target tried = %v, want %v", got, tc.wantSecondHit)
			}
			// Every reply of the refused group was read, so the session
			// is in step and carries the next message.
			deliverOK(t, c, []Target{srv.target}, "c@example.net")
			if got := srv.accepted.Load(); got != 1 {
				t.Fatalf("server accepted %d connections, want 1: the session was not reused after MAIL %s", got, tc.name)
			}
			groups, bodies := srv.recorded()
			if len(bodies) != 1 || len(groups) != 2 || groups[1][0] != "RSET" {
				t.Fatalf("groups %q, %d bodies; want the refused group without a body, then RSET and a body", groups, len(bodies))
			}
		})
	}
}

func TestPipelinedNoRecipientAccepted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		data      string
		wantEmpty bool // a lone "." ends a DATA that was wrongly accepted
	}{
		{"DATA refused", "554 5.5.1 no valid recipients\r\n", false},
		{"DATA accepted anyway", "354 go ahead\r\n", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startPipeServer(t, func(msg int, cmd string) string {
				if msg > 0 {
					return ""
				}
				switch {
				case strings.HasPrefix(cmd, "RCPT"):
					return "550 5.1.1 no such user\r\n"
				case cmd == "DATA":
					return tc.data
				case cmd == ".":
					return "554 5.5.1 no recipients\r\n"
				}
				return ""
			})
			c := newPoolClient(t, testConfig())
			res := c.Deliver(context.Background(), []Target{srv.target}, env("a@example.net", "b@example.net"), []byte(testBody))
			for i, r := range res.Recipients {
				checkErr(t, fmt.Sprintf("Recipients[%d]", i), r, false, 550, "5.1.1")
			}
			if res.Reply != nil {
				t.Fatalf("Reply = %v, want nil", res.Reply)
			}
			deliverOK(t, c, []Target{srv.target}, "c@example.net")
			if got := srv.accepted.Load(); got != 1 {
				t.Fatalf("server accepted %d connections, want 1", got)
			}
			_, bodies := srv.recorded()
			wantBodies := []string{testBody}
			if tc.wantEmpty {
				wantBodies = []string{"", testBody}
			}
			if len(bodies) != len(wantBodies) {
				t.Fatalf("server got %d bodies, want %d", len(bodies), len(wantBodies))
			}
			if len(bodies[0]) != 0 && tc.wantEmpty {
				t.Fatalf("first body = %q, want none (a lone dot)", bodies[0])
			}
		})
	}
}

func TestPipelinedReplacesDeadIdleSession(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		reply pipeReply
	}{
		{"closed while idle", func(msg int, cmd string) string {
			if msg == 0 && cmd == "." {
				return "250 2.0.0 queued\r\n+close"
			}
			return ""
		}},
		{"closed at RSET", func(msg int, cmd string) string {
			if msg == 1 && cmd == "RSET" {
				return "close"
			}
			return ""
		}},
		{"421 to RSET", func(msg int, cmd string) string {
			if msg == 1 && cmd == "RSET" {
				return "421 4.4.2 idle too long\r\n+close"
			}
			return ""
		}},
		{"RSET refused", func(msg int, cmd string) string {
			if msg == 1 && cmd == "RSET" {
				return "502 5.5.1 not implemented\r\n"
			}
			return ""
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startPipeServer(t, tc.reply)
			c := newPoolClient(t, testConfig())
			deliverOK(t, c, []Target{srv.target}, "a@example.net")
			// One target only: a dead idle session must not use up a
			// MaxSessions attempt or reach the recipient as an error.
			deliverOK(t, c, []Target{srv.target}, "b@example.net")
			if got := srv.accepted.Load(); got != 2 {
				t.Fatalf("server accepted %d connections, want 2", got)
			}
		})
	}
}

func TestPipelinedPossibleDuplicate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		final func(release <-chan struct{}) string
	}{
		{"no reply", func(release <-chan struct{}) string { <-release; return "close" }},
		{"closed after dot", func(<-chan struct{}) string { return "close" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			srv := startPipeServer(t, func(_ int, cmd string) string {
				if cmd == "." {
					return tc.final(release)
				}
				return ""
			})
			// Registered after the server, so it runs first and frees a
			// blocked reply before the server waits for its connections.
			t.Cleanup(func() { close(release) })
			cfg := testConfig()
			cfg.DataTimeout = 300 * time.Millisecond
			res := newPoolClient(t, cfg).Deliver(context.Background(), []Target{srv.target},
				env("a@example.net", "b@example.net"), []byte(testBody))
			for i, r := range res.Recipients {
				checkErr(t, fmt.Sprintf("Recipients[%d]", i), r, true, 451, "4.4.2")
				if !r.PossibleDuplicate {
					t.Fatalf("Recipients[%d].PossibleDuplicate = false, want true after the final dot", i)
				}
			}
		})
	}
}

func TestPipelinedContextCancelMidGroup(t *testing.T) {
	t.Parallel()
	atRcpt := make(chan struct{}, 1)
	release := make(chan struct{})
	srv := startPipeServer(t, func(_ int, cmd string) string {
		if strings.HasPrefix(cmd, "RCPT") {
			// MAIL has been answered; hold the rest of the group.
			atRcpt <- struct{}{}
			<-release
			return "close"
		}
		return ""
	})
	t.Cleanup(func() { close(release) })
	c := newPoolClient(t, testConfig())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Result, 1)
	go func() {
		done <- c.Deliver(ctx, []Target{srv.target}, env("a@example.net", "b@example.net"), []byte(testBody))
	}()
	select {
	case <-atRcpt:
	case <-time.After(10 * time.Second):
		t.Fatal("server never got to RCPT")
	}
	cancel()
	select {
	case res := <-done:
		for i, r := range res.Recipients {
			de := wantErr(t, fmt.Sprintf("Recipients[%d]", i), r, true, 451, "4.4.2")
			if !errors.Is(de, context.Canceled) {
				t.Fatalf("Recipients[%d].Err = %v, want it to wrap context.Canceled", i, de)
			}
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Deliver did not return within 2s of cancel")
	}
}

func TestPipelined421StopsReading(t *testing.T) {
	t.Parallel()
	// After the 421 the server hangs up without answering the rest of the
	// group; the client must not wait for those replies.
	srv2 := startPipeServer(t, func(msg int, cmd string) string {
		if msg == 0 && cmd == "RCPT TO:<b@example.net>" {
			return "421 4.3.2 shutting down\r\n+close"
		}
		return ""
	})
	c := newPoolClient(t, testConfig())
	res := c.Deliver(context.Background(), []Target{srv2.target}, env("a@example.net", "b@example.net", "c@example.net"), []byte(testBody))
	for i, r := range res.Recipients {
		checkErr(t, fmt.Sprintf("Recipients[%d]", i), r, true, 421, "4.3.2")
	}
	deliverOK(t, c, []Target{srv2.target}, "d@example.net")
	if got := srv2.accepted.Load(); got != 2 {
		t.Fatalf("server accepted %d connections, want 2: a session that got 421 must not be reused", got)
	}
}

// TestLockstepWithoutPipelining checks that a server without PIPELINING
// gets one command per round trip, the same MAIL parameters as a
// pipelining one, and the body stuffed by writeBody.
func TestLockstepWithoutPipelining(t *testing.T) {
	t.Parallel()
	var (
		mu       sync.Mutex
		cmds     []string
		bodies   [][]byte
		problems []string
	)
	srv := startMultiServer(t, func(n int, cmd string, conn net.Conn, r *bufio.Reader) bool {
		mu.Lock()
		cmds = append(cmds, cmd)
		if r.Buffered() != 0 {
			problems = append(problems, fmt.Sprintf("%q arrived with more commands behind it", cmd))
		}
		mu.Unlock()
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			_, _ = io.WriteString(conn, lockstepEHLO)
		case cmd == "DATA":
			_, _ = io.WriteString(conn, "354 go ahead\r\n")
			var body []byte
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return false
				}
				if line == ".\r\n" {
					break
				}
				body = append(body, line...)
			}
			mu.Lock()
			bodies = append(bodies, body)
			mu.Unlock()
			_, _ = io.WriteString(conn, "250 2.0.0 queued\r\n")
		default:
			return basicReply(cmd, conn)
		}
		return true
	})
	c := newPoolClient(t, testConfig())
	envs := []Envelope{
		env("a@example.net", "b@example.net"),
		{From: "bounce@example.org", To: []string{"j\u00f6rg@example.net"}, SMTPUTF8: true},
	}
	for i, e := range envs {
		res := c.Deliver(context.Background(), []Target{srv.target}, e, []byte(testBody))
		for k, r := range res.Recipients {
			if !r.Delivered {
				t.Fatalf("message %d, Recipients[%d] = %+v, want delivered", i, k, r)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Errorf("lock-step server: %s", p)
	}
	want := []string{"EHLO client.test"}
	for i, e := range envs {
		want = append(want, wantGroup(i > 0, e, testBody)...)
	}
	if strings.Join(cmds, "|") != strings.Join(want, "|") {
		t.Fatalf("commands = %q, want %q", cmds, want)
	}
	for i, b := range bodies {
		if got, _ := unstuff(append(b, ".\r\n"...)); string(got) != testBody {
			t.Fatalf("body %d unstuffed = %q, want %q", i, got, testBody)
		}
	}
}

// TestDeliverSinkCorpus sends bodies that test dot-stuffing to go-smtp's
// server, which advertises PIPELINING, so the pipelined path and
// writeBody run against a real implementation of the other side. It also
// counts the client's writes: a reused session sends a small message in
// two, the group and the body.
func TestDeliverSinkCorpus(t *testing.T) {
	t.Parallel()
	corpus := []string{
		"",
		".",
		".\r\n",
		"..",
		"..\r\n",
		".x\r\n",
		".x",
		"a\r\n.",
		"a\r\n..",
		"a\r\n.x",
		"a\r\n.\r\nb\r\n",
		"\r\n.\r\n.\r\n",
		"Subject: x\r\n\r\n.\r\n..\r\n.x\r\nend",
		strings.Repeat("line of text that is not short at all\r\n.dot line\r\n", 100<<10/52),
	}
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{})
	var writes atomic.Int64
	cfg := testConfig()
	dial := (&net.Dialer{}).DialContext
	cfg.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: conn, writes: &writes}, nil
	}
	c := newPoolClient(t, cfg)
	deliverOK(t, c, []Target{sinkTarget(sink)}, "warm@example.net")
	for i, body := range corpus {
		before := writes.Load()
		res := c.Deliver(context.Background(), []Target{sinkTarget(sink)}, env("a@example.net"), []byte(body))
		if !res.Recipients[0].Delivered {
			t.Fatalf("body %d (%.40q): %+v, want delivered", i, body, res.Recipients[0])
		}
		// The group, then the stuffed body with its end in full chunks.
		stuffed := len(body) + strings.Count("\r\n"+body, "\r\n.") + len(".\r\n")
		if body != "" && !strings.HasSuffix(body, "\r\n") {
			stuffed += 2
		}
		wantWrites := 1 + int64((stuffed+bodyChunk-1)/bodyChunk)
		if got := writes.Load() - before; got != wantWrites {
			t.Fatalf("body %d (%d bytes): %d writes, want %d", i, len(body), got, wantWrites)
		}
	}
	if got := sink.Sessions(); got != 1 {
		t.Fatalf("sink sessions = %d, want 1", got)
	}
	msgs := sink.Messages()[1:]
	for i, body := range corpus {
		if want := wantReceived([]byte(body)); !bytes.Equal(msgs[i].Data, want) {
			t.Fatalf("body %d: sink got %.80q, want %.80q", i, msgs[i].Data, want)
		}
	}
}

// TestParseReplyMultiline checks that a multiline reply read by smtpout
// reads as go-smtp's fromSMTP would render it.
func TestParseReplyMultiline(t *testing.T) {
	t.Parallel()
	tests := []struct {
		text, enhanced, msg string
	}{
		{"5.1.1 no such\n5.1.1 user", "5.1.1", "no such user"},
		{"5.1.1 no such\nuser", "5.1.1", "no such user"},
		{"Ok\nqueued", "", "Ok queued"},
	}
	for _, tc := range tests {
		got := parseReply(550, tc.text)
		if got.Enhanced != tc.enhanced || got.Message != tc.msg {
			t.Errorf("parseReply(550, %q) = %q %q, want %q %q", tc.text, got.Enhanced, got.Message, tc.enhanced, tc.msg)
		}
	}
}

func TestLineLimitReader(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", maxReplyLine)
	tests := []struct {
		name  string
		input string
		ok    bool
	}{
		{"short lines", "250-a\r\n250 b\r\n", true},
		{"at the limit", "250 " + long[:maxReplyLine-6] + "\r\n", true},
		{"over the limit", "250 " + long + "\r\n", false},
		{"long continuation", "250-a\r\n250 " + long + "\r\n", false},
		{"endless line", "250 " + long + long, false},
	}
	for _, tc := range tests {
		// A small buffer makes the lines cross reads.
		br := bufio.NewReaderSize(&lineLimitReader{r: strings.NewReader(tc.input), max: maxReplyLine}, 16)
		_, _, err := textproto.NewReader(br).ReadResponse(250)
		if (err == nil) != tc.ok || !tc.ok && !errors.Is(err, errLongReply) {
			t.Errorf("%s: ReadResponse over %d bytes = %v, want ok %v", tc.name, len(tc.input), err, tc.ok)
		}
	}
}
