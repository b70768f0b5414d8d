package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// writeRoutes writes a routes file and returns a stackOpt that uses it.
func writeRoutes(t *testing.T, doc string) stackOpt {
	t.Helper()
	path := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(c *serveConfig) { c.RoutesFile = path }
}

func withRoots(ca *testenv.CA) stackOpt {
	path := ca.WritePEM()
	return func(c *serveConfig) { c.TLSRoots = path }
}

func fastRetries(c *serveConfig) {
	c.RetryMin, c.RetryMax = 100*time.Millisecond, 100*time.Millisecond
}

// TestRequireTLSPolicy is TESTPLAN B10 for a domain whose route says
// `tls: require`: without STARTTLS, or with a certificate that does not
// verify, nothing is delivered; the mail defers until it expires with the
// TLS diagnostic. With a verifiable certificate it is delivered, and the
// TLS details are recorded.
func TestRequireTLSPolicy(t *testing.T) {
	ca := testenv.NewCA(t)
	routes := "rules:\n  - match: [example.test]\n    tls: require\n"
	for _, tc := range []struct {
		name     string
		tls      *tls.Config
		enhanced string // of the deferrals; "" means delivered
	}{
		{"no STARTTLS", nil, "4.7.4"},
		{"self-signed certificate", &tls.Config{Certificates: []tls.Certificate{testenv.SelfSigned(t, "mx.example.test")}}, "4.7.5"},
		{"verified certificate", &tls.Config{Certificates: []tls.Certificate{ca.Issue("mx.example.test")}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startStack(t, testenv.SinkScript{TLS: tc.tls}, writeRoutes(t, routes), withRoots(ca), fastRetries)
			expireAt := time.Now().Add(time.Second)
			resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"a@example.test", "b@other.test"},
				Subject: "s", Text: "t", ExpireAt: timestamppb.New(expireAt)})
			st := s.waitFinal(resp.GetMessageId(), 30*time.Second)
			a, b := st.GetRecipients()[0], st.GetRecipients()[1]
			// other.test has no rule: opportunistic, delivered whatever the certificate.
			if b.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED {
				t.Fatalf("b@other.test: %v, want DELIVERED under the default policy", b.GetState())
			}
			// B10 (i): without STARTTLS the opportunistic delivery is
			// recorded as plain text (no TLS version).
			if plain := tc.tls == nil; plain != (b.GetTls().GetVersion() == "") {
				t.Errorf("b@other.test: TLS %v recorded, want none exactly when STARTTLS is not offered", b.GetTls())
			}
			if tc.enhanced == "" {
				if a.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED || !a.GetTls().GetVerified() || a.GetTls().GetVersion() == "" {
					t.Fatalf("a@example.test: %v with TLS %v, want DELIVERED over verified TLS", a.GetState(), a.GetTls())
				}
				return
			}
			if a.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_EXPIRED || a.GetAttempts() < 2 {
				t.Fatalf("a@example.test: %v after %d attempts, want EXPIRED after at least 2", a.GetState(), a.GetAttempts())
			}
			for _, ev := range a.GetEvents() {
				if ev.GetState() == postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED && ev.GetReply().GetEnhancedCode() != tc.enhanced {
					t.Errorf("deferral %v, want %s", ev.GetReply(), tc.enhanced)
				}
			}
			if a.GetLastReply().GetEnhancedCode() != "4.4.7" || !strings.Contains(a.GetLastReply().GetText(), "TLS") {
				t.Errorf("expiry reply %v, want 4.4.7 with the TLS diagnostic", a.GetLastReply())
			}
			if a.GetCategory() != "expired" {
				t.Errorf("category %q, want expired", a.GetCategory())
			}
			for _, m := range s.sink.Messages() {
				for _, to := range m.To {
					if to == "a@example.test" {
						t.Fatal("a@example.test was delivered in spite of the require policy")
					}
				}
			}
		})
	}
}

// TestSmarthostRoute relays every domain through a submission server that
// wants STARTTLS and a login, as SES's SMTP interface does; the password
// comes from the environment and appears in no log line, even when the
// login fails.
func TestSmarthostRoute(t *testing.T) {
	const password = "Relay-Pa55word-e2e"
	t.Setenv("POSTFLOW_TEST_RELAY_PASSWORD", password)
	ca := testenv.NewCA(t)
	for _, tc := range []struct {
		name      string
		implicit  bool
		password  string
		delivered bool
	}{
		{"STARTTLS on 587", false, password, true},
		{"implicit TLS on 465", true, password, true},
		{"wrong password", false, "not-" + password, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			script := testenv.SinkScript{
				TLS:         &tls.Config{Certificates: []tls.Certificate{ca.Issue("relay.test")}},
				ImplicitTLS: tc.implicit,
				Auth:        map[string]string{"relay-user": tc.password},
			}
			var s *stack
			mode := "starttls"
			if tc.implicit {
				mode = "implicit"
			}
			// The sink's port is only known once it runs, so the routes
			// file is written by the option, which runs after that.
			routesOpt := func(c *serveConfig) {
				doc := fmt.Sprintf("default:\n  smarthost:\n    host: relay.test\n    port: %d\n    tls: %s\n"+
					"    username: relay-user\n    password_env: POSTFLOW_TEST_RELAY_PASSWORD\n", c.SMTPPort, mode)
				writeRoutes(t, doc)(c)
			}
			s = startStack(t, script, withRoots(ca), routesOpt, fastRetries)
			s.dns.Update(zone + "relay.test. 60 IN A 127.0.0.1\n")
			// nowhere.invalid has no DNS at all: only the relay can take it.
			req := &postflowv1.SendRequest{From: "me@sender.test", To: []string{"x@nowhere.invalid"}, Subject: "s", Text: "t"}
			if !tc.delivered {
				req.ExpireAt = timestamppb.New(time.Now().Add(time.Second))
			}
			resp := s.send(req)
			r := s.waitFinal(resp.GetMessageId(), 30*time.Second).GetRecipients()[0]
			if tc.delivered {
				msgs := s.sink.Messages()
				if r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED || len(msgs) != 1 || msgs[0].AuthUser != "relay-user" {
					t.Fatalf("state %v (%v), %d relayed; want DELIVERED through the relay as relay-user", r.GetState(), r.GetLastReply(), len(msgs))
				}
				if r.GetMxHost() != "relay.test" || !r.GetTls().GetVerified() {
					t.Errorf("delivered via %q with TLS %v, want relay.test over verified TLS", r.GetMxHost(), r.GetTls())
				}
			} else {
				if r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_EXPIRED || s.sink.Count() != 0 {
					t.Fatalf("state %v, relayed %d; want EXPIRED with nothing relayed after a refused login", r.GetState(), s.sink.Count())
				}
				if !strings.Contains(r.GetLastReply().GetText(), "authentication") {
					t.Errorf("last reply %v, want the authentication failure", r.GetLastReply())
				}
			}
			if logs := s.logs.String(); strings.Contains(logs, password) || !strings.Contains(logs, "worker: attempt") {
				t.Fatalf("logs leak the password or are not captured (%d bytes)", len(logs))
			}
		})
	}
}

// TestMTASTSEnforce is TESTPLAN B10 (ii): a domain publishing an MTA-STS
// policy in enforce mode (RFC 8461) gets mail only over verified TLS to an
// MX host its policy lists; otherwise 0 deliveries, deferrals, then expiry.
// A policy in testing mode changes nothing.
func TestMTASTSEnforce(t *testing.T) {
	ca := testenv.NewCA(t)
	verified := &tls.Config{Certificates: []tls.Certificate{ca.Issue("mx.example.test")}}
	selfSigned := &tls.Config{Certificates: []tls.Certificate{testenv.SelfSigned(t, "mx.example.test")}}
	for _, tc := range []struct {
		name     string
		policy   string
		tls      *tls.Config
		enhanced string // of the deferrals; "" means delivered
	}{
		{"enforce, verified certificate", "mode: enforce\nmx: *.example.test", verified, ""},
		{"enforce, self-signed certificate", "mode: enforce\nmx: mx.example.test", selfSigned, "4.7.5"},
		{"enforce, STARTTLS not offered", "mode: enforce\nmx: mx.example.test", nil, "4.7.4"},
		{"enforce, MX not in the policy", "mode: enforce\nmx: mx.elsewhere.test", verified, "4.7.5"},
		{"testing, self-signed certificate", "mode: testing\nmx: mx.elsewhere.test", selfSigned, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fetches atomic.Int32
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Host != "mta-sts.example.test" && !strings.HasPrefix(r.Host, "mta-sts.example.test:") || r.URL.Path != "/.well-known/mta-sts.txt" {
					http.NotFound(w, r)
					return
				}
				fetches.Add(1)
				w.Header().Set("Content-Type", "text/plain")
				_, _ = fmt.Fprintf(w, "version: STSv1\r\n%s\r\nmax_age: 86400\r\n", strings.ReplaceAll(tc.policy, "\n", "\r\n"))
			}))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue("mta-sts.example.test")}}
			srv.StartTLS()
			t.Cleanup(srv.Close)
			port := srv.Listener.Addr().(*net.TCPAddr).Port

			s := startStack(t, testenv.SinkScript{TLS: tc.tls}, withRoots(ca), fastRetries,
				func(c *serveConfig) { c.mtastsPort = port })
			s.dns.Update(zone + "_mta-sts.example.test. 60 IN TXT \"v=STSv1; id=20261126;\"\n" +
				"mta-sts.example.test. 60 IN A 127.0.0.1\n")
			resp := s.send(&postflowv1.SendRequest{From: "me@sender.test", To: []string{"a@example.test"},
				Subject: "s", Text: "t", ExpireAt: timestamppb.New(time.Now().Add(time.Second))})
			r := s.waitFinal(resp.GetMessageId(), 30*time.Second).GetRecipients()[0]
			if fetches.Load() != 1 {
				t.Errorf("policy fetched %d times, want once (then cached)", fetches.Load())
			}
			if tc.enhanced == "" {
				if r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED || s.sink.Count() != 1 {
					t.Fatalf("state %v (%v), sink %d; want DELIVERED once", r.GetState(), r.GetLastReply(), s.sink.Count())
				}
				return
			}
			if r.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_EXPIRED || r.GetAttempts() < 2 || s.sink.Count() != 0 {
				t.Fatalf("state %v after %d attempts, sink %d; want EXPIRED after at least 2 attempts and 0 deliveries",
					r.GetState(), r.GetAttempts(), s.sink.Count())
			}
			for _, ev := range r.GetEvents() {
				if ev.GetState() == postflowv1.RecipientState_RECIPIENT_STATE_DEFERRED && ev.GetReply().GetEnhancedCode() != tc.enhanced {
					t.Errorf("deferral %v, want %s", ev.GetReply(), tc.enhanced)
				}
			}
		})
	}
}
