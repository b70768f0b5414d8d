// Package bounceclass classifies SMTP replies: it maps a reply code, an
// RFC 3463 enhanced status code and the reply text to an Outcome (delivered,
// deferred, bounced) and a Category that says why, for retry decisions,
// suppression lists and metrics.
//
// The classification is driven by rules.txt, a priority-ordered data file
// embedded in the binary and compiled once at init; the first matching rule
// wins. The package does no I/O and is safe for concurrent use. It does not
// parse DSN messages; callers extract the reply (or the DSN's Status and
// Diagnostic-Code) first.
//
// # Reply class
//
// The outcome derives from the reply class unless the matching rule
// overrides it:
//   - a 2xx basic code is always Delivered: the server took responsibility
//     for the message (RFC 5321 §4.2.1, §6.1), whatever else the reply says;
//   - otherwise, when the enhanced code's class is 2, 4 or 5 it wins over the
//     basic code's class (RFC 3463 §2 makes the enhanced code the more
//     specific signal). This is the same rule as deliveryerr.Error.Temporary,
//     so the worker's retry decision and this classification agree;
//   - 4 is Deferred, 5 is Bounced; anything else (no code, 3xx) is Deferred,
//     because an unknown failure is temporary (STYLE rule 5).
//
// A reply no rule recognises keeps its class with CategoryOther.
package bounceclass

import (
	"errors"
	"strconv"

	"github.com/postflow/postflow/pkg/deliveryerr"
)

// Category says why a reply has its outcome. Values are stable strings, safe
// as low-cardinality metric labels and for storage.
type Category string

// Categories.
const (
	// CategoryDelivered: the server accepted the message (2xx).
	CategoryDelivered Category = "delivered"
	// CategoryBadMailbox: the recipient mailbox does not exist (X.1.1,
	// Microsoft RecipientNotFound, "user unknown"). Suppress the address.
	CategoryBadMailbox Category = "bad_mailbox"
	// CategoryBadDomain: the recipient domain does not exist or refuses all
	// mail (X.1.2, NXDOMAIN, RFC 7505 null MX X.1.10).
	CategoryBadDomain Category = "bad_domain"
	// CategoryMailboxFull: the recipient is over quota (X.2.2).
	CategoryMailboxFull Category = "mailbox_full"
	// CategoryMessageTooLarge: the message exceeds a size limit (X.3.4, X.2.3).
	CategoryMessageTooLarge Category = "message_too_large"
	// CategoryPolicy: refused by policy rather than for content or reputation:
	// relay denied, sender not authorised, SPF/DKIM/DMARC or PTR failures,
	// authentication required (X.7.1 generic, X.7.20-27, Microsoft 5.7.515).
	CategoryPolicy Category = "policy"
	// CategorySpam: refused for content or sender reputation: spam verdicts,
	// DNS blocklists, banned IPs (Gmail "likely unsolicited mail", Spamhaus,
	// Microsoft 5.7.606-649, Yahoo "permanently deferred").
	CategorySpam Category = "spam"
	// CategoryThrottled: the receiver limits our rate or volume (Gmail
	// 4.7.28, Yahoo TSS04, Microsoft 4.7.650, too many connections or
	// recipients). Slow down, then retry.
	CategoryThrottled Category = "throttled"
	// CategoryGreylisted: a greylisting deferral; retry after a few minutes.
	CategoryGreylisted Category = "greylisted"
	// CategoryTLS: STARTTLS required or failed, certificate problems (X.7.10,
	// X.7.5).
	CategoryTLS Category = "tls"
	// CategoryDNS: DNS failures while routing (X.4.3, X.4.4).
	CategoryDNS Category = "dns"
	// CategoryNetwork: connection failed, dropped or timed out (X.4.1,
	// X.4.2), and errors that are not *deliveryerr.Error.
	CategoryNetwork Category = "network"
	// CategoryMailboxDisabled: the mailbox exists but is disabled, inactive
	// or suspended (X.2.1, Yahoo "This mailbox is disabled (554.30)").
	CategoryMailboxDisabled Category = "mailbox_disabled"
	// CategoryExpired: delivery time expired (X.4.7); the reporting system
	// has given up.
	CategoryExpired Category = "expired"
	// CategoryProtocol: SMTP syntax or sequence errors and malformed
	// messages (X.5.x, X.6.x, 500-504).
	CategoryProtocol Category = "protocol"
	// CategoryOther: the reply was not recognised.
	CategoryOther Category = "other"
)

// Categories lists every category in documentation order.
var Categories = []Category{
	CategoryDelivered, CategoryBadMailbox, CategoryBadDomain, CategoryMailboxFull,
	CategoryMessageTooLarge, CategoryPolicy, CategorySpam, CategoryThrottled,
	CategoryGreylisted, CategoryTLS, CategoryDNS, CategoryNetwork,
	CategoryMailboxDisabled, CategoryExpired, CategoryProtocol, CategoryOther,
}

// Outcome is what the sender should do with the recipient.
type Outcome int

// Outcomes.
const (
	// Deferred: retry later. It is the zero value so that a forgotten
	// classification retries rather than drops mail.
	Deferred Outcome = iota
	// Delivered: the receiver accepted the message.
	Delivered
	// Bounced: never retry this message to this recipient.
	Bounced
)

// String returns "deferred", "delivered" or "bounced".
func (o Outcome) String() string {
	switch o {
	case Deferred:
		return "deferred"
	case Delivered:
		return "delivered"
	case Bounced:
		return "bounced"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// Result is a classification.
type Result struct {
	Outcome  Outcome
	Category Category
	// Rule identifies what decided the result, for logs: the id of the
	// rules.txt rule, or "builtin:<name>" for decisions made in code.
	Rule string
}

// Built-in rule names reported in Result.Rule.
const (
	rule2xx      = "builtin:2xx"
	ruleDefault  = "builtin:default"
	ruleNil      = "builtin:nil"
	ruleNotReply = "builtin:not-delivery-error"
)

// Classify classifies one SMTP reply. code is the basic reply code (0 when
// unknown, for example a DSN without one); enhanced is the dotted RFC 3463
// code or ""; text is the reply text without the codes, multi-line replies
// joined with spaces. When enhanced is empty, a qmail-style "(#5.1.1)" in the
// text is used in its place.
func Classify(code int, enhanced, text string) Result {
	in := newInput(code, enhanced, text)
	if code/100 == 2 || (code == 0 && in.class == 2) {
		return Result{Outcome: Delivered, Category: CategoryDelivered, Rule: rule2xx}
	}
	for i := range compiled {
		r := &compiled[i]
		if !r.match(&in) {
			continue
		}
		out := outcomeOf(in.class)
		if r.outcome != nil {
			out = *r.outcome
		}
		return Result{Outcome: out, Category: r.category, Rule: r.id}
	}
	return Result{Outcome: outcomeOf(in.class), Category: CategoryOther, Rule: ruleDefault}
}

// ClassifyError classifies a delivery error. It finds the *deliveryerr.Error
// in err's chain with errors.As and classifies its code, enhanced code and
// message, whether the reply was remote or synthesised locally. Any other
// error (a network failure, a timeout, a bug) is Deferred with
// CategoryNetwork: unknown errors are temporary (STYLE rule 5), and max age
// bounds the retries. ClassifyError(nil) returns Deferred with CategoryOther
// and must not be relied upon: callers classify failures, not successes.
func ClassifyError(err error) Result {
	if err == nil {
		return Result{Outcome: Deferred, Category: CategoryOther, Rule: ruleNil}
	}
	var de *deliveryerr.Error
	if errors.As(err, &de) {
		return Classify(de.Code, de.Enhanced, de.Message)
	}
	return Result{Outcome: Deferred, Category: CategoryNetwork, Rule: ruleNotReply}
}

func outcomeOf(class int) Outcome {
	switch class {
	case 2:
		return Delivered
	case 5:
		return Bounced
	}
	return Deferred
}
