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
//     a request fails with a retryable error, and so does a device's
//     LOGIN, C2C or PULL (OnUndeliverable).
//   - gate liveness (AddGate, RemoveGate, GateAlive): the gate instances
//     alive, the local gate's and, fed by membership, other members'. When
//     one goes away every identity actor in memory is told (a GateDown
//     envelope), and actors that load later check their session against
//     the set, so a session on a gate that is gone is over at once.
//   - release.go: planned moves (a drain, a join) without fencing: the
//     new owner of an identity asks its live previous owner to release
//     it, and holds its envelopes until the previous owner's actor has
//     completed its handoff (or 2 s), before it loads the identity.
//   - lease.go: a node without its membership lease (it cannot be sure
//     it is still a member) serves none of its identities, drops their
//     actors, sends nothing to gates but refusals of the devices'
//     requests that reach it (OnLeaseless; they retry) and, while Consul
//     cannot be reached, asks the other members to vouch for it (package
//     membership's lease).
//   - request/reply (system.go) correlated by our own ids (random start,
//     unique per node and across restarts) without the library's futures,
//     whose late replies race; gate sinks that deliver an actor's frames to
//     the gate holding the connection; gather.go: requests to nodes rather
//     than identities (cluster-wide statistics, access lists) and the
//     well-known actors of other cluster services (upstream).
//
// It works around the library's known gaps: identities are placed by our
// own hashing and activated by our own routing, so no sender holds a PID
// that passivation could make stale (the library silently loses such
// sends), and no send waits for the library's 5 s activation round trip.
// The library's cluster and its Consul provider are not used (see package
// membership).
//
// Goroutines and what may be lost: actor mailboxes run on a fixed pool of
// workers (poolDispatcher) that never grows; when it is busy, runs wait in
// a list bounded by the number of actors. The identities' actors run in
// cells (cell.go), a mailbox of our own in place of the library's actor
// process, reached through the PID routing hands out. Placement and gate
// liveness change on the membership's watcher goroutine. Envelopes are
// counted per identity under a shard lock, and an actor stops
// (passivates, or hands off because another member owns it now) only when
// it has received every envelope counted for it, so passivation loses
// nothing; an actor retired after its store write was fenced hands the
// envelopes that still reach it back to routing. One-way envelopes to a
// node that is gone are lost (requests time out with ErrNoReply, and the
// caller may retry); what they carried is repeated by their sender or
// corrected at the next load.
package cluster
