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
		go r.run()
	}
	return r
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

func (r *reader) run() {
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
}
