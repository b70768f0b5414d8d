package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a real redis-server process owned by one test.
type Redis struct {
	// Addr is host:port of the server.
	Addr string
	cmd  *exec.Cmd
	dir  string
	port int
}

// StartRedis starts redis-server (found on PATH; `make test` installs it) on a
// free loopback port with persistence off, and waits until it answers PING.
// A missing binary fails the test.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testenv: redis-server not found on PATH (run `make test`, which installs it): %v", err)
	}
	r := &Redis{dir: t.TempDir()}
	r.start(t, path, freePort(t))
	t.Cleanup(r.kill)
	return r
}

func (r *Redis) start(t testing.TB, path string, port int) {
	t.Helper()
	r.port = port
	r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	r.cmd = exec.Command(path,
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--dir", r.dir,
		"--daemonize", "no", "--protected-mode", "yes")
	stdout, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("testenv: redis-server: %v", err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("testenv: start redis-server: %v", err)
	}
	// Drain its log so it never blocks on a full pipe.
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
		}
	}()
	c := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1})
	defer func() { _ = c.Close() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			r.kill()
			t.Fatalf("testenv: redis-server on %s not ready within 10s: %v", r.Addr, err)
		}
		time.Sleep(20 * time.Millisecond) //nolint:forbidigo // polling interval of a readiness loop with a deadline
	}
}

// Stop kills the server, as a crash would. Start brings it back on the same
// address.
func (r *Redis) Stop() { r.kill() }

// Start restarts a stopped server on its previous address.
func (r *Redis) Start(t testing.TB) {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testenv: redis-server: %v", err)
	}
	r.start(t, path, r.port)
}

// Client returns a go-redis client for the server, closed at cleanup.
func (r *Redis) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (r *Redis) kill() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
		r.cmd = nil
	}
}

// freePort asks the kernel for a free loopback TCP port.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

// String describes the server for failure messages.
func (r *Redis) String() string { return fmt.Sprintf("redis-server at %s", r.Addr) }
