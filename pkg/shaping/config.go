package shaping

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config maps recipient domains and MX hosts to destinations. It is
// immutable once built, so one *Config may be shared by every goroutine.
// Build it with Parse, Load or Builtin; the zero Config matches nothing and
// gives every domain zero (unlimited) limits.
type Config struct {
	defaults Limits
	adaptive Adaptive
	tenants  map[string]Destination
	rules    []Rule
	exact    map[string]int // domain → index in rules
	suffix   map[string]int // ".example.net" → index in rules
	// shadowed[i] lists rules[i]'s matchers taken by an earlier rule (a
	// user rule over a builtin one), for Describe and Explain.
	shadowed map[int][]string
}

// Rule is one destination of a Config: what it matches and its limits,
// after inheritance from the defaults.
type Rule struct {
	Name string
	// Domains are matched exactly (lower case, no trailing dot).
	Domains []string
	// MXSuffixes match any MX host ending with them; each starts with a
	// dot.
	MXSuffixes []string
	Limits     Limits
	// Builtin marks a rule shipped in providers.yaml.
	Builtin bool
}

// Destination is the rule's destination.
func (r Rule) Destination() Destination { return Destination{Name: r.Name, Limits: r.Limits} }

// Adaptive returns how throttling replies change rates: DefaultAdaptive
// with the document's adaptive keys over it.
func (c *Config) Adaptive() Adaptive {
	if c.adaptive == (Adaptive{}) {
		return DefaultAdaptive()
	}
	return c.adaptive
}

// adaptiveSpec is the adaptive block: every key optional.
type adaptiveSpec struct {
	Cut       *float64 `yaml:"cut"`
	Floor     *float64 `yaml:"floor"`
	Debounce  *string  `yaml:"debounce"`
	Hold      *string  `yaml:"hold"`
	Step      *float64 `yaml:"step"`
	StepEvery *string  `yaml:"step_every"`
}

// adaptive applies the spec over DefaultAdaptive.
func (s *adaptiveSpec) adaptive() (Adaptive, []error) {
	a := DefaultAdaptive()
	if s == nil {
		return a, nil
	}
	var errs []error
	fraction := func(key string, v *float64, dst *float64, lo float64) {
		if v == nil {
			return
		}
		if *v <= lo || *v > 1 {
			errs = append(errs, fmt.Errorf("adaptive: %s %v out of range (%v, 1]", key, *v, lo))
			return
		}
		*dst = *v
	}
	duration := func(key string, v *string, dst *time.Duration) {
		if v == nil {
			return
		}
		d, err := time.ParseDuration(*v)
		if err != nil || d < 0 {
			errs = append(errs, fmt.Errorf("adaptive: %s %q is not a duration such as 30s", key, *v))
			return
		}
		*dst = d
	}
	fraction("cut", s.Cut, &a.Cut, 0)
	fraction("floor", s.Floor, &a.Floor, 0)
	fraction("step", s.Step, &a.Step, 0)
	duration("debounce", s.Debounce, &a.Debounce)
	duration("hold", s.Hold, &a.Hold)
	duration("step_every", s.StepEvery, &a.StepEvery)
	if a.StepEvery == 0 {
		errs = append(errs, errors.New("adaptive: step_every must be positive"))
	}
	return a, errs
}

// tenantSpec is one tenant's overall limit.
type tenantSpec struct {
	Rate  *string `yaml:"rate"`
	Burst *int    `yaml:"burst"`
}

// TenantPrefix starts the destination name under which a tenant's overall
// rate is kept; no rule name can start with it.
const TenantPrefix = "tenant:"

// Tenant returns the destination that carries tenant's overall send rate,
// across all its recipient domains, and whether the tenant has one.
func (c *Config) Tenant(tenant string) (Destination, bool) {
	d, ok := c.tenants[tenant]
	return d, ok
}

// tenantLimits validates the tenants block.
func tenantLimits(specs map[string]tenantSpec) (map[string]Destination, []error) {
	var errs []error
	out := map[string]Destination{}
	for name, t := range specs {
		where := "tenants." + name
		if err := checkRuleName(name); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		if t.Rate == nil {
			errs = append(errs, fmt.Errorf("%s: rate is required", where))
			continue
		}
		r, err := parseRate(*t.Rate)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		lim := Limits{Rate: r, Burst: 1}
		if t.Burst != nil {
			if *t.Burst < 0 {
				errs = append(errs, fmt.Errorf("%s: burst %d is negative", where, *t.Burst))
				continue
			}
			lim.Burst = max(*t.Burst, 1)
		}
		out[name] = Destination{Name: TenantPrefix + name, Limits: lim}
	}
	return out, errs
}

// Defaults returns the limits of a domain no rule matches.
func (c *Config) Defaults() Limits { return c.defaults }

// Rules returns the rules in the order they are tried on a tie: the user
// file's first, then the builtin ones it did not replace.
func (c *Config) Rules() []Rule {
	out := make([]Rule, len(c.rules))
	for i, r := range c.rules {
		r.Domains = slices.Clone(r.Domains)
		r.MXSuffixes = slices.Clone(r.MXSuffixes)
		out[i] = r
	}
	return out
}

// WithExact returns a copy of c in which domain (matched exactly) is the
// destination rule r, ahead of every other rule; c is unchanged. postflow
// uses it to leave its own mailbox simulator unshaped.
func (c *Config) WithExact(domain string, r Rule) *Config {
	cp := *c
	cp.rules = append(slices.Clone(c.rules), r)
	cp.exact = maps.Clone(c.exact)
	if cp.exact == nil {
		cp.exact = map[string]int{}
	}
	r.Domains = []string{normHost(domain)}
	cp.rules[len(cp.rules)-1] = r
	cp.exact[normHost(domain)] = len(cp.rules) - 1
	return &cp
}

// Match returns the destination of a recipient domain whose MX hosts (or
// whichever hosts the mail goes to) are mxHosts. Names are compared case
// insensitively and without a trailing dot.
//
//   - A rule listing the domain wins.
//   - Otherwise a rule with an MX suffix that one of mxHosts ends with; when
//     several match, the longest suffix wins, and between suffixes of one
//     length the rule listed first (the user's file before the builtin
//     rules), so the order of mxHosts never matters.
//   - Otherwise the domain is a destination of its own, named after it,
//     with the defaults.
//
// Match runs once per delivery attempt: it makes one map lookup for the
// domain and one per dot of each MX host, and allocates only for names
// that are not already lower case.
func (c *Config) Match(domain string, mxHosts []string) Destination {
	domain = normHost(domain)
	if i, ok := c.exact[domain]; ok {
		return c.rules[i].Destination()
	}
	if i, _, _ := c.matchSuffix(mxHosts); i >= 0 {
		return c.rules[i].Destination()
	}
	return Destination{Name: domain, Limits: c.defaults}
}

// matchSuffix returns the index of the best suffix rule for hosts, the host
// and the suffix, or -1.
func (c *Config) matchSuffix(hosts []string) (best int, host, suffix string) {
	best = -1
	if len(c.suffix) == 0 {
		return best, "", ""
	}
	for _, h := range hosts {
		h = normHost(h)
		// Walk the suffixes from the longest: the first hit is this
		// host's best.
		for i := 0; i < len(h); i++ {
			if h[i] != '.' {
				continue
			}
			j, ok := c.suffix[h[i:]]
			if !ok {
				continue
			}
			s := h[i:]
			if best < 0 || len(s) > len(suffix) || len(s) == len(suffix) && j < best {
				best, host, suffix = j, h, s
			}
			break
		}
	}
	return best, host, suffix
}

// normHost lower-cases name and drops a trailing dot, without allocating
// when there is nothing to change.
func normHost(name string) string {
	name = strings.TrimSuffix(name, ".")
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' || c >= 0x80 {
			return strings.ToLower(name)
		}
	}
	return name
}

// Explain says which rule Match picks for domain and mxHosts, and why, for
// `postflow shaping check FILE --domain D --mx A,B`.
func (c *Config) Explain(domain string, mxHosts []string) string {
	d := normHost(domain)
	dest := c.Match(domain, mxHosts)
	if i, ok := c.exact[d]; ok {
		return fmt.Sprintf("%s: destination %s (%s): the domain is listed in its domains; %s",
			d, dest.Name, c.origin(i), describeLimits(dest.Limits))
	}
	if i, host, suffix := c.matchSuffix(mxHosts); i >= 0 {
		s := fmt.Sprintf("%s: destination %s (%s): MX host %s ends with %s", d, dest.Name, c.origin(i), host, suffix)
		if others := c.otherSuffixes(mxHosts, suffix); len(others) > 0 {
			s += fmt.Sprintf(", the longest of the matching suffixes (also %s)", strings.Join(others, ", "))
		}
		return s + "; " + describeLimits(dest.Limits)
	}
	why := "no rule lists the domain, and no MX hosts were given"
	if len(mxHosts) > 0 {
		why = "no rule lists the domain or a suffix of its MX hosts " + strings.Join(mxHosts, ", ")
	}
	return fmt.Sprintf("%s: %s: destination %s of its own, with the defaults; %s",
		d, why, dest.Name, describeLimits(dest.Limits))
}

// otherSuffixes lists the suffixes other than best that match some host.
func (c *Config) otherSuffixes(hosts []string, best string) []string {
	var out []string
	for _, h := range hosts {
		h = normHost(h)
		for i := 0; i < len(h); i++ {
			if h[i] != '.' {
				continue
			}
			if _, ok := c.suffix[h[i:]]; ok && h[i:] != best && !slices.Contains(out, h[i:]) {
				out = append(out, h[i:])
			}
		}
	}
	return out
}

func (c *Config) origin(i int) string {
	if c.rules[i].Builtin {
		return "builtin"
	}
	return "file"
}

// Describe lists the configuration for `postflow shaping check FILE`: the
// defaults, then one line per rule in match order, with what it matches,
// its limits, and the matchers an earlier rule took from it.
func (c *Config) Describe() []string {
	a := c.Adaptive()
	lines := []string{
		"defaults: " + describeLimits(c.defaults),
		fmt.Sprintf("adaptive: a throttling reply multiplies the rate by %g (not below %g, at most once per %v); after %v it recovers by %g every %v",
			a.Cut, a.Floor, a.Debounce, a.Hold, a.Step, a.StepEvery),
	}
	tenants := slices.Sorted(maps.Keys(c.tenants))
	for _, name := range tenants {
		d := c.tenants[name]
		lines = append(lines, fmt.Sprintf("tenant %s: overall rate %s, burst %d", name, describeRate(d.Limits.Rate), d.Limits.Burst))
	}
	for i, r := range c.rules {
		var match []string
		if len(r.Domains) > 0 {
			match = append(match, "domains "+strings.Join(r.Domains, ", "))
		}
		if len(r.MXSuffixes) > 0 {
			match = append(match, "mx_suffixes "+strings.Join(r.MXSuffixes, ", "))
		}
		s := fmt.Sprintf("%s (%s): %s; %s", r.Name, c.origin(i), strings.Join(match, "; "), describeLimits(r.Limits))
		if sh := c.shadowed[i]; len(sh) > 0 {
			s += "; not matched, taken by an earlier rule: " + strings.Join(sh, ", ")
		}
		lines = append(lines, s)
	}
	return lines
}

func describeLimits(l Limits) string {
	n := func(v int) string {
		if v <= 0 {
			return "unlimited"
		}
		return strconv.Itoa(v)
	}
	def := func(v int) string {
		if v <= 0 {
			return "default"
		}
		return strconv.Itoa(v)
	}
	return fmt.Sprintf("rate %s, burst %d, connections %s, messages/connection %s, recipients/transaction %s",
		describeRate(l.Rate), max(l.Burst, 1), n(l.Connections), def(l.MessagesPerConnection), def(l.RecipientsPerTransaction))
}

// rateUnits are the units ParseRate accepts.
var rateUnits = []struct {
	unit string
	per  time.Duration
}{{"s", time.Second}, {"m", time.Minute}, {"h", time.Hour}, {"d", 24 * time.Hour}}

// ParseRate parses a rate written N/unit, with N a positive integer and
// unit one of s, m, h, d ("100/s", "5000/h"), or "unlimited" (the zero
// Rate).
func ParseRate(s string) (Rate, error) {
	r, err := parseRate(s)
	if err != nil {
		return Rate{}, fmt.Errorf("shaping: %w", err)
	}
	return r, nil
}

func parseRate(s string) (Rate, error) {
	t := strings.TrimSpace(s)
	if t == "unlimited" {
		return Rate{}, nil
	}
	num, unit, ok := strings.Cut(t, "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: want N/s, N/m, N/h, N/d or unlimited", s)
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 1 || n > 1_000_000_000 {
		return Rate{}, fmt.Errorf("rate %q: %q is not a whole number from 1 to 1e9", s, num)
	}
	for _, u := range rateUnits {
		if unit == u.unit {
			return Rate{N: n, Per: u.per}, nil
		}
	}
	return Rate{}, fmt.Errorf("rate %q: unit %q is not s, m, h or d", s, unit)
}

// describeRate writes r as ParseRate reads it, or with a Go duration when Per
// is not a unit ("3/2s").
func describeRate(r Rate) string {
	if r.Unlimited() {
		return "unlimited"
	}
	for _, u := range rateUnits {
		if r.Per == u.per {
			return fmt.Sprintf("%d/%s", r.N, u.unit)
		}
	}
	return fmt.Sprintf("%d/%s", r.N, r.Per)
}

// shapingDoc is a shaping file.
type shapingDoc struct {
	// Builtin false leaves out the shipped provider destinations.
	Builtin      *bool                 `yaml:"builtin"`
	Adaptive     *adaptiveSpec         `yaml:"adaptive"`
	Tenants      map[string]tenantSpec `yaml:"tenants"`
	Defaults     limitsSpec            `yaml:"defaults"`
	Destinations []destSpec            `yaml:"destinations"`
}

// limitsSpec holds the optional limit keys; nil means not set.
type limitsSpec struct {
	Rate                     *string `yaml:"rate"`
	Burst                    *int    `yaml:"burst"`
	Connections              *int    `yaml:"connections"`
	MessagesPerConnection    *int    `yaml:"messages_per_connection"`
	RecipientsPerTransaction *int    `yaml:"recipients_per_transaction"`
}

type destSpec struct {
	Name       string   `yaml:"name"`
	Domains    []string `yaml:"domains"`
	MXSuffixes []string `yaml:"mx_suffixes"`
	limitsSpec `yaml:",inline"`
}

// over returns s with o's keys set over it.
func (s limitsSpec) over(o limitsSpec) limitsSpec {
	if o.Rate != nil {
		s.Rate = o.Rate
	}
	if o.Burst != nil {
		s.Burst = o.Burst
	}
	if o.Connections != nil {
		s.Connections = o.Connections
	}
	if o.MessagesPerConnection != nil {
		s.MessagesPerConnection = o.MessagesPerConnection
	}
	if o.RecipientsPerTransaction != nil {
		s.RecipientsPerTransaction = o.RecipientsPerTransaction
	}
	return s
}

// limits applies s over base, and returns every problem.
func (s limitsSpec) limits(base Limits) (Limits, []error) {
	l := base
	var errs []error
	if s.Rate != nil {
		r, err := parseRate(*s.Rate)
		if err != nil {
			errs = append(errs, err)
		}
		l.Rate = r
	}
	count := func(key string, v *int, dst *int, zero string) {
		if v == nil {
			return
		}
		if *v < 0 {
			errs = append(errs, fmt.Errorf("%s: %d is negative (0 means %s)", key, *v, zero))
			return
		}
		*dst = *v
	}
	count("burst", s.Burst, &l.Burst, "1")
	count("connections", s.Connections, &l.Connections, "no limit")
	count("messages_per_connection", s.MessagesPerConnection, &l.MessagesPerConnection, "the SMTP client's default")
	count("recipients_per_transaction", s.RecipientsPerTransaction, &l.RecipientsPerTransaction, "the API's own cap")
	return l, errs
}

//go:embed providers.yaml
var providersYAML []byte

// builtinShapingDoc is providers.yaml decoded, and Builtin it built.
var builtinShapingDoc = sync.OnceValues(func() (shapingDoc, *Config) {
	d, err := decodeShapingDoc(providersYAML)
	if err != nil {
		panic("shaping: providers.yaml: " + err.Error())
	}
	c, err := buildConfig(d.Defaults, nil, d.Destinations)
	if err != nil {
		panic("shaping: providers.yaml: " + err.Error())
	}
	return d, c
})

// Builtin returns the shipped provider defaults (providers.yaml, embedded):
// the defaults and one destination per large mailbox provider, matched by
// MX host suffix. It is what a deployment without --shaping runs with.
func Builtin() *Config {
	_, c := builtinShapingDoc()
	return c
}

// Load reads a shaping file and merges it over Builtin as Parse does. Every
// problem is reported, joined, each naming its place in the file.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err // names the file already
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse reads a shaping document (the format is in the package doc) and
// merges it over Builtin:
//
//   - keys set under its defaults replace the builtin defaults' values for
//     those keys; the others keep the builtin values;
//   - its destinations come first, so they win every domain or suffix they
//     share with a builtin destination; one named like a builtin
//     destination replaces it whole;
//   - `builtin: false` leaves out the builtin destinations (the builtin
//     defaults still fill the keys its defaults leave unset).
//
// Every destination then takes the keys it does not set from the merged
// defaults. Unknown keys are errors, and every problem is reported at
// once, joined, each naming destinations[i]. An empty document is Builtin.
func Parse(b []byte) (*Config, error) {
	d, decodeErr := decodeShapingDoc(b)
	if decodeErr != nil && d.Destinations == nil && d.Defaults == (limitsSpec{}) && d.Builtin == nil && d.Adaptive == nil && d.Tenants == nil {
		return nil, decodeErr // nothing decoded to validate
	}
	bd, _ := builtinShapingDoc()
	var builtin []destSpec
	if d.Builtin == nil || *d.Builtin {
		for _, s := range bd.Destinations {
			if !slices.ContainsFunc(d.Destinations, func(u destSpec) bool { return u.Name == s.Name }) {
				builtin = append(builtin, s)
			}
		}
	}
	c, err := buildConfig(bd.Defaults.over(d.Defaults), d.Destinations, builtin)
	a, aerrs := d.Adaptive.adaptive()
	tenants, terrs := tenantLimits(d.Tenants)
	if err = errors.Join(append(append([]error{decodeErr, err}, aerrs...), terrs...)...); err != nil {
		return nil, err
	}
	c.adaptive, c.tenants = a, tenants
	return c, nil
}

// decodeShapingDoc reads a document strictly: a misspelt key must not silently drop
// a limit. Unknown keys and mistyped values come back as one error per
// problem, with the document decoded as far as it could be, so that
// validation can report the rest at the same time.
func decodeShapingDoc(b []byte) (shapingDoc, error) {
	var d shapingDoc
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	err := dec.Decode(&d)
	var te *yaml.TypeError
	switch {
	case err == nil || errors.Is(err, io.EOF): // io.EOF: an empty document
		return d, nil
	case errors.As(err, &te):
		errs := make([]error, len(te.Errors))
		for i, e := range te.Errors {
			errs[i] = errors.New(shapingKeyNames.Replace(e))
		}
		return d, errors.Join(errs...)
	default:
		return shapingDoc{}, err
	}
}

// shapingKeyNames rewrites the decoder's type names into the keys a reader can
// use.
var shapingKeyNames = strings.NewReplacer(
	"not found in type shaping.shapingDoc", "is not a top-level key (builtin, adaptive, tenants, defaults, destinations)",
	"not found in type shaping.tenantSpec", "is not a tenant key (rate, burst)",
	"not found in type shaping.adaptiveSpec", "is not an adaptive key (cut, floor, debounce, hold, step, step_every)",
	"not found in type shaping.limitsSpec", "is not a defaults key (rate, burst, connections, messages_per_connection, recipients_per_transaction)",
	"not found in type shaping.destSpec", "is not a destination key (name, domains, mx_suffixes, rate, burst, connections, messages_per_connection, recipients_per_transaction)",
)

// buildConfig validates user and builtin destinations and indexes them. Conflicts
// among user destinations (or among builtin ones) are errors; a builtin
// matcher that a user destination already has is shadowed.
func buildConfig(defaults limitsSpec, user, builtin []destSpec) (*Config, error) {
	var errs []error
	add := func(where string, err error) { errs = append(errs, fmt.Errorf("%s: %w", where, err)) }

	def, problems := defaults.limits(Limits{})
	for _, p := range problems {
		add("defaults", p)
	}
	c := &Config{
		defaults: def,
		exact:    map[string]int{},
		suffix:   map[string]int{},
		shadowed: map[int][]string{},
	}
	nUser := len(user)
	names := map[string]string{} // name → where
	// where[i] names rules[i] in errors.
	var where []string
	for i, s := range slices.Concat(user, builtin) {
		w := fmt.Sprintf("destinations[%d]", i)
		if i >= nUser {
			w = fmt.Sprintf("builtin destinations[%d]", i-nUser)
		}
		if s.Name != "" {
			w += " (" + s.Name + ")"
		}
		r := Rule{Name: s.Name, Builtin: i >= nUser}
		var problems []error
		if err := checkRuleName(s.Name); err != nil {
			problems = append(problems, err)
		} else if prev, dup := names[s.Name]; dup {
			problems = append(problems, fmt.Errorf("name %q is already used by %s", s.Name, prev))
		} else {
			names[s.Name] = w
		}
		if len(s.Domains) == 0 && len(s.MXSuffixes) == 0 {
			problems = append(problems, errors.New("needs domains or mx_suffixes (or both)"))
		}
		for _, dom := range s.Domains {
			d, err := checkDomain(dom)
			if err != nil {
				problems = append(problems, err)
				continue
			}
			if slices.Contains(r.Domains, d) {
				problems = append(problems, fmt.Errorf("domains: %s is listed twice", d))
				continue
			}
			r.Domains = append(r.Domains, d)
		}
		for _, suf := range s.MXSuffixes {
			sfx, err := checkSuffix(suf)
			if err != nil {
				problems = append(problems, err)
				continue
			}
			if slices.Contains(r.MXSuffixes, sfx) {
				problems = append(problems, fmt.Errorf("mx_suffixes: %s is listed twice", sfx))
				continue
			}
			r.MXSuffixes = append(r.MXSuffixes, sfx)
		}
		// A name with a dot reads as a domain, and an unmatched domain is
		// a destination named after itself: the two would share state
		// under different limits.
		if strings.Contains(s.Name, ".") && !slices.Contains(r.Domains, s.Name) {
			problems = append(problems, fmt.Errorf("name %q looks like a domain but is not among its domains: an unmatched domain of that name would share its state; name destinations without dots", s.Name))
		}
		lim, limErrs := s.limits(def)
		problems = append(problems, limErrs...)
		r.Limits = lim
		for _, p := range problems {
			add(w, p)
		}
		idx := len(c.rules)
		c.rules = append(c.rules, r)
		where = append(where, w)
		index := func(m map[string]int, key, what string) {
			prev, taken := m[key]
			switch {
			case !taken:
				m[key] = idx
			case c.rules[prev].Builtin == r.Builtin:
				add(w, fmt.Errorf("%s %s is already matched by %s", what, key, where[prev]))
			default: // a user rule took it from this builtin one
				c.shadowed[idx] = append(c.shadowed[idx], fmt.Sprintf("%s %s (by %s)", what, key, c.rules[prev].Name))
			}
		}
		for _, d := range r.Domains {
			index(c.exact, d, "domain")
		}
		for _, sfx := range r.MXSuffixes {
			index(c.suffix, sfx, "mx suffix")
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// checkRuleName accepts 1 to 64 characters of [a-z0-9._-], starting with a
// letter or digit: names key shared state (Redis hash tags) and appear in
// metrics and logs.
func checkRuleName(name string) error {
	if name == "" {
		return errors.New("name is required")
	}
	if len(name) > 64 {
		return fmt.Errorf("name %q is longer than 64 characters", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || i > 0 && (c == '.' || c == '_' || c == '-')
		if !ok {
			return fmt.Errorf("name %q: use lower-case letters, digits and . _ - (starting with a letter or digit)", name)
		}
	}
	return nil
}

// hostLike reports whether s (lower case, no trailing dot) is a plausible
// host or domain name: non-empty labels of letters, digits, '-' and '_'.
func hostLike(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func checkDomain(s string) (string, error) {
	d := normHost(strings.TrimSpace(s))
	if strings.HasPrefix(d, ".") {
		return "", fmt.Errorf("domains: %q starts with a dot: domains match exactly; a suffix of MX host names goes in mx_suffixes", s)
	}
	if !hostLike(d) {
		return "", fmt.Errorf("domains: %q is not a domain name", s)
	}
	return d, nil
}

func checkSuffix(s string) (string, error) {
	d := normHost(strings.TrimSpace(s))
	if !strings.HasPrefix(d, ".") {
		return "", fmt.Errorf("mx_suffixes: %q must start with a dot (.google.com matches aspmx.l.google.com)", s)
	}
	if !hostLike(d[1:]) {
		return "", fmt.Errorf("mx_suffixes: %q is not a dot and a domain name", s)
	}
	if !strings.Contains(d[1:], ".") {
		return "", fmt.Errorf("mx_suffixes: %q would match every MX host under a top-level domain", s)
	}
	return d, nil
}
