package bounceclass

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/postflow/postflow/pkg/deliveryerr"
)

func TestClassifyEdgeCases(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		code     int
		enhanced string
		text     string
		outcome  Outcome
		category Category
	}{
		{"2xx delivered", 250, "2.0.0", "OK", Delivered, CategoryDelivered},
		{"2xx wins over a failure enhanced code", 250, "5.1.1", "user unknown", Delivered, CategoryDelivered},
		{"enhanced 2.x.x without basic code", 0, "2.0.0", "", Delivered, CategoryDelivered},
		{"empty text uses the enhanced code", 550, "5.1.1", "", Bounced, CategoryBadMailbox},
		{"no enhanced code, text decides", 550, "", "No such user here", Bounced, CategoryBadMailbox},
		{"no enhanced code, no text, 5xx", 554, "", "", Bounced, CategoryOther},
		{"no enhanced code, no text, 4xx", 450, "", "", Deferred, CategoryOther},
		{"unknown 4xx", 451, "4.9.9", "something odd happened", Deferred, CategoryOther},
		{"unknown 5xx", 554, "5.9.9", "something odd happened", Bounced, CategoryOther},
		{"enhanced class 4 wins over 5xx basic code", 550, "4.2.2", "mailbox full", Deferred, CategoryMailboxFull},
		{"enhanced class 5 wins over 4xx basic code", 421, "5.7.1", "go away", Bounced, CategoryPolicy},
		{"malformed enhanced code falls back to basic class", 450, "4.2", "", Deferred, CategoryOther},
		{"qmail enhanced code in text", 553, "", "sorry, something (#5.1.1)", Bounced, CategoryBadMailbox},
		{"no code at all is temporary", 0, "", "", Deferred, CategoryOther},
		{"3xx is not a failure outcome", 354, "", "go ahead", Deferred, CategoryOther},
		{"552 too many recipients is 452 (RFC 5321 4.5.3.1.10)", 552, "5.5.3", "Too many recipients", Deferred, CategoryThrottled},
		{"4.4.7 is final", 451, "4.4.7", "message expired after 72h", Bounced, CategoryExpired},
		{"null MX by enhanced code", 556, "5.1.10", "", Bounced, CategoryBadDomain},
		{"Microsoft 5.1.10 is an unknown recipient", 550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", Bounced, CategoryBadMailbox},
		{"gmail 4.7.28 throttles", 421, "4.7.28", "", Deferred, CategoryThrottled},
		{"gmail 5.7.28 blocks", 550, "5.7.28", "", Bounced, CategorySpam},
		{"multi-line continuation prefixes are ignored", 550, "5.7.1", "Our system has detected that this message is 550-5.7.1 likely unsolicited mail.", Bounced, CategorySpam},
		{"case-insensitive", 550, "", "USER UNKNOWN", Bounced, CategoryBadMailbox},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := Classify(tc.code, tc.enhanced, tc.text)
			if got.Outcome != tc.outcome || got.Category != tc.category {
				t.Errorf("Classify(%d, %q, %q) = %s/%s (rule %s), want %s/%s",
					tc.code, tc.enhanced, tc.text, got.Outcome, got.Category, got.Rule, tc.outcome, tc.category)
			}
			if got.Rule == "" {
				t.Errorf("Classify(%d, %q, %q).Rule is empty", tc.code, tc.enhanced, tc.text)
			}
		})
	}
}

// TestClassifyAgreesWithDeliveryerr checks that, without an outcome override,
// the outcome matches deliveryerr's Temporary for the same reply.
func TestClassifyAgreesWithDeliveryerr(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		code     int
		enhanced string
	}{{550, ""}, {450, ""}, {550, "4.0.0"}, {421, "5.0.0"}, {554, "5.9.9"}, {451, "4.9.9"}} {
		de := &deliveryerr.Error{Code: c.code, Enhanced: c.enhanced}
		got := Classify(c.code, c.enhanced, "")
		if (got.Outcome == Deferred) != de.Temporary() {
			t.Errorf("Classify(%d, %q, \"\") = %s, but deliveryerr Temporary() = %v", c.code, c.enhanced, got.Outcome, de.Temporary())
		}
	}
}

func TestClassifyError(t *testing.T) {
	t.Parallel()
	userUnknown := &deliveryerr.Error{Code: 550, Enhanced: "5.1.1", Message: "user unknown", Remote: true}
	tests := []struct {
		name     string
		err      error
		outcome  Outcome
		category Category
	}{
		{"nil", nil, Deferred, CategoryOther},
		{"remote reply", userUnknown, Bounced, CategoryBadMailbox},
		{"wrapped reply", fmt.Errorf("worker: deliver: %w", userUnknown), Bounced, CategoryBadMailbox},
		{"joined reply", errors.Join(errors.New("other"), userUnknown), Bounced, CategoryBadMailbox},
		{"plain network error", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, Deferred, CategoryNetwork},
		{"wrapped network error", fmt.Errorf("smtpout: %w", os.ErrDeadlineExceeded), Deferred, CategoryNetwork},
		{"local connection failure", deliveryerr.Temporary(451, "4.4.1", "connection failed", errors.New("dial tcp: i/o timeout")), Deferred, CategoryNetwork},
		{"local dropped connection", deliveryerr.Temporary(451, "4.4.2", "connection dropped during RCPT", nil), Deferred, CategoryNetwork},
		{"local DNS failure", deliveryerr.Temporary(451, "4.4.3", "DNS lookup of the recipient domain failed", nil), Deferred, CategoryDNS},
		{"local NXDOMAIN", deliveryerr.Permanent(550, "5.1.2", "domain does not exist", nil), Bounced, CategoryBadDomain},
		{"local null MX", deliveryerr.Permanent(556, "5.1.10", "recipient domain does not accept mail (null MX)", nil), Bounced, CategoryBadDomain},
		{"local no addresses", deliveryerr.Permanent(550, "5.4.4", "no MX or address records for domain", nil), Bounced, CategoryDNS},
		{"local TLS failure", deliveryerr.Temporary(451, "4.7.5", "TLS handshake failed", nil), Deferred, CategoryTLS},
		{"local size", deliveryerr.Permanent(552, "5.3.4", "message size exceeds fixed maximum message size", nil), Bounced, CategoryMessageTooLarge},
		{"local SMTPUTF8", deliveryerr.Permanent(550, "5.6.7", "recipient server does not support SMTPUTF8", nil), Bounced, CategoryProtocol},
		{"deliveryerr fallback", fmt.Errorf("x: %w", &deliveryerr.Error{Code: 451, Enhanced: "4.4.0", Message: "delivery attempt failed"}), Deferred, CategoryNetwork},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := ClassifyError(tc.err)
			if got.Outcome != tc.outcome || got.Category != tc.category {
				t.Errorf("ClassifyError(%v) = %s/%s (rule %s), want %s/%s", tc.err, got.Outcome, got.Category, got.Rule, tc.outcome, tc.category)
			}
		})
	}
}

func TestParseRulesErrors(t *testing.T) {
	t.Parallel()
	const ok = "a | 5 | * | * | other\n"
	tests := []struct {
		name, data, want string
	}{
		{"too few fields", "# c\nx | 5 | * | other\n", "line 2: want 5 or 6 fields"},
		{"bad id", "X! | 5 | * | * | other\n", "line 1: bad rule id"},
		{"bad code", ok + "b | 6 | * | * | other\n", "line 2: rule b: bad code"},
		{"bad enhanced", ok + "b | * | 5.x.1 | * | other\n", "line 2: rule b: bad enhanced code"},
		{"bad class", ok + "b | * | 3.1.1 | * | other\n", "line 2: rule b: bad enhanced code"},
		{"bad range", ok + "b | * | 5.7.9-1 | * | other\n", "line 2: rule b: bad enhanced code"},
		{"bad regexp", ok + "b | * | * | re:( | other\n", "line 2: rule b: error parsing regexp"},
		{"unknown category", ok + "b | 5 | * | * | nope\n", "line 2: rule b: unknown category"},
		{"bad outcome", ok + "b | 5 | * | * | other | later\n", "line 2: rule b: bad outcome"},
		{"duplicate id", ok + "\na | 4 | * | * | other\n", "line 3: rule id \"a\" already used on line 1"},
		{"matches everything", "b | * | * | * | other\n", "line 1: rule b: matches every reply"},
		{"empty", "# nothing\n", "no rules"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseRules(tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseRules(%q) error = %v, want it to contain %q", tc.data, err, tc.want)
			}
		})
	}
}

func TestEmbeddedRulesParse(t *testing.T) {
	t.Parallel()
	rs, err := parseRules(rulesData)
	if err != nil {
		t.Fatalf("parseRules(rules.txt) = %v", err)
	}
	if len(rs) != len(compiled) {
		t.Errorf("parseRules(rules.txt) has %d rules, init compiled %d", len(rs), len(compiled))
	}
}

func TestOutcomeString(t *testing.T) {
	t.Parallel()
	for o, want := range map[Outcome]string{Deferred: "deferred", Delivered: "delivered", Bounced: "bounced", Outcome(9): "Outcome(9)"} {
		if got := o.String(); got != want {
			t.Errorf("Outcome(%d).String() = %q, want %q", int(o), got, want)
		}
	}
}

func BenchmarkClassify(b *testing.B) {
	for b.Loop() {
		Classify(421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes")
	}
}
