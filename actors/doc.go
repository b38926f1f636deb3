// Package actors holds the device actor: the single owner of one identity's
// (appcode + uid) state — its session, its inbox of unacknowledged messages,
// its retry timers and its deduplication records. Logins, logouts, pushes,
// acknowledgements and pulls are all messages to it, so they never race.
//
// The logic is a plain state machine without I/O (Device), tested without
// a cluster; the Proto.Actor wrapper performs what the state machine asks
// for (store writes, frames to gates, replies). The durable inbox store is
// in the store sub-package.
//
// Goroutines and what may be lost: an actor runs on its mailbox's
// goroutine (the routing layer's worker pool) and never blocks on the
// store. It takes a slot of the node's WriteBudget before it submits a
// write, and when none is free it refuses new stored work at once and
// keeps what it must still write in memory until a slot frees. Its reads
// (its load, idempotency lookups) are asynchronous too (reads.go): the
// store answers later with a message (or inline, for a store that
// can), within
// Config.StoreTimeout; meanwhile the identity's envelopes wait in the
// actor's stash (at most Config.MaxStashed; beyond, they are answered at
// once) and are handled in arrival order once the read is answered. A
// store whose read queue is full refuses the read, and the actor the
// work. Timers (redelivery, idleness, load retries) post messages to the
// actor; the idle checks of all the node's actors share one timing wheel
// and one runtime timer (idle.go), which runs only while actors are in
// memory. Nothing depending on a write leaves the actor
// before the write is durable, so a crash of the process loses no
// accepted message; it may lose deletions of acknowledged messages (they
// are delivered again) and a session's end, which the next activation
// corrects: a session on a gate instance that is not alive (Gates) has
// ended. A write fenced by the store (another activation claimed the
// identity) answers the actor's waiting callers with a retryable failure
// and retires the actor. A panic is recovered by the actor itself, which
// answers what it was handling and rebuilds its state from the store.
package actors
