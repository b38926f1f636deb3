// Package node assembles a Courier node: its cluster membership, the
// device actors and their inbox store, the gate, the gRPC API (with TLS,
// grpc.health.v1 and reflection) and the HTTP endpoint of metrics,
// /healthz and /readyz (Node.Ready). It is what `courier` runs and what
// the tests start as a separate process. Start's errors say what to fix:
// ErrConfig for a setting (named), ErrDataDirInUse for a data directory
// another process holds.
//
// The node keeps the gate's access lists in the store (lists.go): it
// loads them before the gate accepts devices, stores each API change
// before answering, and polls the stored version every second, applying
// what other nodes stored.
//
// Start order matters: the store opens, then the cluster member starts,
// before any other gRPC in the process, because the actor library replaces
// gRPC's global logger when it starts its remoting; then the gate and the
// API. Shutdown reverses it: the gate kicks its devices (they reconnect
// elsewhere), the upstream streams and the API stop, the node leaves the
// cluster and its actors stop, and the store closes after committing what
// was queued. Every accepted message is durable before this; what an actor
// had not written yet is at most a session going offline, which the next
// activation corrects.
package node
