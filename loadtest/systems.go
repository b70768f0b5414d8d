package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// system is one system under test, started for one run and stopped after.
type system interface {
	// processes lists the processes whose CPU and memory are reported.
	processes() map[string]int
	stop() error
}

// binaries builds the postflow and nats-server binaries once, from this
// module, so the nats-server is exactly the version Postflow embeds.
type binaries struct {
	dir        string
	postflow   string
	natsServer string
}

func buildBinaries(ctx context.Context, dir string) (*binaries, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	b := &binaries{dir: dir, postflow: filepath.Join(dir, "postflow"), natsServer: filepath.Join(dir, "nats-server")}
	for out, pkg := range map[string]string{b.postflow: "./services/postflow", b.natsServer: "github.com/nats-io/nats-server/v2"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("go build %s: %w", pkg, err)
		}
	}
	return b, nil
}

// postflowSystem is a nats-server process with JetStream and a postflow
// process running the api and worker roles against it: the scaled
// deployment's shape on one machine, so that each process is measured.
type postflowSystem struct {
	nats, postflow *exec.Cmd
	grpcAddr       string
	httpAddr       string
	natsURL        string
	workDir        string
	logs           []*os.File
}

type postflowOptions struct {
	syncAlways  bool
	pprof       bool
	sinkPort    int
	dnsAddr     string
	concurrency int
}

func startPostflow(ctx context.Context, bin *binaries, workDir string, o postflowOptions) (*postflowSystem, error) {
	s := &postflowSystem{workDir: workDir}
	natsPort, err := freePort()
	if err != nil {
		return nil, err
	}
	sync := ""
	if o.syncAlways {
		sync = "  sync_interval: always\n"
	}
	conf := fmt.Sprintf("listen: 127.0.0.1:%d\nmax_payload: 12MB\njetstream {\n  store_dir: %q\n%s}\n", natsPort, filepath.Join(workDir, "jetstream"), sync)
	confPath := filepath.Join(workDir, "nats-server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	s.natsURL = fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	if s.nats, err = s.spawn(bin.natsServer, "nats-server.log", "-c", confPath); err != nil {
		return nil, err
	}
	if err := waitTCP(ctx, fmt.Sprintf("127.0.0.1:%d", natsPort), 30*time.Second); err != nil {
		_ = s.stop()
		return nil, fmt.Errorf("nats-server: %w", err)
	}
	grpcPort, _ := freePort()
	httpPort, _ := freePort()
	s.grpcAddr = fmt.Sprintf("127.0.0.1:%d", grpcPort)
	s.httpAddr = fmt.Sprintf("127.0.0.1:%d", httpPort)
	// The receiver is our own sink, and the comparison is with peers that
	// have no rate limits by default: shaping keeps only a connection cap
	// per destination, Postfix's default_destination_concurrency_limit.
	shapingPath := filepath.Join(workDir, "shaping.yaml")
	if err := os.WriteFile(shapingPath, []byte("builtin: false\ndefaults: {rate: unlimited, connections: 20}\n"), 0o644); err != nil {
		_ = s.stop()
		return nil, err
	}
	args := []string{"serve", "--shaping", shapingPath,
		"--roles=api,worker", "--nats-url", s.natsURL,
		"--grpc-addr", s.grpcAddr, "--http-addr", s.httpAddr,
		"--dns-server", o.dnsAddr, "--smtp-port", strconv.Itoa(o.sinkPort),
		"--allow-private-mx", "--simulator=false",
		"--concurrency", strconv.Itoa(o.concurrency), "--log-level", "warn",
	}
	if o.pprof {
		args = append(args, "--pprof")
	}
	if s.postflow, err = s.spawn(bin.postflow, "postflow.log", args...); err != nil {
		_ = s.stop()
		return nil, err
	}
	if err := waitHTTP(ctx, "http://"+s.httpAddr+"/readyz", 60*time.Second); err != nil {
		_ = s.stop()
		return nil, fmt.Errorf("postflow: %w (see %s)", err, filepath.Join(workDir, "postflow.log"))
	}
	return s, nil
}

func (s *postflowSystem) spawn(bin, logName string, args ...string) (*exec.Cmd, error) {
	logf, err := os.Create(filepath.Join(s.workDir, logName))
	if err != nil {
		return nil, err
	}
	s.logs = append(s.logs, logf)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	return cmd, nil
}

func (s *postflowSystem) processes() map[string]int {
	return map[string]int{"postflow": s.postflow.Process.Pid, "nats-server": s.nats.Process.Pid}
}

// stop sends SIGTERM to postflow, then to nats-server, waiting for each.
func (s *postflowSystem) stop() error {
	var errs []error
	for _, c := range []*exec.Cmd{s.postflow, s.nats} {
		if c == nil || c.Process == nil {
			continue
		}
		_ = c.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case err := <-done:
			var ee *exec.ExitError
			if err != nil && !errors.As(err, &ee) {
				errs = append(errs, fmt.Errorf("%s: %w", c.Path, err))
			}
		case <-time.After(60 * time.Second):
			_ = c.Process.Kill()
			errs = append(errs, fmt.Errorf("%s did not stop within 60s; killed: %w", c.Path, <-done))
		}
	}
	for _, f := range s.logs {
		_ = f.Close()
	}
	return errors.Join(errs...)
}

// peerSystem is Postfix or Haraka, managed by its script in loadtest/peers.
type peerSystem struct {
	name   string
	script string
	pid    int
	addr   string
}

func startPeer(ctx context.Context, name string, sinkPort int) (*peerSystem, error) {
	script := filepath.Join("loadtest", "peers", name+".sh")
	if out, err := exec.CommandContext(ctx, "bash", script, "install").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s install: %w\n%s", name, err, out)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, "bash", script, "start", strconv.Itoa(port), strconv.Itoa(sinkPort)).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			out = append(out, ee.Stderr...)
		}
		return nil, fmt.Errorf("%s start: %w\n%s", name, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(lines[len(lines)-1]))
	if err != nil {
		return nil, fmt.Errorf("%s start: last line %q is not a pid", name, lines[len(lines)-1])
	}
	return &peerSystem{name: name, script: script, pid: pid, addr: fmt.Sprintf("127.0.0.1:%d", port)}, nil
}

func (p *peerSystem) processes() map[string]int { return map[string]int{p.name: p.pid} }

func (p *peerSystem) stop() error {
	if out, err := exec.Command("bash", p.script, "stop").CombinedOutput(); err != nil {
		return fmt.Errorf("%s stop: %w\n%s", p.name, err, out)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitTCP(ctx context.Context, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
		if err == nil {
			_ = c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting connections after %v: %w", addr, timeout, err)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %w", url, timeout, err)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// machine describes where the benchmark ran.
func machine() string {
	model := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		_ = f.Close()
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "MemTotal:") {
				kb, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
				mem = fmt.Sprintf(", %.0f GiB", kb/(1<<20))
			}
		}
	}
	return fmt.Sprintf("%d cores (%s)%s, %s", numCPU(), model, mem, goVersion())
}
