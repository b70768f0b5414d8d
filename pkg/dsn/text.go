package dsn

import "strings"

// Non-standard text bounces. These MTAs predate RFC 3464 or ignore it and
// describe the failure in prose; the formats below are those of their
// sources (qmail-send.c, Exim's deliver.c, Sendmail's savemail.c) and of
// the providers that copied them. Each reader returns no recipients unless
// it finds its own wording, so an unknown text yields KindUnknown.

// copyDelimiters are the lines, with their dashes and spaces trimmed and
// lower-cased, after which a text bounce appends the returned message.
var copyDelimiters = map[string]bool{
	"below this line is a copy of the message.":                 true, // qmail-send, Yahoo
	"below this line is a copy of the mail header.":             true, // qmail-send, header only
	"below the next line is a copy of the message.":             true, // qmail clones
	"this is a copy of the message, including all the headers.": true, // Exim
	"this is a copy of the message's headers.":                  true, // Exim, header only
	"original message":         true, // Gmail (legacy)
	"original message follows": true, // Sendmail
	"unsent message follows":   true, // Sendmail
}

// splitLines splits s into lines without their LF or CRLF terminators.
func splitLines(s string) []string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSuffix(l, "\r")
	}
	return lines
}

// isCopyDelimiter reports whether line introduces the returned message.
func isCopyDelimiter(line string) bool {
	t := strings.Trim(line, "- \t")
	return len(t) < 80 && copyDelimiters[strings.ToLower(t)]
}

// returnedCopy returns the offset in text of the returned message's header
// that follows a copy delimiter line, or -1 when there is none.
func returnedCopy(text string) int {
	found := false
	for pos := 0; pos < len(text); {
		line, next := nextLine(text, pos)
		switch {
		case found && strings.TrimSpace(line) != "":
			return pos
		case !found && isCopyDelimiter(line):
			found = true
		}
		pos = next
	}
	return -1
}

// reportLines returns the lines of text before its copy delimiter: the part
// that describes the failure.
func reportLines(text string) []string {
	lines := splitLines(text)
	for i, l := range lines {
		if isCopyDelimiter(l) {
			return lines[:i]
		}
	}
	return lines
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// textAction tells a warning from a failure by the text's own words. A
// permanent wording wins: qmail's "I'm not going to try again" follows a
// temporary reason such as "(#4.4.1)" when the message expired.
func textAction(lower string) string {
	permanent := containsAny(lower,
		"permanent error", "permanently", "i've given up", "not going to try again",
		"permanent fatal", "address(es) failed", "could not be delivered", "couldn't be delivered")
	temporary := containsAny(lower,
		"still trying", "not yet been delivered", "delivery attempts will continue", "will be retried",
		"will retry", "has been delayed", "have been delayed", "not going to give up",
		"transient non-fatal", "warning message only", "temporary failure", "temporary error")
	if temporary && !permanent {
		return ActionDelayed
	}
	return ActionFailed
}

// parseTextBounce returns the recipients a text bounce reports, or nil when
// text is in none of the known formats, and the host the bounce names
// itself by, if any.
func parseTextBounce(text string) ([]Recipient, string) {
	lines := reportLines(text)
	action := textAction(strings.ToLower(strings.Join(lines, "\n")))
	for _, read := range []func([]string, string) []Recipient{readQmail, readExim, readSendmail, readRecipientList} {
		if rs := read(lines, action); len(rs) > 0 {
			return rs, selfName(lines)
		}
	}
	return nil, ""
}

// selfName returns the host in "This is the qmail-send program at HOST."
// (qmail-send.c) or "This is the mail system at host HOST." (Postfix's
// bounce templates, copied by other MTAs).
func selfName(lines []string) string {
	for _, l := range lines {
		for _, intro := range []string{"This is the qmail-send program at ", "This is the mail system at host "} {
			if _, rest, ok := strings.Cut(l, intro); ok {
				return strings.TrimSuffix(firstField(rest), ".")
			}
		}
	}
	return ""
}

// maxTranscriptReplies bounds the replies read from a Sendmail transcript.
const maxTranscriptReplies = 100

// textRecipient collects one recipient of a text bounce.
type textRecipient struct {
	addr   string
	diag   []string
	closed bool // a blank line ended its diagnostic
}

// findLine returns the index of the first line containing any of subs
// (compared lower-case), or -1.
func findLine(lines []string, from int, subs ...string) int {
	for i := from; i < len(lines); i++ {
		if containsAny(strings.ToLower(lines[i]), subs...) {
			return i
		}
	}
	return -1
}

// readQmail reads qmail-send's format and its clones:
//
//	Hi. This is the qmail-send program at mx.example.org.
//	I'm afraid I wasn't able to deliver your message to the following addresses.
//	This is a permanent error; I've given up. Sorry it didn't work out.
//
//	<user@example.org>:
//	192.0.2.25 does not like recipient.
//	Remote host said: 550 5.1.1 <user@example.org>... User unknown
//	Giving up on 192.0.2.25.
func readQmail(lines []string, action string) []Recipient {
	start := findLine(lines, 0,
		"this is the qmail-send program",
		"unable to deliver your message to the following address",
		"wasn't able to deliver your message to the following address")
	if start < 0 {
		return nil
	}
	var trs []*textRecipient
	var cur *textRecipient
	for _, l := range lines[start+1:] {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "<") {
			if end := strings.Index(t, ">:"); end > 0 {
				if a := cleanAddr(t[1:end]); a != "" {
					cur = &textRecipient{addr: a}
					trs = append(trs, cur)
					if rest := strings.TrimSpace(t[end+2:]); rest != "" {
						cur.diag = append(cur.diag, rest)
					}
					continue
				}
			}
		}
		switch {
		case cur == nil:
		case t == "":
			// Some clones put a blank line between the address and
			// its reason.
			cur.closed = len(cur.diag) > 0
		case !cur.closed:
			cur.diag = append(cur.diag, t)
		}
	}
	return finishText(trs, action, qmailDiag)
}

// qmailDiag returns the remote's reply and host from qmail's lines: the text
// after "Remote host said:" when there is one, with the further lines of a
// multi-line reply, else the whole (a local error such as "Sorry, no mailbox
// here by that name. (#5.1.1)"); the host from the lines qmail-remote.c
// writes around it.
func qmailDiag(diag []string) (text, host string) {
	inReply := false
	for _, d := range diag {
		if rest, ok := strings.CutPrefix(d, "Remote host said:"); ok && text == "" {
			text = strings.TrimSpace(rest)
			inReply = true
			continue
		}
		if inReply && basicCodeAt(d, 0) != 0 {
			text += " " + d
			continue
		}
		inReply = false
		switch {
		case strings.HasPrefix(d, "Giving up on "):
			host = firstField(strings.TrimPrefix(d, "Giving up on "))
		case strings.HasPrefix(d, "Connected to "):
			host = firstField(strings.TrimPrefix(d, "Connected to "))
		case containsAny(d, " does not like recipient", " failed after I sent the message", " failed on DATA command"):
			host = firstField(d)
		}
	}
	if text == "" {
		text = strings.Join(diag, " ")
	}
	return text, strings.TrimSuffix(host, ".")
}

func firstField(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return ""
}

// indent returns the width of the leading blanks of l, a tab counting 8.
func indent(l string) int {
	n := 0
	for i := 0; i < len(l); i++ {
		switch l[i] {
		case ' ':
			n++
		case '\t':
			n += 8
		default:
			return n
		}
	}
	return n
}

// readExim reads Exim's format (deliver.c), for failures and for delay
// warnings:
//
//	This message was created automatically by mail delivery software.
//
//	A message that you sent could not be delivered to one or more of its
//	recipients. This is a permanent error. The following address(es) failed:
//
//	  user@example.org
//	    host mx.example.org [192.0.2.25]
//	    SMTP error from remote mail server after RCPT TO:<user@example.org>:
//	    550 5.1.1 <user@example.org>: Recipient address rejected: User unknown
//
// Addresses are indented by two spaces, their reasons by four.
func readExim(lines []string, action string) []Recipient {
	start := findLine(lines, 0, "this message was created automatically by mail delivery software")
	if start < 0 {
		return nil
	}
	list := -1
	for i := start + 1; i < len(lines); i++ {
		t := strings.ToLower(strings.TrimSpace(lines[i]))
		if strings.HasSuffix(t, ":") && strings.Contains(t, "address") {
			list = i
			break
		}
	}
	if list < 0 {
		return nil
	}
	var trs []*textRecipient
	var cur *textRecipient
	for _, l := range lines[list+1:] {
		t := strings.TrimSpace(l)
		if t == "" {
			continue
		}
		switch n := indent(l); {
		case n == 0:
			return finishText(trs, action, eximDiag)
		case n < 4:
			// "user@example.org", "user@example.org: reason", or a
			// pipe or file delivery, which has no address.
			tok, rest, _ := strings.Cut(t, " ")
			cur = nil
			if a := cleanAddr(strings.TrimSuffix(tok, ":")); a != "" {
				cur = &textRecipient{addr: a}
				trs = append(trs, cur)
				if rest = strings.TrimSpace(strings.TrimPrefix(rest, ":")); strings.HasSuffix(tok, ":") && rest != "" {
					cur.diag = append(cur.diag, rest)
				}
			}
		case cur != nil:
			cur.diag = append(cur.diag, t)
		}
	}
	return finishText(trs, action, eximDiag)
}

// eximDiag returns the remote's reply, from the first reply code after
// "SMTP error from remote ..." (or "LMTP error after ..."), and the host from
// "host NAME [IP]". Without a remote reply the whole reason is the text
// ("Unrouteable address", "mailbox is full ...").
func eximDiag(diag []string) (text, host string) {
	joined := strings.Join(diag, " ")
	f := strings.Fields(joined)
	for i := 0; i+2 < len(f); i++ {
		if f[i] == "host" && strings.HasPrefix(f[i+2], "[") {
			host = strings.TrimSuffix(f[i+1], ".")
			break
		}
	}
	lower := strings.ToLower(joined)
	for _, phrase := range []string{"smtp error from remote", "lmtp error after"} {
		if i := strings.Index(lower, phrase); i >= 0 {
			if _, at := findBasicCode(joined[i:]); at >= 0 {
				return joined[i+at:], host
			}
		}
	}
	return strings.TrimPrefix(joined, "Delay reason: "), host
}

// readSendmail reads the pre-DSN Sendmail format (savemail.c):
//
//	----- The following addresses had permanent fatal errors -----
//	<user@example.org>
//	    (reason: 550 5.1.1 <user@example.org>... User unknown)
//
//	----- Transcript of session follows -----
//	... while talking to mx.example.org.:
//	>>> RCPT To:<user@example.org>
//	<<< 550 5.1.1 <user@example.org>... User unknown
//
// "transient non-fatal errors" marks a warning.
//
// The heading decides the action, not the rest of the text.
func readSendmail(lines []string, _ string) []Recipient {
	start := findLine(lines, 0, "following addresses had permanent fatal errors", "following addresses had transient non-fatal errors")
	if start < 0 {
		return nil
	}
	action := ActionFailed
	if strings.Contains(strings.ToLower(lines[start]), "transient") {
		action = ActionDelayed
	}
	var trs []*textRecipient
	for _, l := range lines[start+1:] {
		t := strings.TrimSpace(l)
		if t == "" {
			break
		}
		if reason, ok := strings.CutPrefix(t, "(reason:"); ok {
			if len(trs) > 0 {
				trs[len(trs)-1].diag = append(trs[len(trs)-1].diag, strings.TrimSpace(strings.TrimSuffix(reason, ")")))
			}
			continue
		}
		if strings.HasPrefix(t, "(") {
			continue // "(expanded from: <list@example.org>)"
		}
		if a := cleanAddr(firstField(t)); a != "" {
			trs = append(trs, &textRecipient{addr: a})
		}
	}
	var transcript []string
	if i := findLine(lines, start+1, "transcript of session follows"); i >= 0 {
		transcript = lines[i+1:]
	}
	var host string
	for _, l := range transcript {
		if _, rest, ok := strings.Cut(l, "while talking to "); ok {
			host = strings.TrimSuffix(strings.TrimSuffix(firstField(rest), ":"), ".")
			break
		}
	}
	// The replies quoted in the transcript, from their codes on. A real
	// transcript has a few; the bound keeps a hostile one linear.
	var replies []string
	for _, l := range transcript {
		if _, at := findBasicCode(l); at >= 0 {
			replies = append(replies, strings.TrimSpace(l[at:]))
			if len(replies) == maxTranscriptReplies {
				break
			}
		}
	}
	for _, tr := range trs {
		if len(tr.diag) > 0 || len(replies) == 0 {
			continue
		}
		// The reply that names the recipient, else the first one.
		reply := replies[0]
		for _, r := range replies {
			if strings.Contains(strings.ToLower(r), strings.ToLower(tr.addr)) {
				reply = r
				break
			}
		}
		tr.diag = []string{reply}
	}
	return finishText(trs, action, func(diag []string) (string, string) {
		return strings.Join(diag, " "), host
	})
}

// readRecipientList reads the "Delivery to the following recipient(s)
// failed" family: Gmail's legacy text, Exchange and Notes-style notices,
// which list addresses under an introductory line and quote the remote's
// reply further down:
//
//	Delivery to the following recipient failed permanently:
//
//	     user@example.org
//
//	Technical details of permanent failure:
//	...
//	550 5.1.1 <user@example.org>... User unknown
func readRecipientList(lines []string, action string) []Recipient {
	start := -1
	for i, l := range lines {
		ll := strings.ToLower(l)
		if containsAny(ll, "the following recipient", "these recipients") &&
			containsAny(ll, "fail", "delayed", "cannot be reached", "could not be delivered", "couldn't be delivered") {
			start = i
			break
		}
	}
	if start < 0 {
		return nil
	}
	if strings.Contains(strings.ToLower(lines[start]), "delayed") {
		action = ActionDelayed
	}
	var trs []*textRecipient
	end := len(lines)
	for i := start + 1; i < len(lines); i++ {
		t := strings.TrimSpace(lines[i])
		if t == "" {
			if len(trs) > 0 {
				end = i
				break
			}
			continue
		}
		a := cleanAddr(firstField(t))
		if a == "" {
			end = i
			break
		}
		trs = append(trs, &textRecipient{addr: a})
	}
	diag := listDiag(lines[end:])
	for _, tr := range trs {
		if diag != "" {
			tr.diag = []string{diag}
		}
	}
	return finishText(trs, action, func(d []string) (string, string) { return strings.Join(d, " "), "" })
}

// listDiag returns the remote's reply quoted after a recipient list: the
// first line with a reply code, from the code on; else the paragraph after
// "Technical details of ... failure:".
func listDiag(lines []string) string {
	for _, l := range lines {
		if _, at := findBasicCode(l); at >= 0 {
			d := strings.TrimSpace(l[at:])
			// "<mx.example.org #5.1.1 smtp;550 5.1.1 User unknown>"
			if strings.Count(d, ">") > strings.Count(d, "<") {
				d = strings.TrimSpace(strings.TrimSuffix(d, ">"))
			}
			return d
		}
	}
	for i, l := range lines {
		if !strings.Contains(strings.ToLower(l), "technical details of") {
			continue
		}
		_, rest, _ := strings.Cut(l, ":")
		para := []string{}
		if t := strings.TrimSpace(rest); t != "" {
			para = append(para, t)
		}
		for _, m := range lines[i+1:] {
			t := strings.TrimSpace(m)
			if t == "" {
				if len(para) > 0 {
					break
				}
				continue
			}
			para = append(para, t)
		}
		return strings.Join(para, " ")
	}
	return ""
}

// finishText turns collected text recipients into Recipients, deriving the
// reply and host with diagFn.
func finishText(trs []*textRecipient, action string, diagFn func([]string) (text, host string)) []Recipient {
	var rs []Recipient
	for _, tr := range trs {
		if len(rs) == maxRecipients {
			break
		}
		text, host := diagFn(tr.diag)
		r := Recipient{FinalRecipient: tr.addr, Action: action, DiagnosticCode: text, RemoteMTA: host}
		finishRecipient(&r, "")
		rs = append(rs, r)
	}
	return rs
}
