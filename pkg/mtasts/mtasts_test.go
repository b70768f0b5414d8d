package mtasts

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postflow/postflow/pkg/mx"
	"github.com/postflow/postflow/pkg/testenv"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    *Policy
		wantErr string // substring; "" means success
	}{
		{
			name:  "crlf",
			input: "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n",
			want:  &Policy{Mode: ModeEnforce, MX: []string{"mx1.example.com", "*.example.net"}, MaxAge: 86400 * time.Second},
		},
		{
			name:  "lf, no final line end",
			input: "version: STSv1\nmode: testing\nmx: mx1.example.com\nmax_age: 604800",
			want:  &Policy{Mode: ModeTesting, MX: []string{"mx1.example.com"}, MaxAge: 604800 * time.Second},
		},
		{
			name:  "mixed line ends, any field order",
			input: "max_age: 60\r\nmx: mx1.example.com\nmode: enforce\r\nversion: STSv1\n",
			want:  &Policy{Mode: ModeEnforce, MX: []string{"mx1.example.com"}, MaxAge: time.Minute},
		},
		{
			name:  "whitespace around keys and values, blank lines, bom",
			input: "\uFEFFversion:STSv1 \n\nmode:\tenforce\t\n  mx :  MX1.Example.COM.  \nmax_age:   5\n\n",
			want:  &Policy{Mode: ModeEnforce, MX: []string{"mx1.example.com"}, MaxAge: 5 * time.Second},
		},
		{
			name:  "unknown keys ignored",
			input: "version: STSv1\nmode: enforce\nfoo: bar: baz\nmx: mx1.example.com\nx-comment: anything goes = ;\nmax_age: 1\n",
			want:  &Policy{Mode: ModeEnforce, MX: []string{"mx1.example.com"}, MaxAge: time.Second},
		},
		{
			name:  "repeated fields other than mx take the first value",
			input: "version: STSv1\nmode: testing\nmode: enforce\nmx: a.example.com\nmax_age: 10\nmax_age: 20\nversion: STSv2\nmx: b.example.com\n",
			want:  &Policy{Mode: ModeTesting, MX: []string{"a.example.com", "b.example.com"}, MaxAge: 10 * time.Second},
		},
		{
			name:  "mode none needs no mx",
			input: "version: STSv1\nmode: none\nmax_age: 86400\n",
			want:  &Policy{Mode: ModeNone, MaxAge: 86400 * time.Second},
		},
		{
			name:  "max_age zero",
			input: "version: STSv1\nmode: none\nmax_age: 0\n",
			want:  &Policy{Mode: ModeNone},
		},
		{
			name:  "max_age at the maximum",
			input: "version: STSv1\nmode: none\nmax_age: 31557600\n",
			want:  &Policy{Mode: ModeNone, MaxAge: MaxMaxAge},
		},
		{name: "max_age above the maximum", input: "version: STSv1\nmode: none\nmax_age: 31557601\n", wantErr: "exceeds the maximum"},
		{name: "max_age negative", input: "version: STSv1\nmode: none\nmax_age: -1\n", wantErr: "not a number of seconds"},
		{name: "max_age with sign", input: "version: STSv1\nmode: none\nmax_age: +1\n", wantErr: "not a number of seconds"},
		{name: "max_age eleven digits", input: "version: STSv1\nmode: none\nmax_age: 00000000001\n", wantErr: "not a number of seconds"},
		{name: "max_age empty", input: "version: STSv1\nmode: none\nmax_age:\n", wantErr: "not a number of seconds"},
		{name: "max_age missing", input: "version: STSv1\nmode: none\n", wantErr: "missing max_age"},
		{name: "bad version", input: "version: STSv2\nmode: none\nmax_age: 1\n", wantErr: `version "STSv2"`},
		{name: "version case matters", input: "version: stsv1\nmode: none\nmax_age: 1\n", wantErr: `version "stsv1"`},
		{name: "key case matters", input: "Version: STSv1\nmode: none\nmax_age: 1\n", wantErr: "missing version"},
		{name: "version missing", input: "mode: none\nmax_age: 1\n", wantErr: "missing version"},
		{name: "bad mode", input: "version: STSv1\nmode: enforcing\nmx: a.example.com\nmax_age: 1\n", wantErr: `mode "enforcing"`},
		{name: "mode missing", input: "version: STSv1\nmx: a.example.com\nmax_age: 1\n", wantErr: "missing mode"},
		{name: "mx missing in enforce", input: "version: STSv1\nmode: enforce\nmax_age: 1\n", wantErr: "mx (required in mode enforce)"},
		{name: "mx missing in testing", input: "version: STSv1\nmode: testing\nmax_age: 1\n", wantErr: "mx (required in mode testing)"},
		{name: "everything missing", input: "\n", wantErr: "missing version, mode, max_age"},
		{name: "line without colon", input: "version: STSv1\nmode none\n", wantErr: `line 2: no colon in "mode none"`},
		{name: "wildcard inside a label", input: "version: STSv1\nmode: enforce\nmx: mx*.example.com\nmax_age: 1\n", wantErr: "character '*'"},
		{name: "wildcard not left-most", input: "version: STSv1\nmode: enforce\nmx: mx.*.example.com\nmax_age: 1\n", wantErr: "character '*'"},
		{name: "bare wildcard", input: "version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n", wantErr: "character '*'"},
		{name: "empty mx", input: "version: STSv1\nmode: enforce\nmx:\nmax_age: 1\n", wantErr: "not a host name"},
		{name: "empty label in mx", input: "version: STSv1\nmode: enforce\nmx: a..example.com\nmax_age: 1\n", wantErr: "bad label length"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Parse([]byte(tc.input))
			if tc.wantErr != "" {
				if err == nil || !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("Parse(%q) = %+v, %v; want an ErrInvalidPolicy error containing %q", tc.input, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !equalPolicy(got, tc.want) {
				t.Errorf("Parse(%q) = %+v, %v; want %+v, nil", tc.input, got, err, tc.want)
			}
		})
	}
}

// equalPolicy compares policies field by field.
func equalPolicy(a, b *Policy) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.ID == b.ID && a.Mode == b.Mode && slices.Equal(a.MX, b.MX) && a.MaxAge == b.MaxAge && a.Fetched.Equal(b.Fetched)
}

func TestMatch(t *testing.T) {
	p := &Policy{Mode: ModeEnforce, MX: []string{"mail.example.com", "*.example.net", "*.mx.example.org"}}
	tests := []struct {
		host string
		want bool
	}{
		{"mail.example.com", true},
		{"MAIL.Example.Com", true},
		{"mail.example.com.", true},
		{"example.com", false},
		{"other.example.com", false},
		{"xmail.example.com", false},
		{"mail.example.com.evil.test", false},
		{"mx1.example.net", true},
		{"MX1.EXAMPLE.NET.", true},
		{"example.net", false},
		{".example.net", false},
		{"a.b.example.net", false},
		{"mx1.example.net.evil.test", false},
		{"mx1xexample.net", false},
		{"a.mx.example.org", true},
		{"mx.example.org", false},
		{"", false},
		{".", false},
	}
	for _, tc := range tests {
		if got := p.Match(tc.host); got != tc.want {
			t.Errorf("Policy{MX: %q}.Match(%q) = %v, want %v", p.MX, tc.host, got, tc.want)
		}
	}
	if (&Policy{Mode: ModeNone}).Match("mail.example.com") {
		t.Errorf("Policy without mx patterns matched mail.example.com, want no match")
	}
}

func TestRecordID(t *testing.T) {
	tests := []struct {
		name string
		txts []string
		want string
	}{
		{"plain", []string{"v=STSv1; id=20160831085700Z;"}, "20160831085700Z"},
		{"no trailing delimiter", []string{"v=STSv1; id=abc"}, "abc"},
		{"no spaces", []string{"v=STSv1;id=abc"}, "abc"},
		{"tabs and spaces around delimiters", []string{"v=STSv1 \t;\t id=abc \t; "}, "abc"},
		{"extension fields ignored", []string{"v=STSv1; foo=bar; id=abc; x.y-z_=!\"#$%&'()*+,-./:<>?@[]^`{|}~"}, "abc"},
		{"other txt records ignored", []string{"v=spf1 -all", "v=STSv1; id=abc", "google-site-verification=x"}, "abc"},
		{"first id wins", []string{"v=STSv1; id=first; id=second"}, "first"},
		{"id of 32 characters", []string{"v=STSv1; id=" + strings.Repeat("a", 32)}, strings.Repeat("a", 32)},
		{"none", nil, ""},
		{"two records", []string{"v=STSv1; id=abc", "v=STSv1; id=def"}, ""},
		{"two identical records", []string{"v=STSv1; id=abc", "v=STSv1; id=abc"}, ""},
		{"two records, one invalid", []string{"v=STSv1; id=abc", "v=STSv1; id=bad!"}, ""},
		{"no id", []string{"v=STSv1; foo=bar"}, ""},
		{"version only", []string{"v=STSv1;"}, ""},
		{"no delimiter after version", []string{"v=STSv1 id=abc"}, ""},
		{"version case", []string{"v=stsv1; id=abc"}, ""},
		{"leading space", []string{" v=STSv1; id=abc"}, ""},
		{"other version", []string{"v=STSv2; id=abc"}, ""},
		{"id too long", []string{"v=STSv1; id=" + strings.Repeat("a", 33)}, ""},
		{"id with punctuation", []string{"v=STSv1; id=2016-08-31"}, ""},
		{"empty id", []string{"v=STSv1; id="}, ""},
		{"empty field", []string{"v=STSv1; ; id=abc"}, ""},
		{"field without =", []string{"v=STSv1; id=abc; junk"}, ""},
		{"space in a value", []string{"v=STSv1; id=abc; foo=b ar"}, ""},
		{"= in a value", []string{"v=STSv1; id=abc=def"}, ""},
		{"bad extension name", []string{"v=STSv1; id=abc; _foo=bar"}, ""},
	}
	for _, tc := range tests {
		if got := recordID(tc.txts); got != tc.want {
			t.Errorf("%s: recordID(%q) = %q, want %q", tc.name, tc.txts, got, tc.want)
		}
	}
}

func TestNew(t *testing.T) {
	r := &mx.Resolver{}
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; "" means success
	}{
		{name: "resolver only", cfg: Config{Resolver: r}},
		{name: "no resolver", cfg: Config{}, wantErr: "Resolver is required"},
		{name: "port out of range", cfg: Config{Resolver: r, Port: 65536}, wantErr: "Port 65536"},
		{name: "negative port", cfg: Config{Resolver: r, Port: -1}, wantErr: "Port -1"},
		{name: "negative timeout", cfg: Config{Resolver: r, Timeout: -time.Second}, wantErr: "Timeout -1s"},
		{name: "all problems joined", cfg: Config{Port: -1, Timeout: -1}, wantErr: "Timeout -1ns"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.cfg)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("New(%+v) error = %v, want nil", tc.cfg, err)
				}
				if c.cfg.Port != DefaultPort || c.cfg.Timeout != DefaultTimeout || c.cfg.Now == nil {
					t.Errorf("New(%+v) effective config = %+v, want defaults filled in", tc.cfg, c.cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("New(%+v) error = %v, want it to contain %q", tc.cfg, err, tc.wantErr)
			}
		})
	}
}

const (
	// domain is the recipient domain of the Get tests; policyHost is its
	// policy host.
	domain     = "example.test"
	policyHost = "mta-sts.example.test"

	enforcePolicy = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.mx.example.test\r\nmax_age: 3600\r\n"
	testingPolicy = "version: STSv1\r\nmode: testing\r\nmx: mx2.example.test\r\nmax_age: 3600\r\n"
)

// zone returns the test zone: the policy host on 127.0.0.1 and, unless
// txts is empty, those TXT records at _mta-sts.example.test. A zero TTL
// keeps the mx Resolver from caching, so that a test can change the
// records with Update and be seen at once.
func zone(txts ...string) string {
	var b strings.Builder
	b.WriteString("$TTL 0\n")
	b.WriteString("test. IN SOA ns.test. admin.test. 1 7200 900 1209600 0\n")
	b.WriteString("mta-sts.example.test. IN A 127.0.0.1\n")
	b.WriteString("_mta-sts.private.test. IN TXT \"v=STSv1; id=1\"\n")
	b.WriteString("mta-sts.private.test. IN A 127.0.0.1\n")
	b.WriteString("mta-sts.private.test. IN AAAA ::1\n")
	b.WriteString("_mta-sts.nohost.test. IN TXT \"v=STSv1; id=1\"\n")
	for _, txt := range txts {
		fmt.Fprintf(&b, "_mta-sts.example.test. IN TXT %q\n", txt)
	}
	return b.String()
}

// fakeClock is a settable clock for policy expiry and back-off.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// policyServer is an HTTPS policy host on 127.0.0.1. It counts the
// requests that reach a handler, per path, and records the SNI names of
// TLS handshakes; a test can swap its handler and certificate.
type policyServer struct {
	srv *httptest.Server

	mu      sync.Mutex
	handler http.Handler
	cert    tls.Certificate
	hits    map[string]int
	sni     []string
}

// startPolicyServer starts a policyServer presenting cert and answering
// with h.
func startPolicyServer(t *testing.T, cert tls.Certificate, h http.Handler) *policyServer {
	t.Helper()
	ps := &policyServer{handler: h, cert: cert, hits: make(map[string]int)}
	ps.srv = httptest.NewUnstartedServer(http.HandlerFunc(ps.serve))
	ps.srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{cert},
		// Called for every handshake that carries SNI, so the certificate
		// can be swapped mid-test.
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			ps.mu.Lock()
			defer ps.mu.Unlock()
			ps.sni = append(ps.sni, hello.ServerName)
			cert := ps.cert
			return &cert, nil
		},
	}
	// Handshakes that the client aborts (untrusted certificate) are
	// expected; keep them out of the test log.
	ps.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	ps.srv.StartTLS()
	t.Cleanup(ps.srv.Close)
	return ps
}

func (ps *policyServer) serve(w http.ResponseWriter, r *http.Request) {
	ps.mu.Lock()
	ps.hits[r.URL.Path]++
	h := ps.handler
	ps.mu.Unlock()
	h.ServeHTTP(w, r)
}

// port returns the port the server listens on.
func (ps *policyServer) port() int {
	return ps.srv.Listener.Addr().(*net.TCPAddr).Port
}

// set replaces the handler and the certificate.
func (ps *policyServer) set(h http.Handler, cert tls.Certificate) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.handler, ps.cert = h, cert
}

// SNI returns the server names of the TLS handshakes so far.
func (ps *policyServer) SNI() []string {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return slices.Clone(ps.sni)
}

// Hits returns the number of requests for the well-known policy path.
func (ps *policyServer) Hits() int {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.hits[wellKnownPath]
}

// serveBody answers requests for the policy path with body as text/plain.
func serveBody(body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != wellKnownPath {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, body)
	})
}

// env is one Get test's world: DNS, CA, policy host, clock and Cache.
type env struct {
	dns   *testenv.DNSServer
	ca    *testenv.CA
	cert  tls.Certificate // the CA's certificate for policyHost
	srv   *policyServer
	clock *fakeClock
	cache *Cache
}

// newEnv starts DNS with zoneText and a policy host answering with h, and
// builds a Cache over them. cfg's Resolver, RootCAs, Port and Now are
// filled in; AllowPrivate is set, since the policy host is on loopback.
func newEnv(t *testing.T, zoneText string, h http.Handler, cfg Config) *env {
	t.Helper()
	e := &env{
		dns:   testenv.StartDNS(t, zoneText),
		ca:    testenv.NewCA(t),
		clock: &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	e.cert = e.ca.Issue(policyHost)
	e.srv = startPolicyServer(t, e.cert, h)
	r, err := mx.New(mx.Config{Server: e.dns.Addr(), Timeout: 2 * time.Second, Now: e.clock.Now})
	if err != nil {
		t.Fatalf("mx.New: %v", err)
	}
	cfg.Resolver = r
	cfg.RootCAs = e.ca.Pool()
	cfg.Port = e.srv.port()
	cfg.Now = e.clock.Now
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	e.cache, err = New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return e
}

// newDefaultEnv is newEnv serving enforcePolicy under id 1, with private
// addresses allowed.
func newDefaultEnv(t *testing.T) *env {
	t.Helper()
	return newEnv(t, zone("v=STSv1; id=1"), serveBody(enforcePolicy), Config{AllowPrivate: true})
}

// mustGet calls Get and fails the test on an error.
func (e *env) mustGet(t *testing.T, step string) *Policy {
	t.Helper()
	p, err := e.cache.Get(t.Context(), domain)
	if err != nil {
		t.Fatalf("%s: Get(%q) error = %v", step, domain, err)
	}
	return p
}

// checkHits fails the test unless the policy host has had want requests.
func (e *env) checkHits(t *testing.T, step string, want int) {
	t.Helper()
	if got := e.srv.Hits(); got != want {
		t.Errorf("%s: policy host requests = %d, want %d", step, got, want)
	}
}

func TestGetNoPolicy(t *testing.T) {
	tests := []struct {
		name string
		txts []string
	}{
		{"no txt record (nxdomain)", nil},
		{"only other txt records", []string{"v=spf1 -all"}},
		{"two sts records", []string{"v=STSv1; id=1", "v=STSv1; id=2"}},
		{"record without id", []string{"v=STSv1; foo=bar"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, zone(tc.txts...), serveBody(enforcePolicy), Config{AllowPrivate: true})
			p, err := e.cache.Get(t.Context(), domain)
			if p != nil || err != nil {
				t.Errorf("Get(%q) with TXT %q = %+v, %v; want nil, nil", domain, tc.txts, p, err)
			}
			e.checkHits(t, "Get", 0)
		})
	}
}

func TestGetFetchesAndCaches(t *testing.T) {
	e := newDefaultEnv(t)
	start := e.clock.Now()

	p := e.mustGet(t, "first Get")
	want := &Policy{ID: "1", Mode: ModeEnforce, MX: []string{"mx1.example.test", "*.mx.example.test"}, MaxAge: time.Hour, Fetched: start}
	if !equalPolicy(p, want) {
		t.Errorf("first Get(%q) = %+v, want %+v", domain, p, want)
	}
	e.checkHits(t, "first Get", 1)
	// The URL named the policy host, which no system resolver knows: the
	// fetch worked only because the checked address was dialed.
	if sni := e.srv.SNI(); !slices.Equal(sni, []string{policyHost}) {
		t.Errorf("TLS server names = %q, want [%q]", sni, policyHost)
	}
	if !p.Match("mx1.example.test") || !p.Match("a.mx.example.test") || p.Match("evil.test") {
		t.Errorf("fetched policy %+v matches the wrong hosts", p)
	}

	e.clock.Advance(time.Minute)
	if again := e.mustGet(t, "same id"); again != p {
		t.Errorf("Get(%q) with the id unchanged = %+v, want the cached %+v", domain, again, p)
	}
	e.checkHits(t, "same id", 1)

	e.dns.Update(zone("v=STSv1; id=2"))
	e.srv.set(serveBody(testingPolicy), e.cert)
	p2 := e.mustGet(t, "new id")
	want2 := &Policy{ID: "2", Mode: ModeTesting, MX: []string{"mx2.example.test"}, MaxAge: time.Hour, Fetched: start.Add(time.Minute)}
	if !equalPolicy(p2, want2) {
		t.Errorf("Get(%q) after the id changed = %+v, want %+v", domain, p2, want2)
	}
	e.checkHits(t, "new id", 2)

	if again := e.mustGet(t, "new id again"); again != p2 {
		t.Errorf("Get(%q) with the new id unchanged = %+v, want the cached %+v", domain, again, p2)
	}
	e.checkHits(t, "new id again", 2)

	// Case and a trailing dot do not make another domain.
	if again, err := e.cache.Get(t.Context(), "Example.TEST."); err != nil || again != p2 {
		t.Errorf("Get(Example.TEST.) = %+v, %v; want the cached %+v", again, err, p2)
	}
}

func TestGetFetchFailures(t *testing.T) {
	tests := []struct {
		name     string
		handler  http.Handler
		cert     func(e *env) tls.Certificate // nil: the CA's certificate for the policy host
		wantErr  string
		wantIs   error // besides ErrFetch
		wantHits int   // requests reaching the handler per fetch
	}{
		{
			name:     "not found",
			handler:  http.NotFoundHandler(),
			wantErr:  "status 404",
			wantHits: 1,
		},
		{
			name: "server error",
			handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "oops", http.StatusInternalServerError)
			}),
			wantErr:  "status 500",
			wantHits: 1,
		},
		{
			name: "wrong media type",
			handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				_, _ = io.WriteString(w, enforcePolicy)
			}),
			wantErr:  `media type "text/html"`,
			wantHits: 1,
		},
		{
			name: "no media type",
			handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header()["Content-Type"] = nil // no sniffing
				_, _ = io.WriteString(w, enforcePolicy)
			}),
			wantErr:  `media type ""`,
			wantHits: 1,
		},
		{
			name: "redirect not followed",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == wellKnownPath {
					http.Redirect(w, r, "/moved.txt", http.StatusFound)
					return
				}
				w.Header().Set("Content-Type", "text/plain")
				_, _ = io.WriteString(w, enforcePolicy)
			}),
			wantErr:  `redirect to "/moved.txt" not followed`,
			wantHits: 1,
		},
		{
			name: "body over 64 KiB",
			handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "text/plain")
				_, _ = io.WriteString(w, maxSizePolicy()+"\n")
			}),
			wantErr:  "body exceeds 65536 bytes",
			wantHits: 1,
		},
		{
			name:     "invalid policy",
			handler:  serveBody("version: STSv1\nmode: enforce\nmax_age: 3600\n"),
			wantErr:  "missing mx",
			wantIs:   ErrInvalidPolicy,
			wantHits: 1,
		},
		{
			name:    "self-signed certificate",
			handler: serveBody(enforcePolicy),
			cert:    func(*env) tls.Certificate { return testenv.SelfSigned(t, policyHost) },
			wantErr: "certificate",
		},
		{
			name:    "certificate for another name",
			handler: serveBody(enforcePolicy),
			cert:    func(e *env) tls.Certificate { return e.ca.Issue("mx1.example.test") },
			wantErr: "certificate is valid for mx1.example.test, not mta-sts.example.test",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name+", nothing cached", func(t *testing.T) {
			t.Parallel()
			e := newDefaultEnv(t)
			cert := e.cert
			if tc.cert != nil {
				cert = tc.cert(e)
			}
			e.srv.set(tc.handler, cert)
			p, err := e.cache.Get(t.Context(), domain)
			if p != nil || !errors.Is(err, ErrFetch) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Get(%q) = %+v, %v; want nil and an ErrFetch error containing %q", domain, p, err, tc.wantErr)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("Get(%q) error = %v, want it to wrap %v", domain, err, tc.wantIs)
			}
			e.checkHits(t, "failed fetch", tc.wantHits)
		})
		t.Run(tc.name+", policy cached", func(t *testing.T) {
			t.Parallel()
			e := newDefaultEnv(t)
			cached := e.mustGet(t, "first Get")

			e.dns.Update(zone("v=STSv1; id=2"))
			cert := e.cert
			if tc.cert != nil {
				cert = tc.cert(e)
			}
			e.srv.set(tc.handler, cert)
			e.clock.Advance(time.Minute)
			if p := e.mustGet(t, "failed fetch of id 2"); p != cached {
				t.Errorf("Get(%q) with the fetch of id 2 failing = %+v, want the cached %+v", domain, p, cached)
			}
			e.checkHits(t, "failed fetch of id 2", 1+tc.wantHits)
			if got := len(e.srv.SNI()); got != 2 {
				t.Errorf("TLS handshakes = %d, want 2 (one per fetch)", got)
			}
		})
	}
}

// maxSizePolicy returns enforcePolicy padded with an unknown field to
// exactly MaxPolicySize bytes.
func maxSizePolicy() string {
	return enforcePolicy + "x: " + strings.Repeat("y", MaxPolicySize-len(enforcePolicy)-len("x: \n")) + "\n"
}

func TestGetPolicyOfMaximumSize(t *testing.T) {
	body := maxSizePolicy()
	if len(body) != MaxPolicySize {
		t.Fatalf("test body is %d bytes, want %d", len(body), MaxPolicySize)
	}
	e := newEnv(t, zone("v=STSv1; id=1"), serveBody(body), Config{AllowPrivate: true})
	if p := e.mustGet(t, "Get"); p == nil || p.Mode != ModeEnforce {
		t.Errorf("Get(%q) of a %d-byte policy = %+v, want the enforce policy", domain, len(body), p)
	}
}

func TestGetFailureBackoff(t *testing.T) {
	e := newEnv(t, zone("v=STSv1; id=1"), http.NotFoundHandler(), Config{AllowPrivate: true})
	steps := []struct {
		name     string
		advance  time.Duration
		id       string
		fix      bool // serve the policy from this step on
		wantOK   bool
		backoff  bool // the error says the cache is backing off
		wantHits int
	}{
		{name: "fetch fails", id: "1", wantHits: 1},
		{name: "no refetch right after", id: "1", backoff: true, wantHits: 1},
		{name: "no refetch just before the back-off ends", advance: FailureBackoff - time.Second, id: "1", fix: true, backoff: true, wantHits: 1},
		{name: "refetch once it has ended", advance: time.Second, id: "1", wantOK: true, wantHits: 2},
		{name: "cached", id: "1", wantOK: true, wantHits: 2},
	}
	for _, st := range steps {
		e.clock.Advance(st.advance)
		if st.fix {
			e.srv.set(serveBody(enforcePolicy), e.cert)
		}
		p, err := e.cache.Get(t.Context(), domain)
		if st.wantOK && (p == nil || err != nil) {
			t.Errorf("%s: Get(%q) = %+v, %v; want the policy", st.name, domain, p, err)
		}
		if !st.wantOK && (p != nil || !errors.Is(err, ErrFetch)) {
			t.Errorf("%s: Get(%q) = %+v, %v; want nil and an ErrFetch error", st.name, domain, p, err)
		}
		if errors.Is(err, ErrBackoff) != st.backoff {
			t.Errorf("%s: Get(%q) error %v; want ErrBackoff %v", st.name, domain, err, st.backoff)
		}
		e.checkHits(t, st.name, st.wantHits)
	}
}

func TestGetFailureBackoffIsPerID(t *testing.T) {
	e := newEnv(t, zone("v=STSv1; id=1"), http.NotFoundHandler(), Config{AllowPrivate: true})
	if _, err := e.cache.Get(t.Context(), domain); !errors.Is(err, ErrFetch) {
		t.Fatalf("Get(%q) error = %v, want ErrFetch", domain, err)
	}
	e.dns.Update(zone("v=STSv1; id=2"))
	e.srv.set(serveBody(enforcePolicy), e.cert)
	if p := e.mustGet(t, "new id"); p.ID != "2" {
		t.Errorf("Get(%q) after the id changed = %+v, want policy id 2", domain, p)
	}
	e.checkHits(t, "new id", 2)
}

func TestGetExpiry(t *testing.T) {
	e := newDefaultEnv(t)
	steps := []struct {
		name     string
		advance  time.Duration
		txts     []string
		wantID   string // "" means nil
		wantHits int
	}{
		{name: "fetched", txts: []string{"v=STSv1; id=1"}, wantID: "1", wantHits: 1},
		{name: "cached until max_age", advance: time.Hour - time.Second, txts: []string{"v=STSv1; id=1"}, wantID: "1", wantHits: 1},
		{name: "cached policy applies when the record is gone", txts: nil, wantID: "1", wantHits: 1},
		{name: "expired, no record: no policy", advance: time.Second, txts: nil, wantID: "", wantHits: 1},
		{name: "record back with the same id: refetched", txts: []string{"v=STSv1; id=1"}, wantID: "1", wantHits: 2},
		{name: "expired with the same id: refetched", advance: time.Hour, txts: []string{"v=STSv1; id=1"}, wantID: "1", wantHits: 3},
	}
	for _, st := range steps {
		e.clock.Advance(st.advance)
		e.dns.Update(zone(st.txts...))
		p, err := e.cache.Get(t.Context(), domain)
		if err != nil {
			t.Fatalf("%s: Get(%q) error = %v", st.name, domain, err)
		}
		switch {
		case st.wantID == "" && p != nil:
			t.Errorf("%s: Get(%q) = %+v, want nil", st.name, domain, p)
		case st.wantID != "" && (p == nil || p.ID != st.wantID):
			t.Errorf("%s: Get(%q) = %+v, want policy id %s", st.name, domain, p, st.wantID)
		}
		e.checkHits(t, st.name, st.wantHits)
	}
}

func TestGetTXTLookupFails(t *testing.T) {
	e := newDefaultEnv(t)
	e.dns.SetRcode("_mta-sts.example.test", dns.RcodeServerFailure)
	p, err := e.cache.Get(t.Context(), domain)
	if p != nil || err == nil || !strings.Contains(err.Error(), "TXT lookup") {
		t.Errorf("Get(%q) with SERVFAIL and nothing cached = %+v, %v; want nil and a TXT lookup error", domain, p, err)
	}

	e.dns.SetRcode("_mta-sts.example.test", dns.RcodeSuccess)
	cached := e.mustGet(t, "TXT answers again")
	e.dns.SetRcode("_mta-sts.example.test", dns.RcodeServerFailure)
	if p, err := e.cache.Get(t.Context(), domain); p != cached || err != nil {
		t.Errorf("Get(%q) with SERVFAIL and a cached policy = %+v, %v; want the cached %+v, nil", domain, p, err, cached)
	}
	e.checkHits(t, "Get", 1)
}

func TestGetSharesConcurrentFetches(t *testing.T) {
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		serveBody(enforcePolicy).ServeHTTP(w, r)
	})
	e := newEnv(t, zone("v=STSv1; id=1"), h, Config{AllowPrivate: true})
	// Registered after the policy host's cleanup, so it runs first: a
	// failing test must not leave the handler blocked while the server
	// waits for it to return.
	releaseAll := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseAll)

	const n = 10
	type result struct {
		p   *Policy
		err error
	}
	results := make(chan result, n)
	for range n {
		go func() {
			p, err := e.cache.Get(t.Context(), domain)
			results <- result{p, err}
		}()
	}
	// Every Get must have joined the one fetch before it may finish;
	// otherwise a late Get would find the policy cached and prove nothing.
	waitFor(t, "all Gets to wait on one fetch", func() bool {
		e.cache.mu.Lock()
		defer e.cache.mu.Unlock()
		fl := e.cache.flights[flightKey{domain: domain, id: "1"}]
		return len(e.cache.flights) == 1 && fl != nil && fl.waiters == n
	})
	releaseAll()
	var first *Policy
	for range n {
		r := <-results
		if r.err != nil || r.p == nil {
			t.Fatalf("concurrent Get(%q) = %+v, %v; want the policy", domain, r.p, r.err)
		}
		if first == nil {
			first = r.p
		}
		if r.p != first {
			t.Errorf("concurrent Gets returned different policies %p and %p, want one shared fetch", r.p, first)
		}
	}
	e.checkHits(t, "concurrent Gets", 1)
}

func TestGetAbandonedFetch(t *testing.T) {
	canceled := make(chan struct{})
	h := http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		close(canceled)
	})
	e := newEnv(t, zone("v=STSv1; id=1"), h, Config{AllowPrivate: true})

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := e.cache.Get(ctx, domain)
		done <- err
	}()
	waitFor(t, "the fetch to reach the policy host", func() bool { return e.srv.Hits() == 1 })
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Get(%q) with ctx canceled = %v, want context.Canceled", domain, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Get(%q) did not return within 10s of its ctx ending", domain)
	}
	select {
	case <-canceled:
	case <-time.After(10 * time.Second):
		t.Fatalf("the policy host's request was not canceled within 10s of the last caller leaving")
	}

	// An abandoned fetch says nothing about the policy host: no back-off.
	e.srv.set(serveBody(enforcePolicy), e.cert)
	if p := e.mustGet(t, "after the abandoned fetch"); p.ID != "1" {
		t.Errorf("Get(%q) after an abandoned fetch = %+v, want policy id 1", domain, p)
	}
	e.checkHits(t, "after the abandoned fetch", 2)
}

func TestGetFetchTimeout(t *testing.T) {
	h := http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	e := newEnv(t, zone("v=STSv1; id=1"), h, Config{AllowPrivate: true, Timeout: 200 * time.Millisecond})
	p, err := e.cache.Get(t.Context(), domain)
	if p != nil || !errors.Is(err, ErrFetch) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get(%q) with a silent policy host = %+v, %v; want nil and ErrFetch wrapping context.DeadlineExceeded", domain, p, err)
	}
}

func TestGetEgressGuard(t *testing.T) {
	tests := []struct {
		name    string
		domain  string
		wantIs  error
		wantErr string
	}{
		{name: "loopback ipv4", domain: domain, wantIs: ErrNonPublic, wantErr: "127.0.0.1: loopback"},
		{name: "loopback ipv4 and ipv6", domain: "private.test", wantIs: ErrNonPublic, wantErr: "::1: loopback"},
		{name: "no address records", domain: "nohost.test", wantErr: "has no A or AAAA records"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, zone("v=STSv1; id=1"), serveBody(enforcePolicy), Config{AllowPrivate: false})
			p, err := e.cache.Get(t.Context(), tc.domain)
			if p != nil || !errors.Is(err, ErrFetch) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Get(%q) = %+v, %v; want nil and an ErrFetch error containing %q", tc.domain, p, err, tc.wantErr)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("Get(%q) error = %v, want it to wrap %v", tc.domain, err, tc.wantIs)
			}
			e.checkHits(t, "Get", 0)
			if n := len(e.srv.SNI()); n != 0 {
				t.Errorf("Get(%q): %d TLS handshakes reached the policy host, want 0", tc.domain, n)
			}
		})
	}
}

func TestGetInvalidDomain(t *testing.T) {
	e := newDefaultEnv(t)
	for _, d := range []string{"", ".", "a..test", "[127.0.0.1]", "example.test:443", strings.Repeat("a.", 123) + "test"} {
		if p, err := e.cache.Get(t.Context(), d); p != nil || err == nil {
			t.Errorf("Get(%q) = %+v, %v; want nil and an error", d, p, err)
		}
	}
	if q := e.dns.Queries(); q != 0 {
		t.Errorf("invalid domains sent %d DNS queries, want 0", q)
	}
}

// waitFor polls cond until it holds, failing the test after 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 10s waiting for %s", what)
		}
		<-tick.C
	}
}
