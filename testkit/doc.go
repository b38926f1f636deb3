// Package testkit runs real Courier components for tests: courier nodes as
// separate processes on 127.0.0.1 with free ports (built with the race
// detector when the tests are), devices that speak the wire protocol over
// real TCP (Device, frame by frame, on client.Conn; Node.Client, a whole
// client.Client), gRPC API clients with the test credentials, and
// throwaway TLS certificates (NewTLSFiles). Helpers take a
// testing.TB, clean up with t.Cleanup and wait with Eventually, never with
// sleeps.
package testkit
