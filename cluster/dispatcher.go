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
// stacks.
//
// Schedule never blocks the sender (a gate event loop, a timer, the
// store's committer) and never starts a goroutine: when every worker is
// busy and the queue is full, the run waits in an overflow list, which
// the workers take turns with the queue to drain. Both hold at most one run per
// mailbox (a mailbox schedules itself again only after its run started),
// so they are bounded by the number of actors, not by the traffic.
//
// Only Courier's own actors use it: none of them ever waits for another
// actor, and none blocks on the store (its writes: actors.WriteBudget; its
// reads are asynchronous), so a worker is never blocked on work queued
// behind it, nor on a database that hangs.
type poolDispatcher struct {
	work       chan runner
	throughput int
	stopped    atomic.Bool
	quit       chan struct{}
	wg         sync.WaitGroup

	mu       sync.Mutex
	overflow []runner
	nOver    atomic.Int64 // len(overflow), read without the lock
}

func newPoolDispatcher(workers, queue, throughput int) *poolDispatcher {
	d := &poolDispatcher{work: make(chan runner, queue), throughput: throughput, quit: make(chan struct{})}
	d.wg.Add(workers)
	for range workers {
		go d.loop()
	}
	return d
}

// runner is a run for the workers: a cell (scheduling it allocates
// nothing, and it keeps no closure of itself) or a library mailbox's
// function (runFunc).
type runner interface{ Run() }

type runFunc func()

func (f runFunc) Run() { f() }

var nop = runFunc(func() {})

func (d *poolDispatcher) loop() {
	defer d.wg.Done()
	queueTurn := false
	for {
		if d.nOver.Load() > 0 {
			// Runs in the queue and in the overflow take turns: taking the
			// overflow first, always, starved what waited in the queue for
			// as long as saturation kept refilling the overflow.
			if queueTurn {
				queueTurn = false
				select {
				case r := <-d.work:
					r.Run()
					continue
				default:
				}
			}
			if r := d.popOverflow(); r != nil {
				r.Run()
				queueTurn = true
				continue
			}
		}
		select {
		case r := <-d.work:
			r.Run()
		case <-d.quit:
			return
		}
	}
}

func (d *poolDispatcher) popOverflow() runner {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.overflow) == 0 {
		return nil
	}
	r := d.overflow[0]
	d.overflow[0] = nil
	d.overflow = d.overflow[1:]
	d.nOver.Add(-1)
	return r
}

// Schedule implements actor.Dispatcher.
func (d *poolDispatcher) Schedule(fn func()) { d.schedule(runFunc(fn)) }

// schedule queues r's run.
func (d *poolDispatcher) schedule(r runner) {
	if d.stopped.Load() {
		// The workers are gone (the node is stopping): the run still
		// happens, so that no message is left unhandled.
		go r.Run()
		return
	}
	select {
	case d.work <- r:
		if d.stopped.Load() {
			// stop may have emptied the queue between the check above
			// and the send: no worker would take r.
			d.drainWork()
		}
		return
	default:
	}
	d.mu.Lock()
	d.overflow = append(d.overflow, r)
	d.nOver.Add(1)
	d.mu.Unlock()
	if d.stopped.Load() {
		d.drainOverflow() // stop may have drained before the append
		return
	}
	// A worker that found the overflow empty and then waits on an empty
	// queue would not see it: wake one. If the queue is full instead, the
	// workers are busy and look at the overflow before their next run.
	select {
	case d.work <- nop:
	default:
	}
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
	d.drainWork()
	d.drainOverflow()
}

// drainWork runs what is queued, each on a goroutine of its own (the
// workers are gone).
func (d *poolDispatcher) drainWork() {
	for {
		select {
		case r := <-d.work:
			go r.Run()
		default:
			return
		}
	}
}

func (d *poolDispatcher) drainOverflow() {
	for r := d.popOverflow(); r != nil; r = d.popOverflow() {
		go r.Run()
	}
}
