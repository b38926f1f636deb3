// Package cluster sets up the Proto.Actor cluster a node belongs to (today
// with in-memory membership: a single node) and gives the rest of Courier
// the thin layer it uses to reach an identity's actor and a connection's
// gate. It works around the library's known gaps: identities are placed by
// our own rendezvous hashing over the members and activated by our own
// routing, so no sender holds a PID that passivation could make stale (the
// library silently loses such sends) and no send waits for the library's
// 5 s activation round trip; requests are correlated without the library's
// futures, whose late replies race.
package cluster
