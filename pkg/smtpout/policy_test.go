package smtpout

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/postflow/postflow/pkg/testenv"
)

// TestRequireTLS covers the require policy (RFC 3207 §4.1; TESTPLAN B10):
// mail goes only over STARTTLS with a certificate that verifies for the
// target's host, and every other case defers before MAIL with nothing sent.
func TestRequireTLS(t *testing.T) {
	t.Parallel()
	ca := testenv.NewCA(t)
	good := &tls.Config{Certificates: []tls.Certificate{ca.Issue("mx.test")}}
	tests := []struct {
		name     string
		script   testenv.SinkScript
		host     string
		enhanced string // "" means delivered
	}{
		{"verified certificate", testenv.SinkScript{TLS: good}, "mx.test", ""},
		{"no STARTTLS offered", testenv.SinkScript{}, "mx.test", "4.7.4"},
		{"self-signed certificate", testenv.SinkScript{TLS: &tls.Config{Certificates: []tls.Certificate{testenv.SelfSigned(t, "mx.test")}}}, "mx.test", "4.7.5"},
		{"certificate for another name", testenv.SinkScript{TLS: good}, "other.test", "4.7.5"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := testenv.StartSMTPSink(t, tc.script)
			cfg := testConfig()
			cfg.TLSConfig = &tls.Config{RootCAs: ca.Pool()}
			target := Target{Host: tc.host, Addr: sink.Addr(), TLS: TLSRequire}
			res := New(cfg).Deliver(context.Background(), []Target{target}, env("a@example.net", "b@example.net"), []byte(testBody))
			if tc.enhanced == "" {
				if !res.Recipients[0].Delivered || !res.Recipients[1].Delivered || !res.TLS.Verified || sink.Count() != 1 {
					t.Fatalf("result %+v, TLS %+v, sink count %d; want both delivered once over verified TLS", res.Recipients, res.TLS, sink.Count())
				}
				return
			}
			for i, r := range res.Recipients {
				_ = wantErr(t, fmt.Sprint("recipient ", i), r, true, 451, tc.enhanced)
			}
			if sink.Count() != 0 || sink.RcptAttempts("a@example.net") != 0 {
				t.Fatalf("sink got %d messages and %d RCPTs, want none under the require policy", sink.Count(), sink.RcptAttempts("a@example.net"))
			}
		})
	}
}

// TestRequireTLSTriesTheNextTarget: a policy failure is a failure of that
// host, so the next MX is tried in the same attempt.
func TestRequireTLSTriesTheNextTarget(t *testing.T) {
	t.Parallel()
	ca := testenv.NewCA(t)
	plain := testenv.StartSMTPSink(t, testenv.SinkScript{})
	secure := testenv.StartSMTPSink(t, testenv.SinkScript{TLS: &tls.Config{Certificates: []tls.Certificate{ca.Issue("mx2.test")}}})
	cfg := testConfig()
	cfg.TLSConfig = &tls.Config{RootCAs: ca.Pool()}
	targets := []Target{
		{Host: "mx1.test", Addr: plain.Addr(), TLS: TLSRequire},
		{Host: "mx2.test", Addr: secure.Addr(), TLS: TLSRequire},
	}
	res := New(cfg).Deliver(context.Background(), targets, env("a@example.net"), []byte(testBody))
	if !res.Recipients[0].Delivered || res.Target.Host != "mx2.test" || plain.Count() != 0 || secure.Count() != 1 {
		t.Fatalf("result %+v via %s; plain sink %d, TLS sink %d; want delivery through mx2 only", res.Recipients[0], res.Target.Host, plain.Count(), secure.Count())
	}
}

// TestPoolKeepsPoliciesApart: a session opened opportunistically over plain
// text must not carry a message whose policy requires TLS.
func TestPoolKeepsPoliciesApart(t *testing.T) {
	t.Parallel()
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{})
	c := New(testConfig())
	defer func() { _ = c.Close() }()
	target := sinkTarget(sink)
	if res := c.Deliver(context.Background(), []Target{target}, env("a@example.net"), []byte(testBody)); !res.Recipients[0].Delivered {
		t.Fatalf("opportunistic delivery failed: %+v", res.Recipients[0])
	}
	if c.idleLen() != 1 {
		t.Fatalf("idle sessions = %d, want the opportunistic one pooled", c.idleLen())
	}
	target.TLS = TLSRequire
	res := c.Deliver(context.Background(), []Target{target}, env("a@example.net"), []byte(testBody))
	_ = wantErr(t, "require over the pooled plain session", res.Recipients[0], true, 451, "4.7.4")
	if sink.Count() != 1 {
		t.Fatalf("sink count = %d, want 1: the require delivery must not use the plain session", sink.Count())
	}
}

// TestImplicitTLS covers a relay on port 465 (RFC 8314 §3.3): TLS from the
// first byte, certificate verified.
func TestImplicitTLS(t *testing.T) {
	t.Parallel()
	ca := testenv.NewCA(t)
	for _, tc := range []struct {
		name     string
		cert     tls.Certificate
		delivers bool
	}{
		{"verified", ca.Issue("relay.test"), true},
		{"self-signed", testenv.SelfSigned(t, "relay.test"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := testenv.StartSMTPSink(t, testenv.SinkScript{ImplicitTLS: true, TLS: &tls.Config{Certificates: []tls.Certificate{tc.cert}}})
			cfg := testConfig()
			cfg.TLSConfig = &tls.Config{RootCAs: ca.Pool()}
			target := Target{Host: "relay.test", Addr: sink.Addr(), TLS: TLSImplicit}
			res := New(cfg).Deliver(context.Background(), []Target{target}, env("a@example.net"), []byte(testBody))
			if !tc.delivers {
				_ = wantErr(t, "unverified implicit TLS", res.Recipients[0], true, 451, "4.7.5")
				if sink.Count() != 0 {
					t.Fatalf("sink count = %d, want 0", sink.Count())
				}
				return
			}
			if !res.Recipients[0].Delivered || !res.TLS.Verified || res.TLS.Version == "" || sink.Count() != 1 {
				t.Fatalf("result %+v, TLS %+v, sink %d; want one delivery over verified TLS", res.Recipients[0], res.TLS, sink.Count())
			}
		})
	}
}

// TestSmarthostAuth logs in to a relay with each mechanism, and checks that a
// refused login defers without the password in the error.
func TestSmarthostAuth(t *testing.T) {
	t.Parallel()
	ca := testenv.NewCA(t)
	const password = "s3cret-Pa55"
	tests := []struct {
		name     string
		mechs    []string
		auth     *Auth
		mode     TLSMode
		implicit bool
		enhanced string // "" means delivered
	}{
		{"PLAIN over STARTTLS", []string{"PLAIN"}, &Auth{"relay-user", password}, TLSRequire, false, ""},
		{"LOGIN over STARTTLS", []string{"LOGIN"}, &Auth{"relay-user", password}, TLSRequire, false, ""},
		{"PLAIN over implicit TLS", nil, &Auth{"relay-user", password}, TLSImplicit, true, ""},
		{"wrong password", nil, &Auth{"relay-user", "wrong-" + password}, TLSRequire, false, "4.7.8"},
		{"no shared mechanism", []string{"CRAM-MD5"}, &Auth{"relay-user", password}, TLSRequire, false, "4.7.8"},
		{"no login without auth", nil, nil, TLSRequire, false, "5.7.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := testenv.StartSMTPSink(t, testenv.SinkScript{
				TLS:            &tls.Config{Certificates: []tls.Certificate{ca.Issue("relay.test")}},
				ImplicitTLS:    tc.implicit,
				Auth:           map[string]string{"relay-user": password},
				AuthMechanisms: tc.mechs,
			})
			cfg := testConfig()
			cfg.TLSConfig = &tls.Config{RootCAs: ca.Pool()}
			target := Target{Host: "relay.test", Addr: sink.Addr(), TLS: tc.mode, Auth: tc.auth}
			res := New(cfg).Deliver(context.Background(), []Target{target}, env("a@example.net"), []byte(testBody))
			r := res.Recipients[0]
			if tc.enhanced == "" {
				msgs := sink.Messages()
				if !r.Delivered || len(msgs) != 1 || msgs[0].AuthUser != "relay-user" {
					t.Fatalf("result %+v, sink messages %d; want one delivery as relay-user", r, len(msgs))
				}
				return
			}
			if r.Delivered || sink.Count() != 0 {
				t.Fatalf("result %+v, sink count %d; want a failure and nothing relayed", r, sink.Count())
			}
			if tc.enhanced == "5.7.0" {
				// The relay's own refusal at MAIL (go-smtp says 502): permanent, as
				// any 5xx at MAIL is.
				_ = wantErr(t, "MAIL without login", r, false, 502, "5.7.0")
				return
			}
			de := wantErr(t, "auth failure", r, true, 451, tc.enhanced)
			if strings.Contains(de.Error(), password) || strings.Contains(fmt.Sprintf("%+v %#v", target, target), password) {
				t.Fatalf("the password leaked into %q or the target's formatting", de.Error())
			}
		})
	}
}

// TestNoCredentialsInPlainText: an opportunistic target with credentials
// whose server offers no STARTTLS fails rather than logging in.
func TestNoCredentialsInPlainText(t *testing.T) {
	t.Parallel()
	sink := testenv.StartSMTPSink(t, testenv.SinkScript{})
	target := Target{Host: "relay.test", Addr: sink.Addr(), Auth: &Auth{"u", "p"}}
	res := New(testConfig()).Deliver(context.Background(), []Target{target}, env("a@example.net"), []byte(testBody))
	_ = wantErr(t, "plain-text login", res.Recipients[0], true, 451, "4.7.4")
	if sink.Count() != 0 {
		t.Fatalf("sink count = %d, want 0", sink.Count())
	}
}

// TestNo8BITMIME: 8-bit content never reaches a server that does not offer
// 8BITMIME (RFC 6152 §3). With a conversion hook the converted body is
// sent; without one the recipients fail with 5.6.3 before MAIL.
func TestNo8BITMIME(t *testing.T) {
	t.Parallel()
	const converted = "From: a@example.org\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A9t=C3=A9\r\n"
	for _, tc := range []struct {
		name string
		hook func() ([]byte, error)
		want string // body received; "" means none and a 5.6.3 failure
	}{
		{"converted", func() ([]byte, error) { return []byte(converted), nil }, converted},
		{"no hook", nil, ""},
		{"conversion fails", func() ([]byte, error) { return nil, errors.New("cannot") }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var (
				mu       sync.Mutex
				got      strings.Builder
				sawMail  bool
				mailLine string
			)
			target := startScriptedServer(t, func(cmd string, conn net.Conn, r *bufio.Reader) bool {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case strings.HasPrefix(cmd, "EHLO"):
					_, _ = io.WriteString(conn, "250-seven.test\r\n250 SIZE 100000\r\n")
				case strings.HasPrefix(cmd, "MAIL"):
					sawMail, mailLine = true, cmd
					_, _ = io.WriteString(conn, "250 ok\r\n")
				case cmd == "DATA":
					_, _ = io.WriteString(conn, "354 go ahead\r\n")
					body, ok := readDataLines(r)
					if !ok {
						return false
					}
					got.WriteString(body)
					_, _ = io.WriteString(conn, "250 2.0.0 queued\r\n")
				default:
					return basicReply(cmd, conn)
				}
				return true
			})
			e := env("a@example.net")
			e.SevenBit = tc.hook
			c := New(testConfig())
			res := c.Deliver(context.Background(), []Target{target}, e, []byte(testBody))
			_ = c.Close() // ends the pooled session, and with it the server's loop
			mu.Lock()
			defer mu.Unlock()
			if tc.want == "" {
				_ = wantErr(t, "8-bit to a 7-bit server", res.Recipients[0], false, 554, "5.6.3")
				if sawMail {
					t.Fatal("MAIL was sent although the message could not go to this server")
				}
				return
			}
			if !res.Recipients[0].Delivered || got.String() != tc.want || strings.Contains(mailLine, "8BITMIME") {
				t.Fatalf("result %+v, MAIL %q, body %q; want the converted body without BODY=8BITMIME", res.Recipients[0], mailLine, got.String())
			}
		})
	}
}
