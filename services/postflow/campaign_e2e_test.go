package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-smtp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

const campaignZone = zone + `
third.test.        60 IN MX 10 mx.third.test.
mx.third.test.     60 IN A  127.0.0.1
`

// createCampaign makes a draft and streams rows into it, 1,000 per message.
func (s *stack) createCampaign(t *testing.T, req *postflowv1.CreateCampaignRequest, rows []*postflowv1.RecipientRow) (string, *postflowv1.AddRecipientsResponse) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := s.campaigns.CreateCampaign(ctx, req)
	if err != nil {
		t.Fatalf("CreateCampaign: %v", err)
	}
	id := c.GetCampaign().GetCampaignId()
	stream, err := s.campaigns.AddRecipients(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for lo := 0; lo < len(rows); lo += 1000 {
		if err := stream.Send(&postflowv1.AddRecipientsRequest{CampaignId: id, Rows: rows[lo:min(lo+1000, len(rows))]}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatalf("AddRecipients: %v", err)
	}
	return id, resp
}

func (s *stack) campaign(t *testing.T, id string) *postflowv1.Campaign {
	t.Helper()
	resp, err := s.campaigns.GetCampaign(s.ctx(), &postflowv1.GetCampaignRequest{CampaignId: id})
	if err != nil {
		t.Fatalf("GetCampaign: %v", err)
	}
	return resp.GetCampaign()
}

// TestCampaignExactCounts: 10,000 recipients at 3 domains, 1% refused with
// 5.1.1 and 1% deferred once, plus duplicate and invalid rows, reach exact
// final counts; each delivered message is rendered for its recipient.
func TestCampaignExactCounts(t *testing.T) {
	const total = 10000
	s := startStack(t, testenv.SinkScript{Rcpt: func(addr string, n int) *smtp.SMTPError {
		switch {
		case strings.HasPrefix(addr, "hard"):
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		case strings.HasPrefix(addr, "soft") && n == 0:
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
		}
		return nil
	}})
	s.dns.Update(campaignZone)
	domains := []string{"example.test", "other.test", "third.test"}
	var rows []*postflowv1.RecipientRow
	for i := range total {
		local := fmt.Sprintf("user%d", i)
		switch i % 100 {
		case 13:
			local = fmt.Sprintf("hard%d", i)
		case 47:
			local = fmt.Sprintf("soft%d", i)
		}
		rows = append(rows, &postflowv1.RecipientRow{Email: local + "@" + domains[i%3], Vars: map[string]string{"first_name": fmt.Sprintf("Name%d", i)}})
	}
	// Duplicates (another case) and invalid rows are dropped and counted.
	rows = append(rows, &postflowv1.RecipientRow{Email: "USER1@Other.TEST", Vars: map[string]string{"first_name": "x"}},
		&postflowv1.RecipientRow{Email: "not an address", Vars: map[string]string{"first_name": "x"}},
		&postflowv1.RecipientRow{Email: "novars@example.test"})
	id, added := s.createCampaign(t, &postflowv1.CreateCampaignRequest{
		From: "News <news@sender.test>", Subject: "Hello {{.first_name}}",
		Text: "Dear {{.first_name}}, this goes to {{.email}}.", Html: "<p>Dear {{.first_name}}</p>", Tags: []string{"newsletter"},
	}, rows)
	if added.GetAdded() != total || added.GetDuplicates() != 1 || added.GetRefused() != 2 || len(added.GetErrors()) != 2 {
		t.Fatalf("AddRecipients = %v; want %d added, 1 duplicate, 2 refused", added, total)
	}
	if !strings.Contains(added.GetErrors()[1].GetReason(), "first_name") {
		t.Errorf("the row without variables was refused for %q", added.GetErrors()[1].GetReason())
	}
	if _, err := s.campaigns.StartCampaign(s.ctx(), &postflowv1.StartCampaignRequest{CampaignId: id}); err != nil {
		t.Fatal(err)
	}
	var c *postflowv1.Campaign
	if !eventually(120*time.Second, func() bool {
		c = s.campaign(t, id)
		n := c.GetCounts()
		return n.GetDelivered()+n.GetBounced() == total
	}) {
		t.Fatalf("campaign not final after 120s: %v", c.GetCounts())
	}
	if c.GetState() != postflowv1.CampaignState_CAMPAIGN_STATE_FINISHED || c.GetFinishedAt() == nil || c.GetStartedAt() == nil || c.GetProgress() != 1 {
		t.Errorf("campaign %v, started %v, finished %v, progress %v; want FINISHED with both times and progress 1", c.GetState(), c.GetStartedAt(), c.GetFinishedAt(), c.GetProgress())
	}
	n := c.GetCounts()
	if n.GetDelivered() != total-100 || n.GetBounced() != 100 || n.GetQueued() != 0 || n.GetDeferred() != 0 || n.GetRecipients() != total || n.GetDuplicatesDropped() != 1 {
		t.Errorf("counts %v; want %d delivered, 100 bounced", n, total-100)
	}
	s.waitQueueEmpty(30 * time.Second)
	if got := s.sink.Count(); got != total-100 {
		t.Errorf("sink received %d messages, want %d", got, total-100)
	}
	// One rendered message, checked whole.
	for _, m := range s.sink.Messages() {
		if m.To[0] != "user5@third.test" {
			continue
		}
		mr, err := mail.CreateReader(strings.NewReader(string(m.Data)))
		if err != nil {
			t.Fatal(err)
		}
		subject, _ := mr.Header.Subject()
		if subject != "Hello Name5" || !strings.Contains(string(m.Data), "Dear Name5, this goes to user5@third.test.") {
			t.Errorf("user5's message: subject %q\n%s", subject, m.Data)
		}
	}
}

// TestCampaignRenderFailure: a recipient whose message cannot be rendered
// fails; the others are delivered.
func TestCampaignRenderFailure(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	rows := []*postflowv1.RecipientRow{
		{Email: "a@example.test", Vars: map[string]string{"items": "3"}},
		{Email: "b@example.test", Vars: map[string]string{"items": "x"}},
	}
	// index fails at run time for a short value: a render error, not a
	// parse error.
	id, _ := s.createCampaign(t, &postflowv1.CreateCampaignRequest{From: "news@sender.test", Subject: "You have {{.items}}", Text: "First: {{index .items 0}}{{if eq .items \"x\"}}{{index .items 5}}{{end}}"}, rows)
	if _, err := s.campaigns.StartCampaign(s.ctx(), &postflowv1.StartCampaignRequest{CampaignId: id}); err != nil {
		t.Fatal(err)
	}
	var c *postflowv1.Campaign
	if !eventually(30*time.Second, func() bool {
		c = s.campaign(t, id)
		return c.GetCounts().GetDelivered()+c.GetCounts().GetFailed() == 2
	}) {
		t.Fatalf("counts %v", c.GetCounts())
	}
	if c.GetCounts().GetDelivered() != 1 || c.GetCounts().GetFailed() != 1 {
		t.Fatalf("counts %v; want 1 delivered, 1 failed", c.GetCounts())
	}
	// Every event of the campaign, attempts included, carries its id.
	evs, err := s.status.ListEvents(s.ctx(), &postflowv1.ListEventsRequest{Filter: &postflowv1.EventFilter{CampaignId: id}})
	if err != nil || len(evs.GetEvents()) != 2 {
		t.Errorf("ListEvents by campaign: %d events, %v; want the delivery and the failure", len(evs.GetEvents()), err)
	}
	st, err := s.status.GetMessage(s.ctx(), &postflowv1.GetMessageRequest{MessageId: id})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.GetRecipients() {
		if r.GetRecipient() == "b@example.test" && (r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_FAILED || !strings.Contains(r.GetLastReply().GetText(), "rendering failed")) {
			t.Errorf("b@: %v %v, want FAILED with the render error", r.GetState(), r.GetLastReply())
		}
	}
}

// TestCampaignPauseResumeCancel: pause stops deliveries within 2 s, resume
// continues, cancel makes the rest canceled.
func TestCampaignPauseResumeCancel(t *testing.T) {
	const total = 3000
	s := startStack(t, testenv.SinkScript{}, withShaping(t, "defaults: {rate: 500/s}\n"))
	var rows []*postflowv1.RecipientRow
	for i := range total {
		rows = append(rows, &postflowv1.RecipientRow{Email: fmt.Sprintf("p%d@example.test", i)})
	}
	// A second worker process: the pause must reach every worker.
	second := s.cfg
	second.Roles = []string{"worker"}
	s.startApp(second)
	id, _ := s.createCampaign(t, &postflowv1.CreateCampaignRequest{From: "news@sender.test", Subject: "s", Text: "t"}, rows)
	if _, err := s.campaigns.StartCampaign(s.ctx(), &postflowv1.StartCampaignRequest{CampaignId: id}); err != nil {
		t.Fatal(err)
	}
	s.sink.WaitForCount(t, 200, 30*time.Second)
	if _, err := s.campaigns.PauseCampaign(s.ctx(), &postflowv1.PauseCampaignRequest{CampaignId: id}); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	// Measurement window: what arrives between 2 s and 3 s after the pause.
	time.Sleep(3 * time.Second) //nolint:forbidigo // the window in which deliveries must have stopped
	late := 0
	for _, m := range s.sink.Messages() {
		if m.Received.After(paused.Add(2 * time.Second)) {
			late++
		}
	}
	if late != 0 {
		t.Errorf("%d deliveries more than 2 s after the pause", late)
	}
	atPause := s.sink.Count()
	if atPause >= total {
		t.Fatalf("all %d delivered before the pause took effect: the test proves nothing", atPause)
	}
	if _, err := s.campaigns.ResumeCampaign(s.ctx(), &postflowv1.ResumeCampaignRequest{CampaignId: id}); err != nil {
		t.Fatal(err)
	}
	s.sink.WaitForCount(t, atPause+200, 30*time.Second)
	if _, err := s.campaigns.CancelCampaign(s.ctx(), &postflowv1.CancelCampaignRequest{CampaignId: id}); err != nil {
		t.Fatal(err)
	}
	var c *postflowv1.Campaign
	if !eventually(60*time.Second, func() bool {
		c = s.campaign(t, id)
		n := c.GetCounts()
		return n.GetDelivered()+n.GetCanceled() == total && n.GetQueued() == 0
	}) {
		t.Fatalf("counts after cancel: %v", c.GetCounts())
	}
	s.waitQueueEmpty(30 * time.Second)
	if got := int64(s.sink.Count()); got != c.GetCounts().GetDelivered() {
		t.Errorf("sink has %d, campaign counts %d delivered", got, c.GetCounts().GetDelivered())
		per := map[string]int{}
		for _, m := range s.sink.Messages() {
			per[m.To[0]]++
		}
		st, _ := s.status.GetMessage(s.ctx(), &postflowv1.GetMessageRequest{MessageId: id})
		for _, r := range st.GetRecipients() {
			if per[r.GetRecipient()] > 0 && r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED || per[r.GetRecipient()] > 1 {
				for _, ev := range r.GetEvents() {
					t.Logf("%s (%d copies): %v attempt %d type %v", r.GetRecipient(), per[r.GetRecipient()], ev.GetState(), ev.GetAttempt(), ev.GetType())
				}
			}
		}
	}
	if c.GetCounts().GetCanceled() == 0 {
		t.Error("nothing was canceled: the test proves nothing")
	}
	if _, err := s.campaigns.ResumeCampaign(s.ctx(), &postflowv1.ResumeCampaignRequest{CampaignId: id}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("resuming a canceled campaign: %v, want FAILED_PRECONDITION", err)
	}
	t.Logf("delivered %d before cancel, canceled %d", c.GetCounts().GetDelivered(), c.GetCounts().GetCanceled())
}

// TestCampaignOneClickUnsubscribe: campaign mail carries RFC 8058 headers;
// a GET of the link changes nothing, a real HTTP POST unsubscribes, and
// the next Send to that address is suppressed.
func TestCampaignOneClickUnsubscribe(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpAddr := lis.Addr().String()
	_ = lis.Close() // the app listens here; a port taken meanwhile fails the test loudly
	s := startStack(t, testenv.SinkScript{}, withBounce(t, "bounces.postflow.test"), func(c *serveConfig) {
		c.HTTPAddr = httpAddr
		c.UnsubscribeURL = "http://" + httpAddr
		c.unsubAllowHTTP = true
	})
	rows := []*postflowv1.RecipientRow{{Email: "keep@example.test"}, {Email: "leave@example.test"}}
	id, _ := s.createCampaign(t, &postflowv1.CreateCampaignRequest{From: "news@sender.test", Subject: "s", Text: "t"}, rows)
	if _, err := s.campaigns.StartCampaign(s.ctx(), &postflowv1.StartCampaignRequest{CampaignId: id}); err != nil {
		t.Fatal(err)
	}
	s.sink.WaitForCount(t, 2, 30*time.Second)
	links := map[string]string{}
	for _, m := range s.sink.Messages() {
		mr, err := mail.CreateReader(strings.NewReader(string(m.Data)))
		if err != nil {
			t.Fatal(err)
		}
		lu, post := mr.Header.Get("List-Unsubscribe"), mr.Header.Get("List-Unsubscribe-Post")
		if post != "List-Unsubscribe=One-Click" || !strings.HasPrefix(lu, "<http://"+httpAddr+"/u/") || !strings.Contains(lu, ", <mailto:u+") {
			t.Fatalf("%s: List-Unsubscribe %q, List-Unsubscribe-Post %q", m.To[0], lu, post)
		}
		links[m.To[0]] = strings.TrimSuffix(strings.TrimPrefix(strings.Split(lu, ",")[0], "<"), ">")
	}
	// A link scanner's GET unsubscribes nobody.
	resp, err := http.Get(links["keep@example.test"])
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET of the link: %d", resp.StatusCode)
	}
	resp, err = http.Post(links["leave@example.test"], "application/x-www-form-urlencoded", strings.NewReader("List-Unsubscribe=One-Click"))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("one-click POST: %d", resp.StatusCode)
	}
	if c := s.checkSuppressed("keep@example.test"); c.GetSuppressed() {
		t.Errorf("a GET suppressed keep@: %v", c.GetSuppression())
	}
	c := s.checkSuppressed("leave@example.test")
	if c.GetSuppression().GetReason() != postflowv1.SuppressionReason_SUPPRESSION_REASON_UNSUBSCRIBE || c.GetSuppression().GetMessageId() != id {
		t.Fatalf("leave@ suppression = %v, want unsubscribe naming %s", c.GetSuppression(), id)
	}
	next := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"leave@example.test"}, Subject: "s", Text: "t"})
	if got := next.GetRecipients()[0].GetState(); got != postflowv1.RecipientState_RECIPIENT_STATE_SUPPRESSED {
		t.Errorf("Send after the unsubscribe: %v, want SUPPRESSED", got)
	}
	evs, err := s.status.ListEvents(s.ctx(), &postflowv1.ListEventsRequest{Filter: &postflowv1.EventFilter{
		MessageId: id, Types: []postflowv1.EventType{postflowv1.EventType_EVENT_TYPE_UNSUBSCRIBE}}})
	if err != nil || len(evs.GetEvents()) != 1 || evs.GetEvents()[0].GetRecipient() != "leave@example.test" {
		t.Errorf("unsubscribe events = %v, %v; want one for leave@", evs.GetEvents(), err)
	}
}

// TestCLICampaign sends a campaign from a CSV as a user would, following it
// to the end.
func TestCLICampaign(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	dir := t.TempDir()
	csvFile, textFile := filepath.Join(dir, "list.csv"), filepath.Join(dir, "body.txt")
	if err := os.WriteFile(csvFile, []byte("\ufeffemail,first_name\none@example.test,Ann\ntwo@other.test,Bob\nONE@example.test,Ann again\nbroken,Nobody\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(textFile, []byte("Hi {{.first_name}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := campaignCmd(context.Background(), []string{"send", "--server=" + s.api.app.grpcLis.Addr().String(), "--from=news@sender.test",
		"--subject=Hello {{.first_name}}", "--text=" + textFile, "--recipients=" + csvFile, "--follow"}, &out, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"finished", "recipients          2", "duplicates dropped  1", "delivered           2"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("campaign send --follow printed no %q:\n%s", want, out.String())
		}
	}
	if s.sink.Count() != 2 {
		t.Errorf("sink received %d messages, want 2", s.sink.Count())
	}
	out.Reset()
	if err := campaignCmd(context.Background(), []string{"list", "--server=" + s.api.app.grpcLis.Addr().String()}, &out, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); len(lines) != 2 || !strings.Contains(lines[1], "finished") || !strings.Contains(lines[1], "Hello {{.first_name}}") {
		t.Errorf("campaign list printed %q", out.String())
	}
}

// TestCampaignHonoursSuppression: a suppressed address in a campaign gets
// SUPPRESSED and no SMTP; the others are delivered.
func TestCampaignHonoursSuppression(t *testing.T) {
	s := startStack(t, testenv.SinkScript{})
	if _, err := s.suppress.AddSuppression(s.ctx(), &postflowv1.AddSuppressionRequest{Address: "gone@example.test", Reason: postflowv1.SuppressionReason_SUPPRESSION_REASON_COMPLAINT}); err != nil {
		t.Fatal(err)
	}
	id, _ := s.createCampaign(t, &postflowv1.CreateCampaignRequest{From: "news@sender.test", Subject: "s", Text: "t"},
		[]*postflowv1.RecipientRow{{Email: "gone@example.test"}, {Email: "here@example.test"}})
	if _, err := s.campaigns.StartCampaign(s.ctx(), &postflowv1.StartCampaignRequest{CampaignId: id}); err != nil {
		t.Fatal(err)
	}
	var c *postflowv1.Campaign
	if !eventually(30*time.Second, func() bool {
		c = s.campaign(t, id)
		return c.GetState() == postflowv1.CampaignState_CAMPAIGN_STATE_FINISHED
	}) {
		t.Fatalf("campaign %v with %v, want finished", c.GetState(), c.GetCounts())
	}
	if n := c.GetCounts(); n.GetSuppressed() != 1 || n.GetDelivered() != 1 {
		t.Errorf("counts %v; want 1 suppressed, 1 delivered", n)
	}
	s.waitQueueEmpty(10 * time.Second)
	if n := s.sink.RcptAttempts("gone@example.test"); n != 0 {
		t.Errorf("RCPT attempts for the suppressed address: %d", n)
	}
}
