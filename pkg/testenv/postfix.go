package testenv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ReceiverOptions configures a real receiving MTA (StartPostfix,
// StartHaraka) the way a destination's operator would: which domains it
// takes mail for, which users it does not know, and what it advertises.
type ReceiverOptions struct {
	// Domains are the recipient domains the receiver accepts mail for. Mail
	// for any other domain is refused at RCPT, as an MX that is no open
	// relay refuses it. At least one is required.
	Domains []string
	// RejectRecipients are addresses in Domains that the receiver does not
	// know: it refuses them at RCPT with its own reply text.
	RejectRecipients []string
	// CertFile and KeyFile, when both are set, are PEM files (see
	// WriteKeyPair) with which the receiver offers STARTTLS.
	CertFile, KeyFile string
	// MessageSizeLimit is the receiver's maximum message size in bytes,
	// advertised with SIZE (RFC 1870); 0 keeps the receiver's default.
	MessageSizeLimit int
	// NoPipelining leaves PIPELINING (RFC 2920) out of the EHLO reply.
	NoPipelining bool

	// LocalDomains (StartPostfix only) are recipient domains delivered by
	// local(8), as a host's own domain is: smtpd accepts any user at RCPT,
	// and local(8) then delivers to the mailbox of the system user of that
	// name (see LocalMailbox) or, for a user /etc/passwd does not know,
	// bounces with an RFC 3464 DSN ("unknown user", 5.1.1) to the envelope
	// sender. Aliases and .forward files are not read.
	LocalDomains []string
	// Transport (StartPostfix only) routes mail for a domain, by exact
	// domain name, to a Postfix transport (transport(5)), e.g.
	// "smtp:[127.0.0.1]:2526". Only mail Postfix itself originates, such
	// as its DSNs, can use it: relaying stays refused, and mail for every
	// other remote domain still fails with "outbound mail is disabled".
	// The smtp client never uses TLS.
	Transport map[string]string
}

// PostfixOptions configures StartPostfix.
type PostfixOptions = ReceiverOptions

// validate checks opts for a receiver that implements only the options
// all receivers share (StartHaraka): Domains are required, and the Postfix
// options are refused rather than silently ignored.
func (o ReceiverOptions) validate() error {
	var errs []error
	if len(o.Domains) == 0 {
		errs = append(errs, errors.New("no Domains"))
	}
	if len(o.LocalDomains) > 0 || len(o.Transport) > 0 {
		errs = append(errs, errors.New("LocalDomains and Transport are supported by StartPostfix only"))
	}
	return errors.Join(append(errs, o.validateCommon())...)
}

// validatePostfix checks opts for StartPostfix: at least one of Domains
// and LocalDomains, no domain in both, and transports only for domains
// Postfix does not deliver itself.
func (o ReceiverOptions) validatePostfix() error {
	var errs []error
	if len(o.Domains) == 0 && len(o.LocalDomains) == 0 {
		errs = append(errs, errors.New("no Domains or LocalDomains"))
	}
	own := func(d string) bool {
		eq := func(e string) bool { return strings.EqualFold(e, d) }
		return slices.ContainsFunc(o.Domains, eq) || slices.ContainsFunc(o.LocalDomains, eq)
	}
	for i, d := range o.LocalDomains {
		if badDomain(d) {
			errs = append(errs, fmt.Errorf("bad local domain %q", d))
		}
		if slices.ContainsFunc(o.Domains, func(e string) bool { return strings.EqualFold(e, d) }) ||
			slices.ContainsFunc(o.LocalDomains[:i], func(e string) bool { return strings.EqualFold(e, d) }) {
			errs = append(errs, fmt.Errorf("local domain %q is listed twice", d))
		}
	}
	for _, d := range slices.Sorted(maps.Keys(o.Transport)) {
		switch t := o.Transport[d]; {
		case badDomain(d):
			errs = append(errs, fmt.Errorf("bad transport domain %q", d))
		case own(d):
			errs = append(errs, fmt.Errorf("transport domain %q is one Postfix delivers itself", d))
		case !strings.Contains(t, ":") || strings.ContainsAny(t, " \t\r\n,#"):
			errs = append(errs, fmt.Errorf("transport %q for %s is not of the form transport:nexthop", t, d))
		}
	}
	return errors.Join(append(errs, o.validateCommon())...)
}

// badDomain reports whether d cannot be written into Postfix's and
// Haraka's configuration as a domain name.
func badDomain(d string) bool {
	return d == "" || strings.ContainsAny(d, " \t\r\n/@,:{}=#[]")
}

// validateCommon checks the options every receiver implements.
func (o ReceiverOptions) validateCommon() error {
	var errs []error
	for _, d := range o.Domains {
		if badDomain(d) {
			errs = append(errs, fmt.Errorf("bad domain %q", d))
		}
	}
	for _, a := range o.RejectRecipients {
		at := strings.LastIndexByte(a, '@')
		if at <= 0 || strings.ContainsAny(a, " \t\r\n/<>,") || !slices.ContainsFunc(o.Domains, func(d string) bool { return strings.EqualFold(d, a[at+1:]) }) {
			errs = append(errs, fmt.Errorf("reject recipient %q is not an address in Domains", a))
		}
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		errs = append(errs, errors.New("CertFile and KeyFile go together"))
	}
	if o.MessageSizeLimit < 0 {
		errs = append(errs, fmt.Errorf("negative MessageSizeLimit %d", o.MessageSizeLimit))
	}
	return errors.Join(errs...)
}

// Postfix is a private instance of Debian's Postfix acting as the MX of the
// test domains. It never touches /etc/postfix or a system instance: it has
// its own config, queue and data directories and is driven with
// `postfix -c DIR`. It listens on one loopback port only, delivers accepted
// mail for Domains to one maildir with virtual(8) and for LocalDomains to
// private mailboxes with local(8), relays nothing, and sends nothing
// anywhere but through ReceiverOptions.Transport.
type Postfix struct {
	addr      netip.AddrPort
	base      string // instance root, removed at cleanup
	conf      string // config_directory
	spool     string // queue_directory
	maildir   string // where virtual(8) delivers every accepted recipient
	localMail string // mail_spool_directory of local(8): one mbox per user
	logFile   string
}

// StartPostfix installs Debian's postfix package if it is missing (see
// ensurePostfix), starts a private instance configured by opts on a free
// 127.0.0.1 port, waits for its banner, and stops it in t.Cleanup, leaving
// no process behind. It must run as root, as Postfix's master does; anything
// that cannot be set up fails the test.
//
// Postfix answers an address of RejectRecipients with "550 5.1.1 <addr>:
// Recipient address rejected: User unknown in virtual mailbox table" and a
// domain outside Domains and LocalDomains with "554 5.7.1 <addr>: Relay
// access denied". It accepts every user of LocalDomains and bounces unknown
// ones asynchronously (see LocalDomains). Every SMTP command and reply of a
// loopback peer, its own smtp client's included, is logged
// (debug_peer_list), so Log shows what the client sent.
func StartPostfix(t testing.TB, opts PostfixOptions) *Postfix {
	t.Helper()
	if err := opts.validatePostfix(); err != nil {
		t.Fatalf("testenv: StartPostfix: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("testenv: StartPostfix needs root: Postfix's master runs as root and drops privileges itself (euid %d)", os.Geteuid())
	}
	ensurePostfix(t)
	uid, gid := postfixIDs(t)

	// Not t.TempDir: Postfix wants root-owned queue directories whose parents
	// the postfix user can traverse, and t.TempDir's parents are 0700.
	base, err := os.MkdirTemp("", "postflow-postfix-")
	if err != nil {
		t.Fatalf("testenv: postfix: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	p := &Postfix{
		base:      base,
		conf:      filepath.Join(base, "etc"),
		spool:     filepath.Join(base, "spool"),
		maildir:   filepath.Join(base, "mail", "inbox"),
		localMail: filepath.Join(base, "localmail"),
		logFile:   filepath.Join(base, "maillog"),
	}
	data, mail := filepath.Join(base, "data"), filepath.Join(base, "mail")
	for _, d := range []struct {
		path     string
		uid, gid int
		mode     os.FileMode
	}{
		{base, 0, 0, 0o755},
		{p.conf, 0, 0, 0o755},
		{p.spool, 0, 0, 0o755},
		{data, uid, gid, 0o700},
		{mail, uid, gid, 0o700},
		// A traditional /var/mail (world-writable, sticky): local(8)
		// creates each user's mbox as a file of that user's, mode 0600.
		{p.localMail, 0, 0, 0o777 | os.ModeSticky},
	} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			t.Fatalf("testenv: postfix: %v", err)
		}
		if err := os.Chown(d.path, d.uid, d.gid); err != nil {
			t.Fatalf("testenv: postfix: %v", err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			t.Fatalf("testenv: postfix: %v", err)
		}
	}
	if err := os.WriteFile(p.logFile, nil, 0o644); err != nil {
		t.Fatalf("testenv: postfix: %v", err)
	}
	if err := os.Chown(p.logFile, uid, gid); err != nil {
		t.Fatalf("testenv: postfix: %v", err)
	}

	port := freePort(t)
	p.addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(port))
	services := postfixServices
	if len(opts.LocalDomains) > 0 {
		// local(8) runs as root (unprivileged "n") to take on each
		// recipient's identity.
		services += "local     unix  -       n       n       -       -       local\n"
	}
	files := map[string]string{
		"main.cf": p.mainCF(opts, uid, gid),
		"master.cf": fmt.Sprintf("# Generated by testenv.StartPostfix.\n"+
			"127.0.0.1:%d inet n - n - - smtpd\n%s", port, services),
		"vmailbox":  postfixMailboxMap(opts),
		"transport": postfixTransportMap(opts),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(p.conf, name), []byte(content), 0o644); err != nil {
			t.Fatalf("testenv: postfix: %v", err)
		}
	}

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("testenv: postfix log (%s), last lines without verbose internals:\n%s", p.logFile, tail(p.logSummary(), 60))
		}
	})
	// "postfix start" returns once master has initialised (master -w); it
	// creates the queue subdirectories with their owners on the way.
	if out, err := p.postfix("start"); err != nil {
		p.stop(t)
		t.Fatalf("testenv: postfix -c %s start: %v\n%s\nlog:\n%s", p.conf, err, out, tail(p.logSummary(), 30))
	}
	t.Cleanup(func() { p.stop(t) })
	if err := waitBanner(p.addr.String(), 30*time.Second); err != nil {
		t.Fatalf("testenv: postfix on %s: %v\nlog:\n%s", p.addr, err, tail(p.logSummary(), 30))
	}
	return p
}

// postfixServices is master.cf after the smtpd listener: Debian's services
// minus chroot (the private queue has no chroot environment), the port-25
// listener, postscreen, submission and the pipe transports.
const postfixServices = `pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

func (p *Postfix) mainCF(opts PostfixOptions, uid, gid int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# Generated by testenv.StartPostfix: the MX of %s on loopback.
compatibility_level = 3.6
queue_directory = %s
data_directory = %s
# No syslog daemon is assumed: postlogd writes the log to a file.
maillog_file = %s
maillog_file_prefixes = %s
mail_owner = postfix
setgid_group = postdrop
myhostname = %s
mydomain = postfix.test
myorigin = $myhostname
smtpd_banner = $myhostname ESMTP Postfix
biff = no
append_dot_mydomain = no
inet_interfaces = 127.0.0.1
inet_protocols = ipv4

# A receiving MX: loopback clients are ordinary remote clients, so nothing
# relays and no header is rewritten; mail is accepted only for the users
# of the virtual domains that the mailbox map knows, and for any user of
# the local domains (mydestination).
mynetworks = 127.0.0.2/32
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions =
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =
local_header_rewrite_clients =
smtpd_peername_lookup = no

# Delivery stays local: the virtual domains go to one maildir, the local
# domains to local(8), the domains of the transport map (bounces) where
# it says, and every other destination is an error (no relaying, no
# bounces sent anywhere else).
relay_domains =
default_transport = error:outbound mail is disabled
relay_transport = error:outbound mail is disabled
transport_maps = texthash:%s
notify_classes =
virtual_mailbox_domains = %s
virtual_mailbox_maps = regexp:%s
virtual_mailbox_base = %s
virtual_transport = virtual
virtual_uid_maps = static:%d
virtual_gid_maps = static:%d
virtual_minimum_uid = %d
virtual_mailbox_limit = 0

# Every command and reply of a loopback client goes to the log.
debug_peer_list = 127.0.0.1
debug_peer_level = 1
`, strings.Join(slices.Concat(opts.Domains, opts.LocalDomains), ", "), p.spool, filepath.Join(p.base, "data"), p.logFile, p.base,
		postfixHostname, filepath.Join(p.conf, "transport"),
		strings.Join(opts.Domains, ", "), filepath.Join(p.conf, "vmailbox"), filepath.Join(p.base, "mail"), uid, gid, uid)
	if len(opts.LocalDomains) == 0 {
		b.WriteString(`mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
`)
	} else {
		// An empty local_recipient_maps makes smtpd accept every user, so
		// that local(8), not smtpd, finds the unknown ones: it bounces them
		// with "unknown user" (5.1.1), and the bounce daemon sends the DSN.
		// Nothing of the host is read: no aliases, no .forward, no
		// /var/mail.
		fmt.Fprintf(&b, `mydestination = %s
local_recipient_maps =
local_transport = local
alias_maps =
alias_database =
forward_path =
allow_mail_to_commands =
allow_mail_to_files =
mailbox_command =
home_mailbox =
mail_spool_directory = %s
mailbox_size_limit = 0
`, strings.Join(opts.LocalDomains, ", "), p.localMail)
	}
	if len(opts.Transport) > 0 {
		// The smtp client only ever talks to listeners of the test, which
		// need not offer STARTTLS.
		b.WriteString("smtp_tls_security_level = none\n")
	}
	if opts.CertFile != "" {
		fmt.Fprintf(&b, "smtpd_tls_security_level = may\nsmtpd_tls_cert_file = %s\nsmtpd_tls_key_file = %s\nsmtpd_tls_loglevel = 1\n",
			opts.CertFile, opts.KeyFile)
	} else {
		b.WriteString("smtpd_tls_security_level = none\n")
	}
	if opts.MessageSizeLimit > 0 {
		fmt.Fprintf(&b, "message_size_limit = %d\n", opts.MessageSizeLimit)
		if opts.MessageSizeLimit < 102400 {
			// header_size_limit may not exceed the message size limit.
			fmt.Fprintf(&b, "header_size_limit = %d\n", opts.MessageSizeLimit)
		}
	}
	if opts.NoPipelining {
		b.WriteString("smtpd_discard_ehlo_keywords = pipelining\n")
	}
	return b.String()
}

// postfixHostname is the instance's myhostname: its greeting, its Received
// lines, and the Reporting-MTA of its DSNs.
const postfixHostname = "mx.postfix.test"

// postfixTransportMap is the transport_maps texthash table of
// opts.Transport. Exact domain keys only: parent_domain_matches_subdomains
// does not list transport_maps, so "d" matches no subdomain of d.
func postfixTransportMap(opts PostfixOptions) string {
	var b strings.Builder
	b.WriteString("# Generated by testenv.StartPostfix.\n")
	for _, d := range slices.Sorted(maps.Keys(opts.Transport)) {
		fmt.Fprintf(&b, "%s %s\n", d, opts.Transport[d])
	}
	return b.String()
}

// postfixMailboxMap is the virtual_mailbox_maps regexp table: every address
// in the domains maps to the one maildir "inbox/", except the rejected ones,
// which are not found, so that smtpd refuses them as unknown users.
func postfixMailboxMap(opts PostfixOptions) string {
	if len(opts.Domains) == 0 {
		return "# Generated by testenv.StartPostfix: no virtual domains.\n"
	}
	quote := func(list []string) string {
		q := make([]string, len(list))
		for i, s := range list {
			q[i] = regexp.QuoteMeta(s)
		}
		return strings.Join(q, "|")
	}
	m := "/@(" + quote(opts.Domains) + ")$/ inbox/\n"
	if len(opts.RejectRecipients) > 0 {
		m = "if !/^(" + quote(opts.RejectRecipients) + ")$/\n" + m + "endif\n"
	}
	return "# Generated by testenv.StartPostfix.\n" + m
}

// postfixIDs returns the uid and gid of the postfix user, which owns the
// data directory and the maildir.
func postfixIDs(t testing.TB) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("testenv: postfix: %v", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatalf("testenv: postfix user: %v", err)
	}
	return uid, gid
}

// postfix runs `postfix -c CONF args...` and returns its combined output.
func (p *Postfix) postfix(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, postfixCommand(), append([]string{"-c", p.conf}, args...)...).CombinedOutput()
}

func postfixCommand() string {
	if path, err := exec.LookPath("postfix"); err == nil {
		return path
	}
	return "/usr/sbin/postfix" // root's PATH has it; a test binary's may not
}

// stop ends the instance: "postfix stop" makes master end its children, and
// whatever of the process group is still there after 15s is killed.
func (p *Postfix) stop(t testing.TB) {
	t.Helper()
	pid := p.masterPID()
	if pid == 0 {
		return
	}
	if out, err := p.postfix("stop"); err != nil {
		t.Logf("testenv: postfix -c %s stop: %v\n%s", p.conf, err, out)
	}
	// master is a session leader; its children share its process group.
	if !pollUntil(15*time.Second, func() bool { return len(processGroup(pid)) == 0 }) {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		if !pollUntil(5*time.Second, func() bool { return len(processGroup(pid)) == 0 }) {
			t.Errorf("testenv: postfix processes %v still alive after SIGKILL", processGroup(pid))
		}
	}
}

// masterPID returns the PID of the instance's running master, or 0.
func (p *Postfix) masterPID() int {
	b, err := os.ReadFile(filepath.Join(p.spool, "pid", "master.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// Addr returns the address Postfix listens on.
func (p *Postfix) Addr() netip.AddrPort { return p.addr }

// Messages returns every message delivered so far, oldest first, each
// exactly as stored with the trace headers Postfix added on top
// (Return-Path, Delivered-To, X-Original-To, Received). Postfix stores
// lines without CR; they are returned with CRLF, the form Postfix itself
// sends on, so they compare with what the client sent.
func (p *Postfix) Messages() [][]byte {
	msgs := readMessageFiles(filepath.Join(p.maildir, "new"), "")
	for i, m := range msgs {
		msgs[i] = bytes.ReplaceAll(m, []byte("\n"), []byte("\r\n"))
	}
	return msgs
}

// Hostname returns Postfix's myhostname, which it greets with and names
// as the Reporting-MTA ("dns; mx.postfix.test") of its DSNs.
func (p *Postfix) Hostname() string { return postfixHostname }

// LocalMailbox returns the mbox file into which local(8) delivered the
// mail for user of LocalDomains (every message, each after its "From "
// line and Postfix's trace headers), or "" when nothing was delivered.
func (p *Postfix) LocalMailbox(user string) string {
	b, _ := os.ReadFile(filepath.Join(p.localMail, user))
	return string(b)
}

// WaitForMessages polls until at least n messages were delivered and
// returns them; it fails the test, with the end of the log, if timeout
// passes first.
func (p *Postfix) WaitForMessages(t testing.TB, n int, timeout time.Duration) [][]byte {
	t.Helper()
	return waitForMessages(t, "postfix", n, timeout, p.Messages, p.logSummary)
}

// Log returns Postfix's log so far: every SMTP command and reply of each
// session, TLS handshakes, deliveries and rejections.
func (p *Postfix) Log() string {
	b, _ := os.ReadFile(p.logFile)
	return string(b)
}

// postfixVerbose matches the log lines of debug_peer_list that trace
// Postfix's internals (table lookups, IPC with anvil and the like) rather
// than the SMTP conversation.
var postfixVerbose = regexp.MustCompile(`(?m)^.*(attribute|attr |match_|smtp_stream_setup|auto_clnt|name_mask|private/|dict_|maps_find|mail_addr_find|rewrite_clnt|resolve_clnt|ctable_|mymalloc|vstream_|connect to subsystem).*\n`)

// logSummary is Log without the verbose lines about Postfix's internals,
// for failure messages.
func (p *Postfix) logSummary() string { return postfixVerbose.ReplaceAllString(p.Log(), "") }

// postfixInstallLock serializes package installs of concurrent test
// binaries (go test ./... runs packages in parallel), as dpkg takes one
// lock for the whole system.
var postfixInstallLock = filepath.Join(os.TempDir(), "postflow-testenv-apt.lock")

// ensurePostfix installs Debian's postfix package when no postfix command
// is there, as loadtest/peers/postfix.sh does: debconf is told "No
// configuration", so the package writes no /etc/postfix/main.cf and starts
// no system instance. apt-get runs through sudo when the test is not root.
// A failed install fails the test; nothing is skipped.
func ensurePostfix(t testing.TB) {
	t.Helper()
	installed := func() bool {
		_, err := os.Stat(postfixCommand())
		return err == nil
	}
	if installed() {
		return
	}
	unlock := lockFile(t, postfixInstallLock)
	defer unlock()
	if installed() { // another test binary installed it while we waited
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	asRoot := func(name string, args ...string) *exec.Cmd {
		if os.Geteuid() != 0 {
			args, name = append([]string{"-n", name}, args...), "sudo"
		}
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd
	}
	sel := asRoot("debconf-set-selections")
	sel.Stdin = strings.NewReader("postfix postfix/main_mailer_type select No configuration\n")
	if out, err := sel.CombinedOutput(); err != nil {
		t.Fatalf("testenv: postfix is not installed and debconf-set-selections failed: %v\n%s", err, out)
	}
	install := []string{"-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq", "--no-install-recommends", "postfix"}
	out, err := asRoot("apt-get", install...).CombinedOutput()
	if err != nil {
		// Package lists may be missing or stale on a fresh machine.
		if uout, uerr := asRoot("apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-qq").CombinedOutput(); uerr != nil {
			t.Fatalf("testenv: postfix is not installed; apt-get install failed (%v: %s) and apt-get update failed: %v\n%s", err, out, uerr, uout)
		}
		if out, err = asRoot("apt-get", install...).CombinedOutput(); err != nil {
			t.Fatalf("testenv: postfix is not installed and apt-get install postfix failed: %v\n%s", err, out)
		}
	}
	if !installed() {
		t.Fatalf("testenv: apt-get installed postfix but %s is missing\n%s", postfixCommand(), out)
	}
	t.Logf("testenv: installed Debian's postfix package in %v", time.Since(start).Round(time.Millisecond))
}

// lockFile takes an exclusive flock on path, creating it, and returns the
// unlock function. It waits as long as another process holds the lock.
func lockFile(t testing.TB, path string) (unlock func()) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatalf("testenv: lock %s: %v", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		_ = f.Close()
		t.Fatalf("testenv: lock %s: %v", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		_ = f.Close()
	}
}

// waitBanner polls addr until a connection gets a 220 greeting.
func waitBanner(addr string, timeout time.Duration) error {
	var last error
	if pollUntil(timeout, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			last = err
			return false
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			last = fmt.Errorf("greeting: %w", err)
			return false
		}
		if !strings.HasPrefix(line, "220") {
			last = fmt.Errorf("greeting %q", line)
			return false
		}
		_, _ = c.Write([]byte("QUIT\r\n"))
		return true
	}) {
		return nil
	}
	return fmt.Errorf("no 220 greeting within %v: %w", timeout, last)
}

// pollUntil calls cond every 20ms until it reports true or timeout has
// passed, and reports whether it did.
func pollUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
}

// waitForMessages is WaitForMessages of both receivers.
func waitForMessages(t testing.TB, name string, n int, timeout time.Duration, messages func() [][]byte, log func() string) [][]byte {
	t.Helper()
	var msgs [][]byte
	if pollUntil(timeout, func() bool {
		msgs = messages()
		return len(msgs) >= n
	}) {
		return msgs
	}
	t.Fatalf("testenv: %s delivered %d messages within %v, want %d; log:\n%s", name, len(msgs), timeout, n, tail(log(), 40))
	return nil
}

// readMessageFiles returns the contents of the files in dir whose names end
// in suffix, ordered by modification time and then name. Files that vanish
// or cannot be read are left out: the receivers only ever rename finished
// files into dir.
func readMessageFiles(dir, suffix string) [][]byte {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	type file struct {
		name string
		mod  time.Time
	}
	var files []file
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), suffix) {
			continue
		}
		if info, err := e.Info(); err == nil {
			files = append(files, file{e.Name(), info.ModTime()})
		}
	}
	slices.SortFunc(files, func(a, b file) int {
		if c := a.mod.Compare(b.mod); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	var msgs [][]byte
	for _, f := range files {
		if b, err := os.ReadFile(filepath.Join(dir, f.name)); err == nil {
			msgs = append(msgs, b)
		}
	}
	return msgs
}

// processGroup returns the PIDs of the live processes in process group
// pgid, read from /proc.
func processGroup(pgid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
		rest := stat[bytes.LastIndexByte(stat, ')')+1:]
		f := strings.Fields(string(rest))
		if len(f) < 3 || f[0] == "Z" {
			continue
		}
		if g, err := strconv.Atoi(f[2]); err == nil && g == pgid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
