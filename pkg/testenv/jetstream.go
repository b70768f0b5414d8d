package testenv

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// JetStream is an embedded nats-server with JetStream enabled.
type JetStream struct {
	Server *server.Server
	// URL is the client URL, e.g. nats://127.0.0.1:41234.
	URL string
	// StoreDir is where JetStream keeps its files.
	StoreDir string
}

// StartJetStream starts nats-server in process on a random loopback port with
// JetStream storing under t.TempDir(), and waits until it accepts clients.
func StartJetStream(t testing.TB) *JetStream {
	t.Helper()
	return startJetStream(t, t.TempDir(), -1)
}

// Restart shuts the server down and starts a new one on the same port and
// store directory, as a process restart would. Streams, consumers and stored
// messages survive; clients reconnect by themselves.
func (js *JetStream) Restart(t testing.TB) {
	t.Helper()
	port := js.Server.Addr().(*net.TCPAddr).Port
	js.Server.Shutdown()
	js.Server.WaitForShutdown()
	*js = *startJetStream(t, js.StoreDir, port)
}

func startJetStream(t testing.TB, dir string, port int) *JetStream {
	t.Helper()
	opts := &server.Options{
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   dir,
		NoLog:      true,
		NoSigs:     true,
		MaxPayload: 16 << 20,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("testenv: nats-server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		t.Fatalf("testenv: nats-server not ready within 10s")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return &JetStream{Server: s, URL: s.ClientURL(), StoreDir: dir}
}

// Connect returns a client connection closed at cleanup.
func (js *JetStream) Connect(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(js.URL)
	if err != nil {
		t.Fatalf("testenv: connect %s: %v", js.URL, err)
	}
	t.Cleanup(nc.Close)
	return nc
}
