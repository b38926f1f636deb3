// Package testkit runs real Courier components for tests: courier nodes as
// separate processes on 127.0.0.1 with free ports (built with the race
// detector when the tests are), devices that speak the wire protocol over
// real TCP (Device, frame by frame, on client.Conn; Node.Client, a whole
// client.Client), gRPC API clients with the test credentials, throwaway
// TLS certificates (NewTLSFiles), and a throwaway PostgreSQL (Debian's
// package, installed when missing): one server per test process, stopped
// by Main, with a new database per test (PostgresDB), or a server of a
// test's own that it may stop and restart (StartPostgres). A test that
// needs PostgreSQL is skipped without it, and fails when CI=true. Helpers
// take a testing.TB, clean up with t.Cleanup and wait with Eventually,
// never with sleeps.
package testkit
