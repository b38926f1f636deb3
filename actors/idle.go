package actors

import (
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/courier-im/courier/gate/wheel"
)

// idleWheel schedules the device actors' idle checks: one timing wheel and
// one runtime timer for the node instead of a runtime timer (and its
// closure) per actor, about 125 bytes less per active identity
// (BenchmarkActiveIdentityMemory). An actor's check
// comes up to a tick late, which only delays its passivation; a check
// further away than the wheel's span comes early, and the actor schedules
// it again (its idleCheck looks at lastActive).
//
// Goroutines: actors schedule and cancel their checks from their own
// runs; the timer's function advances the wheel and posts idleCheck to
// each actor that is due, outside the lock. The timer runs only while a
// check is scheduled; it has no goroutine to stop. All the actors of one
// wheel (one Deps) belong to one actor system.
type idleWheel struct {
	tick  time.Duration
	start time.Time
	now   func() time.Time                     // time.Now; a test's clock
	post  func(*actor.RootContext, *actor.PID) // sends idleCheck; a test's recorder

	mu    sync.Mutex
	w     *wheel.Wheel[deviceActor]
	root  *actor.RootContext // of the actors' system
	timer *time.Timer        // nil until the first check; armed while w is not empty
	armed bool
	due   []*actor.PID // reused by fire
}

// idleSlots is the wheel's size; its span is idleSlots ticks.
const idleSlots = 64

// newIdleWheel returns a wheel whose tick is a 32nd of passivateAfter
// (at least 10 ms, at most a second): its span is about twice the usual
// wait, and a check is at most a tick late.
func newIdleWheel(passivateAfter time.Duration) *idleWheel {
	tick := min(max(passivateAfter/32, 10*time.Millisecond), time.Second)
	return &idleWheel{
		tick:  tick,
		start: time.Now(),
		now:   time.Now,
		post:  func(root *actor.RootContext, pid *actor.PID) { root.Send(pid, idleCheck{}) },
		w:     wheel.New[deviceActor](idleSlots, 0),
	}
}

// schedule makes a's idle check come after wait (replacing one scheduled
// before); self is a's PID, to which the check is posted.
func (iw *idleWheel) schedule(a *deviceActor, self *actor.PID, root *actor.RootContext, wait time.Duration) {
	at := iw.now().Add(wait).Sub(iw.start)
	iw.mu.Lock()
	a.idleNode.Value = a
	a.self, iw.root = self, root
	iw.w.Schedule(&a.idleNode, int64((at+iw.tick-1)/iw.tick)) // rounded up: never early
	if !iw.armed {
		iw.armed = true
		if iw.timer == nil {
			iw.timer = time.AfterFunc(iw.tick, iw.fire)
		} else {
			iw.timer.Reset(iw.tick)
		}
	}
	iw.mu.Unlock()
}

// since returns the time elapsed since the wheel's start (monotonic; 8
// bytes where a time.Time takes 24).
func (iw *idleWheel) since() time.Duration { return time.Since(iw.start) }

// cancel drops a's scheduled check, if any.
func (iw *idleWheel) cancel(a *deviceActor) {
	iw.mu.Lock()
	iw.w.Remove(&a.idleNode)
	iw.mu.Unlock()
}

// fire posts the checks that are due and re-arms the timer while checks
// remain.
func (iw *idleWheel) fire() {
	iw.mu.Lock()
	due, root := iw.due[:0], iw.root
	iw.due = nil // posted outside the lock; a concurrent fire makes its own
	iw.w.Advance(int64(iw.now().Sub(iw.start)/iw.tick), func(a *deviceActor) { due = append(due, a.self) })
	if iw.w.Len() > 0 {
		iw.timer.Reset(iw.tick)
	} else {
		iw.armed = false
	}
	iw.mu.Unlock()
	for i, pid := range due {
		iw.post(root, pid)
		due[i] = nil
	}
	if cap(due) <= 4096 {
		iw.mu.Lock()
		if iw.due == nil {
			iw.due = due[:0]
		}
		iw.mu.Unlock()
	}
}
