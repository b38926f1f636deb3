package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages/actorpb"
)

// Key layout. Every identity key is app (2 bytes) + uid length (1 byte) +
// uid, so that one identity's keys never prefix another's.
//
//	'm' idkey                  -> IdentityMeta
//	'i' idkey seq(4)           -> InboxEntry
//	'k' idkey key              -> IdempotencyRecord
//	'x' expiresMs(8) 'k'-key   -> (empty) expiry index of idempotency keys
const (
	prefixMeta   = 'm'
	prefixInbox  = 'i'
	prefixIdem   = 'k'
	prefixExpiry = 'x'
)

// PebbleConfig configures the embedded store.
type PebbleConfig struct {
	// Dir holds the database. Required.
	Dir string
	// MaxBatch is the most writes committed with one sync (default 1024).
	MaxBatch int
	// QueueLen is the length of the commit queues, all lanes together
	// (default 8192).
	QueueLen int
	// Lanes is the number of batches committed concurrently (default 2):
	// one is applied while another waits for its sync.
	Lanes int
	// CacheSize is the block cache in bytes (default 64 MiB).
	CacheSize int
	// SweepInterval is how often expired idempotency keys are deleted
	// (default 1 minute).
	SweepInterval time.Duration
	// NoSync skips the fsync of each batch. Only for benchmarks that
	// measure everything but the disk; a crash then loses the last batches.
	NoSync bool
	// Observe, if set, is told each batch's size and commit time.
	Observe func(n int, d time.Duration, err error)
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
	if c.Lanes <= 0 {
		c.Lanes = 2
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = time.Minute
	}
	return nil
}

// Pebble is the single-node Store on an embedded Pebble database.
type Pebble struct {
	db   *pebble.DB
	c    *committer
	sync *pebble.WriteOptions
	log  *slog.Logger
	now  func() time.Time

	// mu guards db against use after Close (Pebble panics then): reads
	// hold it shared, Close exclusively.
	mu     sync.RWMutex
	closed bool

	quit      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// OpenPebble opens (or creates) the store in cfg.Dir.
func OpenPebble(cfg PebbleConfig, log *slog.Logger) (*Pebble, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	cache := pebble.NewCache(int64(cfg.CacheSize))
	defer cache.Unref() // the DB holds its own reference
	opts := &pebble.Options{
		Logger: pebbleLogger{log},
		// Filter and index blocks of the tables stay cached: idempotency
		// lookups read them for every new push and C2C id.
		Cache: cache,
		// Most inbox entries are acknowledged within seconds: a larger
		// memtable lets an entry and its deletion meet there and vanish
		// at flush, instead of being flushed and compacted away later.
		MemTableSize:                32 << 20,
		MemTableStopWritesThreshold: 4,
	}
	// Nearly every idempotency lookup is for a key that does not exist
	// (a new push or C2C id): Bloom filters answer those without reading
	// the tables.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(cfg.Dir, opts)
	if err != nil {
		return nil, fmt.Errorf("store: open pebble in %s: %w", cfg.Dir, err)
	}
	s := &Pebble{db: db, sync: pebble.Sync, log: log, now: time.Now, quit: make(chan struct{})}
	if cfg.NoSync {
		s.sync = pebble.NoSync
	}
	s.c = newCommitter(cfg.Lanes, cfg.QueueLen, cfg.MaxBatch, s.commit)
	s.c.observe = cfg.Observe
	s.wg.Add(1)
	go s.sweepLoop(cfg.SweepInterval)
	return s, nil
}

func appendIDKey(dst []byte, prefix byte, id Identity) []byte {
	dst = append(dst, prefix)
	dst = binary.BigEndian.AppendUint16(dst, id.App)
	dst = append(dst, byte(len(id.UID)))
	return append(dst, id.UID...)
}

func inboxKey(dst []byte, id Identity, seq uint32) []byte {
	return binary.BigEndian.AppendUint32(appendIDKey(dst, prefixInbox, id), seq)
}

func idemKey(id Identity, key string) []byte {
	return append(appendIDKey(nil, prefixIdem, id), key...)
}

func expiryKey(expiresMs int64, ik []byte) []byte {
	k := binary.BigEndian.AppendUint64([]byte{prefixExpiry}, uint64(expiresMs))
	return append(k, ik...)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

// Load implements Store.
func (s *Pebble) Load(_ context.Context, id Identity) (*Snapshot, error) {
	if !id.Valid() {
		return nil, ErrBadIdentity
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	snap := &Snapshot{Meta: &actorpb.IdentityMeta{}}
	v, closer, err := s.db.Get(appendIDKey(nil, prefixMeta, id))
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
	lower := appendIDKey(nil, prefixInbox, id)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(lower)})
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

// Expired implements Store.
func (s *Pebble) Expired(ctx context.Context, now time.Time, max int, fn func(Identity)) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixInbox}, UpperBound: []byte{prefixInbox + 1}})
	if err != nil {
		return fmt.Errorf("%w: inbox scan: %v", ErrUnavailable, err)
	}
	defer it.Close()
	nowMs := now.UnixMilli()
	var last []byte // idkey of the last identity reported
	n := 0
	var e actorpb.InboxEntry
	for ok := it.First(); ok && n < max; ok = it.Next() {
		k := it.Key()
		if len(k) < 4+4 || len(k) < 4+int(k[3])+4 {
			continue
		}
		idk := k[:4+int(k[3])] // prefix, app, uid length, uid
		if last != nil && bytes.Equal(idk, last) {
			continue
		}
		if err := proto.Unmarshal(it.Value(), &e); err != nil || e.ExpiresAtMs == 0 || e.ExpiresAtMs > nowMs {
			continue
		}
		last = bytes.Clone(idk)
		fn(Identity{App: binary.BigEndian.Uint16(idk[1:3]), UID: string(idk[4:])})
		n++
		if n%1024 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("%w: inbox scan: %v", ErrUnavailable, err)
	}
	return nil
}

// Idempotency implements Store.
func (s *Pebble) Idempotency(_ context.Context, id Identity, key string) (*actorpb.IdempotencyRecord, error) {
	rec, err := s.idemRecord(idemKey(id, key))
	if err != nil {
		return nil, fmt.Errorf("idempotency key of %s: %w", id, err)
	}
	if rec == nil || (rec.ExpiresAtMs != 0 && rec.ExpiresAtMs <= s.now().UnixMilli()) {
		return nil, nil
	}
	return rec, nil
}

func (s *Pebble) idemRecord(k []byte) (*actorpb.IdempotencyRecord, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
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
	s.c.submit(w, done)
}

// commit writes a batch of Writes with one sync.
func (s *Pebble) commit(ws []pending) error {
	b := s.db.NewBatch()
	defer b.Close()
	var key []byte
	var val []byte
	sync := false
	for _, p := range ws {
		w := p.w
		sync = sync || w.Sync
		if w.Meta != nil {
			var err error
			if val, err = (proto.MarshalOptions{}).MarshalAppend(val[:0], w.Meta); err != nil {
				return err
			}
			if err := b.Set(appendIDKey(key[:0], prefixMeta, w.ID), val, nil); err != nil {
				return err
			}
		}
		for _, e := range w.Put {
			var err error
			if val, err = (proto.MarshalOptions{}).MarshalAppend(val[:0], e); err != nil {
				return err
			}
			if err := b.Set(inboxKey(key[:0], w.ID, e.Seq), val, nil); err != nil {
				return err
			}
		}
		for _, seq := range w.Delete {
			// An inbox key is set exactly once (seqs are never reused
			// once written), which is what SingleDelete needs: the
			// entry and its tombstone cancel out at the first flush or
			// compaction that sees both.
			if err := b.SingleDelete(inboxKey(key[:0], w.ID, seq), nil); err != nil {
				return err
			}
		}
		for _, ip := range w.Idem {
			var err error
			if val, err = (proto.MarshalOptions{}).MarshalAppend(val[:0], ip.Record); err != nil {
				return err
			}
			ik := idemKey(w.ID, ip.Key)
			if err := b.Set(ik, val, nil); err != nil {
				return err
			}
			if ip.Record.ExpiresAtMs != 0 {
				if err := b.Set(expiryKey(ip.Record.ExpiresAtMs, ik), nil, nil); err != nil {
					return err
				}
			}
		}
	}
	opts := pebble.NoSync
	if sync {
		opts = s.sync
	}
	if err := b.Commit(opts); err != nil {
		return fmt.Errorf("%w: commit: %v", ErrUnavailable, err)
	}
	return nil
}

// sweepLoop deletes expired idempotency keys.
func (s *Pebble) sweepLoop(every time.Duration) {
	defer s.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			if n, err := s.SweepExpired(); err != nil {
				s.log.Warn("store: sweeping expired idempotency keys", "err", err)
			} else if n > 0 {
				s.log.Debug("store: swept expired idempotency keys", "count", n)
			}
		}
	}
}

// SweepExpired deletes the idempotency keys whose expiry has passed and
// returns how many it deleted.
func (s *Pebble) SweepExpired() (int, error) {
	upper := binary.BigEndian.AppendUint64([]byte{prefixExpiry}, uint64(s.now().UnixMilli()))
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixExpiry}, UpperBound: upper})
	if err != nil {
		return 0, err
	}
	b := s.db.NewBatch()
	defer b.Close()
	n := 0
	nowMs := s.now().UnixMilli()
	for ok := it.First(); ok && n < 10000; ok = it.Next() {
		k := it.Key()
		// The key may have been written again with a later expiry.
		if rec, err := s.idemRecord(k[9:]); err != nil {
			it.Close()
			return 0, err
		} else if rec != nil && (rec.ExpiresAtMs == 0 || rec.ExpiresAtMs > nowMs) {
			if err := b.Delete(k, nil); err != nil {
				it.Close()
				return 0, err
			}
			continue
		}
		if err := b.Delete(k[9:], nil); err != nil {
			it.Close()
			return 0, err
		}
		if err := b.Delete(k, nil); err != nil {
			it.Close()
			return 0, err
		}
		n++
	}
	if err := it.Close(); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, nil
	}
	return n, b.Commit(pebble.NoSync)
}

// Close implements Store.
func (s *Pebble) Close() error {
	s.closeOnce.Do(func() {
		s.c.close()
		close(s.quit)
		s.wg.Wait()
		s.mu.Lock()
		s.closed = true
		s.closeErr = s.db.Close()
		s.mu.Unlock()
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

func (l pebbleLogger) Fatalf(format string, args ...any) {
	l.log.Error("pebble: fatal: " + fmt.Sprintf(format, args...))
	panic(fmt.Sprintf(format, args...))
}
