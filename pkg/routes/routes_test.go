package routes

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postflow/postflow/pkg/smtpout"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestLookup(t *testing.T) {
	t.Parallel()
	pwFile := filepath.Join(t.TempDir(), "relay.pw")
	if err := os.WriteFile(pwFile, []byte("file-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	doc := `
default:
  smarthost:
    host: Relay.Example.
    username: AKIAEXAMPLE
    password_env: SES_PW
rules:
  - match: [bank.example, .bank.example]
    tls: require
    direct: true
  - match: [.eu.bank.example]
    mta_sts: false
    smarthost: {host: gw.example, port: 465, username: u, password_file: ` + pwFile + `}
  - match: [plain.example]
    direct: true
`
	tab, err := Parse([]byte(doc), env(map[string]string{"SES_PW": "env-secret"}))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		domain string
		rule   string
		tls    smtpout.TLSMode
		mtasts bool
		relay  string
		relayT smtpout.TLSMode
		pw     string
	}{
		{"other.example", "default", smtpout.TLSOpportunistic, true, "relay.example:587", smtpout.TLSRequire, "env-secret"},
		{"bank.example", "rules[0]", smtpout.TLSRequire, true, "", 0, ""},
		{"mail.bank.example", "rules[0]", smtpout.TLSRequire, true, "", 0, ""},
		{"x.eu.bank.example", "rules[1]", smtpout.TLSOpportunistic, false, "gw.example:465", smtpout.TLSImplicit, "file-secret"},
		{"eu.bank.example", "rules[0]", smtpout.TLSRequire, true, "", 0, ""}, // ".eu.bank.example" is subdomains only
		{"plain.example", "rules[2]", smtpout.TLSOpportunistic, true, "", 0, ""},
		{"sub.plain.example", "default", smtpout.TLSOpportunistic, true, "relay.example:587", smtpout.TLSRequire, "env-secret"},
		{"notbank.example", "default", smtpout.TLSOpportunistic, true, "relay.example:587", smtpout.TLSRequire, "env-secret"},
	}
	for _, tc := range tests {
		r := tab.Lookup(tc.domain)
		if r.Rule != tc.rule || r.TLS != tc.tls || r.MTASTS != tc.mtasts {
			t.Errorf("Lookup(%s) = rule %s tls %s mta_sts %v, want %s %s %v", tc.domain, r.Rule, r.TLS, r.MTASTS, tc.rule, tc.tls, tc.mtasts)
		}
		switch {
		case tc.relay == "" && r.Relay != nil:
			t.Errorf("Lookup(%s): relay %s, want direct", tc.domain, r.Relay.Addr())
		case tc.relay != "" && (r.Relay == nil || r.Relay.Addr() != tc.relay || r.Relay.TLS != tc.relayT || r.Relay.Auth == nil || r.Relay.Auth.Password != tc.pw):
			t.Errorf("Lookup(%s): relay %+v, want %s tls %s with the configured password", tc.domain, r.Relay, tc.relay, tc.relayT)
		}
	}
	desc := strings.Join(tab.Describe(), "\n")
	for _, secret := range []string{"env-secret", "file-secret"} {
		if strings.Contains(desc, secret) {
			t.Fatalf("Describe shows a password:\n%s", desc)
		}
	}
	for _, want := range []string{"password from environment variable SES_PW", "password from file " + pwFile, "bank.example (rules[0]): MX, tls=require"} {
		if !strings.Contains(desc, want) {
			t.Errorf("Describe lacks %q:\n%s", want, desc)
		}
	}
}

func TestNoTableIsTheDefault(t *testing.T) {
	t.Parallel()
	var tab *Table
	if r := tab.Lookup("example.com"); r != DefaultRoute() {
		t.Fatalf("nil table: %+v, want %+v", r, DefaultRoute())
	}
	empty, err := Parse(nil, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if r := empty.Lookup("example.com"); r != DefaultRoute() {
		t.Fatalf("empty document: %+v, want %+v", r, DefaultRoute())
	}
}

func TestParseRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, doc string
		want      []string // each must appear in the error
	}{
		{"unknown key", "default: {tls: require, mta-sts: false}", []string{"mta-sts"}},
		{"bad tls", "rules: [{match: [a.example], tls: strict}]", []string{`rules[0]: tls: "strict"`}},
		{"no match", "rules: [{tls: require}]", []string{"rules[0]: match"}},
		{"bad match", "rules: [{match: ['*.example']}]", []string{`"*.example"`}},
		{"duplicate", "rules: [{match: [a.example]}, {match: [A.example.]}]", []string{"rules[1]", "already matched by rules[0]"}},
		{"direct and smarthost", "rules: [{match: [a.example], direct: true, smarthost: {host: h}}]", []string{"exclude each other"}},
		{"inline password", "default: {smarthost: {host: h, username: u, password: p}}", []string{"password"}},
		{"username without password", "default: {smarthost: {host: h, username: u}}", []string{"password_env or password_file"}},
		{"unset env", "default: {smarthost: {host: h, username: u, password_env: NOPE}}", []string{"NOPE is empty or unset"}},
		{"missing file", "default: {smarthost: {host: h, username: u, password_file: /nonexistent/pw}}", []string{"/nonexistent/pw"}},
		{"no host, bad port, bad tls", "default: {smarthost: {port: 70000, tls: ssl}}", []string{"host is required", "port 70000", `"ssl"`}},
		{"match in default", "default: {match: [a.example]}", []string{"default: match"}},
	}
	for _, tc := range tests {
		_, err := Parse([]byte(tc.doc), env(nil))
		if err == nil {
			t.Errorf("%s: Parse succeeded, want an error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.name, err, w)
			}
		}
	}
}

func TestWithLeavesTheOriginal(t *testing.T) {
	t.Parallel()
	tab, err := Parse([]byte("rules: [{match: [a.example], tls: require}]"), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	sim := Route{Rule: "simulator"}
	with := tab.With("sim.example", sim)
	if with.Lookup("sim.example") != sim || with.Lookup("a.example").TLS != smtpout.TLSRequire {
		t.Fatalf("With: sim %+v, a.example %+v", with.Lookup("sim.example"), with.Lookup("a.example"))
	}
	if tab.Lookup("sim.example").Rule != "default" {
		t.Fatalf("With changed the original table: %+v", tab.Lookup("sim.example"))
	}
	if (*Table)(nil).With("sim.example", sim).Lookup("other.example") != DefaultRoute() {
		t.Fatal("With on a nil table lost the defaults")
	}
}
