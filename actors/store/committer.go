package store

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// pending is a submitted write and its completion.
type pending struct {
	w    *Write
	done func(error)
	// sweep, if set, makes this an expiry sweep round of the lane (w is
	// unused).
	sweep *idemSweep
	// unindex, if set, makes this a round of the inbox index sweep of the
	// lane (w is unused).
	unindex *unindexRound
	// err is this write's own failure (ErrFenced), set by the commit
	// function; the other writes of the batch are not affected.
	err error
}

// committer turns concurrently submitted writes into batches: one commit
// (one sync, or one round trip) per batch. While a batch commits, new
// writes queue up and form the next one, so the batch size grows with the
// load and the latency stays near one commit.
//
// It runs several lanes, each with its own queue and goroutine, so that
// one batch is assembled and applied while another waits for its sync
// (the storage engine joins concurrent syncs). An identity always uses
// the same lane: its writes complete in the order they were submitted.
//
// The commit function returns the failure of the whole batch (every write
// of it fails with that error) or nil; it may fail single writes by
// setting their err, which then alone fail.
type committer struct {
	lanes    []chan pending
	maxBatch int
	commit   func(lane int, batch []pending) error
	// submitTimeout bounds how long Submit waits for room in the queue.
	submitTimeout time.Duration

	mu     sync.RWMutex // guards closed against sends on queue
	closed bool
	wg     sync.WaitGroup

	// observe, if set, is told each batch's size and commit time.
	observe func(n int, d time.Duration, err error)

	// since holds, per lane, when its commit in progress began (the
	// monotonic clock's nanoseconds since monoStart, plus one; 0 while
	// none is). stallAfter, if positive, is how long
	// a commit may wait before new writes are refused at once: a disk
	// that hangs holds a commit, and with it every write queued behind
	// it, for as long as it hangs; the callers of those would only learn
	// of it at their own deadlines.
	since      []atomic.Int64
	stallAfter time.Duration
}

func newCommitter(lanes, queueLen, maxBatch int, commit func(int, []pending) error) *committer {
	c := &committer{
		lanes:         make([]chan pending, lanes),
		since:         make([]atomic.Int64, lanes),
		maxBatch:      maxBatch,
		commit:        commit,
		submitTimeout: 5 * time.Second,
	}
	for i := range c.lanes {
		c.lanes[i] = make(chan pending, queueLen/lanes+1)
		c.wg.Add(1)
		go c.run(i, c.lanes[i])
	}
	return c
}

// laneOf picks the lane of an identity (FNV-1a of app and uid).
func (c *committer) laneOf(id Identity) int {
	h := uint32(2166136261)
	h = (h ^ uint32(id.App>>8)) * 16777619
	h = (h ^ uint32(id.App&0xff)) * 16777619
	for i := 0; i < len(id.UID); i++ {
		h = (h ^ uint32(id.UID[i])) * 16777619
	}
	return int(h % uint32(len(c.lanes)))
}

func (c *committer) submit(p pending) { c.submitLane(c.laneOf(p.w.ID), p) }

func (c *committer) submitLane(lane int, p pending) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		p.done(ErrClosed)
		return
	}
	if c.stallAfter > 0 {
		if w := c.waiting(); w > c.stallAfter {
			p.done(fmt.Errorf("%w: a commit has waited %v for the disk (store.stall-after %v)", ErrUnavailable, w.Round(time.Second), c.stallAfter))
			return
		}
	}
	q := c.lanes[lane]
	select {
	case q <- p:
		return
	default:
	}
	t := time.NewTimer(c.submitTimeout)
	defer t.Stop()
	select {
	case q <- p:
	case <-t.C:
		p.done(ErrOverloaded)
	}
}

// waiting returns how long the oldest commit in progress has waited (0
// when none is). The lanes of one store share its disk (Pebble: one log),
// so the oldest of them speaks for all.
func (c *committer) waiting() time.Duration {
	var oldest int64
	for i := range c.since {
		if t := c.since[i].Load(); t != 0 && (oldest == 0 || t < oldest) {
			oldest = t
		}
	}
	if oldest == 0 {
		return 0
	}
	return max(time.Since(monoStart)-time.Duration(oldest-1), 0)
}

// stalled reports whether a commit has waited past stallAfter.
func (c *committer) stalled() bool {
	return c.stallAfter > 0 && c.waiting() > c.stallAfter
}

// monoStart is the reference of the committers' monotonic times.
var monoStart = time.Now()

// submitRounds submits round(lane) to each lane that has one (ok) and
// waits until all are committed; it returns the first lane's failure.
// The sweeps use it: a round goes through its lane so that it is
// ordered with the writes of the lane's identities.
func (c *committer) submitRounds(round func(lane int) (p pending, ok bool)) error {
	var wg sync.WaitGroup
	errs := make([]error, len(c.lanes))
	for lane := range c.lanes {
		p, ok := round(lane)
		if !ok {
			continue
		}
		wg.Add(1)
		p.done = func(err error) { errs[lane] = err; wg.Done() }
		c.submitLane(lane, p)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// maxBatchBytes bounds the bytes of a batch (pendingBytes), as maxBatch
// its writes: 1,024 writes of large messages (api.max-payload and the
// frame size go to 16 MiB) made a batch of gigabytes, past PostgreSQL's
// 1 GB per value, in memory on every lane. A write larger than this goes
// alone.
const maxBatchBytes = 32 << 20

// pendingBytes is about what p adds to a batch: its messages and records.
func pendingBytes(p *pending) int {
	w := p.w
	if w == nil {
		return 0
	}
	n := 64
	for _, e := range w.Put {
		n += 64 + len(e.Payload) + len(e.MsgId)
	}
	for _, ip := range w.Idem {
		n += 64 + len(ip.Key)
	}
	return n
}

func (c *committer) run(lane int, queue chan pending) {
	defer c.wg.Done()
	batch := make([]pending, 0, c.maxBatch)
	// next is a write taken from the queue that did not fit in the last
	// batch's bytes: it starts the next one.
	var next pending
	held := false
	for {
		if !held {
			p, ok := <-queue
			if !ok {
				return
			}
			next = p
		}
		batch = append(batch[:0], next)
		bytes := pendingBytes(&next)
		next, held = pending{}, false
	fill:
		for len(batch) < c.maxBatch && bytes < maxBatchBytes {
			select {
			case p, ok := <-queue:
				if !ok {
					break fill
				}
				n := pendingBytes(&p)
				if bytes+n > maxBatchBytes {
					next, held = p, true
					break fill
				}
				batch = append(batch, p)
				bytes += n
			default:
				break fill
			}
		}
		start := time.Now()
		c.since[lane].Store(int64(start.Sub(monoStart)) + 1)
		err := c.commit(lane, batch)
		c.since[lane].Store(0)
		if c.observe != nil {
			c.observe(len(batch), time.Since(start), err)
		}
		for i := range batch {
			e := err
			if e == nil {
				e = batch[i].err
			}
			batch[i].done(e)
			batch[i] = pending{}
		}
	}
}

// close stops accepting writes, commits what is queued and waits.
func (c *committer) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	for _, q := range c.lanes {
		close(q)
	}
	c.mu.Unlock()
	c.wg.Wait()
}
