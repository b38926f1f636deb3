package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages/actorpb"
)

// Key layout. Every identity key (idkey) is app (2 bytes) + uid length
// (1 byte) + uid, so that one identity's keys never prefix another's.
//
//	'V'                            -> format version (4 bytes)
//	'm' idkey                      -> IdentityMeta
//	'o' idkey                      -> owner epoch (8 bytes)
//	'i' idkey seq(4)               -> InboxEntry
//	'E' bucketMs(8) idkey          -> (empty) the identity has inbox entries expiring in the bucket
//	'k' idkey key                  -> IdempotencyRecord
//	'x' expiresMs(8) 'k'-key       -> (empty) expiry index of idempotency keys
//	'L'                            -> lists version (8) + lists document
//	'O'                            -> (empty) every identity with an 'm' or 'i' key has an 'o' key
const (
	prefixVersion     = 'V'
	prefixMeta        = 'm'
	prefixOwner       = 'o'
	prefixInbox       = 'i'
	prefixInboxIndex  = 'E'
	prefixOldIndex    = 'e' // format 2's per-entry inbox expiry index
	prefixIdem        = 'k'
	prefixExpiry      = 'x'
	prefixLists       = 'L'
	keyOwnersComplete = 'O'
)

// pebbleFormat is the key layout this code writes. Version 1 (no 'V' key)
// lacked the inbox expiry index and the owner keys; version 2 indexed the
// expiry of each inbox entry ('e' keys) instead of each identity's expiry
// buckets. Both are upgraded at open. A database of a higher version is
// refused.
const pebbleFormat = 3

// PebbleConfig configures the embedded store.
type PebbleConfig struct {
	// Dir holds the database. Required.
	Dir string
	// MaxBatch is the most writes committed with one sync (default 1024).
	MaxBatch int
	// QueueLen is the length of the commit queues, all lanes together
	// (default 8192).
	QueueLen int
	// Lanes is the number of batches committed concurrently (default 1).
	// More let one batch be applied while another waits for its sync, but
	// the log's syncs still come one after another: each lane's batch
	// then waits for the other's sync as well as its own.
	Lanes int
	// CacheSize is the block cache in bytes (default 64 MiB).
	CacheSize int
	// MemTableSize is the size of one memtable in bytes (default 32 MiB).
	MemTableSize int
	// SweepInterval is how often expired idempotency and C2C-dedup
	// records are looked for when the last sweep found fewer than
	// SweepBatch (default 1 s). While a sweep finds full batches, the next
	// starts as soon as the last one's own duration has passed again.
	SweepInterval time.Duration
	// SweepBatch is the most expired records one sweep round deletes
	// (default 1000).
	SweepBatch int
	// MinSyncInterval is the shortest time between two syncs of the log
	// (0: a sync starts as soon as one is asked for and the last ended).
	// Writes that arrive meanwhile share the next sync: fewer syncs, each
	// write waits up to this much longer.
	MinSyncInterval time.Duration
	// NoSync skips the fsync of each batch. Only for benchmarks that
	// measure everything but the disk; a crash then loses the last batches.
	NoSync bool
	// Observe, if set, is told each batch's size and commit time.
	Observe func(n int, d time.Duration, err error)
	// StallAfter, if positive, is how long a commit may wait for the
	// disk before new writes fail at once with ErrUnavailable (until it
	// completes); CommitWait reports the wait.
	StallAfter time.Duration
	// Swept, if set, is told how many expired idempotency records each
	// sweep round deleted.
	Swept func(n int)
	// DiskEvent, if set, is told of the disk's trouble as Pebble sees it:
	// "disk_slow" (an operation on a file has taken over 5 s; repeated
	// every 2 s while it lasts), "write_stall" and "write_stall_end"
	// (writes wait for flushes or compactions), "background_error" (a
	// flush or compaction failed: a full disk), "low_disk_space" (under
	// 10, 5, 3, 2 or 1 % free). It must not block.
	DiskEvent func(event string)
	// Now is the clock of expiries (default time.Now; tests set it).
	Now func() time.Time
	// Readers is the number of goroutines that do the loads and
	// idempotency lookups of LoadAsync and IdempotencyAsync (default 4).
	Readers int
	// ReadQueueLen bounds the reads waiting for a reader (default 4096);
	// beyond, a read fails at once with ErrOverloaded.
	ReadQueueLen int
	// ObserveRead, if set, is told each read's time and error (n is 1).
	ObserveRead func(n int, d time.Duration, err error)
}

func (c *PebbleConfig) setDefaults() error {
	if c.Dir == "" {
		return errors.New("store: pebble Dir is required")
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 1024
	}
	if c.QueueLen <= 0 {
		c.QueueLen = 8192
	}
	if c.CacheSize <= 0 {
		c.CacheSize = 64 << 20
	}
	if c.MemTableSize <= 0 {
		c.MemTableSize = 32 << 20
	}
	if c.Lanes <= 0 {
		c.Lanes = 1
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = time.Second
	}
	if c.SweepBatch <= 0 {
		c.SweepBatch = 1000
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Readers <= 0 {
		c.Readers = 4
	}
	if c.ReadQueueLen <= 0 {
		c.ReadQueueLen = 4096
	}
	if c.Swept == nil {
		c.Swept = func(int) {}
	}
	return nil
}

// Pebble is the single-node Store on an embedded Pebble database.
//
// Each commit lane is the only writer of its identities' inbox, meta and
// idempotency keys; the expiry sweep deletes through the lanes too, so a
// record rewritten while the sweep looks at it is never deleted. Owner
// epochs are pebbleOwners': a Load's claim sees every write that passed
// its owner check before it, and fences every write checked after it.
type Pebble struct {
	db *pebble.DB
	c  *committer
	r  *reader
	// stopEvents ends the goroutine that logs the disk's trouble.
	stopEvents func()
	cfg        PebbleConfig
	sync       *pebble.WriteOptions
	log        *slog.Logger
	now        func() time.Time

	own *pebbleOwners
	// ownersComplete: every identity with a meta or inbox key has an
	// owner key (completeOwners), so a load of an identity never claimed
	// reads nothing else.
	ownersComplete bool

	// mu guards db against use after Close (Pebble panics then): reads
	// hold it shared, Close exclusively.
	mu     sync.RWMutex
	closed bool

	listsMu sync.Mutex // serializes SetLists

	// sweepStart is when the idempotency sweep last started from the
	// beginning of its index, sweptUpTo the expiry it has swept up to
	// since (Unix ms).
	sweepStart atomic.Int64
	sweptUpTo  atomic.Uint64

	// failCommit, if set, fails every commit with it (tests of failures);
	// commitDelay (ns) widens the window between the owner check and the
	// commit (tests of fencing).
	failCommit  atomic.Pointer[error]
	commitDelay atomic.Int64

	quit      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// PebbleMaxOpenFiles bounds the files Pebble keeps open (its table
// cache), part of what a node's gate leaves to the rest of the node.
const PebbleMaxOpenFiles = 512

// OpenPebble opens (or creates) the store in cfg.Dir.
func OpenPebble(cfg PebbleConfig, log *slog.Logger) (*Pebble, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	events, stopEvents := diskEvents(cfg.DiskEvent, log)
	cache := pebble.NewCache(int64(cfg.CacheSize))
	defer cache.Unref() // the DB holds its own reference
	opts := &pebble.Options{
		Logger:        pebbleLogger{log},
		EventListener: events,
		// Filter and index blocks of the tables stay cached: idempotency
		// lookups read them for every new push and C2C id.
		Cache: cache,
		// Most inbox entries are acknowledged within seconds: a larger
		// memtable lets an entry and its deletion meet there and vanish
		// at flush, instead of being flushed and compacted away later.
		MemTableSize:                uint64(cfg.MemTableSize),
		MemTableStopWritesThreshold: 4,
		// Within the node's file descriptors kept from its gate
		// (gate.fd-reserve): a gate that cannot accept stops.
		MaxOpenFiles: PebbleMaxOpenFiles,
	}
	if d := cfg.MinSyncInterval; d > 0 {
		opts.WALMinSyncInterval = func() time.Duration { return d }
	}
	// Nearly every idempotency lookup is for a key that does not exist
	// (a new push or C2C id): Bloom filters answer those without reading
	// the tables.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(cfg.Dir, opts)
	if err != nil {
		stopEvents()
		return nil, fmt.Errorf("store: open pebble in %s: %w", cfg.Dir, err)
	}
	s := &Pebble{db: db, cfg: cfg, sync: pebble.Sync, log: log, now: cfg.Now, quit: make(chan struct{}), stopEvents: stopEvents}
	if err := s.upgrade(); err != nil {
		db.Close()
		stopEvents()
		return nil, err
	}
	if cfg.NoSync {
		s.sync = pebble.NoSync
	}
	if err := s.completeOwners(); err != nil {
		db.Close()
		stopEvents()
		return nil, err
	}
	s.own = newPebbleOwners(db)
	s.c = newCommitter(cfg.Lanes, cfg.QueueLen, cfg.MaxBatch, s.commit)
	s.c.observe = cfg.Observe
	s.c.stallAfter = cfg.StallAfter
	s.r = newGuardedReader(cfg.Readers, cfg.ReadQueueLen, s.readOne)
	s.r.observe = cfg.ObserveRead
	s.wg.Add(1)
	go s.sweepLoop()
	return s, nil
}

// upgrade checks the format version and brings a version-1 or -2
// database to the current one: it builds the inbox expiry index by bucket
// from the stored entries and drops format 2's index by entry.
func (s *Pebble) upgrade() error {
	v, closer, err := s.db.Get([]byte{prefixVersion})
	switch {
	case err == nil:
		if len(v) != 4 {
			closer.Close()
			return fmt.Errorf("store: corrupt format version %x in %s", v, s.cfg.Dir)
		}
		got := binary.BigEndian.Uint32(v)
		closer.Close()
		if got > pebbleFormat {
			return fmt.Errorf("%w: pebble format %d in %s, this binary knows up to %d", ErrSchema, got, s.cfg.Dir, pebbleFormat)
		}
		if got == pebbleFormat {
			return nil
		}
	case !errors.Is(err, pebble.ErrNotFound):
		return fmt.Errorf("store: read format version: %w", err)
	}
	b := s.db.NewBatch()
	defer b.Close()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixInbox}, UpperBound: []byte{prefixInbox + 1}})
	if err != nil {
		return err
	}
	n := 0
	var key []byte
	for ok := it.First(); ok; ok = it.Next() {
		if exp := entryExpiry(it.Value()); exp != 0 {
			ik := it.Key()
			id, _, ok := parseIDKey(ik)
			if !ok {
				continue
			}
			key = inboxIndexKey(key[:0], ExpiryBucket(exp), id)
			if err := b.Set(key, nil, nil); err != nil {
				it.Close()
				return err
			}
			n++
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("store: upgrade: %w", err)
	}
	if err := b.DeleteRange([]byte{prefixOldIndex}, []byte{prefixOldIndex + 1}, nil); err != nil {
		return err
	}
	if err := b.Set([]byte{prefixVersion}, binary.BigEndian.AppendUint32(nil, pebbleFormat), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("store: upgrade: %w", err)
	}
	if n > 0 {
		s.log.Info("store: indexed the expiry of stored messages", "entries", n)
	}
	return nil
}

// completeOwners makes sure every identity with stored meta or inbox
// entries has an owner key, and records that it does ('O'). Identities
// get their owner key when first claimed (Load), before anything of
// theirs can be written, and the claim is in Pebble's log ahead of the
// write (a synced write syncs the log up to it, and a log is synced when
// Pebble moves to the next; the store configures no WAL failover): a load
// then need not look for the data of an identity never claimed. Databases of format 1 had no owner keys,
// and those upgraded by binaries before this check got none: their
// identities get owner epoch 1 here, once.
func (s *Pebble) completeOwners() error {
	_, closer, err := s.db.Get([]byte{keyOwnersComplete})
	switch {
	case err == nil:
		closer.Close()
		s.ownersComplete = true
		return nil
	case !errors.Is(err, pebble.ErrNotFound):
		return fmt.Errorf("store: read owners marker: %w", err)
	}
	b := s.db.NewBatch()
	defer func() { b.Close() }()
	epoch := binary.BigEndian.AppendUint64(nil, 1)
	n := 0
	for _, prefix := range []byte{prefixMeta, prefixInbox} {
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefix}, UpperBound: []byte{prefix + 1}})
		if err != nil {
			return fmt.Errorf("store: complete owners: %w", err)
		}
		var last, okey []byte
		for ok := it.First(); ok; ok = it.Next() {
			k := it.Key()
			if len(k) < 4 || len(k) < 4+int(k[3]) {
				continue // not an identity key
			}
			idk := k[1 : 4+int(k[3])]
			if bytes.Equal(idk, last) {
				continue // the identity's next inbox entry
			}
			last = append(last[:0], idk...)
			okey = append(append(okey[:0], prefixOwner), idk...)
			_, closer, err := s.db.Get(okey)
			if err == nil {
				closer.Close()
				continue
			}
			if !errors.Is(err, pebble.ErrNotFound) {
				it.Close()
				return fmt.Errorf("store: complete owners: %w", err)
			}
			// An identity with both meta and inbox is set twice: the
			// same value.
			if err := b.Set(okey, epoch, nil); err != nil {
				it.Close()
				return err
			}
			if n++; n%10000 == 0 {
				if err := b.Commit(pebble.NoSync); err != nil {
					it.Close()
					return fmt.Errorf("store: complete owners: %w", err)
				}
				b.Close()
				b = s.db.NewBatch()
			}
		}
		if err := it.Close(); err != nil {
			return fmt.Errorf("store: complete owners: %w", err)
		}
	}
	if err := b.Set([]byte{keyOwnersComplete}, nil, nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("store: complete owners: %w", err)
	}
	if n > 0 {
		s.log.Info("store: gave identities stored without an owner epoch one", "identities", n)
	}
	s.ownersComplete = true
	return nil
}

func appendIDKey(dst []byte, prefix byte, id Identity) []byte {
	dst = append(dst, prefix)
	dst = binary.BigEndian.AppendUint16(dst, id.App)
	dst = append(dst, byte(len(id.UID)))
	return append(dst, id.UID...)
}

// parseIDKey decodes the identity at the start of k (after its prefix
// byte) and returns the rest of k.
func parseIDKey(k []byte) (Identity, []byte, bool) {
	if len(k) < 4 || len(k) < 4+int(k[3]) {
		return Identity{}, nil, false
	}
	n := 4 + int(k[3])
	return Identity{App: binary.BigEndian.Uint16(k[1:3]), UID: string(k[4:n])}, k[n:], true
}

func inboxKey(dst []byte, id Identity, seq uint32) []byte {
	return binary.BigEndian.AppendUint32(appendIDKey(dst, prefixInbox, id), seq)
}

// inboxIndexKey is the index key of id's inbox entries expiring in
// bucket (ExpiryBucket).
func inboxIndexKey(dst []byte, bucket int64, id Identity) []byte {
	dst = append(dst, prefixInboxIndex)
	dst = binary.BigEndian.AppendUint64(dst, uint64(bucket))
	dst = binary.BigEndian.AppendUint16(dst, id.App)
	dst = append(dst, byte(len(id.UID)))
	return append(dst, id.UID...)
}

// parseIndexKey decodes an inbox index key.
func parseIndexKey(k []byte) (bucket int64, id Identity, ok bool) {
	if len(k) < 9 || k[0] != prefixInboxIndex {
		return 0, Identity{}, false
	}
	// The bucket's last byte stands in for parseIDKey's prefix.
	id, rest, ok := parseIDKey(k[8:])
	return int64(binary.BigEndian.Uint64(k[1:9])), id, ok && len(rest) == 0
}

func idemKey(id Identity, key string) []byte {
	return append(appendIDKey(nil, prefixIdem, id), key...)
}

func expiryKey(expiresMs int64, ik []byte) []byte {
	k := binary.BigEndian.AppendUint64([]byte{prefixExpiry}, uint64(expiresMs))
	return append(k, ik...)
}

// appendPrefixEnd appends the smallest key greater than every key with
// prefix p to dst (nothing if there is none: p is all 0xff).
func appendPrefixEnd(dst, p []byte) []byte {
	start := len(dst)
	dst = append(dst, p...)
	end := dst[start:]
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return dst[:start+i+1]
		}
	}
	if start == 0 {
		return nil
	}
	return dst[:start]
}

// keyBuf is scratch space for the keys of one read (Load), pooled.
type keyBuf struct{ a, b []byte }

var keyBufs = sync.Pool{New: func() any { return new(keyBuf) }}

func (kb *keyBuf) release() {
	if cap(kb.a) > 1024 || cap(kb.b) > 1024 {
		return
	}
	keyBufs.Put(kb)
}

// Load implements Store. It claims the identity (pebbleOwners), then
// reads.
func (s *Pebble) Load(ctx context.Context, id Identity) (*Snapshot, error) {
	return s.load(id, deadlineOf(ctx))
}

// load is Load with the deadline of the claim's wait for an older
// owner's write.
func (s *Pebble) load(id Identity, deadline time.Time) (*Snapshot, error) {
	if !id.Valid() {
		return nil, ErrBadIdentity
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	kb := keyBufs.Get().(*keyBuf)
	defer kb.release() // after the iterator's Close: it holds the bounds
	owner, first, err := s.own.claim(id, kb, deadline)
	if err != nil {
		return nil, err
	}
	snap := &Snapshot{Owner: owner, Meta: &actorpb.IdentityMeta{}}
	if first && s.ownersComplete {
		// Never claimed, so never written (ownersComplete): nothing to
		// read.
		return snap, nil
	}
	kb.a = appendIDKey(kb.a[:0], prefixMeta, id)
	v, closer, err := s.db.Get(kb.a)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("%w: load meta of %s: %v", ErrUnavailable, id, err)
	default:
		err = proto.Unmarshal(v, snap.Meta)
		closer.Close()
		if err != nil {
			return nil, fmt.Errorf("store: corrupt meta of %s: %w", id, err)
		}
	}
	kb.a = appendIDKey(kb.a[:0], prefixInbox, id)
	kb.b = appendPrefixEnd(kb.b[:0], kb.a)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: kb.a, UpperBound: kb.b})
	if err != nil {
		return nil, fmt.Errorf("%w: inbox of %s: %v", ErrUnavailable, id, err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		e := &actorpb.InboxEntry{}
		if err := proto.Unmarshal(it.Value(), e); err != nil {
			return nil, fmt.Errorf("store: corrupt inbox entry %x: %w", it.Key(), err)
		}
		snap.Inbox = append(snap.Inbox, e)
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("%w: inbox of %s: %v", ErrUnavailable, id, err)
	}
	return snap, nil
}

// Idempotency implements Store.
func (s *Pebble) Idempotency(_ context.Context, id Identity, key string) (*actorpb.IdempotencyRecord, error) {
	if !id.Valid() {
		return nil, ErrBadIdentity
	}
	rec, err := s.idemRecord(idemKey(id, key))
	if err != nil {
		return nil, fmt.Errorf("idempotency key of %s: %w", id, err)
	}
	if rec == nil || (rec.ExpiresAtMs != 0 && rec.ExpiresAtMs <= s.now().UnixMilli()) {
		return nil, nil
	}
	return rec, nil
}

// LoadAsync implements Store: the load is queued for the store's readers
// (PebbleConfig.Readers). A read takes microseconds (see
// BenchmarkPebbleReads), but it may wait: a claim for an older owner's
// write to be committed, a Set in Pebble's write stall, a read of a
// hung disk. On the caller's goroutine (an actor dispatcher's worker)
// a few such waits would stop every actor of the node; on a reader they
// stop the readers, the queue fills and further reads are refused at
// once (ErrOverloaded) while the actors go on serving what needs no read.
func (s *Pebble) LoadAsync(id Identity, deadline time.Time, done func(*Snapshot, error)) {
	if !id.Valid() {
		done(nil, ErrBadIdentity)
		return
	}
	s.r.submit(readReq{id: id, deadline: deadline, loaded: done})
}

// IdempotencyAsync implements Store. A lookup is one Get per key, most of
// them answered by the cached Bloom filters (a new id is not stored):
// it runs inline while the store is well (no read of the readers stuck,
// no commit waiting on the disk for a second), sparing every new C2C and
// keyed push a hop to a reader and back (5% of a C2C's CPU at 10,000/s,
// BENCHMARKS.md round 17); otherwise it is queued for the readers, as
// LoadAsync.
func (s *Pebble) IdempotencyAsync(id Identity, keys []string, deadline time.Time, done func([]*actorpb.IdempotencyRecord, error)) {
	if !id.Valid() {
		done(nil, ErrBadIdentity)
		return
	}
	if !s.r.stuck.Load() && s.c.waiting() < time.Second {
		if recs, ok, err := s.lookupInline(id, keys); ok {
			done(recs, err)
			return
		}
	}
	s.r.submit(readReq{id: id, keys: keys, deadline: deadline, found: done})
}

// lookupInline is IdempotencyAsync's inline lookup; ok is false, and
// nothing read, if the store's lock is held (Close), which it must not
// wait for.
func (s *Pebble) lookupInline(id Identity, keys []string) (recs []*actorpb.IdempotencyRecord, ok bool, err error) {
	if !s.mu.TryRLock() {
		return nil, false, nil
	}
	defer s.mu.RUnlock()
	recs, err = s.lookupLocked(id, keys)
	return recs, true, err
}

// lookupLocked looks up keys of id as Idempotency does each; call with
// mu held (read).
func (s *Pebble) lookupLocked(id Identity, keys []string) ([]*actorpb.IdempotencyRecord, error) {
	if s.closed {
		return nil, ErrClosed
	}
	now := s.now().UnixMilli()
	recs := make([]*actorpb.IdempotencyRecord, len(keys))
	for i, k := range keys {
		rec, err := s.idemGet(idemKey(id, k))
		if err != nil {
			return nil, fmt.Errorf("idempotency key of %s: %w", id, err)
		}
		if rec != nil && (rec.ExpiresAtMs == 0 || rec.ExpiresAtMs > now) {
			recs[i] = rec
		}
	}
	return recs, nil
}

// readOne is a read of the store's readers (newGuardedReader).
func (s *Pebble) readOne(q readReq) (*Snapshot, []*actorpb.IdempotencyRecord, error) {
	if q.isLoad() {
		snap, err := s.load(q.id, q.deadline)
		return snap, nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	recs, err := s.lookupLocked(q.id, q.keys)
	return nil, recs, err
}

func (s *Pebble) idemRecord(k []byte) (*actorpb.IdempotencyRecord, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	return s.idemGet(k)
}

// idemGet reads the record under k; call with mu held (read).
func (s *Pebble) idemGet(k []byte) (*actorpb.IdempotencyRecord, error) {
	v, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer closer.Close()
	rec := &actorpb.IdempotencyRecord{}
	if err := proto.Unmarshal(v, rec); err != nil {
		return nil, fmt.Errorf("store: corrupt idempotency record: %w", err)
	}
	return rec, nil
}

// Submit implements Store.
func (s *Pebble) Submit(w *Write, done func(error)) {
	if !w.ID.Valid() {
		done(ErrBadIdentity)
		return
	}
	s.c.submit(pending{w: w, done: done})
}

// CommitWait implements Store.
func (s *Pebble) CommitWait() time.Duration { return s.c.waiting() }

// Stalled implements Store.
func (s *Pebble) Stalled() bool { return s.c.stalled() }

// Close implements Store.
func (s *Pebble) Close() error {
	s.closeOnce.Do(func() {
		close(s.quit)
		s.wg.Wait() // the sweep submits to the committer
		s.r.close()
		s.c.close()
		s.mu.Lock()
		s.closed = true
		s.closeErr = s.db.Close()
		s.mu.Unlock()
		s.stopEvents()
	})
	return s.closeErr
}

// pebbleLogger sends Pebble's logs to slog.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug("pebble: " + fmt.Sprintf(format, args...))
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error("pebble: " + fmt.Sprintf(format, args...))
}

// Fatalf ends the process, as Pebble's own logger does: Pebble calls it
// when it can no longer keep what it promised (a commit's log write
// failed: a full disk), and nothing it holds may be trusted after. A
// panic would do on Pebble's goroutines, but one raised on an actor's,
// whose recover catches it, would leave the node running on a broken
// store. A restart replays what was synced.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	l.log.Error("pebble: fatal: "+fmt.Sprintf(format, args...)+"; the node exits", "stack", string(debug.Stack()))
	pebbleExit(1)
}

// pebbleExit is os.Exit (a variable for tests).
var pebbleExit = os.Exit

// diskEvents is the listener that tells fn, and the log, of the disk's
// trouble (PebbleConfig.DiskEvent). Pebble calls it from its own
// goroutines, some while it holds its locks and writes wait, and asks
// that it do no I/O: it counts at once and hands the log line to a
// goroutine of its own (at most one a second per kind; dropped when that
// goroutine is behind). stop ends that goroutine.
func diskEvents(fn func(string), log *slog.Logger) (l *pebble.EventListener, stop func()) {
	if fn == nil {
		fn = func(string) {}
	}
	type line struct {
		level slog.Level
		msg   string
		args  []any
	}
	lines := make(chan line, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ln := range lines {
			log.Log(context.Background(), ln.level, "store: "+ln.msg, ln.args...)
		}
	}()
	var mu sync.Mutex
	last := map[string]time.Time{}
	stopped := false
	// After stop, events (Pebble's last ones, while it closes) are
	// counted, not logged.
	guarded := func(event string, level slog.Level, msg string, args ...any) {
		fn(event)
		mu.Lock()
		defer mu.Unlock()
		if stopped || time.Since(last[event]) < time.Second {
			return
		}
		last[event] = time.Now()
		select {
		case lines <- line{level, msg, args}:
		default:
		}
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			mu.Lock()
			stopped = true
			close(lines)
			mu.Unlock()
			<-done
		})
	}
	return &pebble.EventListener{
		DiskSlow: func(i pebble.DiskSlowInfo) {
			guarded("disk_slow", slog.LevelWarn, "the disk is slow: an operation has not completed", "file", i.Path, "op", i.OpType.String(), "for", i.Duration.Round(time.Millisecond))
		},
		WriteStallBegin: func(i pebble.WriteStallBeginInfo) {
			guarded("write_stall", slog.LevelWarn, "writes are stalled, waiting for the disk", "reason", i.Reason)
		},
		WriteStallEnd: func() { guarded("write_stall_end", slog.LevelInfo, "writes are no longer stalled") },
		BackgroundError: func(err error) {
			guarded("background_error", slog.LevelWarn, "a background operation (a flush, a compaction) failed: is the disk full?", "err", err)
		},
		LowDiskSpace: func(i pebble.LowDiskSpaceInfo) {
			guarded("low_disk_space", slog.LevelWarn, "the disk is running out of space", "available_bytes", i.AvailBytes, "total_bytes", i.TotalBytes,
				"under_percent", i.PercentThreshold)
		},
		// Pebble's default ends the process (Fatalf); the read that found
		// the corruption fails anyway, and one identity that cannot be
		// read must not take the node down at each restart.
		DataCorruption: func(i pebble.DataCorruptionInfo) {
			guarded("data_corruption", slog.LevelError, "a file of the store is corrupt: reads of what it holds fail", "file", i.Path, "err", i.Details)
		},
	}, stop
}
