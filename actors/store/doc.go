// Package store is the durable inbox of Courier: per identity (appcode +
// uid) its undelivered messages by seq, its session record and last seq and
// epoch, and the idempotency records of pushes and C2C sends.
//
// Writes are asynchronous and group-committed: Submit queues a Write and
// returns; a committer turns everything queued into one batch with one
// sync, then calls each Write's done function. The writes of one identity
// complete in the order they were submitted. A device actor keeps at most
// one Write in flight anyway, so a failed Write can be rolled back by
// reloading.
//
// Implementations are safe for concurrent use.
package store
