package cluster

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/courier-im/courier/testkit"
)

// recorder is a test actor that writes down what it receives and
// complains if two messages are handled at once.
type recorder struct {
	mu      sync.Mutex
	got     []any
	busy    atomic.Bool
	overlap atomic.Bool
	onMsg   func(m any)
}

func (r *recorder) Receive(ctx actor.Context) {
	if r.busy.Swap(true) {
		r.overlap.Store(true)
	}
	defer r.busy.Store(false)
	m := ctx.Message()
	if ctx.Self() == nil {
		panic("no Self")
	}
	r.mu.Lock()
	r.got = append(r.got, m)
	r.mu.Unlock()
	if r.onMsg != nil {
		r.onMsg(m)
	}
}

func (r *recorder) messages() []any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]any(nil), r.got...)
}

func cellSystem(t *testing.T, workers int, newActor func() actor.Actor) *System {
	t.Helper()
	s := &System{actors: actor.NewActorSystem(), log: slog.Default(), newChild: ChildFactory(newActor),
		dispatcher: newPoolDispatcher(workers, 1024, 300)}
	t.Cleanup(s.dispatcher.stop)
	return s
}

// TestCellOrderAndLifecycle: an actor in a cell sees Started first, every
// sender's messages in the order sent, one at a time, then Stopping after
// a Poison, and nothing after that.
func TestCellOrderAndLifecycle(t *testing.T) {
	rec := &recorder{}
	s := cellSystem(t, 4, func() actor.Actor { return rec })
	pid := s.spawnCell()
	const senders, each = 8, 2000
	var wg sync.WaitGroup
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				s.actors.Root.Send(pid, fmt.Sprintf("%d/%d", g, i))
			}
		}()
	}
	wg.Wait()
	s.actors.Root.Poison(pid)
	testkit.Eventually(t, 10*time.Second, func() bool {
		got := rec.messages()
		_, stopping := got[len(got)-1].(*actor.Stopping)
		return stopping
	}, "the actor did not stop")
	s.actors.Root.Send(pid, "after the stop")
	time.Sleep(50 * time.Millisecond)
	got := rec.messages()
	if _, ok := got[0].(*actor.Started); !ok {
		t.Fatalf("first message %T, want *actor.Started", got[0])
	}
	if len(got) != senders*each+2 {
		t.Fatalf("%d messages, want %d", len(got), senders*each+2)
	}
	next := make([]int, senders)
	for _, m := range got[1 : len(got)-1] {
		var g, i int
		if _, err := fmt.Sscanf(m.(string), "%d/%d", &g, &i); err != nil || i != next[g] {
			t.Fatalf("message %v out of order (want %d/%d)", m, g, next[g])
		}
		next[g]++
	}
	if rec.overlap.Load() {
		t.Fatal("two messages were handled at once")
	}
}

// TestCellYields: with one worker, an identity flooded with messages
// does not hold it: another identity's message is handled before the
// flood is through.
func TestCellYields(t *testing.T) {
	var floodDone atomic.Int64
	var seenAt atomic.Int64
	seenAt.Store(-1)
	const flood = 20 * cellRunLimit
	var n atomic.Int64
	s := cellSystem(t, 1, func() actor.Actor {
		id := n.Add(1)
		return &recorder{onMsg: func(m any) {
			if _, ok := m.(string); !ok {
				return
			}
			if id == 1 {
				floodDone.Add(1)
				time.Sleep(10 * time.Microsecond)
			} else {
				seenAt.CompareAndSwap(-1, floodDone.Load())
			}
		}}
	})
	a, b := s.spawnCell(), s.spawnCell()
	for i := range flood {
		s.actors.Root.Send(a, fmt.Sprint(i))
	}
	s.actors.Root.Send(b, "other")
	testkit.Eventually(t, 30*time.Second, func() bool { return floodDone.Load() == flood && seenAt.Load() >= 0 },
		"messages were not all handled")
	if at := seenAt.Load(); at >= flood {
		t.Fatalf("the other identity waited for all %d messages of the flood", flood)
	}
}

// TestCellSurvivesAPanic: a panic that escapes an actor is logged; the
// worker and the cell go on.
func TestCellSurvivesAPanic(t *testing.T) {
	rec := &recorder{onMsg: func(m any) {
		if m == "boom" {
			panic("boom")
		}
	}}
	s := cellSystem(t, 1, func() actor.Actor { return rec })
	pid := s.spawnCell()
	s.actors.Root.Send(pid, "boom")
	s.actors.Root.Send(pid, "after")
	testkit.Eventually(t, 5*time.Second, func() bool {
		got := rec.messages()
		return len(got) == 3 && got[2] == "after"
	}, "the message after the panic was not handled")
}
