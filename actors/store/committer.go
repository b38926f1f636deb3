package store

import (
	"sync"
	"time"
)

// pending is a submitted write and its completion.
type pending struct {
	w    *Write
	done func(error)
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
type committer struct {
	lanes    []chan pending
	maxBatch int
	commit   func([]pending) error
	// submitTimeout bounds how long Submit waits for room in the queue.
	submitTimeout time.Duration

	mu     sync.RWMutex // guards closed against sends on queue
	closed bool
	wg     sync.WaitGroup

	// observe, if set, is told each batch's size and commit time.
	observe func(n int, d time.Duration, err error)
}

func newCommitter(lanes, queueLen, maxBatch int, commit func([]pending) error) *committer {
	c := &committer{
		lanes:         make([]chan pending, lanes),
		maxBatch:      maxBatch,
		commit:        commit,
		submitTimeout: 5 * time.Second,
	}
	for i := range c.lanes {
		c.lanes[i] = make(chan pending, queueLen/lanes+1)
		c.wg.Add(1)
		go c.run(c.lanes[i])
	}
	return c
}

// lane picks the queue of an identity (FNV-1a of app and uid).
func (c *committer) lane(id Identity) chan pending {
	h := uint32(2166136261)
	h = (h ^ uint32(id.App>>8)) * 16777619
	h = (h ^ uint32(id.App&0xff)) * 16777619
	for i := 0; i < len(id.UID); i++ {
		h = (h ^ uint32(id.UID[i])) * 16777619
	}
	return c.lanes[h%uint32(len(c.lanes))]
}

func (c *committer) submit(w *Write, done func(error)) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		done(ErrClosed)
		return
	}
	q := c.lane(w.ID)
	select {
	case q <- pending{w, done}:
		return
	default:
	}
	t := time.NewTimer(c.submitTimeout)
	defer t.Stop()
	select {
	case q <- pending{w, done}:
	case <-t.C:
		done(ErrOverloaded)
	}
}

func (c *committer) run(queue chan pending) {
	defer c.wg.Done()
	batch := make([]pending, 0, c.maxBatch)
	for p := range queue {
		batch = append(batch[:0], p)
	fill:
		for len(batch) < c.maxBatch {
			select {
			case p, ok := <-queue:
				if !ok {
					break fill
				}
				batch = append(batch, p)
			default:
				break fill
			}
		}
		start := time.Now()
		err := c.commit(batch)
		if c.observe != nil {
			c.observe(len(batch), time.Since(start), err)
		}
		for i := range batch {
			batch[i].done(err)
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
