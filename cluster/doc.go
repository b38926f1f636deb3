// Package cluster is a node's part in the Courier cluster and the thin
// layer the rest of Courier uses to reach an identity's actor and a
// connection's gate anywhere in it. Its concerns, by file:
//
//   - system.go: the actor system and its remoting (remoting.go: mutual
//     TLS or loopback-only plaintext, see package mtls), joining through
//     package membership, and a new placement on every change of the live
//     members.
//   - placement.go: which member owns an identity, rendezvous hashing over
//     the live members with the actors role.
//   - host.go: routing. An envelope goes to its identity's owner (here, or
//     that member's host actor); the owner activates the identity's actor
//     and hands it the envelope. No identity is served by a node that does
//     not own it: after cluster.max-hops forwards, or with no actor member,
//     a request fails with a retryable error. Passivation and moves stop
//     an actor only once it has received every envelope sent to it.
//   - the rest of system.go: request/reply correlated by our own ids
//     (random start, unique per node and across restarts) without the
//     library's futures, whose late replies race; gate sinks that deliver
//     an actor's frames to the gate holding the connection.
//
// It works around the library's known gaps: identities are placed by our
// own hashing and activated by our own routing, so no sender holds a PID
// that passivation could make stale (the library silently loses such
// sends), and no send waits for the library's 5 s activation round trip.
// The library's cluster and its Consul provider are not used (see package
// membership).
//
// Goroutines: the actor system's (mailboxes on the pool dispatcher, the
// remoting's streams) and the membership's watcher, on which placement
// changes run. What may be lost: an envelope to a member that dies before
// it is handled (a request then times out with ErrNoReply, and its caller
// may retry); one-way envelopes to an identity while no member hosts
// identities are counted as undeliverable.
package cluster
