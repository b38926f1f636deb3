package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Expired implements Store: it walks the inbox index from the earliest
// bucket up to the one that ends a bucket's length after now, and looks
// at the inbox of each identity found: one with an entry expired by now
// is reported; an index key with no stored entry in its bucket (left by
// a write lost in a crash, or by a writer whose Unindex hint came too
// late) is deleted through the identity's lane. It examines at most
// 4*max index keys.
func (s *Pebble) Expired(ctx context.Context, now time.Time, max int, fn func(Identity)) error {
	nowMs := now.UnixMilli()
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	upper := binary.BigEndian.AppendUint64([]byte{prefixInboxIndex}, uint64(nowMs+ExpiryBucketMs)+1)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixInboxIndex}, UpperBound: upper})
	if err != nil {
		s.mu.RUnlock()
		return fmt.Errorf("%w: expiry index: %v", ErrUnavailable, err)
	}
	seen := map[Identity]struct{}{}
	rounds := make([]*unindexRound, s.cfg.Lanes)
	examined, unreadable := 0, 0
	for ok := it.First(); ok && len(seen) < max && examined < 4*max; ok = it.Next() {
		bucket, id, ok := parseIndexKey(it.Key())
		if !ok {
			continue
		}
		if _, dup := seen[id]; dup {
			continue
		}
		examined++
		expired, needed, err := s.inboxHas(id, nowMs, bucket)
		if err != nil {
			// One unreadable inbox must not stop the sweep of every one
			// after it (the scan starts at the earliest key each round).
			if unreadable++; unreadable == 1 {
				s.log.Warn("store: expiry sweep: an inbox could not be read; skipped", "identity", id, "err", err)
			}
			continue
		}
		switch {
		case expired:
			seen[id] = struct{}{}
			fn(id)
		case !needed:
			lane := s.c.laneOf(id)
			if rounds[lane] == nil {
				rounds[lane] = &unindexRound{}
			}
			rounds[lane].keys = append(rounds[lane].keys, indexKey{bucket, id})
		}
		if examined%1024 == 0 && ctx.Err() != nil {
			it.Close()
			s.mu.RUnlock()
			return ctx.Err()
		}
	}
	err = it.Close()
	s.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("%w: expiry index: %v", ErrUnavailable, err)
	}
	return s.c.submitRounds(func(lane int) (pending, bool) {
		return pending{unindex: rounds[lane]}, rounds[lane] != nil
	})
}

// unindexRound is a round of the inbox index sweep for one lane: index
// keys that had no entry in their bucket when Expired looked, checked
// again and deleted by the lane's committer.
type unindexRound struct {
	keys    []indexKey
	deleted int // set by the committer
}

type indexKey struct {
	bucket int64
	id     Identity
}

// applyUnindex deletes the index keys of a round that still have no
// stored entry in their bucket. The lane is the only writer of its
// identities' entries, so what it reads is what earlier batches
// committed; an identity whose entries this batch puts is left for the
// next round.
func (s *Pebble) applyUnindex(b *pebble.Batch, r *unindexRound, putIDs map[Identity]struct{}) error {
	var key []byte
	for _, k := range r.keys {
		if _, ok := putIDs[k.id]; ok {
			continue
		}
		_, needed, err := s.inboxHas(k.id, 0, k.bucket)
		if err != nil {
			// Not read: the index key stays (it only costs a look at the
			// next sweep), rather than failing the writes sharing this
			// batch.
			s.log.Warn("store: expiry index: an inbox could not be read; its index key kept", "identity", k.id, "err", err)
			continue
		}
		if needed {
			continue
		}
		key = inboxIndexKey(key[:0], k.bucket, k.id)
		if err := b.Delete(key, nil); err != nil {
			return err
		}
		r.deleted++
	}
	return nil
}

// inboxHas reads id's stored entries: expired reports one that expired
// by nowMs (0: not asked), needed one that expires in bucket.
func (s *Pebble) inboxHas(id Identity, nowMs, bucket int64) (expired, needed bool, err error) {
	lower := appendIDKey(nil, prefixInbox, id)
	upper := appendPrefixEnd(nil, lower)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return false, false, fmt.Errorf("%w: read the inbox of %v: %v", ErrUnavailable, id, err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		exp := entryExpiry(it.Value())
		if exp == 0 {
			continue
		}
		if nowMs != 0 && exp <= nowMs {
			expired = true
			break
		}
		if ExpiryBucket(exp) == bucket {
			needed = true
		}
	}
	if err := it.Close(); err != nil {
		return false, false, fmt.Errorf("%w: read the inbox of %v: %v", ErrUnavailable, id, err)
	}
	return expired, needed, nil
}

// sweepLoop deletes expired idempotency and C2C-dedup records, a round of
// at most SweepBatch at a time. While rounds come back full (a backlog),
// the next one starts after a pause as long as the last round took: the
// sweep uses at most about half of one core, and deletes far faster than
// the commit path can insert (an insert is part of a synced commit, a
// deletion is not).
func (s *Pebble) sweepLoop() {
	defer s.wg.Done()
	t := time.NewTimer(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		start := time.Now()
		n, err := s.SweepIdempotency(s.cfg.SweepBatch)
		wait := s.cfg.SweepInterval
		switch {
		case err != nil:
			s.log.Warn("store: sweeping expired idempotency records", "err", err)
		case n >= s.cfg.SweepBatch:
			wait = time.Since(start)
		case n > 0:
			s.log.Debug("store: swept expired idempotency records", "count", n)
		}
		t.Reset(wait)
	}
}

// SweepIdempotency runs one sweep round: it finds at most max index
// entries of idempotency records that expired by now (earliest first) and
// has each lane's committer delete them. It returns how many index
// entries it processed (records deleted, plus index entries of records
// that were written again with a later expiry).
func (s *Pebble) SweepIdempotency(max int) (int, error) {
	nowMs := s.now().UnixMilli()
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return 0, ErrClosed
	}
	upper := binary.BigEndian.AppendUint64([]byte{prefixExpiry}, uint64(nowMs)+1)
	lower := s.sweepFrom(nowMs)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		s.mu.RUnlock()
		return 0, fmt.Errorf("%w: idempotency expiry index: %v", ErrUnavailable, err)
	}
	rounds := make([]*idemSweep, s.cfg.Lanes)
	n := 0
	var lastExp uint64
	for ok := it.First(); ok && n < max; ok = it.Next() {
		k := it.Key()
		if len(k) < 9+4 {
			continue
		}
		lastExp = binary.BigEndian.Uint64(k[1:9])
		id, _, ok := parseIDKey(k[9:])
		if !ok {
			continue
		}
		lane := s.c.laneOf(id)
		if rounds[lane] == nil {
			rounds[lane] = &idemSweep{nowMs: nowMs}
		}
		rounds[lane].keys = append(rounds[lane].keys, bytes.Clone(k))
		n++
	}
	err = it.Close()
	s.mu.RUnlock()
	if err != nil {
		return 0, fmt.Errorf("%w: idempotency expiry index: %v", ErrUnavailable, err)
	}
	if err := s.c.submitRounds(func(lane int) (pending, bool) {
		return pending{sweep: rounds[lane]}, rounds[lane] != nil
	}); err != nil {
		// The resume point stays: the next round looks at these keys again.
		return 0, err
	}
	if n > 0 {
		s.sweptUpTo.Store(lastExp)
	}
	deleted := 0
	for _, r := range rounds {
		if r != nil {
			deleted += r.deleted
		}
	}
	s.cfg.Swept(deleted)
	return n, nil
}

// sweepRescan is how far before the last swept expiry a round starts, and
// sweepRestart how often a round starts from the beginning of the index.
// A round does not start at the beginning each time: the keys deleted by
// earlier rounds are tombstones there until compactions drop them, and
// walking over them again and again would make a long backlog quadratic.
// Records expire in the order they are written (now + a TTL), so only a
// record whose expiry lies before the last one swept (a clock set back)
// waits for the next restart.
const (
	sweepRescan  = time.Second
	sweepRestart = 10 * time.Minute
)

// sweepFrom returns the lower bound of the next sweep round.
func (s *Pebble) sweepFrom(nowMs int64) []byte {
	start := []byte{prefixExpiry}
	if last := s.sweepStart.Load(); last == 0 || nowMs-last > sweepRestart.Milliseconds() || nowMs < last {
		s.sweepStart.Store(nowMs)
		s.sweptUpTo.Store(0)
		return start
	}
	upTo := s.sweptUpTo.Load()
	if upTo <= uint64(sweepRescan.Milliseconds()) {
		return start
	}
	return binary.BigEndian.AppendUint64(start, upTo-uint64(sweepRescan.Milliseconds()))
}
