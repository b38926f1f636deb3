// Package chaos is `courier-bench chaos`: it runs a steady workload
// (testkit/workload: devices that reconnect through gate discovery,
// app-servers that retry with idempotency keys, C2C and C2S) against the
// cluster `make cluster` runs, applies random faults to its processes one
// at a time for a given duration, waits for the cluster to be whole after
// each, then stops the traffic, waits for what is in flight, and reports
// the exact ledger and what each fault cost.
//
// Faults: kill (SIGKILL a node), pause (SIGSTOP, then SIGCONT after
// --pause), term (SIGTERM: the node drains and exits), drain (the Drain
// call through another node's API), consul (SIGKILL the Consul agent),
// postgres (a fast restart of the cluster's PostgreSQL). make cluster's
// supervisor starts every node and Consul again when it exits. A network
// partition needs namespaces the loopback cluster does not have: the
// fault tests (cluster/faults) prove it.
//
// It works only on loopback: every address of the cluster must be a
// loopback address, and it signals only the processes whose ids the
// cluster's directory lists. One goroutine runs the faults; the workload
// owns its own (package workload).
package chaos
