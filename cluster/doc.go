// Package cluster sets up the Proto.Actor cluster a node belongs to (its
// membership in Consul, or in memory for a single node and for tests) and
// gives the rest of Courier the thin layer it uses to send to an identity's
// actor, working around the library's known gaps: lost sends to stale PIDs,
// the fixed 5 s activation round trip, and blocked members.
package cluster
