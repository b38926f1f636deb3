package store

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/courier-im/courier/messages/actorpb"
)

// readReq is a queued read: a load (claim and snapshot) of id, or, when
// keys is set, an idempotency lookup of those keys of id.
type readReq struct {
	id       Identity
	keys     []string
	deadline time.Time
	loaded   func(*Snapshot, error)
	found    func([]*actorpb.IdempotencyRecord, error)
}

func (r *readReq) isLoad() bool { return r.loaded != nil }

// fail answers the read with err.
func (r *readReq) fail(err error) {
	if r.loaded != nil {
		r.loaded(nil, err)
	} else {
		r.found(nil, err)
	}
}

// reader turns the reads of all identities into batches, as the
// committer does with writes: a fixed number of goroutines each take
// what is queued (up to maxBatch reads) and read it in one round trip;
// while they are busy new reads queue up and form the next batches. So
// at most workers round trips are in flight and, under load, each
// carries many reads; at low load a read goes alone, at once.
//
// The queue is bounded and submitting never waits: when it is full the
// read fails at once with ErrOverloaded, which is how a slow database
// reaches the callers. A read still queued at its deadline fails with
// ErrUnavailable without being sent; the read function bounds its round
// trip by the earliest deadline of its batch, so every read is answered
// by its deadline. So a read left less time than twice the recent round
// trip is failed rather than sent: it would cut its whole batch's round
// trip short, and under a backlog (reads queued for most of their
// timeout) every batch would fail, the database idle, though it could
// serve them all. The reads shed are the stale ones; fresh ones go on.
type reader struct {
	queue    chan readReq
	maxBatch int
	// read answers every read of batch (each exactly once) and returns
	// the failure of the whole round trip, if any, for observe.
	read func(batch []readReq) error

	mu     sync.RWMutex // guards closed against sends on queue
	closed bool
	wg     sync.WaitGroup

	// observe, if set, is told each round trip's reads, time and error.
	observe func(n int, d time.Duration, err error)
	now     func() time.Time
	// rtt is a moving average of the successful round trips (ns);
	// maxNeed caps what a read must have left to be sent (a quarter of
	// the store's timeout): a read with that much left is always tried,
	// so that an outage's slow round trips cannot lock the reader out.
	rtt     atomic.Int64
	maxNeed time.Duration

	// readOne, instead of read, reads for a guarded reader
	// (newGuardedReader): its reads are answered here, and by the guard
	// if they have not been by their deadline. rtt and maxNeed are not
	// used: nothing cuts a guarded read short.
	readOne func(q readReq) (*Snapshot, []*actorpb.IdempotencyRecord, error)
	slots   []*readerSlot // one per worker of a guarded reader
	quit    chan struct{} // ends the guard
	// stuck: at the guard's last look, a read had been under way for
	// longer than stuckAfter (a hung disk, a write stall).
	stuck atomic.Bool
}

// readerSlot is the read a worker of a guarded reader is doing.
type readerSlot struct {
	mu      sync.Mutex
	q       readReq
	busy    bool      // a read is under way
	failed  bool      // the guard answered it (its own answer is dropped)
	started time.Time // when the read began
}

// begin records that the slot's worker reads q.
func (sl *readerSlot) begin(q readReq, now time.Time) {
	sl.mu.Lock()
	sl.q, sl.busy, sl.failed, sl.started = q, true, false, now
	sl.mu.Unlock()
}

// end reports whether the worker still answers its read (the guard has
// not), and frees the slot.
func (sl *readerSlot) end() bool {
	sl.mu.Lock()
	answer := !sl.failed
	sl.q, sl.busy, sl.failed = readReq{}, false, false
	sl.mu.Unlock()
	return answer
}

// expire takes the slot's read from its worker if its deadline has
// passed: the caller answers it.
func (sl *readerSlot) expire(now time.Time) (readReq, bool) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if !sl.busy || sl.failed || now.Before(sl.q.deadline) {
		return readReq{}, false
	}
	sl.failed = true
	return sl.q, true
}

// stuckSince reports whether the slot's read began before t and has not
// ended.
func (sl *readerSlot) stuckSince(t time.Time) bool {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	return sl.busy && sl.started.Before(t)
}

// minReadTime is the least time left a read must have to be sent, however
// fast the database has lately answered.
const minReadTime = 10 * time.Millisecond

// noteRoundTrip folds d into the moving average of round trips.
func (r *reader) noteRoundTrip(d time.Duration) {
	old := r.rtt.Load()
	if old == 0 {
		r.rtt.Store(int64(d))
		return
	}
	r.rtt.Store(old - old/8 + int64(d)/8)
}

func newReader(workers, queueLen, maxBatch int, read func([]readReq) error) *reader {
	r := &reader{queue: make(chan readReq, queueLen), maxBatch: maxBatch, read: read, now: time.Now}
	r.wg.Add(workers)
	for range workers {
		go r.run(nil)
	}
	return r
}

// guardTick is how often the guard of a guarded reader looks for reads
// past their deadline.
const guardTick = 100 * time.Millisecond

// stuckAfter is how long a read may be under way before the guard takes
// the store for stuck (reader.stuck).
const stuckAfter = 50 * time.Millisecond

// newGuardedReader is a reader of reads that cannot be bounded by their
// deadline (Pebble's: a hung disk holds a read for as long as it hangs).
// Each worker reads one read at a time (read answers it), and a guard
// answers by its deadline, with ErrUnavailable, a read that has not
// ended by then (its own answer is dropped when it comes) and, while
// every worker is held by a read that has not ended, the queued reads
// past their deadline; the others are left queued.
func newGuardedReader(workers, queueLen int, read func(readReq) (*Snapshot, []*actorpb.IdempotencyRecord, error)) *reader {
	r := &reader{queue: make(chan readReq, queueLen), maxBatch: 1, readOne: read, now: time.Now, quit: make(chan struct{})}
	r.wg.Add(workers)
	for range workers {
		sl := &readerSlot{}
		r.slots = append(r.slots, sl)
		go r.run(sl)
	}
	go r.guard()
	return r
}

// readGuarded reads live one read at a time on slot, answering each
// unless the guard has.
func (r *reader) readGuarded(live []readReq, slot *readerSlot) error {
	var last error
	for _, q := range live {
		now := r.now()
		if !now.Before(q.deadline) {
			q.fail(fmt.Errorf("%w: the read waited for the store's readers past its deadline", ErrUnavailable))
			continue
		}
		slot.begin(q, now)
		snap, recs, err := r.readOne(q)
		if !slot.end() {
			continue
		}
		switch {
		case err != nil:
			q.fail(err)
			last = err
		case q.isLoad():
			q.loaded(snap, nil)
		default:
			q.found(recs, nil)
		}
	}
	return last
}

// guard answers the reads a guarded reader's workers cannot answer by
// their deadlines, until close.
func (r *reader) guard() {
	t := time.NewTicker(guardTick)
	defer t.Stop()
	for {
		select {
		case <-r.quit:
			return
		case <-t.C:
		}
		now := r.now()
		stuck, slow := 0, false
		for _, sl := range r.slots {
			if q, ok := sl.expire(now); ok {
				q.fail(fmt.Errorf("%w: the store did not answer the read by its deadline (a hung disk, or the store stalling its writes)", ErrUnavailable))
			}
			if sl.stuckSince(now.Add(-guardTick)) {
				stuck++
			}
			slow = slow || sl.stuckSince(now.Add(-stuckAfter))
		}
		r.stuck.Store(slow)
		if stuck == len(r.slots) {
			r.shedQueued(now)
		}
	}
}

// shedQueued fails the queued reads past their deadline and queues the
// others again.
func (r *reader) shedQueued(now time.Time) {
	var late, full []readReq
	r.mu.RLock()
	if r.closed {
		r.mu.RUnlock()
		return
	}
	var keep []readReq
take:
	for n := len(r.queue); n > 0; n-- {
		select {
		case q := <-r.queue:
			if !now.Before(q.deadline) {
				late = append(late, q)
				continue
			}
			keep = append(keep, q)
		default:
			break take
		}
	}
	for _, q := range keep {
		select {
		case r.queue <- q:
		default:
			full = append(full, q)
		}
	}
	r.mu.RUnlock()
	// Answered outside the lock: a caller may submit again from its
	// answer.
	for _, q := range late {
		q.fail(fmt.Errorf("%w: the read waited past its deadline for the store's readers, all held by reads that have not ended (a hung disk?)", ErrUnavailable))
	}
	for _, q := range full {
		q.fail(fmt.Errorf("%w: %d reads waiting for the store", ErrOverloaded, cap(r.queue)))
	}
}

// submit queues q, or answers it at once when the reader is closed or
// its queue is full. It never blocks.
func (r *reader) submit(q readReq) {
	r.mu.RLock()
	if r.closed {
		r.mu.RUnlock()
		q.fail(ErrClosed)
		return
	}
	select {
	case r.queue <- q:
		r.mu.RUnlock()
	default:
		r.mu.RUnlock()
		q.fail(fmt.Errorf("%w: %d reads waiting for the database", ErrOverloaded, cap(r.queue)))
	}
}

func (r *reader) run(slot *readerSlot) {
	defer r.wg.Done()
	batch := make([]readReq, 0, r.maxBatch)
	for q := range r.queue {
		batch = append(batch[:0], q)
	fill:
		for len(batch) < r.maxBatch {
			select {
			case q, ok := <-r.queue:
				if !ok {
					break fill
				}
				batch = append(batch, q)
			default:
				break fill
			}
		}
		if slot != nil {
			// A guarded read is not cut short by its deadline: there is
			// no batch for a late one to fail.
			start := time.Now()
			err := r.readGuarded(batch, slot)
			if r.observe != nil {
				r.observe(len(batch), time.Since(start), err)
			}
			clear(batch[:cap(batch)])
			continue
		}
		// Reads whose caller has stopped waiting, or soon will, are not
		// sent.
		now := r.now()
		need := max(2*time.Duration(r.rtt.Load()), minReadTime)
		if r.maxNeed > 0 {
			need = min(need, r.maxNeed)
		}
		live := batch[:0]
		for _, q := range batch {
			if left := q.deadline.Sub(now); left < need {
				q.fail(fmt.Errorf("%w: waited for a database connection until %v before the read's timeout, less than the database takes to answer (about %v)",
					ErrUnavailable, max(left, 0).Round(time.Millisecond), (need / 2).Round(time.Millisecond)))
				continue
			}
			live = append(live, q)
		}
		if len(live) > 0 {
			start := time.Now()
			err := r.read(live)
			// Only successes count: a round trip that failed (timed out,
			// or could not connect) says nothing of how fast the database
			// answers, and would raise the bar after an outage.
			d := time.Since(start)
			if err == nil {
				r.noteRoundTrip(d)
			}
			if r.observe != nil {
				r.observe(len(live), d, err)
			}
		}
		clear(batch[:cap(batch)])
	}
}

// close stops accepting reads, fails those still queued with ErrClosed
// and waits for the round trips in flight.
func (r *reader) close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	// Whatever the workers have not taken fails rather than being read.
	var left []readReq
	for len(r.queue) > 0 {
		select {
		case q := <-r.queue:
			left = append(left, q)
		default:
		}
	}
	close(r.queue)
	r.mu.Unlock()
	for _, q := range left {
		q.fail(ErrClosed)
	}
	r.wg.Wait()
	// The guard of a guarded reader stops last: until the reads under
	// way have ended, it still answers those past their deadlines.
	if r.quit != nil {
		close(r.quit)
	}
}
