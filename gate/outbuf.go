package gate

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// The write path from Deliver to the socket costs, per connection written
// to, one lock of the connection, the encoding into its queue, and one
// write on its loop. What is shared is batched: connections with frames
// waiting are put on their loop's drain list, and one task on the loop's
// queue (not one per connection) drains every connection on the list. A
// push to each of 10,000 devices arrives as 10,000 Delivers; the loop
// wakes once per batch of them, not once per push.
//
// A connection's queue is one buffer of encoded frames, taken from a pool
// when its first frame is queued and given back once the loop has written
// it: an idle connection holds no buffer, and a busy one allocates none.

// maxPooledOut is the largest queue buffer given back to the pool (bigger
// ones, from a burst, are left to the garbage collector).
const maxPooledOut = 64 << 10

var outBufs = sync.Pool{New: func() any { return new([]byte) }}

func getOutBuf() *[]byte { return outBufs.Get().(*[]byte) }

// putOutBuf gives a written queue buffer back; nothing may refer to it.
func putOutBuf(b *[]byte) {
	if cap(*b) > maxPooledOut {
		return
	}
	*b = (*b)[:0]
	outBufs.Put(b)
}

// drainList holds the connections of one loop whose queues wait for the
// loop (Deliver adds them, any goroutine), and whether a task to drain
// them is on the loop's queue.
type drainList struct {
	mu     sync.Mutex
	conns  []*conn
	spare  []*conn // the other buffer of conns, while the loop drains one
	queued bool
	since  int64 // g.nanos() when the task was queued
	// waiting is since while the task is queued and 0 once the loop has
	// taken the list (read without the lock by Gate.Backlog).
	waiting atomic.Int64
}

// drainTask is the loop's task that drains its list (a gnet.Runnable
// made once per loop, so queuing it allocates nothing of ours).
type drainTask struct{ l *loop }

// queueDrain puts s on its loop's drain list (s.drainQueued was just set)
// and queues the loop's drain task unless it is already queued.
func (l *loop) queueDrain(s *conn) error {
	d := &l.drains
	d.mu.Lock()
	d.conns = append(d.conns, s)
	first := !d.queued
	if first {
		d.queued, d.since = true, l.g.nanos()
		d.waiting.Store(d.since) // nanos is never 0
	}
	d.mu.Unlock()
	if !first {
		return nil
	}
	if err := l.el.Execute(context.Background(), l.drainTask); err != nil {
		// The engine is stopping: it closes every connection.
		d.mu.Lock()
		clear(d.conns)
		d.conns, d.queued = d.conns[:0], false
		d.waiting.Store(0)
		d.mu.Unlock()
		return ErrClosed
	}
	return nil
}

// Run drains every connection on the loop's list (event loop only).
func (t *drainTask) Run(context.Context) error {
	l := t.l
	d := &l.drains
	d.mu.Lock()
	conns := d.conns
	d.conns, d.spare = d.spare[:0], nil
	d.queued = false
	since := d.since
	d.waiting.Store(0)
	d.mu.Unlock()
	l.g.noteDrainDelay(time.Duration(l.g.nanos()-since), len(conns))
	for i, s := range conns {
		s.drain()
		conns[i] = nil
	}
	d.mu.Lock()
	if d.spare == nil {
		d.spare = conns[:0]
	}
	d.mu.Unlock()
	return nil
}

// noteDrainDelay records how long a loop's drain task waited: the time
// the oldest frames it writes spent queued before their loop got to them.
// conns is how many connections it drains: the work that waited.
func (g *Gate) noteDrainDelay(d time.Duration, conns int) {
	g.metrics.drainDelay.Observe(d.Seconds())
	g.backlog.ObserveN(d, conns, time.Now())
}

// Backlog is how long the frames Deliver queues have lately been waiting
// for their event loops, at the least (DelayWindow.Standing), but no more
// than the oldest frames waiting now have waited so far: above a few
// milliseconds, the loops are not keeping up with what the node sends.
// The second bound ends a refusal as soon as the loops have caught up
// (nothing waits), instead of two windows later: refusing an idle gate's
// pushes would only waste its capacity.
func (g *Gate) Backlog() time.Duration {
	standing := g.backlog.Standing(time.Now())
	if standing == 0 {
		return 0
	}
	return min(standing, g.oldestWait())
}

// oldestWait is how long the oldest drain task queued on any loop has
// waited so far (0: none is waiting).
func (g *Gate) oldestWait() time.Duration {
	ls := g.loops.Load()
	if ls == nil {
		return 0
	}
	now := g.nanos()
	var oldest int64
	for _, l := range *ls {
		if since := l.drains.waiting.Load(); since != 0 {
			oldest = max(oldest, now-since)
		}
	}
	return time.Duration(oldest)
}
