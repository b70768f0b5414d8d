package shaping

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	tests := []struct {
		in      string
		want    Rate
		wantErr string
	}{
		{in: "100/s", want: Rate{N: 100, Per: time.Second}},
		{in: "20/m", want: Rate{N: 20, Per: time.Minute}},
		{in: " 5000/h ", want: Rate{N: 5000, Per: time.Hour}},
		{in: "1/d", want: Rate{N: 1, Per: 24 * time.Hour}},
		{in: "unlimited", want: Rate{}},
		{in: "", wantErr: `rate ""`},
		{in: "100", wantErr: `rate "100": want N/s`},
		{in: "0/s", wantErr: `"0" is not a whole number`},
		{in: "-5/s", wantErr: `"-5" is not a whole number`},
		{in: "1.5/s", wantErr: `"1.5" is not a whole number`},
		{in: "10/sec", wantErr: `unit "sec" is not s, m, h or d`},
		{in: "1/2s", wantErr: `unit "2s"`},
		{in: "100/S", wantErr: `unit "S"`},
		{in: "Unlimited", wantErr: `rate "Unlimited"`},
	}
	for _, tc := range tests {
		got, err := ParseRate(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "shaping: ") {
				t.Errorf("ParseRate(%q) = %+v, %v; want an error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseRate(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestDescribeRateRoundTrips(t *testing.T) {
	for _, s := range []string{"100/s", "20/m", "5000/h", "3/d", "unlimited"} {
		r, err := ParseRate(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := describeRate(r); got != s {
			t.Errorf("describeRate(ParseRate(%q)) = %q", s, got)
		}
	}
	if got := describeRate(Rate{N: 10, Per: 2 * time.Second}); got != "10/2s" {
		t.Errorf("describeRate(10 per 2s) = %q, want 10/2s", got)
	}
}

// issueExample is the shape from issue 5.
const issueExample = `
defaults: {rate: "100/s", connections: 10, messages_per_connection: 100, recipients_per_transaction: 50}
destinations:
  - name: google
    mx_suffixes: [".google.com", ".googlemail.com"]
    rate: "50/s"
    connections: 5
  - name: example
    domains: ["example.test"]
    rate: "20/s"
    connections: 3
`

func mustParse(t *testing.T, doc string) *Config {
	t.Helper()
	c, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse:\n%s\nerror: %v", doc, err)
	}
	return c
}

func ruleNamed(t *testing.T, c *Config, name string) Rule {
	t.Helper()
	for _, r := range c.Rules() {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no rule %q", name)
	return Rule{}
}

func TestParseIssueExample(t *testing.T) {
	c := mustParse(t, issueExample)
	rules := c.Rules()
	if rules[0].Name != "google" || rules[0].Builtin || rules[1].Name != "example" {
		t.Fatalf("rules start %s, %s; want the file's google, example first", rules[0].Name, rules[1].Name)
	}
	var googles int
	for _, r := range rules {
		if r.Name == "google" {
			googles++
		}
	}
	if googles != 1 {
		t.Fatalf("%d rules named google, want 1: the file's replaces the builtin one", googles)
	}
	want := Limits{Rate: Rate{N: 20, Per: time.Second}, Connections: 3, MessagesPerConnection: 100, RecipientsPerTransaction: 50}
	if got := ruleNamed(t, c, "example").Limits; got != want {
		t.Fatalf("example limits = %+v, want %+v (unset keys from defaults)", got, want)
	}
	// The file's google replaces the builtin one whole: its own rate, and
	// messages_per_connection from the defaults, not from providers.yaml.
	want = Limits{Rate: Rate{N: 50, Per: time.Second}, Connections: 5, MessagesPerConnection: 100, RecipientsPerTransaction: 50}
	if got := c.Match("gmail.com", []string{"gmail-smtp-in.l.google.com"}); got.Name != "google" || got.Limits != want {
		t.Fatalf("Match(gmail.com) = %+v, want google with %+v", got, want)
	}
	if got := c.Match("example.test", nil); got.Name != "example" {
		t.Fatalf("Match(example.test) = %s, want example", got.Name)
	}
	if got := c.Match("yahoo.com", []string{"mta5.am0.yahoodns.net"}); got.Name != "yahoo" {
		t.Fatalf("Match(yahoo.com) = %s, want the builtin yahoo", got.Name)
	}
}

func TestParseReportsEveryProblemAtOnce(t *testing.T) {
	doc := `
defaults:
  rate: "fast"
  connections: -1
destinations:
  - name: Google
    mx_suffixes: ["google.com"]
  - name: dup
    domains: ["a.example"]
  - name: dup
    domains: ["a.example", ".b.example", "not a domain", "c.example", "C.example."]
  - name: nomatch
    burst: -2
  - domains: ["d.example"]
  - name: wide
    mx_suffixes: [".com", ".x.example", ".x.example"]
  - name: other
    mx_suffixes: [".X.example"]
  - name: looks.like.a.domain
    domains: ["e.example"]
  - name: ok
    domains: ["f.example"]
    rate: "3/w"
`
	_, err := Parse([]byte(doc))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	wants := []string{
		`defaults: rate "fast": want N/s`,
		`defaults: connections: -1 is negative`,
		`destinations[0] (Google): name "Google": use lower-case`,
		`destinations[0] (Google): mx_suffixes: "google.com" must start with a dot`,
		`destinations[2] (dup): name "dup" is already used by destinations[1] (dup)`,
		`destinations[2] (dup): domain a.example is already matched by destinations[1] (dup)`,
		`destinations[2] (dup): domains: ".b.example" starts with a dot`,
		`destinations[2] (dup): domains: "not a domain" is not a domain name`,
		`destinations[2] (dup): domains: c.example is listed twice`,
		`destinations[3] (nomatch): needs domains or mx_suffixes`,
		`destinations[3] (nomatch): burst: -2 is negative`,
		`destinations[4]: name is required`,
		`destinations[5] (wide): mx_suffixes: ".com" would match every MX host under a top-level domain`,
		`destinations[5] (wide): mx_suffixes: .x.example is listed twice`,
		`destinations[6] (other): mx suffix .x.example is already matched by destinations[5] (wide)`,
		`destinations[7] (looks.like.a.domain): name "looks.like.a.domain" looks like a domain`,
		`destinations[8] (ok): rate "3/w": unit "w"`,
	}
	msg := err.Error()
	for _, w := range wants {
		if !strings.Contains(msg, w) {
			t.Errorf("error lacks %q", w)
		}
	}
	if t.Failed() {
		t.Logf("error:\n%s", msg)
	}
}

func TestParseUnknownKeys(t *testing.T) {
	doc := `
builtn: false
defaults:
  rates: "10/s"
destinations:
  - name: a
    domains: [a.example]
    conections: 3
  - name: B
    domains: [b.example]
`
	_, err := Parse([]byte(doc))
	if err == nil {
		t.Fatal("Parse with misspelt keys succeeded")
	}
	for _, w := range []string{
		"line 2: field builtn is not a top-level key",
		"line 4: field rates is not a defaults key",
		"line 8: field conections is not a destination key",
		`destinations[1] (B): name "B"`, // validation runs too
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}

func TestParseSyntaxError(t *testing.T) {
	if _, err := Parse([]byte("destinations: [")); err == nil {
		t.Fatal("Parse of broken YAML succeeded")
	}
	if _, err := Parse([]byte("destinations:\n  - name: a\n    connections: ten\n    domains: [a.example]\n")); err == nil || !strings.Contains(err.Error(), "ten") {
		t.Fatalf("Parse with connections: ten = %v, want an error naming the value", err)
	}
}

func TestParseMergesOverBuiltin(t *testing.T) {
	t.Run("empty document is Builtin", func(t *testing.T) {
		c := mustParse(t, "")
		if got, want := c.Describe(), Builtin().Describe(); !slices.Equal(got, want) {
			t.Fatalf("Parse(\"\").Describe() = %q, want Builtin's %q", got, want)
		}
	})
	t.Run("defaults merge key by key", func(t *testing.T) {
		c := mustParse(t, "defaults: {rate: 7/s, burst: 4}\n")
		want := Builtin().Defaults()
		want.Rate, want.Burst = Rate{N: 7, Per: time.Second}, 4
		if got := c.Defaults(); got != want {
			t.Fatalf("Defaults() = %+v, want %+v", got, want)
		}
		// A builtin destination takes the keys it leaves unset from the
		// merged defaults.
		if got := ruleNamed(t, c, "orange").Limits; got.Burst != 4 || got.MessagesPerConnection != want.MessagesPerConnection {
			t.Fatalf("orange limits = %+v, want burst 4 from the file's defaults", got)
		}
		if got := ruleNamed(t, c, "google").Limits.Rate; got != (Rate{N: 20, Per: time.Second}) {
			t.Fatalf("google rate = %+v, want its own 20/s", got)
		}
	})
	t.Run("builtin false", func(t *testing.T) {
		c := mustParse(t, "builtin: false\ndestinations:\n  - name: a\n    domains: [a.example]\n")
		if rules := c.Rules(); len(rules) != 1 || rules[0].Name != "a" {
			t.Fatalf("rules = %+v, want only a", rules)
		}
		if got := c.Match("gmail.com", []string{"gmail-smtp-in.l.google.com"}); got.Name != "gmail.com" || got.Limits != Builtin().Defaults() {
			t.Fatalf("Match(gmail.com) without builtin = %+v, want its own destination with the builtin defaults", got)
		}
	})
	t.Run("a user suffix shadows a builtin one", func(t *testing.T) {
		c := mustParse(t, "destinations:\n  - name: mygoogle\n    mx_suffixes: [.google.com]\n    connections: 2\n")
		if got := c.Match("gmail.com", []string{"gmail-smtp-in.l.google.com"}); got.Name != "mygoogle" {
			t.Fatalf("Match = %s, want mygoogle", got.Name)
		}
		if got := c.Match("x.example", []string{"aspmx2.googlemail.com"}); got.Name != "google" {
			t.Fatalf("Match(googlemail MX) = %s, want the builtin google for the suffix the file did not take", got.Name)
		}
		var line string
		for _, l := range c.Describe() {
			if strings.HasPrefix(l, "google (builtin)") {
				line = l
			}
		}
		if !strings.Contains(line, "taken by an earlier rule: mx suffix .google.com (by mygoogle)") {
			t.Fatalf("Describe's google line = %q, want it to name the shadowed suffix", line)
		}
	})
}

func TestMatch(t *testing.T) {
	c := mustParse(t, `
builtin: false
defaults: {rate: 100/s, connections: 10}
destinations:
  - name: bank
    domains: [bank.example, Other.Example.]
    rate: 1/s
  - name: hoster
    mx_suffixes: [.hoster.example]
  - name: hoster-eu
    mx_suffixes: [.eu.hoster.example]
  - name: bank-mx
    mx_suffixes: [.mx.bank.example]
  - name: alpha
    mx_suffixes: [.aaaa.example]
  - name: beta
    mx_suffixes: [.bbbb.example]
`)
	tests := []struct {
		name   string
		domain string
		mx     []string
		want   string
	}{
		{"exact domain", "bank.example", nil, "bank"},
		{"domain case and trailing dot", "BANK.Example.", nil, "bank"},
		{"rule written with case and dot", "other.example", nil, "bank"},
		{"domain beats suffix", "bank.example", []string{"a.hoster.example"}, "bank"},
		{"subdomain is not the domain", "sub.bank.example", nil, "sub.bank.example"},
		{"mx suffix", "shop.example", []string{"mx1.hoster.example"}, "hoster"},
		{"mx case and trailing dot", "shop.example", []string{"MX1.Hoster.Example."}, "hoster"},
		{"suffix needs a label boundary", "shop.example", []string{"myhoster.example"}, "shop.example"},
		{"the suffix's own name does not match", "shop.example", []string{"hoster.example"}, "shop.example"},
		{"longest suffix on one host", "shop.example", []string{"mx.eu.hoster.example"}, "hoster-eu"},
		{"longest suffix across hosts", "shop.example", []string{"mx.hoster.example", "mx.eu.hoster.example"}, "hoster-eu"},
		{"longest suffix, other order", "shop.example", []string{"mx.eu.hoster.example", "mx.hoster.example"}, "hoster-eu"},
		{"equal length: the earlier rule", "shop.example", []string{"mx.bbbb.example", "mx.aaaa.example"}, "alpha"},
		{"first MX without a rule is skipped", "shop.example", []string{"backup.example", "mx.hoster.example"}, "hoster"},
		{"unmatched", "Shop.Example.", []string{"mx.elsewhere.example"}, "shop.example"},
		{"unmatched, no MX", "shop.example", nil, "shop.example"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := c.Match(tc.domain, tc.mx)
			if got.Name != tc.want {
				t.Fatalf("Match(%q, %q) = %s, want %s", tc.domain, tc.mx, got.Name, tc.want)
			}
			if got.Name == strings.ToLower(strings.TrimSuffix(tc.domain, ".")) && got.Limits != c.Defaults() {
				t.Fatalf("unmatched %q has limits %+v, want the defaults %+v", tc.domain, got.Limits, c.Defaults())
			}
		})
	}
	if got := c.Match("bank.example", nil).Limits.Rate; got != (Rate{N: 1, Per: time.Second}) {
		t.Fatalf("bank rate = %+v, want 1/s", got)
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	c := Builtin()
	mx := []string{"alt1.gmail-smtp-in.l.google.com", "alt2.gmail-smtp-in.l.google.com"}
	if n := testing.AllocsPerRun(100, func() { c.Match("gmail.com", mx) }); n != 0 {
		t.Fatalf("Match allocated %v times per call, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { c.Match("small.example", []string{"mail.small.example"}) }); n != 0 {
		t.Fatalf("unmatched Match allocated %v times per call, want 0", n)
	}
}

func TestZeroConfig(t *testing.T) {
	var c Config
	if got := c.Match("a.example", []string{"mx.a.example"}); got != (Destination{Name: "a.example"}) {
		t.Fatalf("zero Config Match = %+v, want a.example with no limits", got)
	}
}

func TestExplain(t *testing.T) {
	c := mustParse(t, issueExample)
	tests := []struct {
		domain string
		mx     []string
		want   []string
	}{
		{"Example.Test", nil, []string{"example.test: destination example (file): the domain is listed in its domains", "rate 20/s", "connections 3"}},
		{"corp.example", []string{"aspmx.l.google.com", "aspmx2.googlemail.com"}, []string{
			"destination google (file): MX host aspmx2.googlemail.com ends with .googlemail.com",
			"the longest of the matching suffixes (also .google.com)", "rate 50/s"}},
		{"yahoo.com", []string{"mta5.am0.yahoodns.net"}, []string{"destination yahoo (builtin): MX host mta5.am0.yahoodns.net ends with .yahoodns.net"}},
		{"small.example", []string{"mx.small.example"}, []string{"no rule lists the domain or a suffix of its MX hosts mx.small.example", "destination small.example of its own, with the defaults", "rate 100/s"}},
		{"small.example", nil, []string{"no MX hosts were given"}},
	}
	for _, tc := range tests {
		got := c.Explain(tc.domain, tc.mx)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("Explain(%q, %q) = %q, want it to contain %q", tc.domain, tc.mx, got, w)
			}
		}
	}
}

func TestDescribe(t *testing.T) {
	c := mustParse(t, issueExample)
	lines := c.Describe()
	want := []string{
		"defaults: rate 100/s, burst 1, connections 10, messages/connection 100, recipients/transaction 50",
		"adaptive: a throttling reply multiplies the rate by 0.5 (not below 0.05, at most once per 10s); after 1m0s it recovers by 0.1 every 1m0s",
		"google (file): mx_suffixes .google.com, .googlemail.com; rate 50/s, burst 1, connections 5, messages/connection 100, recipients/transaction 50",
		"example (file): domains example.test; rate 20/s, burst 1, connections 3, messages/connection 100, recipients/transaction 50",
	}
	if len(lines) != 2+len(c.Rules()) {
		t.Fatalf("Describe has %d lines, want the defaults, the adaptive line and one per rule (%d)", len(lines), len(c.Rules()))
	}
	for i, w := range want {
		if lines[i] != w {
			t.Errorf("Describe()[%d] = %q, want %q", i, lines[i], w)
		}
	}
	if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, "qq (builtin): mx_suffixes .qq.com;") }) {
		t.Errorf("Describe lacks the builtin qq line:\n%s", strings.Join(lines, "\n"))
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "shaping.yaml")
	if err := os.WriteFile(good, []byte(issueExample), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(good)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got := c.Match("example.test", nil).Name; got != "example" {
		t.Fatalf("Match(example.test) = %s, want example", got)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("destinations:\n  - name: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || !strings.HasPrefix(err.Error(), bad+": destinations[0] (x): needs domains") {
		t.Fatalf("Load(bad) = %v, want an error naming the file and destinations[0]", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load(missing) = %v, want fs.ErrNotExist", err)
	}
}

func TestRulesReturnsACopy(t *testing.T) {
	c := Builtin()
	r := c.Rules()
	r[0].MXSuffixes[0] = ".evil.example"
	r[0].Name = "evil"
	if got := c.Rules()[0]; got.Name == "evil" || got.MXSuffixes[0] == ".evil.example" {
		t.Fatalf("changing Rules()' result changed the Config: %+v", got)
	}
}

func BenchmarkConfigMatch(b *testing.B) {
	c := Builtin()
	b.Run("mx-suffix", func(b *testing.B) {
		mx := []string{"gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com", "alt2.gmail-smtp-in.l.google.com"}
		for b.Loop() {
			c.Match("gmail.com", mx)
		}
	})
	b.Run("unmatched", func(b *testing.B) {
		mx := []string{"mx1.small-business.example", "mx2.small-business.example"}
		for b.Loop() {
			c.Match("small-business.example", mx)
		}
	})
}

func TestAdaptiveBlock(t *testing.T) {
	c, err := Parse([]byte("adaptive: {cut: 0.25, hold: 2s, step_every: 500ms}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultAdaptive()
	want.Cut, want.Hold, want.StepEvery = 0.25, 2*time.Second, 500*time.Millisecond
	if c.Adaptive() != want {
		t.Fatalf("Adaptive() = %+v, want %+v", c.Adaptive(), want)
	}
	if Builtin().Adaptive() != DefaultAdaptive() {
		t.Fatalf("Builtin().Adaptive() = %+v, want the defaults", Builtin().Adaptive())
	}
	_, err = Parse([]byte("adaptive: {cut: 1.5, hold: soon, step_every: 0s, speed: 2}\n"))
	for _, w := range []string{"cut 1.5", `hold "soon"`, "step_every must be positive", "speed"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v lacks %q", err, w)
		}
	}
}

func TestTenantRates(t *testing.T) {
	c, err := Parse([]byte("tenants:\n  default: {rate: \"500/s\"}\n  bulk: {rate: \"100/m\", burst: 5}\n"))
	if err != nil {
		t.Fatal(err)
	}
	d, ok := c.Tenant("bulk")
	if !ok || d.Name != "tenant:bulk" || d.Limits.Rate != (Rate{N: 100, Per: time.Minute}) || d.Limits.Burst != 5 {
		t.Fatalf("Tenant(bulk) = %+v, %v", d, ok)
	}
	if _, ok := c.Tenant("other"); ok {
		t.Fatal("a tenant without a rate has one")
	}
	if got := strings.Join(c.Describe(), "\n"); !strings.Contains(got, "tenant bulk: overall rate 100/m, burst 5") || !strings.Contains(got, "tenant default: overall rate 500/s, burst 1") {
		t.Fatalf("Describe lacks the tenants:\n%s", got)
	}
	_, err = Parse([]byte("tenants:\n  Bad: {rate: \"1/s\"}\n  norate: {burst: 2}\n  badrate: {rate: fast}\n"))
	for _, w := range []string{"tenants.Bad", "tenants.norate: rate is required", "tenants.badrate"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v lacks %q", err, w)
		}
	}
}

func TestWithExact(t *testing.T) {
	base := Builtin()
	c := base.WithExact("Sim.Example.", Rule{Name: "simulator"})
	if d := c.Match("sim.example", []string{"mx.google.com"}); d.Name != "simulator" || !d.Limits.Rate.Unlimited() || d.Limits.Connections != 0 {
		t.Fatalf("Match(sim.example) = %+v, want the unlimited simulator rule", d)
	}
	if d := base.Match("sim.example", []string{"mx.google.com"}); d.Name != "google" {
		t.Fatalf("the original changed: Match(sim.example) = %+v", d)
	}
	if d := c.Match("gmail.com", []string{"gmail-smtp-in.l.google.com"}); d.Name != "google" {
		t.Fatalf("other rules lost: %+v", d)
	}
}
