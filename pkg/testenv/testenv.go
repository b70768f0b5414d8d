// Package testenv starts the real servers Postflow's tests talk to, each on a
// loopback address chosen by the kernel and each stopped by t.Cleanup:
// an embedded nats-server with JetStream, a redis-server process, an
// in-process DNS server, scripted SMTP sinks, a throwaway certificate
// authority, and real receiving MTAs: Postfix (Debian's package) and Haraka
// (npm), installed on first use.
//
// A dependency that cannot be started fails the test; nothing here skips.
package testenv
