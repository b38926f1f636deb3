package actors

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

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

func newTestPool(t testing.TB, workers int) *testPool {
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

// ask sends env as a request and returns where its reply will come.
func (r *testRouter) ask(env *actorpb.Envelope) <-chan *actorpb.Reply {
	ch := make(chan *actorpb.Reply, 1)
	r.mu.Lock()
	r.nextReq++
	env.ReqId, env.ReplyAddress = r.nextReq, "test"
	r.replies[env.ReqId] = ch
	r.mu.Unlock()
	r.Send(env)
	return ch
}

// reply waits up to 5 s for a reply.
func reply(t *testing.T, ch <-chan *actorpb.Reply) *actorpb.Reply {
	t.Helper()
	select {
	case rep := <-ch:
		return rep
	case <-time.After(5 * time.Second):
		t.Fatal("no reply within 5s")
		return nil
	}
}

// noReply fails the test if ch has a reply already.
func noReply(t *testing.T, ch <-chan *actorpb.Reply, what string) {
	t.Helper()
	select {
	case rep := <-ch:
		t.Fatalf("%s was answered while the store read is outstanding: %v", what, rep)
	default:
	}
}

func stored(key string) *actorpb.Push {
	return &actorpb.Push{Stored: true, Payload: []byte("p"), IdempotencyKey: key}
}

// s2cSeqs returns the seqs of the S2C frames sent so far.
func (r *testRouter) s2cSeqs() []uint32 {
	var out []uint32
	for _, f := range r.frames(uint32(messages.CmdS2C)) {
		out = append(out, f.Seq)
	}
	return out
}

// TestStashedEnvelopesInOrderAfterLoad: what reaches an identity while
// its load is outstanding waits, and is handled in arrival order once
// the load is answered: the login first, then the pushes (seqs in
// order, a repeated idempotency key answered as a duplicate), a
// presence query between them seeing exactly what came before it.
func TestStashedEnvelopesInOrderAfterLoad(t *testing.T) {
	h := newActorHarness(t, func(c *Config) { c.PassivateAfter = time.Minute })
	h.onWorkers(1)
	release := h.store.holdReads()
	defer release()
	bob := store.Identity{App: 1, UID: "bob"}
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 2}
	h.r.Send(env(bob, &actorpb.DeviceLogin{Conn: c, FrameSeq: 7, Login: &devicepb.Login{Uid: "bob"}}))
	p1 := h.r.ask(env(bob, stored("")))
	p2 := h.r.ask(env(bob, stored("k2")))
	pres := h.r.ask(env(bob, nil))
	p3 := h.r.ask(env(bob, stored("k2")))
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.readsHeld.Load() == 1 }, "bob's load never started")
	time.Sleep(50 * time.Millisecond) // the envelopes reach the actor
	noReply(t, p1, "a push")
	noReply(t, pres, "presence")
	if n := len(h.r.frames(uint32(messages.CmdLoginAck))); n != 0 {
		t.Fatal("the login was answered before the load")
	}

	release()
	r1, r2, rp, r3 := reply(t, p1).GetPush(), reply(t, p2).GetPush(), reply(t, pres).GetPresence(), reply(t, p3).GetPush()
	if r1.GetSeq() != 1 || r2.GetSeq() != 2 || r3.GetSeq() != 2 || !r3.GetDuplicate() || r3.GetMsgId() != r2.GetMsgId() {
		t.Fatalf("pushes answered %v, %v, %v; want seqs 1, 2 and a duplicate of 2", r1, r2, r3)
	}
	if !r1.Online || !rp.GetOnline() || rp.GetPending() != 2 {
		t.Fatalf("the login was not handled first, or presence not between the pushes: %v, %v", r1, rp)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return fmt.Sprint(h.r.s2cSeqs()) == "[1 2]" }, "deliveries not in seq order")
	if n := h.store.loads.Load(); n != 1 {
		t.Fatalf("%d loads, want 1", n)
	}
}

// TestLookupKeepsOrder: while an idempotency lookup is outstanding the
// identity's later envelopes wait behind it (a stored push without a
// key gets the next seq, not the first), except a presence query and a
// fire-and-forget push, which go ahead as they would have gone ahead of
// the stored pushes' writes; and the actor holds no worker meanwhile.
func TestLookupKeepsOrder(t *testing.T) {
	h := newActorHarness(t, func(c *Config) { c.PassivateAfter = time.Minute })
	h.onWorkers(1)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	eve := store.Identity{App: 1, UID: "eve"}
	h.presence(eve) // in memory
	release := h.store.holdReads()
	defer release()
	p1 := h.r.ask(env(alice, stored("k1")))
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.readsHeld.Load() == 1 }, "the lookup never started")
	p2 := h.r.ask(env(alice, stored("")))
	// A fire-and-forget push waits too: its frame must not reach the
	// device before the stored pushes accepted ahead of it.
	ff := h.r.ask(env(alice, &actorpb.Push{Payload: []byte("gps")}))
	if p := h.requestWithin(2*time.Second, env(alice, nil)).GetPresence(); !p.GetOnline() || p.GetPending() != 0 {
		t.Fatalf("presence while the lookup is outstanding: %v", p)
	}
	h.requestWithin(2*time.Second, env(eve, nil)) // another identity, on the one worker
	// A kick is not deferred: it waits, and so does what comes after it.
	kick := h.r.ask(env(alice, &actorpb.Kick{}))
	pres := h.r.ask(env(alice, nil))
	time.Sleep(50 * time.Millisecond)
	noReply(t, p2, "a stored push behind the lookup")
	noReply(t, ff, "a fire-and-forget push behind the lookup")
	noReply(t, kick, "a kick behind the lookup")
	noReply(t, pres, "presence behind a kick")

	release()
	if r1, r2 := reply(t, p1).GetPush(), reply(t, p2).GetPush(); r1.GetSeq() != 1 || r2.GetSeq() != 2 {
		t.Fatalf("pushes answered %v, %v; want seqs 1 and 2", r1, r2)
	}
	if r := reply(t, ff).GetPush(); !r.GetOnline() {
		t.Fatalf("fire-and-forget behind the lookup: %v", r)
	}
	if got, want := h.r.s2cSeqs(), []uint32{1, 2, 0}; !slices.Equal(got, want) {
		t.Fatalf("the device got seqs %v, want %v (in the order accepted; 0: the fire-and-forget push)", got, want)
	}
	if k := reply(t, kick).GetKick(); !k.GetWasOnline() {
		t.Fatalf("kick: %v", k)
	}
	if p := reply(t, pres).GetPresence(); p.GetOnline() {
		t.Fatalf("presence after the kick: %v", p)
	}
}

// TestBurstOfKeyedPushesReadsOnce: pushes with idempotency keys that
// queue behind one lookup have their keys looked up together: a burst
// costs two reads, not one per push, and keeps its order.
func TestBurstOfKeyedPushesReadsOnce(t *testing.T) {
	h := newActorHarness(t, func(c *Config) { c.PassivateAfter = time.Minute })
	h.login(alice, &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1})
	release := h.store.holdReads()
	defer release()
	const n = 20
	var replies []<-chan *actorpb.Reply
	for i := range n {
		replies = append(replies, h.r.ask(env(alice, stored(fmt.Sprint("k", i)))))
		if i == 0 {
			testkit.Eventually(t, 5*time.Second, func() bool { return h.store.readsHeld.Load() == 1 }, "the lookup never started")
		}
	}
	replies = append(replies, h.r.ask(env(alice, stored("k3")))) // a repeat
	time.Sleep(50 * time.Millisecond)
	release()
	for i, ch := range replies[:n] {
		if p := reply(t, ch).GetPush(); p.GetSeq() != uint32(i+1) || p.GetDuplicate() {
			t.Fatalf("push %d: %v", i, p)
		}
	}
	if p := reply(t, replies[n]).GetPush(); !p.GetDuplicate() || p.GetSeq() != 4 {
		t.Fatalf("repeated key: %v", p)
	}
	if l, k := h.store.lookups.Load(), h.store.lookedUp.Load(); l != 2 || k != n {
		t.Fatalf("%d lookups of %d keys, want 2 of %d", l, k, n)
	}
}

// TestStashOverflowIsAnswered: beyond actors.max-stashed, what reaches
// an identity waiting for a read is answered at once with a retryable
// failure (the API's UNAVAILABLE, a device's STORE_UNAVAILABLE), never
// dropped silently; a connection's close that does not fit is still
// applied once the stash is handled.
func TestStashOverflowIsAnswered(t *testing.T) {
	h := newActorHarness(t, func(c *Config) { c.MaxStashed = 3; c.PassivateAfter = time.Minute })
	release := h.store.holdReads()
	defer release()
	bob := store.Identity{App: 1, UID: "bob"}
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 2}
	h.r.Send(env(bob, &actorpb.DeviceLogin{Conn: c, FrameSeq: 7, Login: &devicepb.Login{Uid: "bob"}}))
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.readsHeld.Load() == 1 }, "bob's load never started")
	var stashed, over []<-chan *actorpb.Reply
	for range 3 {
		stashed = append(stashed, h.r.ask(env(bob, stored(""))))
	}
	for range 2 {
		over = append(over, h.r.ask(env(bob, stored(""))))
	}
	sender := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 9}
	h.r.Send(env(bob, &actorpb.C2CSend{ReplyTo: sender, FromUid: "carol", FrameSeq: 5, C2C: &devicepb.C2C{ToUid: "bob", ClientMsgId: "c1"}}))
	h.r.Send(env(bob, &actorpb.DeviceClosed{Conn: c, Epoch: 1}))
	for _, ch := range over {
		if f := reply(t, ch).GetFailure(); f == nil || f.Code != int32(codes.Unavailable) || f.Message != stashFull {
			t.Fatalf("a push beyond the stash: %v, want UNAVAILABLE %q", f, stashFull)
		}
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return len(h.r.frames(uint32(messages.CmdC2CAck))) == 1 }, "the C2C beyond the stash was not answered")
	var ack devicepb.C2CAck
	if err := proto.Unmarshal(h.r.frames(uint32(messages.CmdC2CAck))[0].Body, &ack); err != nil || ack.Code != devicepb.Code_STORE_UNAVAILABLE {
		t.Fatalf("C2C_ACK %v, want STORE_UNAVAILABLE", ack.Code)
	}
	for _, ch := range stashed {
		noReply(t, ch, "a stashed push")
	}

	release()
	for i, ch := range stashed {
		if p := reply(t, ch).GetPush(); p.GetSeq() != uint32(i+1) {
			t.Fatalf("stashed push %d: %v", i, p)
		}
	}
	// The close that did not fit ends the session the login began.
	testkit.Eventually(t, 5*time.Second, func() bool {
		s := h.store.session(bob)
		return s != nil && !s.Online && s.Conn.GetConnId() == 2
	}, "the close beyond the stash was lost: the session stays online")
}

// TestFailedLoadAnswersWhatWaits: a load that fails answers everything
// that waited for it as the synchronous actor answered a failed load
// (STORE_UNAVAILABLE, UNAVAILABLE; "overloaded" when the store's read
// queue was full), keeps a close for a retried load, and the identity
// works again once the store does.
func TestFailedLoadAnswersWhatWaits(t *testing.T) {
	for _, tc := range []struct {
		err error
		msg string
	}{{store.ErrUnavailable, storeDown}, {store.ErrOverloaded, overloaded}} {
		t.Run(tc.msg, func(t *testing.T) {
			h := newActorHarness(t, nil)
			c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
			h.login(alice, c)
			h.waitPassivated(alice, 1)
			release := h.store.holdReads()
			defer release()
			push := h.r.ask(env(alice, stored("k")))
			testkit.Eventually(t, 5*time.Second, func() bool { return h.store.readsHeld.Load() == 1 }, "the load never started")
			pres := h.r.ask(env(alice, nil))
			h.r.Send(env(alice, &actorpb.DeviceFrame{Conn: c, Epoch: 1, Cmd: uint32(messages.CmdPull), Seq: 4, Body: mustMarshal(&devicepb.Pull{})}))
			h.r.Send(env(alice, &actorpb.DeviceClosed{Conn: c, Epoch: 1}))
			time.Sleep(50 * time.Millisecond)
			h.store.answerHeld(tc.err)
			for _, ch := range []<-chan *actorpb.Reply{push, pres} {
				if f := reply(t, ch).GetFailure(); f == nil || f.Code != int32(codes.Unavailable) || f.Message != tc.msg {
					t.Fatalf("after the failed load: %v, want UNAVAILABLE %q", f, tc.msg)
				}
			}
			testkit.Eventually(t, 5*time.Second, func() bool { return len(h.r.frames(uint32(messages.CmdPullAck))) == 1 }, "the PULL was not answered")
			var pa devicepb.PullAck
			if err := proto.Unmarshal(h.r.frames(uint32(messages.CmdPullAck))[0].Body, &pa); err != nil || pa.Code != devicepb.Code_STORE_UNAVAILABLE {
				t.Fatalf("PULL_ACK %v, want STORE_UNAVAILABLE", pa.Code)
			}
			// The close is kept: the load is retried and applies it.
			testkit.Eventually(t, 5*time.Second, func() bool { return h.store.readsHeld.Load() == 1 }, "the load was not retried for the close")
			release()
			testkit.Eventually(t, 5*time.Second, func() bool { return !h.store.session(alice).GetOnline() }, "the close was lost with the failed load")
			if p := h.presence(alice); p.Online {
				t.Fatal("online after the close")
			}
			h.waitPassivated(alice, 2)
		})
	}
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// TestFailedLookupAnswersItsEnvelopes: a failed idempotency lookup
// answers the push that waited for it and the stashed pushes whose keys
// it carried; a push that came later does its own lookup.
func TestFailedLookupAnswersItsEnvelopes(t *testing.T) {
	h := newActorHarness(t, func(c *Config) { c.PassivateAfter = time.Minute })
	h.login(alice, &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1})
	h.presence(alice)
	release := h.store.holdReads()
	defer release()
	p1 := h.r.ask(env(alice, stored("k1")))
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.readsHeld.Load() == 1 }, "the lookup never started")
	p2 := h.r.ask(env(alice, stored("k2"))) // stashed: its key goes in the next lookup
	time.Sleep(50 * time.Millisecond)
	h.store.answerHeld(store.ErrUnavailable)
	if f := reply(t, p1).GetFailure(); f == nil || f.Code != int32(codes.Unavailable) {
		t.Fatalf("push whose lookup failed: %v", f)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.readsHeld.Load() == 1 }, "the next push's lookup never started")
	release()
	if p := reply(t, p2).GetPush(); p.GetSeq() != 1 {
		t.Fatalf("the next push: %v", p)
	}
}

// TestFencedWhileLookingUp: an actor fenced (its write refused: another
// activation claimed the identity) while an idempotency lookup is
// outstanding hands the waiting pushes to the identity's next
// activation, which accepts them; none is answered twice or lost.
func TestFencedWhileLookingUp(t *testing.T) {
	h := newActorHarness(t, func(c *Config) { c.PassivateAfter = time.Minute })
	h.login(alice, &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1})
	releaseWrites := h.store.holdWrites()
	p0 := h.r.ask(env(alice, stored("k0")))
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.held.Load() > 0 }, "the first push was never written")
	releaseReads := h.store.holdReads()
	defer releaseReads()
	p1 := h.r.ask(env(alice, stored("k1")))
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.readsHeld.Load() == 1 }, "the lookup never started")
	p2 := h.r.ask(env(alice, stored("")))
	time.Sleep(50 * time.Millisecond)
	h.store.claim(alice)
	releaseWrites()
	if f := reply(t, p0).GetFailure(); f == nil || f.Message != Moved {
		t.Fatalf("the fenced push: %v", f)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return h.r.count(h.r.activations, alice) == 2 }, "the waiting pushes did not reach a new activation")
	releaseReads()
	if r1, r2 := reply(t, p1).GetPush(), reply(t, p2).GetPush(); r1.GetSeq() != 1 || r2.GetSeq() != 2 {
		t.Fatalf("the waiting pushes on the new activation: %v, %v", r1, r2)
	}
	select {
	case rep := <-p1:
		t.Fatalf("a push answered twice: %v", rep)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestHandoffWhileReading: an actor whose identity moves while it waits
// for a store read (here an idempotency lookup, with more pushes
// stashed behind it) hands what waits to the new owner, in order, and
// stops at once; the new owner accepts the pushes, each once.
func TestHandoffWhileReading(t *testing.T) {
	h := newActorHarness(t, func(c *Config) { c.PassivateAfter = time.Minute })
	h.login(alice, &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1})
	release := h.store.holdReads()
	defer release()
	p1 := h.r.ask(env(alice, stored("k1")))
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.readsHeld.Load() == 1 }, "the lookup never started")
	p2 := h.r.ask(env(alice, stored("")))
	p3 := h.r.ask(env(alice, stored("k3")))
	time.Sleep(50 * time.Millisecond)
	h.r.handoff(alice)
	testkit.Eventually(t, 5*time.Second, func() bool { return h.r.count(h.r.handedOff, alice) == 1 },
		"the actor waiting for a read did not finish its handoff")
	testkit.Eventually(t, 5*time.Second, func() bool { return h.r.count(h.r.activations, alice) == 2 },
		"what waited did not reach the new owner")
	release()
	for i, ch := range []<-chan *actorpb.Reply{p1, p2, p3} {
		if p := reply(t, ch).GetPush(); p.GetSeq() != uint32(i+1) || p.GetDuplicate() {
			t.Fatalf("push %d on the new owner: %v", i+1, p)
		}
	}
	if n := h.store.stored(alice); n != 3 {
		t.Fatalf("%d pushes stored, want 3", n)
	}
}
