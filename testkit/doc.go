// Package testkit runs real Courier components for tests: courier nodes as
// separate processes on 127.0.0.1 with free ports (built with the race
// detector when the tests are), devices that speak the wire protocol over
// real TCP, and gRPC API clients with the test credentials. Helpers take a
// testing.TB, clean up with t.Cleanup and wait with Eventually, never with
// sleeps.
package testkit
