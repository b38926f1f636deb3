// Package discovery is the seed's "gate center": which gates a device
// should connect to. Every node with the api role serves
//
//	GET /v1/gates?app=N
//
// on its HTTP address: the public addresses of the live gates that accept
// app N's devices, in a random order weighted by free capacity (so that
// devices asking at once spread rather than all pick the least loaded:
// Spread), not draining, from the node's
// current view of the membership, so a departed gate is gone from the
// list within the membership TTL and loads are at most a load interval
// old. Fetch is the client side, used by courierctl and
// courier-bench and shown in docs/protocol.md's reconnect advice.
//
// The handler keeps no state and starts no goroutine; it runs on the HTTP
// server's goroutines and only reads the membership's latest view.
package discovery
