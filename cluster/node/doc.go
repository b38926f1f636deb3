// Package node assembles a Courier node: its cluster membership, the
// device actors and their inbox store, the gate, the gRPC API and the HTTP
// endpoint of metrics and health. It is what `courier` runs and what the
// tests start as a separate process.
//
// Start order matters: the cluster member starts first, because the
// actor library replaces gRPC's global logger when it starts its remoting
// (see docs/operating.md); then the store, the gate and the API. Shutdown
// reverses it: the gate kicks its devices (they reconnect elsewhere), the
// API stops, the actors' last writes drain into the store, the store
// closes, the node leaves the cluster.
package node
