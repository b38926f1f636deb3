package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// pebbleOwners are the owner epochs of a Pebble store: the 'o' keys are
// the truth, a bounded cache spares most reads. A claim and the owner
// check of a write exclude each other (mu), and a claim waits for the
// writes that passed the check before it to be committed (inflight), so
// that its Load reads them, until its deadline. A claim does not wait
// for anything else (but Pebble's write stall, in its Set): an identity
// with nothing in flight is claimed at once, however slow the disk's
// syncs are.
type pebbleOwners struct {
	db       *pebble.DB
	mu       sync.Mutex
	cond     sync.Cond
	cache    map[Identity]uint64
	inflight map[Identity]int // writes checked and not yet committed
}

// maxOwnerCache bounds the owner epochs cached.
const maxOwnerCache = 1 << 17

func newPebbleOwners(db *pebble.DB) *pebbleOwners {
	o := &pebbleOwners{db: db, cache: map[Identity]uint64{}, inflight: map[Identity]int{}}
	o.cond.L = &o.mu
	return o
}

// get returns the owner epoch of id (0: never claimed). Call with mu
// held. kb is scratch space for the key.
func (o *pebbleOwners) get(id Identity, kb *keyBuf) (uint64, error) {
	if e, ok := o.cache[id]; ok {
		return e, nil
	}
	kb.a = appendIDKey(kb.a[:0], prefixOwner, id)
	v, closer, err := o.db.Get(kb.a)
	var e uint64
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return 0, fmt.Errorf("%w: owner of %s: %v", ErrUnavailable, id, err)
	default:
		if len(v) == 8 {
			e = binary.BigEndian.Uint64(v)
		}
		closer.Close()
	}
	if len(o.cache) >= maxOwnerCache {
		// Any entry may go: the 'o' key it caches is in the database.
		for k := range o.cache {
			delete(o.cache, k)
			if len(o.cache) < maxOwnerCache*7/8 {
				break
			}
		}
	}
	o.cache[id] = e
	return e, nil
}

// claim gives id a new owner epoch, once every write of an older owner
// that passed its check has been committed, and reports whether id was
// never claimed before. kb is scratch space. If those writes are not
// committed by deadline (a hung disk), the claim fails with
// ErrUnavailable; the new epoch stays (it only fences the older owner's
// writes checked from now on, which a load's caller gives up anyway).
func (o *pebbleOwners) claim(id Identity, kb *keyBuf, deadline time.Time) (epoch uint64, first bool, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	cur, err := o.get(id, kb)
	if err != nil {
		return 0, false, err
	}
	first = cur == 0
	cur++
	// Not synced: after a crash no activation of before it is alive, and
	// the epochs only need to differ among live ones. The write is
	// visible when Set returns; Pebble publishes before it syncs, so an
	// unsynced write does not wait for a sync in progress.
	kb.a = appendIDKey(kb.a[:0], prefixOwner, id)
	kb.b = binary.BigEndian.AppendUint64(kb.b[:0], cur)
	if err := o.db.Set(kb.a, kb.b, pebble.NoSync); err != nil {
		return 0, false, fmt.Errorf("%w: claim %s: %v", ErrUnavailable, id, err)
	}
	o.cache[id] = cur
	if o.inflight[id] > 0 {
		// Rare (a reload while the last activation's write is being
		// committed), so the timer that wakes the wait at the deadline
		// costs nothing on the usual path. It takes mu, so its
		// Broadcast cannot fall between the check below and Wait.
		t := time.AfterFunc(time.Until(deadline), func() {
			o.mu.Lock()
			o.cond.Broadcast()
			o.mu.Unlock()
		})
		defer t.Stop()
		for o.inflight[id] > 0 {
			if !time.Now().Before(deadline) {
				return 0, false, fmt.Errorf("%w: claim %s: its last owner's write was not committed by the read's deadline", ErrUnavailable, id)
			}
			o.cond.Wait()
		}
	}
	return cur, first, nil
}

// check marks the writes of ws whose owner is no longer their identity's
// with ErrFenced, and counts the others in flight until done is called.
func (o *pebbleOwners) check(ws []pending) (done func(), err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	checked := make([]Identity, 0, len(ws))
	var kb keyBuf
	release := func() {
		o.mu.Lock()
		for _, id := range checked {
			if o.inflight[id]--; o.inflight[id] <= 0 {
				delete(o.inflight, id)
			}
		}
		o.mu.Unlock()
		o.cond.Broadcast()
	}
	for i := range ws {
		p := &ws[i]
		if p.sweep != nil || p.unindex != nil {
			continue
		}
		cur, err := o.get(p.w.ID, &kb)
		if err != nil {
			o.mu.Unlock()
			release()
			o.mu.Lock()
			return nil, err
		}
		if cur == 0 || p.w.Owner != cur {
			p.err = ErrFenced
			continue
		}
		o.inflight[p.w.ID]++
		checked = append(checked, p.w.ID)
	}
	return release, nil
}
