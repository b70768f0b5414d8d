package bounce

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/bounceclass"
	"github.com/postflow/postflow/pkg/dsn"
	"github.com/postflow/postflow/pkg/eventlog"
	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/telemetry"
	"github.com/postflow/postflow/pkg/unsubscribe"
	"github.com/postflow/postflow/pkg/verp"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// FeedbackLocalPart is the one local part besides return paths that the
// listener accepts: register fbl@<bounce domain> with mailbox providers'
// feedback loops, whose reports go to a fixed address. Their reports are
// correlated through the return path found in the returned message.
const FeedbackLocalPart = "fbl"

// serveReports runs the SMTP listener until ctx ends.
func serveReports(ctx context.Context, cfg Config, deps Deps) error {
	lis := deps.Listener
	if lis == nil {
		var err error
		if lis, err = net.Listen("tcp", cfg.SMTPAddr); err != nil {
			return fmt.Errorf("bounce: listen: %w", err)
		}
	}
	in := &intake{
		unsub:        deps.UnsubscribeSigner,
		unsubscriber: deps.Unsubscriber,
		verp:         deps.VERP,
		reader:       eventlog.NewReader(deps.JS),
		events:       eventlog.NewWriter(queue.NewPublisher(deps.JS)),
		log:          deps.Logger,
		now:          deps.Now,
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &session{in: in, remote: c.Conn().RemoteAddr().String()}, nil
	}))
	srv.Domain = cfg.Hostname
	srv.MaxMessageBytes = cfg.MaxReportBytes
	srv.MaxRecipients = 50
	srv.ReadTimeout = 5 * time.Minute // RFC 5321 §4.5.3.2.7: server timeout
	srv.WriteTimeout = time.Minute
	srv.EnableSMTPUTF8 = true // RFC 6533 reports about SMTPUTF8 mail
	srv.ErrorLog = smtpLog{deps.Logger}

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	deps.Logger.Info("bounce: receiving reports", slog.String("addr", lis.Addr().String()), slog.String("domain", deps.VERP.Domain()))
	select {
	case err := <-errc:
		return fmt.Errorf("bounce: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	_ = srv.Shutdown(sctx)
	_ = srv.Close()
	return nil
}

// intake turns received reports into events.
type intake struct {
	// unsub and unsubscriber, when set, take unsubscribes by mail.
	unsub        *unsubscribe.Signer
	unsubscriber *Unsubscriber
	verp         *verp.Signer
	reader       *eventlog.Reader
	events       *eventlog.Writer
	log          *slog.Logger
	now          func() time.Time
}

// session is one SMTP session. It accepts any sender (reports come from
// the null sender, RFC 3464 §2) and only recipients on the bounce domain
// that are valid return paths or the feedback address: nothing is relayed,
// and forged return paths are refused at RCPT.
type session struct {
	in     *intake
	remote string
	rcpts  []string // local parts accepted
}

var (
	errRelay  = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "relay access denied"}
	errNoUser = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such recipient"}
	errStore  = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "cannot record the report now; try again later"}
)

func (s *session) Mail(string, *smtp.MailOptions) error { return nil }

// Rcpt takes addr as go-smtp parsed it: source routes dropped (RFC 5321
// §4.1.1.3 lets a server ignore them) and quoted local parts unquoted, so
// the domain is what follows the last '@'.
func (s *session) Rcpt(addr string, _ *smtp.RcptOptions) error {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || !strings.EqualFold(addr[at+1:], s.in.verp.Domain()) {
		s.in.log.Info("bounce: refused relay", slog.String("remote", s.remote), slog.String("rcpt", addr))
		return errRelay
	}
	local := strings.ToLower(addr[:at])
	if strings.HasPrefix(local, unsubscribe.MailtoPrefix) && s.in.unsub != nil {
		if _, _, err := s.in.unsub.ParseMailto(local[len(unsubscribe.MailtoPrefix):]); err != nil {
			return errNoUser
		}
	} else if local != FeedbackLocalPart {
		if _, _, err := s.in.verp.ParseLocal(local); err != nil {
			s.in.log.Info("bounce: refused recipient", slog.String("remote", s.remote), slog.String("rcpt", addr), slog.Any("error", err))
			return errNoUser
		}
	}
	s.rcpts = append(s.rcpts, local)
	return nil
}

func (s *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err // go-smtp answers 552 for an over-size message
	}
	// Bounded: a report not stored in time is refused with 451 and comes
	// again, rather than holding the session until the sender gives up.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.in.receive(ctx, s.rcpts, raw); err != nil {
		s.in.log.Warn("bounce: recording report", slog.String("remote", s.remote), slog.Any("error", err))
		return errStore
	}
	return nil
}

func (s *session) Reset()        { s.rcpts = nil }
func (s *session) Logout() error { return nil }

// receive parses one report delivered to the local parts rcpts and records
// an event per recipient it concerns. A report that is not about one of
// our messages is dropped with a log line (answering an error would send
// a bounce of a bounce).
func (in *intake) receive(ctx context.Context, rcpts []string, raw []byte) error {
	// Mail to an unsubscribe address unsubscribes, whatever it says (RFC
	// 2369 §3.2); the rest are reports.
	var reports []string
	for _, local := range rcpts {
		if !strings.HasPrefix(local, unsubscribe.MailtoPrefix) {
			reports = append(reports, local)
			continue
		}
		if err := in.mailto(ctx, local); err != nil {
			return err
		}
	}
	if len(reports) == 0 {
		return nil
	}
	rcpts = reports
	rep, err := dsn.Parse(bytes.NewReader(raw))
	if err != nil {
		in.log.Info("bounce: unreadable report dropped", slog.Any("error", err))
		return nil
	}
	// The report's own identity: a copy the sender retries, or sends
	// again, maps to the same event ids.
	sum := sha256.Sum256(raw)
	key := hex.EncodeToString(sum[:16])

	var evs []*postflowv1.Event
	for _, local := range rcpts {
		msgID, index, ok := in.correlate(local, rep)
		kind := rep.Kind.String()
		if !ok {
			kind = "uncorrelated"
		}
		telemetry.Report(ctx, kind)
		if !ok {
			in.log.Info("bounce: report names none of our messages", slog.String("kind", rep.Kind.String()), slog.String("rcpt", local))
			continue
		}
		ev, err := in.event(ctx, msgID, index, rep, key)
		if err != nil {
			return err
		}
		if ev != nil {
			evs = append(evs, ev)
		}
	}
	if len(evs) == 0 {
		return nil
	}
	if err := in.events.Write(ctx, evs...); err != nil {
		return err
	}
	for _, ev := range evs {
		in.log.Info("bounce: report recorded",
			slog.String("message_id", ev.GetMessageId()),
			slog.String("recipient_id", ev.GetRecipientId()),
			slog.String("type", ev.GetType().String()),
			slog.String("state", ev.GetState().String()),
			slog.String("category", ev.GetCategory()))
	}
	return nil
}

// correlate finds the message and recipient a report is about: from the
// return path it was delivered to, else (the feedback address) from the
// addresses in the report and its returned message.
func (in *intake) correlate(local string, rep *dsn.Report) (msgID string, index int, ok bool) {
	if local != FeedbackLocalPart {
		msgID, index, err := in.verp.ParseLocal(local)
		return msgID, index, err == nil
	}
	return in.verp.Find(rep.Addresses...)
}

// event builds the event for one correlated recipient, nil when the report
// calls for none (a delay warning, a success notice, something else).
func (in *intake) event(ctx context.Context, msgID string, index int, rep *dsn.Report, key string) (*postflowv1.Event, error) {
	first, err := in.recipient(ctx, "report", msgID, index)
	if first == nil || err != nil {
		return nil, err
	}
	_, attempt, err := in.reader.Progress(ctx, first.GetTenant(), msgID, index)
	if err != nil {
		return nil, err
	}
	ev := &postflowv1.Event{
		Tenant:       first.GetTenant(),
		MessageId:    msgID,
		RecipientId:  first.GetRecipientId(),
		Recipient:    first.GetRecipient(),
		Time:         timestamppb.New(in.now()),
		Attempt:      attempt,
		Tags:         first.GetTags(),
		CampaignId:   first.GetCampaignId(),
		ReportingMta: rep.ReportingMTA,
	}
	switch rep.Kind {
	case dsn.KindComplaint:
		ev.Type = postflowv1.EventType_EVENT_TYPE_COMPLAINT
		ev.Category = "complaint"
		ev.FeedbackType = rep.FeedbackType
		ev.Reply = &postflowv1.SMTPReply{Text: "complaint (" + rep.FeedbackType + ") reported by " + firstNonEmpty(rep.UserAgent, rep.ReportingMTA, "unknown"), Remote: true}
	case dsn.KindFailed:
		r := failedRecipient(rep, first.GetRecipient())
		ev.Type = postflowv1.EventType_EVENT_TYPE_DSN
		ev.State = postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED
		code := r.SMTPCode
		if code == 0 {
			code = 550 // RFC 3464 reports need not carry an SMTP code
		}
		ev.Reply = &postflowv1.SMTPReply{Code: int32(code), EnhancedCode: r.Status, Text: firstNonEmpty(r.DiagnosticCode, "delivery failed"), Remote: true}
		ev.MxHost = r.RemoteMTA
		ev.Category = string(bounceclass.Classify(code, r.Status, r.DiagnosticCode).Category)
	default:
		in.log.Info("bounce: report needs no event", slog.String("kind", rep.Kind.String()), slog.String("message_id", msgID))
		return nil, nil
	}
	ev.EventId = eventlog.ReportEventID(ev.GetRecipientId(), ev.GetType(), key)
	return ev, nil
}

// recipient returns the first event of the recipient a return path or
// token names, nil (logged) when the message is no longer retained: what
// (a report, an unsubscribe) then changes nothing.
func (in *intake) recipient(ctx context.Context, what, msgID string, index int) (*postflowv1.Event, error) {
	first, err := in.reader.Recipient(ctx, msgID, index)
	if errors.Is(err, eventlog.ErrNotFound) {
		in.log.Info("bounce: "+what+" for a message no longer retained", slog.String("message_id", msgID))
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s look-up: %w", what, err)
	}
	return first, nil
}

// failedRecipient picks the report's failed recipient that is addr, or
// else its first failed one: with VERP the report concerns one recipient,
// whatever address the remote rewrote it to.
func failedRecipient(rep *dsn.Report, addr string) dsn.Recipient {
	var first *dsn.Recipient
	for i := range rep.Recipients {
		r := &rep.Recipients[i]
		if r.Action != "failed" {
			continue
		}
		if strings.EqualFold(r.FinalRecipient, addr) || strings.EqualFold(r.OriginalRecipient, addr) {
			return *r
		}
		if first == nil {
			first = r
		}
	}
	if first == nil {
		return dsn.Recipient{Status: "5.0.0"}
	}
	return *first
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// smtpLog sends go-smtp's own log lines (failed sessions) to slog.
type smtpLog struct{ log *slog.Logger }

func (l smtpLog) Printf(format string, v ...any) {
	l.log.Debug("bounce smtp: " + fmt.Sprintf(format, v...))
}
func (l smtpLog) Println(v ...any) { l.log.Debug("bounce smtp: " + fmt.Sprintln(v...)) }
