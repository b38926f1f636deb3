// Package bench is the coordinator of courier-bench: it runs a scenario
// (connect, push, c2c, upstream, reconnect) against a node with simulated
// devices in worker processes (package ipc, package farm) and, where the
// scenario needs one, an app-server on the gRPC API, and turns what both
// sides saw into a Result: rates, HDR latency percentiles, exact loss and
// the CPU the node and the generator used.
//
// Accounting is by message index: every message carries its index in its
// payload (package wire); the app-server side records what the API
// answered (msg id, seq, online), the devices record what they received,
// and the accountant joins the two. A message the platform accepted that
// no device received is lost, whatever the timing.
//
// Scenario functions are safe to call from one goroutine at a time each;
// they own every goroutine and process they start and stop them before
// returning.
package bench
