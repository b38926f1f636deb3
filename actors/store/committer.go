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
type committer struct {
	queue    chan pending
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

func newCommitter(queueLen, maxBatch int, commit func([]pending) error) *committer {
	c := &committer{
		queue:         make(chan pending, queueLen),
		maxBatch:      maxBatch,
		commit:        commit,
		submitTimeout: 5 * time.Second,
	}
	c.wg.Add(1)
	go c.run()
	return c
}

func (c *committer) submit(w *Write, done func(error)) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		done(ErrClosed)
		return
	}
	select {
	case c.queue <- pending{w, done}:
		return
	default:
	}
	t := time.NewTimer(c.submitTimeout)
	defer t.Stop()
	select {
	case c.queue <- pending{w, done}:
	case <-t.C:
		done(ErrOverloaded)
	}
}

func (c *committer) run() {
	defer c.wg.Done()
	batch := make([]pending, 0, c.maxBatch)
	for p := range c.queue {
		batch = append(batch[:0], p)
	fill:
		for len(batch) < c.maxBatch {
			select {
			case p, ok := <-c.queue:
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
	close(c.queue)
	c.mu.Unlock()
	c.wg.Wait()
}
