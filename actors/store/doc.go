// Package store is the durable inbox of Courier: per identity (appcode +
// uid) its undelivered messages by seq, its meta (last seq, session
// record) and its owner epoch; the idempotency records of pushes and the
// dedup records of C2C sends; and the access lists, as one versioned
// document. Two implementations keep one contract (contract_test.go runs
// against both): Pebble, embedded, for one node; PostgreSQL, shared by the
// nodes of a cluster.
//
// Writes are asynchronous and group-committed: Submit queues a Write and
// returns; a committer goroutine per lane (an identity always uses the
// same lane) turns everything queued into one batch with one sync (one
// transaction), then calls each Write's done function from that
// goroutine. The writes of one identity complete in the order they were
// submitted. A device actor keeps at most one Write in flight anyway, so a
// failed Write can be rolled back by reloading.
//
// Reads for callers that must not wait (LoadAsync, IdempotencyAsync)
// answer through a function too. Both stores queue the read for a fixed
// number of reader goroutines (reader): Pebble's read one at a time, in
// microseconds unless the disk hangs or Pebble stalls writes (a claim
// writes the owner epoch), and Pebble answers idempotency lookups inline
// while none of its reads is stuck and no commit has waited a second;
// PostgreSQL's reads of all identities that
// arrive while its round trips are in flight go together in the next
// one. A read is answered by its
// deadline, and one that finds the queue full fails at once
// (ErrOverloaded). Load and Idempotency are these reads, waited for.
//
// Ownership fencing: Load claims the identity and returns a new owner
// epoch; every Write carries the epoch of the activation that made it and
// fails alone with ErrFenced, changing nothing, once another Load has
// claimed the identity. What was written before the claim is in the new
// Load's snapshot. So of two activations of one identity (two nodes that
// both believe they own it) exactly one can write. Pebble also uses the
// owner key to spare reads: an identity it has never claimed has nothing
// stored (every write needs a claim, which is in Pebble's log ahead of
// it), so its first Load reads only the owner key (completeOwners).
//
// Goroutines: the committer lanes, the readers and the idempotency sweep
// belong to the store and end in Close, which fails the reads still
// queued (ErrClosed) and commits the writes that are. What a
// crash loses: with Pebble, writes submitted without Sync whose batch had
// no synced write (deletions of acknowledged messages: delivered once
// more); nothing whose done function reported success for a synced
// write. With PostgreSQL the same, the database's crash included; a
// commit whose answer was lost with the connection is reported failed
// though it may have been stored (callers retry with an idempotency key).
//
// Implementations are safe for concurrent use.
package store
