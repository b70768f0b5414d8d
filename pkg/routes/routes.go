// Package routes is the delivery routing table: for each recipient domain,
// the TLS policy its MX hosts are held to, whether MTA-STS (RFC 8461) is
// honoured, and whether mail goes through a smarthost (a relay such as SES,
// an ISP's submission server or a corporate gateway) instead of the MX.
//
// The table is read from a YAML file (`postflow serve --routes FILE`):
//
//	default:                       # every domain without a rule
//	  tls: opportunistic           # opportunistic (default) | require
//	  mta_sts: true                # honour MTA-STS enforce policies (default true)
//	  smarthost:                   # optional: relay everything
//	    host: email-smtp.eu-west-1.amazonaws.com
//	    port: 587                  # 587 STARTTLS (default); 465 implicit TLS
//	    tls: starttls              # starttls | implicit; default implicit on 465
//	    username: AKIAEXAMPLE
//	    password_env: SES_SMTP_PASSWORD   # or password_file: /run/secrets/ses
//	rules:
//	  - match: [bank.example, .bank.example]   # a leading dot: any subdomain
//	    tls: require
//	  - match: [partner.example]
//	    direct: true               # bypass the default smarthost
//
// A rule inherits every field it does not set from default. An exact domain
// match wins over a suffix match, and a longer suffix over a shorter one, as
// in Postfix's transport_maps; the order of rules does not matter.
//
// Credentials are read once, at Load, from the environment or a file, never
// from the YAML itself, so the routes file can be committed and reviewed.
// They appear in no error, log line or Describe output.
package routes

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/postflow/postflow/pkg/smtpout"
)

// Route is how mail to one domain is delivered.
type Route struct {
	// TLS is the policy for the domain's MX hosts: smtpout.TLSOpportunistic
	// or smtpout.TLSRequire. A smarthost has its own.
	TLS smtpout.TLSMode
	// MTASTS reports that an MTA-STS policy in enforce mode, when the
	// domain publishes one, restricts the MX hosts and requires verified
	// TLS to them.
	MTASTS bool
	// Relay, when set, replaces the MX lookup.
	Relay *Relay
	// Rule names the rule that matched ("default" when none did), for
	// logs and `postflow serve --check-config`.
	Rule string
}

// Relay is a smarthost.
type Relay struct {
	Host string
	Port int
	// TLS is smtpout.TLSRequire (STARTTLS) or smtpout.TLSImplicit: a relay
	// is never used without verified TLS, since credentials and whole
	// mail streams cross to it.
	TLS smtpout.TLSMode
	// Auth is nil for a relay that authorises by address.
	Auth *smtpout.Auth
	// passwordFrom says where the password came from, for Describe.
	passwordFrom string
}

// Addr returns host:port.
func (r *Relay) Addr() string { return net.JoinHostPort(r.Host, strconv.Itoa(r.Port)) }

// Table maps recipient domains to routes. The zero value and a nil *Table
// route every domain to its MX hosts, opportunistic TLS and MTA-STS on.
type Table struct {
	def    Route
	exact  map[string]Route
	suffix map[string]Route // keyed by ".example.org"
}

// DefaultRoute is the route when there is no routes file.
func DefaultRoute() Route { return Route{TLS: smtpout.TLSOpportunistic, MTASTS: true, Rule: "default"} }

// Lookup returns the route for domain (lower case, no trailing dot).
func (t *Table) Lookup(domain string) Route {
	if t == nil {
		return DefaultRoute()
	}
	if r, ok := t.exact[domain]; ok {
		return r
	}
	for d := domain; ; {
		i := strings.IndexByte(d, '.')
		if i < 0 {
			return t.def
		}
		d = d[i:]
		if r, ok := t.suffix[d]; ok {
			return r
		}
		d = d[1:]
	}
}

// With returns a copy of t in which domain (matched exactly) takes route r,
// leaving t unchanged; postflow uses it for its own mailbox simulator.
func (t *Table) With(domain string, r Route) *Table {
	c := &Table{def: DefaultRoute(), exact: map[string]Route{}, suffix: map[string]Route{}}
	if t != nil {
		c.def = t.def
		maps.Copy(c.exact, t.exact)
		maps.Copy(c.suffix, t.suffix)
	}
	c.exact[domain] = r
	return c
}

// file is the YAML document.
type file struct {
	Default *ruleSpec  `yaml:"default"`
	Rules   []ruleSpec `yaml:"rules"`
}

type ruleSpec struct {
	Match     []string   `yaml:"match"`
	TLS       string     `yaml:"tls"`
	MTASTS    *bool      `yaml:"mta_sts"`
	Smarthost *relaySpec `yaml:"smarthost"`
	Direct    bool       `yaml:"direct"`
}

type relaySpec struct {
	Host         string `yaml:"host"`
	Port         int    `yaml:"port"`
	TLS          string `yaml:"tls"`
	Username     string `yaml:"username"`
	PasswordEnv  string `yaml:"password_env"`
	PasswordFile string `yaml:"password_file"`
}

// Load reads and validates a routes file. getenv resolves password_env
// (os.Getenv in production). Every problem is reported, joined, each naming
// its place in the file.
func Load(path string, getenv func(string) string) (*Table, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err // names the file already
	}
	t, err := Parse(b, getenv)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Parse is Load for a document already read.
func Parse(doc []byte, getenv func(string) string) (*Table, error) {
	var f file
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	dec.KnownFields(true) // a misspelt key must not silently drop a policy
	// io.EOF is an empty document: every domain takes the defaults.
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	var errs []error
	add := func(where string, err error) { errs = append(errs, fmt.Errorf("%s: %w", where, err)) }

	t := &Table{def: DefaultRoute(), exact: map[string]Route{}, suffix: map[string]Route{}}
	if f.Default != nil {
		if len(f.Default.Match) > 0 {
			add("default", errors.New("match is for rules; default applies to every other domain"))
		}
		if f.Default.Direct {
			add("default", errors.New("direct is for rules (it bypasses the default smarthost)"))
		}
		r, err := f.Default.route(DefaultRoute(), getenv)
		if err != nil {
			add("default", err)
		}
		t.def = r
		t.def.Rule = "default"
	}
	for i, spec := range f.Rules {
		where := fmt.Sprintf("rules[%d]", i)
		r, err := spec.route(t.def, getenv)
		if err != nil {
			add(where, err)
		}
		if len(spec.Match) == 0 {
			add(where, errors.New("match: at least one domain is needed"))
		}
		r.Rule = where
		for _, m := range spec.Match {
			key, suffix, err := matchKey(m)
			if err != nil {
				add(where, err)
				continue
			}
			table := t.exact
			if suffix {
				table = t.suffix
			}
			if prev, dup := table[key]; dup {
				add(where, fmt.Errorf("match %q is already matched by %s", m, prev.Rule))
				continue
			}
			table[key] = r
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return t, nil
}

// route applies the spec's fields over base.
func (s *ruleSpec) route(base Route, getenv func(string) string) (Route, error) {
	r := base
	var errs []error
	switch s.TLS {
	case "":
	case "opportunistic":
		r.TLS = smtpout.TLSOpportunistic
	case "require":
		r.TLS = smtpout.TLSRequire
	default:
		errs = append(errs, fmt.Errorf("tls: %q is not opportunistic or require", s.TLS))
	}
	if s.MTASTS != nil {
		r.MTASTS = *s.MTASTS
	}
	switch {
	case s.Direct && s.Smarthost != nil:
		errs = append(errs, errors.New("direct and smarthost exclude each other"))
	case s.Direct:
		r.Relay = nil
	case s.Smarthost != nil:
		relay, err := s.Smarthost.relay(getenv)
		if err != nil {
			errs = append(errs, fmt.Errorf("smarthost: %w", err))
		}
		r.Relay = relay
	}
	return r, errors.Join(errs...)
}

func (s *relaySpec) relay(getenv func(string) string) (*Relay, error) {
	var errs []error
	r := &Relay{Host: strings.TrimSuffix(strings.ToLower(s.Host), "."), Port: s.Port}
	if r.Host == "" {
		errs = append(errs, errors.New("host is required"))
	}
	if r.Port == 0 {
		r.Port = 587
	}
	if r.Port < 1 || r.Port > 65535 {
		errs = append(errs, fmt.Errorf("port %d out of range", s.Port))
	}
	switch s.TLS {
	case "":
		r.TLS = smtpout.TLSRequire
		if r.Port == 465 {
			r.TLS = smtpout.TLSImplicit
		}
	case "starttls":
		r.TLS = smtpout.TLSRequire
	case "implicit":
		r.TLS = smtpout.TLSImplicit
	default:
		errs = append(errs, fmt.Errorf("tls: %q is not starttls or implicit", s.TLS))
	}
	switch {
	case s.PasswordEnv != "" && s.PasswordFile != "":
		errs = append(errs, errors.New("password_env and password_file exclude each other"))
	case s.Username == "" && (s.PasswordEnv != "" || s.PasswordFile != ""):
		errs = append(errs, errors.New("a password needs a username"))
	case s.Username != "" && s.PasswordEnv == "" && s.PasswordFile == "":
		errs = append(errs, errors.New("username needs password_env or password_file (passwords are not written in the routes file)"))
	case s.PasswordEnv != "":
		pw := getenv(s.PasswordEnv)
		if pw == "" {
			errs = append(errs, fmt.Errorf("password_env: environment variable %s is empty or unset", s.PasswordEnv))
		}
		r.Auth = &smtpout.Auth{Username: s.Username, Password: pw}
		r.passwordFrom = "environment variable " + s.PasswordEnv
	case s.PasswordFile != "":
		b, err := os.ReadFile(s.PasswordFile)
		pw := strings.TrimRight(string(b), "\r\n")
		switch {
		case err != nil:
			// The error names the file, never its content.
			errs = append(errs, fmt.Errorf("password_file: %w", err))
		case pw == "":
			errs = append(errs, fmt.Errorf("password_file: %s is empty", s.PasswordFile))
		}
		r.Auth = &smtpout.Auth{Username: s.Username, Password: pw}
		r.passwordFrom = "file " + s.PasswordFile
	}
	return r, errors.Join(errs...)
}

// matchKey validates one match entry and returns its table key.
func matchKey(m string) (key string, suffix bool, err error) {
	d := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(m)), ".")
	suffix = strings.HasPrefix(d, ".")
	name := strings.TrimPrefix(d, ".")
	if name == "" || strings.ContainsAny(name, " \t@/:*") || strings.Contains(name, "..") {
		return "", false, fmt.Errorf("match %q is not a domain or a .suffix", m)
	}
	return d, suffix, nil
}

// Describe lists the table for humans (`postflow serve --check-config`):
// one line per matched domain plus the default, passwords shown only by
// where they come from.
func (t *Table) Describe() []string {
	if t == nil {
		return []string{describe("default", DefaultRoute())}
	}
	lines := []string{describe("default", t.def)}
	var keys []string
	for k := range t.exact {
		keys = append(keys, k)
	}
	for k := range t.suffix {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		r, ok := t.exact[k]
		if !ok {
			r = t.suffix[k]
		}
		lines = append(lines, describe(k, r))
	}
	return lines
}

func describe(what string, r Route) string {
	if r.Relay == nil {
		return fmt.Sprintf("%s (%s): MX, tls=%s, mta_sts=%v", what, r.Rule, r.TLS, r.MTASTS)
	}
	mode := "starttls"
	if r.Relay.TLS == smtpout.TLSImplicit {
		mode = "implicit"
	}
	s := fmt.Sprintf("%s (%s): smarthost %s, tls=%s", what, r.Rule, r.Relay.Addr(), mode)
	if r.Relay.Auth != nil {
		s += fmt.Sprintf(", user %q, password from %s", r.Relay.Auth.Username, r.Relay.passwordFrom)
	}
	return s
}
