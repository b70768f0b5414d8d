package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postflow/postflow/pkg/smtpout"
)

func parseServe(t *testing.T, args []string, env map[string]string) (serveConfig, error) {
	t.Helper()
	cfg := defaultServeConfig()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	serveFlags(fs, &cfg)
	if err := parseWithEnv(fs, args, func(k string) string { return env[k] }); err != nil {
		return cfg, err
	}
	return cfg, cfg.finish()
}

func TestServeFlagsAndEnvironment(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(serveConfig) bool
	}{
		{"defaults", nil, nil, func(c serveConfig) bool {
			return c.GRPCAddr == "127.0.0.1:8025" && c.HTTPAddr == "127.0.0.1:8026" && c.DataDir == "./postflow-data" &&
				c.NATSURL == "" && c.SMTPPort == 25 && !c.AllowPrivateMX && c.Simulator && c.MaxAge == 120*time.Hour &&
				strings.Join(c.Roles, ",") == "api,worker,bounce"
		}},
		{"env sets", nil, map[string]string{"POSTFLOW_GRPC_ADDR": "127.0.0.1:9000", "POSTFLOW_SMTP_PORT": "2525", "POSTFLOW_ALLOW_PRIVATE_MX": "true", "POSTFLOW_ROLES": "worker"}, func(c serveConfig) bool {
			return c.GRPCAddr == "127.0.0.1:9000" && c.SMTPPort == 2525 && c.AllowPrivateMX && strings.Join(c.Roles, ",") == "worker"
		}},
		{"flag beats env", []string{"--smtp-port", "2626", "--simulator=false"}, map[string]string{"POSTFLOW_SMTP_PORT": "2525", "POSTFLOW_SIMULATOR": "true"}, func(c serveConfig) bool {
			return c.SMTPPort == 2626 && !c.Simulator
		}},
		{"every named flag has its env var", nil, map[string]string{
			"POSTFLOW_HTTP_ADDR": "127.0.0.1:1", "POSTFLOW_DATA_DIR": "/d", "POSTFLOW_NATS_URL": "nats://x:4222",
			"POSTFLOW_DNS_SERVER": "127.0.0.1:53", "POSTFLOW_MAX_AGE": "2h",
		}, func(c serveConfig) bool {
			return c.HTTPAddr == "127.0.0.1:1" && c.DataDir == "/d" && c.NATSURL == "nats://x:4222" && c.DNSServer == "127.0.0.1:53" && c.MaxAge == 2*time.Hour
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseServe(t, tc.args, tc.env)
			if err != nil {
				t.Fatalf("parse(%v, %v): %v", tc.args, tc.env, err)
			}
			if !tc.check(cfg) {
				t.Errorf("parse(%v, %v) = %+v, not what the case expects", tc.args, tc.env, cfg)
			}
		})
	}
}

func TestServeConfigRejectsBadInputAllAtOnce(t *testing.T) {
	_, err := parseServe(t, []string{"--roles", "api,mailer", "--smtp-port", "0", "--max-age", "1s", "--dns-server", "nohostport"}, nil)
	if err == nil {
		t.Fatal("invalid configuration accepted")
	}
	for _, want := range []string{"--roles", "--smtp-port", "--max-age", "--dns-server"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if _, err := parseServe(t, nil, map[string]string{"POSTFLOW_SMTP_PORT": "many"}); err == nil || !strings.Contains(err.Error(), "POSTFLOW_SMTP_PORT") {
		t.Errorf("bad env value: err = %v, want one naming POSTFLOW_SMTP_PORT", err)
	}
}

func TestRoutesAndRootsFilesAreChecked(t *testing.T) {
	dir := t.TempDir()
	routes, roots := filepath.Join(dir, "routes.yaml"), filepath.Join(dir, "roots.pem")
	if err := os.WriteFile(routes, []byte("default: {tls: strict}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(roots, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := parseServe(t, []string{"--routes", routes, "--tls-roots", roots}, nil)
	if err == nil || !strings.Contains(err.Error(), `--routes: `+routes+`: default: tls: "strict"`) || !strings.Contains(err.Error(), "--tls-roots: "+roots+" holds no PEM certificate") {
		t.Fatalf("err = %v, want both files' problems", err)
	}
	if err := os.WriteFile(routes, []byte("rules: [{match: [bank.example], tls: require}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseServe(t, []string{"--routes", routes}, nil)
	if err != nil || cfg.routes.Lookup("bank.example").TLS != smtpout.TLSRequire {
		t.Fatalf("valid routes file: err %v, bank.example route %+v", err, cfg.routes.Lookup("bank.example"))
	}
}

func TestDefaultsAreAtLeastTheRFCs(t *testing.T) {
	c := defaultServeConfig()
	if c.MaxAge < 4*24*time.Hour {
		t.Errorf("max age %v: RFC 5321 §4.5.4.1 gives up after at least 4-5 days", c.MaxAge)
	}
	if c.RetryMin < 5*time.Minute {
		t.Errorf("retry min %v below Postfix's 300 s minimal backoff", c.RetryMin)
	}
	if c.Queue.Duplicates < 10*time.Minute {
		t.Errorf("duplicate window %v below 10 min (TESTPLAN §7)", c.Queue.Duplicates)
	}
	if c.SMTPTimeouts.Command < 5*time.Minute || c.SMTPTimeouts.Data < 10*time.Minute {
		t.Errorf("SMTP timeouts %+v below RFC 5321 §4.5.3.2 (5 min per command, 10 min after the dot)", c.SMTPTimeouts)
	}
	if got, min := c.SMTPTimeouts.attempt(), 2*(c.SMTPTimeouts.Connect+6*c.SMTPTimeouts.Command+c.SMTPTimeouts.Data); got < min {
		t.Errorf("attempt deadline %v shorter than two full sessions %v", got, min)
	}
	if c.Queue.AckWait/3 > 20*time.Second {
		t.Errorf("heartbeat %v: TESTPLAN §7 wants InProgress at least every 20 s", c.Queue.AckWait/3)
	}
}

func TestRedactURL(t *testing.T) {
	tests := map[string]string{
		"":                             "",
		"nats://host:4222":             "nats://host:4222",
		"nats://user:secret@host:4222": "nats://REDACTED@host:4222",
		"redis://:pw@127.0.0.1:6379/0": "redis://REDACTED@127.0.0.1:6379/0",
		"user:secret@host:4222":        "REDACTED@host:4222",
	}
	for in, want := range tests {
		if got := redactURL(in); got != want || strings.Contains(got, "secret") {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestBounceSettingsAreChecked(t *testing.T) {
	dir := t.TempDir()
	short, good := filepath.Join(dir, "short"), filepath.Join(dir, "good")
	if err := os.WriteFile(short, []byte("tooshort\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const secret = "a secret of plenty of bytes"
	if err := os.WriteFile(good, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bounce-smtp-addr", "127.0.0.1:2525"}, "--bounce-smtp-addr: needs --bounce-domain"},
		{[]string{"--bounce-domain", "b.example"}, "--bounce-domain: needs --bounce-secret-file"},
		{[]string{"--bounce-domain", "b.example", "--bounce-secret-file", short}, "at least 16 required"},
		{[]string{"--bounce-domain", "b.example", "--bounce-secret-file", filepath.Join(dir, "none")}, "--bounce-secret-file"},
		{[]string{"--suppress-categories", "bad_mailbox,nonsense"}, `unknown category "nonsense"`},
		{[]string{"--events-retention", "10m"}, "--events-retention"},
	} {
		_, err := parseServe(t, tc.args, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want one containing %q", tc.args, err, tc.want)
		}
	}
	cfg, err := parseServe(t, []string{"--bounce-domain", "B.Example", "--bounce-secret-file", good, "--suppress-categories", "bad_mailbox, mailbox_disabled"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.verp == nil || cfg.verp.Domain() != "b.example" || strings.Join(cfg.SuppressCategories, ",") != "bad_mailbox,mailbox_disabled" {
		t.Errorf("verp %v, categories %v", cfg.verp, cfg.SuppressCategories)
	}
	if strings.Contains(fmt.Sprint(cfg.logAttrs()...), secret) {
		t.Error("the effective configuration shows the bounce secret")
	}
}
