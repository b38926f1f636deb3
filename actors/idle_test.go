package actors

import (
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/courier-im/courier/testkit"
)

// idleRig is an idleWheel on a clock the test moves, whose posts are
// recorded instead of sent. Its runtime timer still ticks in real time.
type idleRig struct {
	iw *idleWheel

	mu     sync.Mutex
	clock  time.Time
	posted map[string]int // PID id -> checks posted
}

func newIdleRig(passivateAfter time.Duration) *idleRig {
	r := &idleRig{iw: newIdleWheel(passivateAfter), clock: time.Unix(1_000_000, 0), posted: map[string]int{}}
	r.iw.start = r.clock
	r.iw.now = func() time.Time { r.mu.Lock(); defer r.mu.Unlock(); return r.clock }
	r.iw.post = func(_ *actor.RootContext, pid *actor.PID) { r.mu.Lock(); r.posted[pid.Id]++; r.mu.Unlock() }
	return r
}

func (r *idleRig) advance(d time.Duration) { r.mu.Lock(); r.clock = r.clock.Add(d); r.mu.Unlock() }

func (r *idleRig) count(a *deviceActor) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.posted[a.self.Id]
}

func (r *idleRig) linked(a *deviceActor) bool {
	r.iw.mu.Lock()
	defer r.iw.mu.Unlock()
	return a.idleNode.Linked()
}

func (r *idleRig) armed() bool { r.iw.mu.Lock(); defer r.iw.mu.Unlock(); return r.iw.armed }

func (r *idleRig) schedule(a *deviceActor, id string, wait time.Duration) {
	r.iw.schedule(a, actor.NewPID("nonhost", id), nil, wait)
}

// TestIdleWheel: checks are posted once each, to due actors only, never
// before their time; a later schedule replaces an earlier one; a cancelled
// check is never posted; the timer stops when no check is left and starts
// again with the next.
func TestIdleWheel(t *testing.T) {
	r := newIdleRig(320 * time.Millisecond) // a 10 ms tick, a 640 ms span
	if r.iw.tick != 10*time.Millisecond {
		t.Fatalf("tick %v, want 10ms", r.iw.tick)
	}
	soon, later, moved, delayed, cancelled := &deviceActor{}, &deviceActor{}, &deviceActor{}, &deviceActor{}, &deviceActor{}
	r.schedule(soon, "soon", 95*time.Millisecond) // due within the tick ending at 100ms
	r.schedule(later, "later", 300*time.Millisecond)
	r.schedule(moved, "moved", 300*time.Millisecond)
	r.schedule(moved, "moved", 50*time.Millisecond) // rescheduled earlier
	r.schedule(delayed, "delayed", 50*time.Millisecond)
	r.schedule(delayed, "delayed", 300*time.Millisecond) // rescheduled later
	r.schedule(cancelled, "cancelled", 50*time.Millisecond)
	r.iw.cancel(cancelled)
	if r.linked(cancelled) || !r.armed() {
		t.Fatalf("after cancel: linked %v, armed %v", r.linked(cancelled), r.armed())
	}

	// Real ticks pass, the clock does not: nothing is due.
	time.Sleep(50 * time.Millisecond)
	for _, a := range []*deviceActor{soon, later, moved, delayed} {
		if r.count(a) != 0 || !r.linked(a) {
			t.Fatalf("%s: posted %d, linked %v before its time", a.self.Id, r.count(a), r.linked(a))
		}
	}

	r.advance(94 * time.Millisecond) // a ms before soon's check
	testkit.Eventually(t, 5*time.Second, func() bool { return r.count(moved) == 1 }, "moved's check was not posted")
	if r.count(soon) != 0 || !r.linked(soon) {
		t.Fatalf("soon posted %d a ms early", r.count(soon))
	}
	r.advance(6 * time.Millisecond) // at most a tick late
	testkit.Eventually(t, 5*time.Second, func() bool { return r.count(soon) == 1 }, "soon's check was not posted")
	for _, a := range []*deviceActor{later, delayed} {
		if r.count(a) != 0 || !r.linked(a) {
			t.Fatalf("%s: posted %d, linked %v; due at 300ms, clock at 100ms", a.self.Id, r.count(a), r.linked(a))
		}
	}

	r.advance(200 * time.Millisecond)
	testkit.Eventually(t, 5*time.Second, func() bool { return r.count(later) == 1 && r.count(delayed) == 1 },
		"the 300ms checks were not posted")
	testkit.Eventually(t, 5*time.Second, func() bool { return !r.armed() }, "the timer still runs with no check left")
	r.iw.mu.Lock()
	left := r.iw.w.Len()
	r.iw.mu.Unlock()
	if left != 0 || r.linked(cancelled) {
		t.Fatalf("wheel holds %d checks after all fired", left)
	}
	for _, a := range []*deviceActor{soon, later, moved, delayed} {
		if n := r.count(a); n != 1 {
			t.Fatalf("%s: %d checks posted, want 1", a.self.Id, n)
		}
	}
	if n := r.count(cancelled); n != 0 {
		t.Fatalf("cancelled: %d checks posted", n)
	}

	// The stopped timer starts again with the next check.
	r.schedule(soon, "soon", 20*time.Millisecond)
	if !r.armed() {
		t.Fatal("a new check did not start the timer")
	}
	r.advance(20 * time.Millisecond)
	testkit.Eventually(t, 5*time.Second, func() bool { return r.count(soon) == 2 }, "the restarted timer posted nothing")
	testkit.Eventually(t, 5*time.Second, func() bool { return !r.armed() }, "the timer still runs with no check left")
}

// TestIdleWheelBeyondSpan: a check further away than the span is posted
// early, at the span's end (the actor schedules it again), never lost.
func TestIdleWheelBeyondSpan(t *testing.T) {
	r := newIdleRig(320 * time.Millisecond)
	far := &deviceActor{}
	r.schedule(far, "far", 10*time.Second)
	r.advance(time.Duration(idleSlots) * r.iw.tick)
	testkit.Eventually(t, 5*time.Second, func() bool { return r.count(far) == 1 }, "a check beyond the span was not posted")
}
