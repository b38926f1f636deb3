// Package cluster sets up the Proto.Actor cluster a node belongs to (today
// with in-memory membership: a single node) and gives the rest of Courier
// the thin layer it uses to reach an identity's actor and a connection's
// gate. It works around the library's known gaps: identities are placed by
// our own rendezvous hashing over the members and activated by our own
// routing, so no sender holds a PID that passivation could make stale (the
// library silently loses such sends) and no send waits for the library's
// 5 s activation round trip; requests are correlated without the library's
// futures, whose late replies race.
//
// It also knows which gate instances are alive (AddGate, RemoveGate,
// GateAlive): the local gate's, and, fed by membership, other members'.
// When one goes away every identity actor in memory is told (a GateDown
// envelope), and actors that load later check their session against the
// set, so a session on a gate that is gone is over at once.
//
// Goroutines and what may be lost: actor mailboxes run on a fixed pool of
// workers (poolDispatcher) that never grows; when it is busy, runs wait in
// a list bounded by the number of actors. The identities' actors run in
// cells (cell.go), a mailbox of our own in place of the library's actor
// process, reached through the PID routing hands out. Envelopes are counted per
// identity under a shard lock, and an actor stops (passivates) only when
// it has received every envelope counted for it, so passivation loses
// nothing; an actor retired after its store write was fenced hands the
// envelopes that still reach it back to routing. One-way envelopes to a
// node that is gone are lost (requests time out with ErrNoReply); what
// they carried is repeated by their sender or corrected at the next load.
package cluster
