// Package testkit runs real Courier components for tests: nodes on
// 127.0.0.1:0, devices that speak the wire protocol over real TCP, a fake
// app-server on the real gRPC API, and the real Consul and PostgreSQL the
// cluster tests need. Helpers take a testing.TB, clean up with t.Cleanup and
// wait with Eventually, never with sleeps.
package testkit
