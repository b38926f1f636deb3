package actors

import (
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// Store reads (loads, idempotency lookups) and the actors' worker pool:
// an actor waiting for a read holds no worker, keeps its identity's order
// and bounds what waits.

// testPool runs mailboxes on a fixed number of goroutines, like the
// node's worker pool (cluster.poolDispatcher): an actor that blocks a
// worker stalls the actors queued behind it.
type testPool struct {
	work   chan func()
	wg     sync.WaitGroup
	mu     sync.RWMutex // guards closed against sends on work
	closed bool
}

func newTestPool(t *testing.T, workers int) *testPool {
	p := &testPool{work: make(chan func(), 1<<16)}
	p.wg.Add(workers)
	for range workers {
		go func() {
			defer p.wg.Done()
			for fn := range p.work {
				fn()
			}
		}()
	}
	t.Cleanup(func() {
		p.mu.Lock()
		p.closed = true
		close(p.work)
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// Schedule queues fn; after the test it runs fn on a goroutine of its own
// (the actor system's shutdown still delivers).
func (p *testPool) Schedule(fn func()) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		go fn()
		return
	}
	p.work <- fn
}

func (p *testPool) Throughput() int { return 300 }

// onWorkers runs the harness's actors on a pool of n workers.
func (h *actorHarness) onWorkers(n int) {
	h.r.props = actor.PropsFromProducer(h.deps.NewActor, actor.WithDispatcher(newTestPool(h.t, n)))
}

// requestWithin sends env and fails the test unless its reply comes
// within d.
func (h *actorHarness) requestWithin(d time.Duration, env *actorpb.Envelope) *actorpb.Reply {
	h.t.Helper()
	done := make(chan *actorpb.Reply, 1)
	go func() { done <- h.r.request(env) }()
	select {
	case rep := <-done:
		if rep == nil {
			h.t.Fatalf("no reply to %v", env.Body)
		}
		return rep
	case <-time.After(d):
		h.t.Fatalf("no reply to %v within %v", env.Body, d)
		return nil
	}
}

// TestLoadHoldsNoWorker: while the store does not answer an identity's
// load, the identity's actor holds no worker of the pool: on a pool of
// one worker, an identity already in memory still answers presence and
// gets its fire-and-forget pushes, and once the store answers, the
// waiting login is handled.
func TestLoadHoldsNoWorker(t *testing.T) {
	h := newActorHarness(t, func(c *Config) { c.PassivateAfter = time.Minute })
	h.onWorkers(1)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	release := h.store.holdReads()
	defer release()
	bob := store.Identity{App: 1, UID: "bob"}
	h.r.Send(env(bob, &actorpb.DeviceLogin{Conn: &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 2}, FrameSeq: 7,
		Login: &devicepb.Login{Uid: "bob"}}))
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.readsHeld.Load() > 0 }, "bob's load never started")

	if p := h.requestWithin(2*time.Second, env(alice, nil)).GetPresence(); !p.GetOnline() {
		t.Fatalf("alice's presence while bob loads: %v", p)
	}
	rep := h.requestWithin(2*time.Second, env(alice, &actorpb.Push{Payload: []byte("gps")}))
	if p := rep.GetPush(); p == nil || !p.Online {
		t.Fatalf("fire-and-forget push to alice while bob loads: %v", rep)
	}
	testkit.Eventually(t, 2*time.Second, func() bool { return len(h.r.frames(uint32(messages.CmdS2C))) == 1 },
		"the fire-and-forget push was not delivered while bob loads")

	release()
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.session(bob).GetOnline() }, "bob's login was not handled after the load")
}
