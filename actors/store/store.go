package store

import (
	"context"
	"fmt"
	"time"

	"github.com/courier-im/courier/messages/actorpb"
)

// MaxUIDLen is the longest uid the store (and the protocol) accepts.
const MaxUIDLen = 128

// Identity names a device actor: an app and a user of it.
type Identity struct {
	App uint16
	UID string
}

// String returns "app/uid".
func (id Identity) String() string { return fmt.Sprintf("%d/%s", id.App, id.UID) }

// Valid reports whether the identity can be stored.
func (id Identity) Valid() bool { return id.UID != "" && len(id.UID) <= MaxUIDLen }

// Snapshot is what Load returns: everything an actor needs to rebuild
// itself.
type Snapshot struct {
	// Owner is the owner epoch this Load claimed: every later write of the
	// caller carries it (Write.Owner), and fails with ErrFenced once
	// another Load of the same identity has claimed it since.
	Owner uint64
	// Meta's LastSeq may be behind the inbox's highest seq: writers need
	// not store it with every entry (the entry carries its seq).
	Meta *actorpb.IdentityMeta
	// Inbox holds the undelivered entries in seq order.
	Inbox []*actorpb.InboxEntry
}

// IdemPut records the answer to an idempotent request under a key.
type IdemPut struct {
	Key    string
	Record *actorpb.IdempotencyRecord
}

// Write is one atomic change to one identity.
type Write struct {
	ID Identity
	// Owner is the owner epoch of the activation that wrote it (from its
	// Snapshot). If the identity has been claimed again since, the write
	// fails with ErrFenced and changes nothing; the other writes of the
	// same batch are not affected.
	Owner uint64
	// Meta, if set, replaces the identity's meta record.
	Meta *actorpb.IdentityMeta
	// Put adds inbox entries. A seq is put once: it is never put again,
	// even after its deletion (Pebble deletes entries with SingleDelete,
	// which needs a key set only once).
	Put []*actorpb.InboxEntry
	// Delete removes inbox entries by seq; a seq not stored is ignored.
	Delete []uint32
	// Indexed and Unindex are hints for a store that indexes the inbox's
	// expiry by identity and ExpiryBucket (Pebble; PostgreSQL indexes
	// each entry and ignores them). Indexed lists, ascending, buckets the writer knows
	// are indexed for its identity already: the store need not index the
	// entries of Put that fall in them again. Unindex lists buckets in
	// which, once this write is applied, none of the identity's stored
	// entries falls: their index keys go. A wrong Indexed hint costs no
	// message: an index key of a bucket reached by the expiry sweep with
	// no entry in it is deleted by the sweep, and a bucket due within a
	// bucket's length is indexed whatever Indexed says. A wrong Unindex
	// hint does (an entry left without its index key never expires): a
	// writer whose deletion failed sends none after it.
	Indexed []int64
	Unindex []int64
	// Idem records idempotency keys; they expire at Record.ExpiresAtMs.
	Idem []IdemPut
	// Sync asks for the write to be durable before it counts as done. A
	// write without it is made durable by the next synced commit, or lost
	// in a crash: the writer decides what it can afford to lose (a device
	// actor: the deletion of an acknowledged message, which then is
	// delivered once more).
	Sync bool
}

// ExpiryBucketMs is the width of the expiry buckets of the inbox index
// (Write.Indexed): an identity has one index key per bucket in which its
// stored entries expire, not one per entry, so that a message stored and
// acknowledged costs two index updates per identity and minute instead of
// two per message.
const ExpiryBucketMs = 60_000

// ExpiryBucket returns the bucket of an entry expiring at expiresMs: the
// end of its bucket (so every entry of a bucket has expired once the
// bucket has). expiresMs is not 0.
func ExpiryBucket(expiresMs int64) int64 {
	if expiresMs <= 0 {
		return 0
	}
	return (expiresMs + ExpiryBucketMs - 1) / ExpiryBucketMs * ExpiryBucketMs
}

// Store is the durable inbox.
type Store interface {
	// Load claims the identity for the caller and returns its meta (a
	// zero meta if it has none), its whole inbox in seq order and the new
	// owner epoch. From then on, writes of earlier claims fail with
	// ErrFenced: exactly one activation of an identity can write.
	Load(ctx context.Context, id Identity) (*Snapshot, error)
	// Idempotency returns the record stored under key, or nil if there is
	// none or it has expired.
	Idempotency(ctx context.Context, id Identity, key string) (*actorpb.IdempotencyRecord, error)
	// LoadAsync is Load for a caller that must not wait for the store (a
	// device actor, on a worker pool that every identity shares). done
	// is called exactly once with Load's result, by deadline at the
	// latest (then with ErrUnavailable), and must not block. It may be
	// called before LoadAsync returns. Both stores queue the read for a
	// few reader goroutines (PostgreSQL's reads of all identities queued
	// meanwhile go together in one round trip), so that a read that waits
	// holds no caller. When its read queue is full, done gets ErrOverloaded at
	// once: LoadAsync itself never waits. Like Load, it claims the
	// identity (once it reads; a read that fails may or may not have
	// claimed it).
	LoadAsync(id Identity, deadline time.Time, done func(*Snapshot, error))
	// IdempotencyAsync looks up several keys of one identity as
	// Idempotency does, in the way of LoadAsync: done gets one record per
	// key, in the order of keys (nil where there is none or it has
	// expired), or an error.
	IdempotencyAsync(id Identity, keys []string, deadline time.Time, done func([]*actorpb.IdempotencyRecord, error))
	// Submit queues w for the next group commit and returns at once. done
	// is called exactly once, from the committer's goroutine, when w is
	// durable (nil) or has failed; it must not block. The writes of one
	// identity complete in submission order. After Close, done is called
	// with ErrClosed.
	Submit(w *Write, done func(error))
	// Expired calls fn for identities that hold an inbox entry whose
	// expiry is before now, once per identity, at most max identities,
	// earliest expiry first (to the minute: ExpiryBucket). It reads an
	// index by expiry, and the inboxes of the identities it finds, never
	// the whole inbox. Stores shared by several nodes report an identity to one
	// node at a time: an identity reported is not reported again (to any
	// node) for a lease of a minute, by when its actor has dropped what
	// expired.
	Expired(ctx context.Context, now time.Time, max int, fn func(Identity)) error
	// Lists returns the stored access-lists document (opaque to the store)
	// and its version: 0 and nil if none was ever stored.
	Lists(ctx context.Context) (version uint64, doc []byte, err error)
	// SetLists stores doc as the next version if the stored version is
	// still prev (compare-and-set), durably, and returns the new version.
	// If another writer stored a version since, it fails with ErrConflict
	// and changes nothing.
	SetLists(ctx context.Context, prev uint64, doc []byte) (uint64, error)
	// CommitWait returns how long the oldest commit in progress has
	// waited for the disk or the database (0 when none is in progress).
	CommitWait() time.Duration
	// Stalled reports whether that wait is past the store's StallAfter:
	// new writes then fail at once with ErrUnavailable, and callers
	// should refuse work that needs one before taking it in.
	Stalled() bool
	// Close flushes queued writes and releases the store.
	Close() error
}
