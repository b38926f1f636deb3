package cluster

import (
	"sync"
	"sync/atomic"
)

// poolDispatcher runs actor mailboxes on a fixed set of long-lived
// goroutines. The library's default dispatcher starts a goroutine for
// every mailbox run; a device actor's run is short and deep, so that
// goroutine spends more time growing its stack than handling the message
// (a sixth of the node's CPU under load). Workers keep their grown
// stacks. When every worker is busy and the queue is full, Schedule falls
// back to a new goroutine rather than block the sender.
//
// Only Courier's own actors use it: none of them ever waits for another
// actor, so a worker is never blocked on work queued behind it.
type poolDispatcher struct {
	work       chan func()
	throughput int
	stopped    atomic.Bool
	quit       chan struct{}
	wg         sync.WaitGroup
}

func newPoolDispatcher(workers, queue, throughput int) *poolDispatcher {
	d := &poolDispatcher{work: make(chan func(), queue), throughput: throughput, quit: make(chan struct{})}
	d.wg.Add(workers)
	for range workers {
		go d.loop()
	}
	return d
}

func (d *poolDispatcher) loop() {
	defer d.wg.Done()
	for {
		select {
		case fn := <-d.work:
			fn()
		case <-d.quit:
			return
		}
	}
}

// Schedule implements actor.Dispatcher.
func (d *poolDispatcher) Schedule(fn func()) {
	if !d.stopped.Load() {
		select {
		case d.work <- fn:
			return
		default:
		}
	}
	go fn()
}

// Throughput implements actor.Dispatcher: messages a mailbox handles
// before it yields.
func (d *poolDispatcher) Throughput() int { return d.throughput }

// stop ends the workers; later mailbox runs get their own goroutines.
func (d *poolDispatcher) stop() {
	if d.stopped.Swap(true) {
		return
	}
	close(d.quit)
	d.wg.Wait()
	// Runs queued after the workers left still happen.
	for {
		select {
		case fn := <-d.work:
			go fn()
		default:
			return
		}
	}
}
