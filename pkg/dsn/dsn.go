// Package dsn parses one received bounce or complaint message into a Report.
//
// It reads:
//   - RFC 3464 delivery status notifications: a multipart/report (RFC 6522)
//     with report-type=delivery-status and a message/delivery-status part,
//     or its internationalized form message/global-delivery-status
//     (RFC 6533 §6.2);
//   - RFC 5965 ARF feedback reports (report-type=feedback-report, a
//     message/feedback-report part), the format of complaint feedback loops;
//   - the common non-standard plain-text bounces that carry no
//     delivery-status part: qmail-send and its clones (Yahoo's "Sorry, we
//     were unable to deliver your message"), Exim, pre-DSN Sendmail, and
//     "Delivery to the following recipient(s) failed" texts.
//
// The returned original message (a message/rfc822, message/global,
// text/rfc822-headers or message/global-headers part, or the copy a text
// bounce appends) is read for its header only.
//
// Contract:
//   - Parse never panics and bounds its work: it reads at most MaxSize
//     bytes (a longer message is parsed as if cut there), descends at most
//     MaxDepth multipart levels, and bounds the parts, bytes and recipients
//     it reads within that.
//   - Parse returns an error only when the input cannot be read or has no
//     header section at all (ErrNotMessage). Anything else that is not a
//     report it understands, an auto-reply or an ordinary message, is
//     KindUnknown with a nil error.
//   - The text heuristics are conservative: a message is read as a text
//     bounce only when it comes from a mail system (MAILER-DAEMON,
//     postmaster, a null Return-Path, a bounce subject) and its body has
//     one of the known MTA wordings, so a person quoting a bounce is not a
//     bounce.
//   - A delivery-status or feedback-report part that cannot be read
//     completely (truncated, badly encoded, over 1 MiB) is ignored rather
//     than trusted half-read; the returned message's header is read as far
//     as it goes.
//   - The package does not correlate: Report.Addresses and
//     Report.OriginalEnvelopeID expose everything that could carry the
//     sender's VERP token, and the caller looks for it.
//
// Parse is safe for concurrent use; the package has no state besides the
// charset decoders that go-message/charset registers at init.
package dsn

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-message"
	// Registers decoders for the legacy charsets (ISO-8859-x, Windows-125x,
	// ISO-2022-JP, ...) that bounce text parts are written in; without them
	// go-message passes such bodies through undecoded.
	_ "github.com/emersion/go-message/charset"
	"github.com/emersion/go-message/textproto"
)

// Kind is what a report says happened.
type Kind int

// Kinds of report.
const (
	// KindUnknown: not a report Parse understands (an auto-reply, spam, an
	// ordinary message, a report whose report part is unreadable).
	KindUnknown Kind = iota
	// KindFailed: at least one recipient failed permanently (Action:
	// failed, RFC 3464 §2.3.3).
	KindFailed
	// KindDelayed: delivery is delayed for at least one recipient and
	// failed for none; a warning, not final (Action: delayed).
	KindDelayed
	// KindDelivered: every recipient was delivered, relayed to a system
	// that does not send DSNs, or expanded (Action: delivered, relayed,
	// expanded).
	KindDelivered
	// KindComplaint: an RFC 5965 feedback report (report-type=
	// feedback-report or a message/feedback-report part), whatever else
	// the message holds.
	KindComplaint
)

// String returns the lower-case name of k: "unknown", "failed", "delayed",
// "delivered" or "complaint".
func (k Kind) String() string {
	switch k {
	case KindUnknown:
		return "unknown"
	case KindFailed:
		return "failed"
	case KindDelayed:
		return "delayed"
	case KindDelivered:
		return "delivered"
	case KindComplaint:
		return "complaint"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Action values of Recipient.Action (RFC 3464 §2.3.3).
const (
	ActionFailed    = "failed"
	ActionDelayed   = "delayed"
	ActionDelivered = "delivered"
	ActionRelayed   = "relayed"
	ActionExpanded  = "expanded"
)

// Recipient is the per-recipient part of a report (RFC 3464 §2.3).
type Recipient struct {
	// FinalRecipient is the address from Final-Recipient without its
	// address-type ("rfc822;", "utf-8;") and angle brackets, as written.
	FinalRecipient string
	// OriginalRecipient is the address from Original-Recipient, likewise.
	OriginalRecipient string
	// Action is lower-case: failed, delayed, delivered, relayed or
	// expanded. When the field is missing it is derived from Status's
	// class; text bounces set failed or delayed.
	Action string
	// Status is the RFC 3463 enhanced status code, e.g. "5.1.1". When the
	// Status field is missing or invalid (always, for text bounces) it is
	// derived from DiagnosticCode: the enhanced code in it, else
	// "class.0.0" from its reply code, else "5.0.0" for failed and "4.0.0"
	// for delayed.
	Status string
	// DiagnosticCode is the remote server's reply: the Diagnostic-Code
	// value after its type ("smtp;"), or the reply quoted by a text bounce,
	// e.g. "550 5.1.1 <x@example.org>: Recipient address rejected: User
	// unknown". Folded lines are joined with one space.
	DiagnosticCode string
	// SMTPCode is the RFC 5321 reply code in DiagnosticCode, 0 if none.
	SMTPCode int
	// RemoteMTA is the host name from Remote-MTA, without "dns;".
	RemoteMTA string
}

// Report is what one received report message says.
type Report struct {
	// Kind is what happened; see the Kind constants for the rules.
	Kind Kind
	// ReportingMTA is the host from Reporting-MTA, without "dns;"; for a
	// text bounce, the host it names itself by ("This is the qmail-send
	// program at HOST.").
	ReportingMTA string
	// OriginalEnvelopeID is the Original-Envelope-Id of a DSN (RFC 3464
	// §2.2.1) or feedback report (RFC 5965 §3.2): the ENVID the sender gave
	// in MAIL FROM (RFC 3461 §4.4), as written.
	OriginalEnvelopeID string
	// Recipients holds the per-recipient fields, in order.
	Recipients []Recipient

	// FeedbackType is the lower-case Feedback-Type of a complaint (RFC 5965
	// §3.1, §7.3): abuse, fraud, virus, other, not-spam, ...
	FeedbackType string
	// UserAgent is the feedback report's User-Agent.
	UserAgent string
	// OriginalMailFrom is the feedback report's Original-Mail-From without
	// angle brackets.
	OriginalMailFrom string
	// OriginalRcptTo holds the feedback report's Original-Rcpt-To values
	// without angle brackets.
	OriginalRcptTo []string
	// SourceIP is the feedback report's Source-IP.
	SourceIP string

	// OriginalMessageID is the Message-ID of the returned original message
	// without angle brackets; when no original is returned, a DSN's
	// X-Original-Message-ID field (written by Gmail) is used.
	OriginalMessageID string
	// OriginalReturnPath is the Return-Path of the returned message, angle
	// brackets removed.
	OriginalReturnPath string
	// OriginalHeaders is the header of the returned message; the zero value
	// when none was returned. Values are unfolded and not decoded.
	OriginalHeaders textproto.Header

	// Addresses lists every distinct address found that could be the
	// original message's envelope sender, strongest evidence first: the
	// feedback report's Original-Mail-From; the DSN's X-Postfix-Sender; the
	// returned message's Return-Path, X-Original-Return-Path and
	// X-Envelope-From; the envelope sender its receivers recorded
	// (Received-SPF envelope-from, Authentication-Results smtp.mailfrom,
	// Received "envelope-from"); and, for bounces (and unrecognised
	// messages from a mail system), the report's own recipient
	// (X-Original-To, Delivered-To, Envelope-To, To), since a bounce is sent
	// to the original reverse-path (RFC 5321 §4.1.1.2, §4.5.5). Addresses
	// are kept as found, without angle brackets.
	Addresses []string
}

// MaxSize is the number of bytes Parse reads; the rest of a longer message
// is ignored. Bounces quote the original message, so a report's own parts
// come first and fit well within it.
const MaxSize = 10 << 20

// MaxDepth is the deepest multipart nesting Parse descends into. Real
// reports nest two or three levels (Exchange puts multipart/alternative
// inside multipart/report).
const MaxDepth = 10

// Bounds on work and output for hostile input.
const (
	// maxParts bounds the MIME parts visited in one message.
	maxParts = 1000
	// maxPartBytes bounds a decoded report or header part.
	maxPartBytes = 1 << 20
	// maxTextBytes bounds the text/plain read in all for text bounces.
	maxTextBytes = 1 << 20
	// maxRecipients bounds Report.Recipients.
	maxRecipients = 1000
	// maxBlocks bounds the field blocks read from one report part.
	maxBlocks = maxRecipients + 1
)

// ErrNotMessage is returned by Parse when the input has no header section.
var ErrNotMessage = errors.New("dsn: input is not an email message")

// Parse reads one whole message (header and body, CRLF or LF line endings)
// and returns its report. See the package documentation for the contract.
//
// The error is ErrNotMessage when the input has no header fields, or wraps
// the reader's error when reading fails. A message that is not a bounce or
// complaint gives a Report with Kind KindUnknown and a nil error.
func Parse(r io.Reader) (*Report, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxSize))
	if err != nil {
		return nil, fmt.Errorf("dsn: read message: %w", err)
	}
	s := string(data)
	hdr, bodyAt := readFields(s, 0)
	if len(hdr) == 0 {
		return nil, ErrNotMessage
	}
	// go-message decodes the body's transfer encoding and charset. Its
	// only errors are an unknown encoding or charset, which come with a
	// usable entity whose body is passed through as is: good enough for a
	// report, whose fields are ASCII.
	e, _ := message.New(message.Header{Header: toHeader(hdr)}, strings.NewReader(s[bodyAt:]))
	p := &parser{header: hdr}
	p.walk(e, 0)
	p.finish()
	return &p.rep, nil
}

// parser holds the state of one Parse call.
type parser struct {
	rep    Report
	header []field // the report message's own header

	parts     int  // MIME parts visited
	complaint bool // report-type=feedback-report or a feedback-report part
	original  bool // the returned message's header was read

	texts     []string // top-level text/plain bodies, for text bounces
	textBytes int

	// Envelope-sender candidates from the report parts, in order found.
	reportSenders []string
	// Envelope-sender candidates from the returned message.
	originalSenders []string
	// Gmail's X-Original-Message-ID, used when no original is returned.
	dsnMessageID string
}

// walk visits entity e at multipart depth depth. Parts inside a returned
// message are never visited: only its header is read.
func (p *parser) walk(e *message.Entity, depth int) {
	p.parts++
	if p.parts > maxParts {
		return
	}
	mt, params := mediaType(e.Header)
	switch mt {
	case "multipart/report":
		// RFC 6522 §3: report-type names the kind of the second part.
		if strings.EqualFold(params["report-type"], "feedback-report") {
			p.complaint = true
		}
		p.walkMultipart(e, depth)
	case "message/delivery-status", "message/global-delivery-status":
		if body, ok := readPart(e.Body, maxPartBytes); ok {
			p.deliveryStatus(body)
		}
	case "message/feedback-report":
		p.complaint = true
		if body, ok := readPart(e.Body, maxPartBytes); ok {
			p.feedbackReport(body)
		}
	case "message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers":
		if !p.original {
			// A header cut short by the size bound is still worth
			// reading, so the read error is not checked.
			body, _ := readPart(e.Body, maxPartBytes)
			p.readOriginal(body)
		}
	case "text/plain":
		if p.textBytes < maxTextBytes {
			body, _ := readPart(e.Body, maxTextBytes-p.textBytes)
			p.textBytes += len(body)
			p.texts = append(p.texts, body)
		}
	default:
		if strings.HasPrefix(mt, "multipart/") {
			p.walkMultipart(e, depth)
		}
	}
}

func (p *parser) walkMultipart(e *message.Entity, depth int) {
	if depth >= MaxDepth {
		return
	}
	mr := e.MultipartReader()
	if mr == nil {
		return
	}
	for p.parts <= maxParts {
		// The error is io.EOF at the end, or says the multipart is
		// malformed or truncated: either way keep what was read so far.
		// A part with an unknown charset or encoding comes with an error
		// too, and is still read.
		part, _ := mr.NextPart()
		if part == nil {
			return
		}
		p.walk(part, depth+1)
	}
}

// mediaType returns the lower-case media type of h and its parameters. A
// missing Content-Type is text/plain (RFC 2045 §5.2); an unparsable one
// keeps the type before any ";", without parameters.
func mediaType(h message.Header) (string, map[string]string) {
	t, params, err := h.ContentType()
	if err != nil {
		t, _, _ = strings.Cut(h.Get("Content-Type"), ";")
	}
	return strings.ToLower(strings.TrimSpace(t)), params
}

// readPart reads at most limit bytes of r. ok is false when r fails before
// its end or holds more than limit bytes.
func readPart(r io.Reader, limit int) (string, bool) {
	b, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if len(b) > limit {
		return string(b[:limit]), false
	}
	return string(b), err == nil
}

// deliveryStatus reads a message/delivery-status body (RFC 3464 §2.1): a
// per-message block, then one block per recipient. Blocks whose blank
// separator line is missing are still split on a repeated per-recipient
// field.
func (p *parser) deliveryStatus(body string) {
	for _, block := range fieldBlocks(body) {
		var cur Recipient
		var status string
		have := map[string]bool{}
		flush := func() {
			if len(have) > 0 && len(p.rep.Recipients) < maxRecipients {
				finishRecipient(&cur, status)
				p.rep.Recipients = append(p.rep.Recipients, cur)
			}
			cur, status, have = Recipient{}, "", map[string]bool{}
		}
		for _, f := range block {
			key := strings.ToLower(f.key)
			switch key {
			case "final-recipient", "original-recipient", "action", "status", "diagnostic-code", "remote-mta":
				if have[key] {
					flush()
				}
				have[key] = true
			}
			switch key {
			case "reporting-mta":
				if p.rep.ReportingMTA == "" {
					p.rep.ReportingMTA = hostName(f.value)
				}
			case "original-envelope-id":
				if p.rep.OriginalEnvelopeID == "" {
					p.rep.OriginalEnvelopeID = strings.TrimSpace(f.value)
				}
			case "x-postfix-sender":
				// Postfix names the original envelope sender here.
				p.reportSenders = append(p.reportSenders, typedValue(f.value))
			case "x-original-message-id":
				if p.dsnMessageID == "" {
					p.dsnMessageID = messageID(f.value)
				}
			case "final-recipient":
				cur.FinalRecipient = unbracket(typedValue(f.value))
			case "original-recipient":
				cur.OriginalRecipient = unbracket(typedValue(f.value))
			case "action":
				cur.Action = f.value
			case "status":
				status = f.value
			case "diagnostic-code":
				cur.DiagnosticCode = typedValue(f.value)
			case "remote-mta":
				cur.RemoteMTA = hostName(f.value)
			}
		}
		flush()
	}
}

// feedbackReport reads a message/feedback-report body (RFC 5965 §3.1).
func (p *parser) feedbackReport(body string) {
	var fs []field
	for _, b := range fieldBlocks(body) {
		fs = append(fs, b...)
	}
	p.rep.FeedbackType = strings.ToLower(strings.TrimSpace(get(fs, "Feedback-Type")))
	p.rep.UserAgent = strings.TrimSpace(get(fs, "User-Agent"))
	p.rep.OriginalMailFrom = unbracket(get(fs, "Original-Mail-From"))
	for _, v := range values(fs, "Original-Rcpt-To") {
		if a := unbracket(v); a != "" {
			p.rep.OriginalRcptTo = append(p.rep.OriginalRcptTo, a)
		}
	}
	p.rep.SourceIP = strings.Trim(strings.TrimSpace(get(fs, "Source-IP")), "[]")
	if v := get(fs, "Original-Envelope-Id"); v != "" && p.rep.OriginalEnvelopeID == "" {
		p.rep.OriginalEnvelopeID = strings.TrimSpace(v)
	}
	if v := get(fs, "Reporting-MTA"); v != "" && p.rep.ReportingMTA == "" {
		p.rep.ReportingMTA = hostName(v)
	}
}

// readOriginal reads the header of the returned message from the start of
// s. It returns false when s starts with no header field.
func (p *parser) readOriginal(s string) bool {
	fs, _ := readFields(s, 0)
	if len(fs) == 0 {
		return false
	}
	p.original = true
	p.rep.OriginalHeaders = toHeader(fs)
	p.rep.OriginalMessageID = messageID(get(fs, "Message-Id"))
	p.rep.OriginalReturnPath = unbracket(get(fs, "Return-Path"))
	p.originalSenders = append(p.originalSenders, p.rep.OriginalReturnPath)
	p.originalSenders = append(p.originalSenders, values(fs, "X-Original-Return-Path")...)
	p.originalSenders = append(p.originalSenders, values(fs, "X-Envelope-From")...)
	for _, v := range values(fs, "Received-SPF") {
		// RFC 7208 §9.1 key-value-pair "envelope-from=".
		p.originalSenders = append(p.originalSenders, afterKey(v, "envelope-from="))
	}
	for _, v := range values(fs, "Authentication-Results") {
		// RFC 8601 §2.7.2 property "smtp.mailfrom=".
		p.originalSenders = append(p.originalSenders, afterKey(v, "smtp.mailfrom="))
	}
	for _, v := range values(fs, "Received") {
		// Exim and Sendmail record "(envelope-from <addr>)".
		p.originalSenders = append(p.originalSenders, afterKey(v, "envelope-from "), afterKey(v, "envelope-from="))
	}
	return true
}

// afterKey returns the token following key (case-insensitive) in v, or "".
func afterKey(v, key string) string {
	i := strings.Index(strings.ToLower(v), key)
	if i < 0 {
		return ""
	}
	rest := strings.TrimLeft(v[i+len(key):], " ")
	if f := strings.FieldsFunc(rest, func(r rune) bool { return r == ' ' || r == '\t' || r == ';' || r == ')' }); len(f) > 0 {
		return f[0]
	}
	return ""
}

// finish decides the Kind, falls back to text bounces, and collects
// Addresses.
func (p *parser) finish() {
	rep := &p.rep
	if !p.complaint && len(rep.Recipients) == 0 && p.fromMailSystem() {
		for _, t := range p.texts {
			if rs, mta := parseTextBounce(t); len(rs) > 0 {
				rep.Recipients = rs
				if rep.ReportingMTA == "" {
					rep.ReportingMTA = mta
				}
				break
			}
		}
	}
	if !p.original && p.fromMailSystem() {
		for _, t := range p.texts {
			if copyAt := returnedCopy(t); copyAt >= 0 && p.readOriginal(t[copyAt:]) {
				break
			}
		}
	}
	if rep.OriginalMessageID == "" {
		rep.OriginalMessageID = p.dsnMessageID
	}
	if p.complaint {
		rep.Kind = KindComplaint
	} else {
		rep.Kind = kindOf(rep.Recipients)
	}

	seen := map[string]bool{}
	add := func(vs ...string) {
		for _, v := range vs {
			if a := cleanAddr(v); a != "" && !seen[a] {
				seen[a] = true
				rep.Addresses = append(rep.Addresses, a)
			}
		}
	}
	add(rep.OriginalMailFrom)
	add(p.reportSenders...)
	add(p.originalSenders...)
	// A bounce goes to the original reverse-path. A feedback report goes to
	// the feedback-loop address instead, and an ordinary message to anyone,
	// so their recipients are no candidates; an unrecognised message from a
	// mail system is likely a bounce in an unknown format.
	if rep.Kind == KindFailed || rep.Kind == KindDelayed || rep.Kind == KindDelivered ||
		rep.Kind == KindUnknown && p.fromMailSystem() {
		for _, k := range []string{"X-Original-To", "Delivered-To", "Envelope-To", "X-Envelope-To", "To"} {
			for _, v := range values(p.header, k) {
				add(headerAddrs(v)...)
			}
		}
	}
}

// kindOf applies the RFC 3464 §2.3.3 action rules: failed if any recipient
// failed; delayed if any was delayed (a warning the caller acts on, also
// when others were delivered); delivered if all the rest were delivered,
// relayed or expanded. Unknown actions are ignored; none known is
// KindUnknown.
func kindOf(rs []Recipient) Kind {
	var failed, delayed, delivered bool
	for _, r := range rs {
		switch r.Action {
		case ActionFailed:
			failed = true
		case ActionDelayed:
			delayed = true
		case ActionDelivered, ActionRelayed, ActionExpanded:
			delivered = true
		}
	}
	switch {
	case failed:
		return KindFailed
	case delayed:
		return KindDelayed
	case delivered:
		return KindDelivered
	}
	return KindUnknown
}

// fromMailSystem reports whether the report message looks generated by a
// mail system rather than written by a person: the gate for reading text
// bounces.
func (p *parser) fromMailSystem() bool {
	from := strings.ToLower(get(p.header, "From"))
	for _, s := range []string{"mailer-daemon", "mailer_daemon", "maildaemon", "mail-daemon", "postmaster", "mail delivery"} {
		if strings.Contains(from, s) {
			return true
		}
	}
	// RFC 5321 §4.5.5: notifications are sent with a null reverse-path.
	if strings.TrimSpace(get(p.header, "Return-Path")) == "<>" {
		return true
	}
	if get(p.header, "X-Failed-Recipients") != "" {
		return true
	}
	// A bounce subject counts only on the notification itself: "Fwd:
	// failure notice" is a person passing one on.
	subject := strings.ToLower(strings.TrimSpace(get(p.header, "Subject")))
	for _, prefix := range []string{"re:", "fw:", "fwd:", "aw:", "wg:", "tr:"} {
		if strings.HasPrefix(subject, prefix) {
			return false
		}
	}
	for _, s := range []string{
		"failure notice", "undeliver", "delivery status notification", "mail delivery failed",
		"returned mail", "delivery failure", "warning: message", "delayed mail", "delivery delayed",
		"non-delivery", "nondeliver", "mail system error",
	} {
		if strings.Contains(subject, s) {
			return true
		}
	}
	return false
}
