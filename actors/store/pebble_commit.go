package store

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// idemSweep is a round of the idempotency sweep for one lane: the expiry
// index keys it found, checked and deleted by the lane's committer.
type idemSweep struct {
	keys    [][]byte // 'x' keys
	nowMs   int64
	deleted int // records deleted (set by the committer)
}

// commit writes a batch with one sync. It runs on the lane's goroutine,
// the only writer of the lane's identities' inbox, meta and idempotency
// keys.
func (s *Pebble) commit(_ int, ws []pending) error {
	// Fence first: a write whose owner has been claimed since fails
	// alone; the others count as in flight (a claim waits for them)
	// until the batch is committed.
	release, err := s.own.check(ws)
	if err != nil {
		return err
	}
	defer release()
	b := s.db.NewBatch()
	defer b.Close()
	var (
		key  []byte
		ikey []byte // an index key (Pebble copies keys: one buffer serves the batch)
		val  []byte
		sync bool
		// what this batch wrote, for the lookups of later writes in it
		idemExpiry map[string]int64 // idempotency key -> expiry
		// identities whose entries this batch puts, when an index sweep
		// round rides in it (it leaves their index keys alone)
		putIDs map[Identity]struct{}
		// A write's Indexed hint is trusted only for buckets ending after
		// soonMs: the sweep (Expired) deletes keys with no entry in their
		// bucket up to a bucket's length past its now, through this
		// lane, so a key it may have deleted before this batch is set
		// again whatever the writer believes.
		soonMs = s.now().UnixMilli() + 2*ExpiryBucketMs
	)
	for i := range ws {
		if ws[i].unindex != nil {
			putIDs = map[Identity]struct{}{}
			break
		}
	}
	for i := range ws {
		p := &ws[i]
		if p.sweep != nil {
			if err := s.applySweep(b, p.sweep, idemExpiry); err != nil {
				return err
			}
			continue
		}
		if p.unindex != nil {
			if err := s.applyUnindex(b, p.unindex, putIDs); err != nil {
				return err
			}
			continue
		}
		if p.err != nil {
			continue
		}
		w := p.w
		sync = sync || w.Sync
		if w.Meta != nil {
			if val, err = (proto.MarshalOptions{}).MarshalAppend(val[:0], w.Meta); err != nil {
				return err
			}
			key = appendIDKey(key[:0], prefixMeta, w.ID)
			if err := b.Set(key, val, nil); err != nil {
				return err
			}
		}
		var last int64 // the bucket last indexed for this write
		for _, e := range w.Put {
			if val, err = (proto.MarshalOptions{}).MarshalAppend(val[:0], e); err != nil {
				return err
			}
			key = inboxKey(key[:0], w.ID, e.Seq)
			if err := b.Set(key, val, nil); err != nil {
				return err
			}
			if e.ExpiresAtMs == 0 {
				continue
			}
			bucket := ExpiryBucket(e.ExpiresAtMs)
			if bucket == last {
				continue
			}
			if _, indexed := slices.BinarySearch(w.Indexed, bucket); indexed && bucket > soonMs {
				continue
			}
			last = bucket
			// Set more than once, an index key is deleted with Delete,
			// never SingleDelete.
			ikey = inboxIndexKey(ikey[:0], bucket, w.ID)
			if err := b.Set(ikey, nil, nil); err != nil {
				return err
			}
		}
		if putIDs != nil && len(w.Put) > 0 {
			putIDs[w.ID] = struct{}{}
		}
		for _, seq := range w.Delete {
			// An inbox key is set exactly once (seqs are never reused
			// once written), which is what SingleDelete needs: the
			// entry and its tombstone cancel out at the first flush or
			// compaction that sees both.
			key = inboxKey(key[:0], w.ID, seq)
			if err := b.SingleDelete(key, nil); err != nil {
				return err
			}
		}
		for _, bucket := range w.Unindex {
			ikey = inboxIndexKey(ikey[:0], bucket, w.ID)
			if err := b.Delete(ikey, nil); err != nil {
				return err
			}
		}
		for _, ip := range w.Idem {
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
			if idemExpiry == nil {
				idemExpiry = map[string]int64{}
			}
			idemExpiry[string(ik)] = ip.Record.ExpiresAtMs
		}
	}
	if b.Empty() {
		return nil
	}
	opts := pebble.NoSync
	if sync {
		opts = s.sync
	}
	if err := s.failCommit.Load(); err != nil {
		return *err
	}
	if d := s.commitDelay.Load(); d > 0 {
		time.Sleep(time.Duration(d))
	}
	if err := b.Commit(opts); err != nil {
		return fmt.Errorf("%w: commit: %v", ErrUnavailable, err)
	}
	return nil
}

// entryExpiry reads expires_at_ms from an encoded InboxEntry without
// decoding the rest (0 if absent or unreadable).
func entryExpiry(b []byte) int64 {
	var exp int64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return exp
		}
		b = b[n:]
		if num == 7 && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return exp
			}
			exp = int64(v)
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return exp
		}
		b = b[m:]
	}
	return exp
}

// applySweep deletes the expired idempotency records of a sweep round.
// A record written again since (with a later expiry) stays; only its
// stale index key goes.
func (s *Pebble) applySweep(b *pebble.Batch, sw *idemSweep, batch map[string]int64) error {
	for _, xk := range sw.keys {
		ik := xk[9:]
		exp, found := batch[string(ik)]
		if !found {
			rec, err := s.idemRecord(ik)
			switch {
			case errors.Is(err, ErrUnavailable):
				// Not read (an unreadable block): the record stays for a
				// later round, rather than failing the writes that share
				// this batch.
				s.log.Warn("store: idempotency sweep: a record could not be read; kept", "key", fmt.Sprintf("%x", ik), "err", err)
				continue
			case err != nil:
				// Unreadable, and its index says it has expired: it goes,
				// rather than failing this batch, and the writes sharing
				// it, at every round.
				s.log.Warn("store: dropping an unreadable idempotency record at its expiry", "key", fmt.Sprintf("%x", ik), "err", err)
				exp, found = sw.nowMs, true
			case rec != nil:
				exp, found = rec.ExpiresAtMs, true
			}
		}
		if found && (exp == 0 || exp > sw.nowMs) {
			if err := b.Delete(xk, nil); err != nil {
				return err
			}
			continue
		}
		if found {
			if err := b.Delete(ik, nil); err != nil {
				return err
			}
			sw.deleted++
		}
		if err := b.Delete(xk, nil); err != nil {
			return err
		}
	}
	return nil
}
