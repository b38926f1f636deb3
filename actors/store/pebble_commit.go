package store

import (
	"errors"
	"fmt"
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
		ekey []byte // an expiry index key (Pebble copies keys: one buffer serves the batch)
		val  []byte
		sync bool
		// what this batch wrote, for the lookups of later writes in it
		putExpiry  map[string]int64 // inbox key -> expiry
		idemExpiry map[string]int64 // idempotency key -> expiry
	)
	// Deletions without their expiries read them from the batch or the
	// database; only then must the batch's puts be remembered.
	lookups := false
	for i := range ws {
		if w := ws[i].w; w != nil && len(w.Delete) > 0 && len(w.DeleteExpiry) != len(w.Delete) {
			lookups = true
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
		for _, e := range w.Put {
			if val, err = (proto.MarshalOptions{}).MarshalAppend(val[:0], e); err != nil {
				return err
			}
			key = inboxKey(key[:0], w.ID, e.Seq)
			if err := b.Set(key, val, nil); err != nil {
				return err
			}
			if e.ExpiresAtMs != 0 {
				ekey = inboxExpiryKey(ekey[:0], e.ExpiresAtMs, key)
				if err := b.Set(ekey, nil, nil); err != nil {
					return err
				}
				if lookups {
					if putExpiry == nil {
						putExpiry = map[string]int64{}
					}
					putExpiry[string(key)] = e.ExpiresAtMs
				}
			}
		}
		hinted := len(w.DeleteExpiry) == len(w.Delete)
		for j, seq := range w.Delete {
			key = inboxKey(key[:0], w.ID, seq)
			var exp int64
			if hinted {
				// The writer knows the entry is stored (a SingleDelete of
				// a key never set deletes nothing).
				exp = w.DeleteExpiry[j]
			} else {
				var found bool
				if exp, found, err = s.storedExpiry(key, putExpiry); err != nil {
					return err
				}
				if !found {
					continue
				}
			}
			// An inbox key is set exactly once (seqs are never reused
			// once written), which is what SingleDelete needs: the
			// entry and its tombstone cancel out at the first flush or
			// compaction that sees both. So is its index key.
			if err := b.SingleDelete(key, nil); err != nil {
				return err
			}
			if exp != 0 {
				ekey = inboxExpiryKey(ekey[:0], exp, key)
				if err := b.SingleDelete(ekey, nil); err != nil {
					return err
				}
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

// storedExpiry returns the expiry of the inbox entry under key, and
// whether it exists.
func (s *Pebble) storedExpiry(key []byte, batch map[string]int64) (int64, bool, error) {
	if exp, ok := batch[string(key)]; ok {
		return exp, true, nil
	}
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("%w: read %x: %v", ErrUnavailable, key, err)
	}
	defer closer.Close()
	return entryExpiry(v), true, nil
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
			if err != nil {
				return err
			}
			if rec != nil {
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
