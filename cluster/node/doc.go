// Package node assembles a Courier node from the components of its roles
// (gate, actors, api): its cluster membership, the device actors and their
// inbox store (actors), the gate (gate), the gRPC API (with TLS,
// grpc.health.v1 and reflection) and gate discovery (api), and the HTTP
// endpoint of metrics, /healthz and /readyz (Node.Ready; every node). It
// is what `courier` runs and what the tests start as a separate process.
// Start's errors say what to fix: ErrConfig for a setting (named),
// ErrDataDirInUse for a data directory another process holds.
//
// The node keeps the gate's access lists in the store (lists.go): it
// loads them before the gate accepts devices, stores each API change
// before answering, applies it on every live gate of the cluster, and
// polls the stored version every second, applying what other nodes
// stored.
//
// Start order matters: the store opens, then the actor system and its
// remoting start, before any other gRPC in the process, because the actor
// library replaces gRPC's global logger when it starts its remoting; then
// the gate, the API and HTTP; last the node joins the cluster, publishing
// the addresses it now knows. Until then requests for identities fail
// retryably. The node owns one goroutine of its own besides the servers':
// the load publisher, which hands the gate's connections and the actors
// in memory to the membership every load interval.
//
// Shutdown reverses it: the gate kicks its devices (they reconnect
// elsewhere), the upstream streams and the API stop, the node leaves the
// cluster (others stop routing to it at once) and hands its identities
// off (each actor completes what it has in flight), and the store closes
// after committing what was queued. Every accepted message is durable
// before this; what an actor had not written yet is at most a session
// going offline, which the next activation corrects.
package node
