package actors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// These tests run device actors on a local actor system, with a fake
// store that can block, fail or fence on demand and a router that keeps a
// child per identity with the same passivation handshake as the cluster's
// routing layer.

// fakeStore is an in-memory store.Store. Writes are applied in order by
// one goroutine, like the real committer.
type fakeStore struct {
	mu       sync.Mutex
	meta     map[store.Identity]*actorpb.IdentityMeta
	inbox    map[store.Identity]map[uint32]*actorpb.InboxEntry
	idem     map[store.Identity]map[string]*actorpb.IdempotencyRecord
	owner    map[store.Identity]uint64
	writes   []*store.Write // applied, in order
	qmu      sync.RWMutex   // guards closed against sends on queue
	closed   bool
	queue    chan pendingWrite
	hold     chan struct{}           // while not nil, writes wait for it to close
	holdIf   func(*store.Write) bool // which writes hold holds (nil: all)
	release  func()                  // closes hold
	stalled  atomic.Bool             // what Stalled reports
	held     atomic.Int32            // writes waiting for hold
	failW    func(*store.Write) error
	failL    atomic.Int32 // loads to fail
	panicL   atomic.Int32 // loads to panic in
	loads    atomic.Int32
	lookups  atomic.Int32 // idempotency reads
	lookedUp atomic.Int32 // keys they asked for
	// readHold makes reads (loads and idempotency lookups) wait in
	// heldReads until answerHeld; readsHeld counts them.
	readHold  bool
	heldReads []func(error)
	readsHeld atomic.Int32
	closeMu   sync.Once
	done      chan struct{}
}

type pendingWrite struct {
	w    *store.Write
	done func(error)
}

func newFakeStore() *fakeStore {
	s := &fakeStore{
		meta:  map[store.Identity]*actorpb.IdentityMeta{},
		inbox: map[store.Identity]map[uint32]*actorpb.InboxEntry{},
		idem:  map[store.Identity]map[string]*actorpb.IdempotencyRecord{},
		owner: map[store.Identity]uint64{},
		queue: make(chan pendingWrite, 1<<16),
		done:  make(chan struct{}),
	}
	go s.run()
	return s
}

func (s *fakeStore) run() {
	defer close(s.done)
	for p := range s.queue {
		s.mu.Lock()
		hold, holdIf := s.hold, s.holdIf
		s.mu.Unlock()
		if hold != nil && (holdIf == nil || holdIf(p.w)) {
			s.held.Add(1)
			<-hold
			s.held.Add(-1)
		}
		p.done(s.apply(p.w))
	}
}

// holdWrites makes writes wait until release is called.
func (s *fakeStore) holdWrites() (release func()) { return s.holdWritesIf(nil) }

// holdWritesIf makes the writes for which holdIf is true (all if it is
// nil) wait until release is called.
func (s *fakeStore) holdWritesIf(holdIf func(*store.Write) bool) (release func()) {
	ch := make(chan struct{})
	var once sync.Once
	release = func() {
		once.Do(func() {
			s.mu.Lock()
			s.hold, s.holdIf = nil, nil
			s.mu.Unlock()
			close(ch)
		})
	}
	s.mu.Lock()
	s.hold, s.holdIf, s.release = ch, holdIf, release
	s.mu.Unlock()
	return release
}

func (s *fakeStore) apply(w *store.Write) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failW != nil {
		if err := s.failW(w); err != nil {
			return err
		}
	}
	if w.Owner != s.owner[w.ID] {
		return store.ErrFenced
	}
	if w.Meta != nil {
		s.meta[w.ID] = proto.Clone(w.Meta).(*actorpb.IdentityMeta)
	}
	if s.inbox[w.ID] == nil {
		s.inbox[w.ID] = map[uint32]*actorpb.InboxEntry{}
	}
	for _, e := range w.Put {
		s.inbox[w.ID][e.Seq] = e
	}
	for _, seq := range w.Delete {
		delete(s.inbox[w.ID], seq)
	}
	if s.idem[w.ID] == nil {
		s.idem[w.ID] = map[string]*actorpb.IdempotencyRecord{}
	}
	for _, p := range w.Idem {
		s.idem[w.ID][p.Key] = p.Record
	}
	s.writes = append(s.writes, w)
	return nil
}

// holdReads makes loads and idempotency lookups wait, as a database
// that does not answer, until release is called (which answers them).
func (s *fakeStore) holdReads() (release func()) {
	s.mu.Lock()
	s.readHold = true
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.readHold = false
			s.mu.Unlock()
			s.answerHeld(nil)
		})
	}
}

// answerHeld answers the reads held so far: with err, or (nil) by
// reading.
func (s *fakeStore) answerHeld(err error) {
	s.mu.Lock()
	held := s.heldReads
	s.heldReads = nil
	s.mu.Unlock()
	for _, answer := range held {
		s.readsHeld.Add(-1)
		answer(err)
	}
}

// holding queues answer if reads are held, and reports whether it did.
func (s *fakeStore) holding(answer func(error)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.readHold {
		return false
	}
	s.heldReads = append(s.heldReads, answer)
	s.readsHeld.Add(1)
	return true
}

func (s *fakeStore) Load(_ context.Context, id store.Identity) (*store.Snapshot, error) {
	s.loads.Add(1)
	if s.panicL.Add(-1) >= 0 {
		panic("fakeStore: load panics on demand")
	}
	if s.failL.Add(-1) >= 0 {
		return nil, store.ErrUnavailable
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.owner[id]++
	snap := &store.Snapshot{Owner: s.owner[id]}
	if m := s.meta[id]; m != nil {
		snap.Meta = proto.Clone(m).(*actorpb.IdentityMeta)
	}
	for _, e := range s.inbox[id] {
		snap.Inbox = append(snap.Inbox, e)
	}
	return snap, nil
}

// claim makes the identity another owner's, as a Load elsewhere would.
func (s *fakeStore) claim(id store.Identity) {
	s.mu.Lock()
	s.owner[id]++
	s.mu.Unlock()
}

func (s *fakeStore) session(id store.Identity) *actorpb.SessionRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.meta[id].GetSession()
}

func (s *fakeStore) stored(id store.Identity) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.inbox[id])
}

func (s *fakeStore) Idempotency(_ context.Context, id store.Identity, key string) (*actorpb.IdempotencyRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idem[id][key], nil
}

// LoadAsync reads inline, or later while reads are held.
func (s *fakeStore) LoadAsync(id store.Identity, _ time.Time, done func(*store.Snapshot, error)) {
	answer := func(err error) {
		if err != nil {
			done(nil, err)
			return
		}
		done(s.Load(context.Background(), id))
	}
	if !s.holding(answer) {
		answer(nil)
	}
}

// IdempotencyAsync reads inline, or later while reads are held.
func (s *fakeStore) IdempotencyAsync(id store.Identity, keys []string, _ time.Time, done func([]*actorpb.IdempotencyRecord, error)) {
	answer := func(err error) {
		if err != nil {
			done(nil, err)
			return
		}
		s.lookups.Add(1)
		s.lookedUp.Add(int32(len(keys)))
		recs := make([]*actorpb.IdempotencyRecord, len(keys))
		for i, k := range keys {
			recs[i], _ = s.Idempotency(context.Background(), id, k)
		}
		done(recs, nil)
	}
	if !s.holding(answer) {
		answer(nil)
	}
}

func (s *fakeStore) Submit(w *store.Write, done func(error)) {
	s.qmu.RLock()
	defer s.qmu.RUnlock()
	if s.closed {
		done(store.ErrClosed)
		return
	}
	if s.stalled.Load() {
		// As the committer does: refused at once, inline.
		done(fmt.Errorf("%w: a commit has waited for the disk (store.stall-after)", store.ErrUnavailable))
		return
	}
	s.queue <- pendingWrite{w, done}
}

func (s *fakeStore) Expired(context.Context, time.Time, int, func(store.Identity)) error { return nil }

// The actors do not use the lists document.
func (s *fakeStore) Lists(context.Context) (uint64, []byte, error) { return 0, nil, nil }
func (s *fakeStore) SetLists(context.Context, uint64, []byte) (uint64, error) {
	return 0, store.ErrUnavailable
}

func (s *fakeStore) CommitWait() time.Duration { return 0 }
func (s *fakeStore) Stalled() bool             { return s.stalled.Load() }

func (s *fakeStore) Close() error {
	s.closeMu.Do(func() {
		s.mu.Lock()
		release := s.release
		s.mu.Unlock()
		if release != nil {
			release()
		}
		s.qmu.Lock()
		s.closed = true
		close(s.queue)
		s.qmu.Unlock()
		<-s.done
	})
	return nil
}

// testRouter keeps one actor per identity like cluster.System: envelopes
// are counted per child, and a child passivates only with the current
// count.
type testRouter struct {
	sys   *actor.ActorSystem
	props *actor.Props

	mu          sync.Mutex
	children    map[store.Identity]*testChild
	replies     map[uint64]chan *actorpb.Reply
	conns       []*actorpb.ToConn
	nextReq     uint64
	passivated  map[store.Identity]int
	retired     map[store.Identity]int
	handedOff   map[store.Identity]int
	activations map[store.Identity]int
	// leaseless makes SendToConn report that nothing went as it was (a
	// node without its membership lease).
	leaseless atomic.Bool
}

type testChild struct {
	pid       *actor.PID
	forwarded uint64
}

func (r *testRouter) Send(env *actorpb.Envelope) {
	id := store.Identity{App: uint16(env.AppCode), UID: env.Uid}
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.children[id]
	if c == nil {
		c = &testChild{pid: r.sys.Root.Spawn(r.props)}
		r.children[id] = c
		r.activations[id]++
	}
	c.forwarded++
	r.sys.Root.Send(c.pid, env)
}

func (r *testRouter) Passivate(app uint16, uid string, pid *actor.PID, seen uint64) {
	id := store.Identity{App: app, UID: uid}
	r.mu.Lock()
	c := r.children[id]
	if c == nil || c.pid.Id != pid.Id || c.forwarded != seen {
		r.mu.Unlock()
		return
	}
	delete(r.children, id)
	r.passivated[id]++
	r.mu.Unlock()
	r.sys.Root.Poison(pid)
}

func (r *testRouter) Retire(app uint16, uid string, pid *actor.PID) {
	id := store.Identity{App: app, UID: uid}
	r.mu.Lock()
	if c := r.children[id]; c != nil && c.pid.Id == pid.Id {
		delete(r.children, id)
		r.retired[id]++
	}
	r.mu.Unlock()
	r.sys.Root.Poison(pid)
}

func (r *testRouter) HandedOff(app uint16, uid string, pid *actor.PID) {
	r.mu.Lock()
	r.handedOff[store.Identity{App: app, UID: uid}]++
	r.mu.Unlock()
	r.sys.Root.Poison(pid)
}

func (r *testRouter) SendToConn(_ *actorpb.ConnRef, m *actorpb.ToConn) bool {
	r.mu.Lock()
	r.conns = append(r.conns, m)
	r.mu.Unlock()
	return !r.leaseless.Load()
}

func (r *testRouter) Reply(_ string, rep *actorpb.Reply) {
	r.mu.Lock()
	ch := r.replies[rep.ReqId]
	delete(r.replies, rep.ReqId)
	r.mu.Unlock()
	if ch != nil {
		ch <- rep
	}
}

// request sends env and waits up to 5 s for its reply (nil if none).
func (r *testRouter) request(env *actorpb.Envelope) *actorpb.Reply {
	ch := make(chan *actorpb.Reply, 1)
	r.mu.Lock()
	r.nextReq++
	env.ReqId, env.ReplyAddress = r.nextReq, "test"
	r.replies[env.ReqId] = ch
	r.mu.Unlock()
	r.Send(env)
	select {
	case rep := <-ch:
		return rep
	case <-time.After(5 * time.Second):
		return nil
	}
}

func (r *testRouter) count(m map[store.Identity]int, id store.Identity) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return m[id]
}

// frames returns the frames sent to connections so far, of one command.
func (r *testRouter) frames(cmd uint32) []*actorpb.OutFrame {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*actorpb.OutFrame
	for _, tc := range r.conns {
		for _, f := range tc.Frames {
			if f.Cmd == cmd {
				out = append(out, f)
			}
		}
	}
	return out
}

type actorHarness struct {
	t     testing.TB
	cfg   Config
	store *fakeStore
	r     *testRouter
	deps  *Deps
}

func newActorHarness(t testing.TB, tune func(*Config)) *actorHarness {
	h := &actorHarness{t: t, cfg: DefaultConfig(), store: newFakeStore()}
	h.cfg.PassivateAfter = 100 * time.Millisecond
	if tune != nil {
		tune(&h.cfg)
	}
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}))
	h.r = &testRouter{sys: sys, children: map[store.Identity]*testChild{}, replies: map[uint64]chan *actorpb.Reply{},
		passivated: map[store.Identity]int{}, retired: map[store.Identity]int{}, handedOff: map[store.Identity]int{},
		activations: map[store.Identity]int{}}
	h.deps = NewDeps(Deps{Config: &h.cfg, Store: h.store, Router: h.r, IDs: NewIDGen(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	h.r.props = actor.PropsFromProducer(h.deps.NewActor)
	t.Cleanup(func() {
		sys.Shutdown()
		h.store.Close()
	})
	return h
}

var alice = store.Identity{App: 1, UID: "alice"}

func env(id store.Identity, body any) *actorpb.Envelope {
	e := &actorpb.Envelope{AppCode: uint32(id.App), Uid: id.UID}
	switch b := body.(type) {
	case *actorpb.DeviceLogin:
		e.Body = &actorpb.Envelope_Login{Login: b}
	case *actorpb.DeviceClosed:
		e.Body = &actorpb.Envelope_Closed{Closed: b}
	case *actorpb.Push:
		e.Body = &actorpb.Envelope_Push{Push: b}
	case *actorpb.C2CSend:
		e.Body = &actorpb.Envelope_C2C{C2C: b}
	case *actorpb.DeviceFrame:
		e.Body = &actorpb.Envelope_Frame{Frame: b}
	case *actorpb.Kick:
		e.Body = &actorpb.Envelope_Kick{Kick: b}
	case nil:
		e.Body = &actorpb.Envelope_Presence{Presence: &actorpb.PresenceQuery{}}
	default:
		panic("env: unknown body")
	}
	return e
}

func (h *actorHarness) presence(id store.Identity) *actorpb.PresenceReply {
	h.t.Helper()
	rep := h.r.request(env(id, nil))
	if rep == nil || rep.GetPresence() == nil {
		h.t.Fatalf("presence of %v: %v", id, rep)
	}
	return rep.GetPresence()
}

func (h *actorHarness) login(id store.Identity, c *actorpb.ConnRef) {
	h.t.Helper()
	h.r.Send(env(id, &actorpb.DeviceLogin{Conn: c, Login: &devicepb.Login{Uid: id.UID}, FrameSeq: 1}))
	testkit.Eventually(h.t, 5*time.Second, func() bool { return h.store.session(id).GetOnline() }, "the login was not stored")
	// And answered: the LOGIN_ACK follows the write's completion, so a
	// test counting frames from here must not see it arrive later.
	testkit.Eventually(h.t, 5*time.Second, func() bool {
		h.r.mu.Lock()
		defer h.r.mu.Unlock()
		for _, tc := range h.r.conns {
			if tc.Login != nil && tc.ConnId == c.ConnId && tc.Uid == id.UID {
				return true
			}
		}
		return false
	}, "the login was not answered")
}

func (h *actorHarness) waitPassivated(id store.Identity, n int) {
	h.t.Helper()
	testkit.Eventually(h.t, 5*time.Second, func() bool { return h.r.count(h.r.passivated, id) >= n },
		"the identity's actor never passivated")
}

// TestActorPassivatesAfterPanic: a panic while handling an envelope is
// answered, and the actor still leaves memory once idle. The library's
// supervisor used to replace the panicking actor with a fresh one whose
// envelope count started at 0, so the routing layer's handshake never
// matched again and the identity stayed in memory for good.
func TestActorPassivatesAfterPanic(t *testing.T) {
	h := newActorHarness(t, nil)
	h.presence(alice) // activated, counted 1
	h.waitPassivated(alice, 1)
	h.store.panicL.Store(1)
	if rep := h.r.request(env(alice, nil)); rep == nil || rep.GetFailure() == nil {
		t.Fatalf("the envelope the actor panicked on was answered %v, want a failure", rep)
	}
	if p := h.presence(alice); p.Online {
		t.Fatal("presence after the panic")
	}
	h.waitPassivated(alice, 2)
}

// TestEnvelopeWithNilFieldsIsRefused: an envelope from a peer with a
// missing field is refused at the actor's door (a request with
// INVALID_ARGUMENT), never handed to the state machine.
func TestEnvelopeWithNilFieldsIsRefused(t *testing.T) {
	h := newActorHarness(t, nil)
	bad := []*actorpb.Envelope{
		{AppCode: 1, Uid: "alice", Body: &actorpb.Envelope_Push{}},
		{AppCode: 1, Uid: "alice", Body: &actorpb.Envelope_Kick{}},
		{AppCode: 1, Uid: "alice"},
		{AppCode: 1, Uid: "alice", Body: &actorpb.Envelope_Login{Login: &actorpb.DeviceLogin{}}},
		{AppCode: 1, Uid: "alice", Body: &actorpb.Envelope_Frame{Frame: &actorpb.DeviceFrame{Cmd: 0x33}}},
		{AppCode: 1, Uid: "alice", Body: &actorpb.Envelope_C2C{C2C: &actorpb.C2CSend{FromUid: "bob"}}},
		{AppCode: 1, Uid: "alice", Body: &actorpb.Envelope_Closed{}},
		{AppCode: 70000, Uid: "alice", Body: &actorpb.Envelope_Presence{}},
	}
	for i, e := range bad {
		rep := h.r.request(e)
		if rep == nil || rep.GetFailure().GetCode() != int32(codes.InvalidArgument) {
			t.Fatalf("bad envelope %d: %v, want INVALID_ARGUMENT", i, rep)
		}
	}
	// One-way envelopes with missing fields are dropped, and the actor
	// goes on serving and passivating.
	for _, e := range bad {
		h.r.Send(proto.Clone(e).(*actorpb.Envelope))
	}
	h.presence(alice)
	h.waitPassivated(alice, 1)
}

// TestClosedKeptWhileTheStoreCannotLoad: a connection's close that
// reaches an identity whose load fails is not dropped: the actor retries
// the load and applies it, so the session does not stay online.
func TestClosedKeptWhileTheStoreCannotLoad(t *testing.T) {
	h := newActorHarness(t, nil)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	h.waitPassivated(alice, 1)
	h.store.failL.Store(3)
	h.r.Send(env(alice, &actorpb.DeviceClosed{Conn: c, Epoch: 1}))
	testkit.Eventually(t, 10*time.Second, func() bool { return !h.store.session(alice).GetOnline() },
		"the close was dropped with the failed load: the session stays online")
	h.waitPassivated(alice, 2)
}

// TestLoginWithoutLeaseEndsTheSession: when the node loses its lease
// while a LOGIN is on its way, the router turns the LOGIN_ACK OK into a
// refusal; the session the actor opened ends at once instead of showing
// online until a delivery finds the connection gone, and the actor still
// leaves memory when idle.
func TestLoginWithoutLeaseEndsTheSession(t *testing.T) {
	h := newActorHarness(t, nil)
	h.r.leaseless.Store(true)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.r.Send(env(alice, &actorpb.DeviceLogin{Conn: c, Login: &devicepb.Login{Uid: alice.UID}, FrameSeq: 1}))
	testkit.Eventually(t, 5*time.Second, func() bool {
		return len(h.r.frames(uint32(messages.CmdLoginAck))) == 1 && h.store.session(alice) != nil && !h.store.session(alice).GetOnline()
	}, "the refused login's session was not ended")
	if p := h.presence(alice); p.Online {
		t.Fatal("presence says online after the login was refused")
	}
	h.r.leaseless.Store(false)
	h.waitPassivated(alice, 1)
}

// TestClosedSurvivesAFailedWrite: when the write that ends a session
// fails, the actor reloads from the store (where the session is still
// online) and must end it again.
func TestClosedSurvivesAFailedWrite(t *testing.T) {
	h := newActorHarness(t, nil)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	var failed atomic.Bool
	h.store.mu.Lock()
	h.store.failW = func(w *store.Write) error {
		if w.Meta != nil && !w.Meta.GetSession().GetOnline() && !failed.Swap(true) {
			return errors.New("disk hiccup")
		}
		return nil
	}
	h.store.mu.Unlock()
	h.r.Send(env(alice, &actorpb.DeviceClosed{Conn: c, Epoch: 1}))
	testkit.Eventually(t, 5*time.Second, failed.Load, "the offline write was never tried")
	testkit.Eventually(t, 5*time.Second, func() bool { return !h.store.session(alice).GetOnline() },
		"after the failed write the session came back online from the store")
	if p := h.presence(alice); p.Online {
		t.Fatal("presence says online after the close")
	}
}

// TestActorPassivatesAfterBeingBusy: an actor that is busy when its idle
// timer first fires (a message delivered and not yet acknowledged) leaves
// memory once it is idle. The library's receive timeout fires only once.
func TestActorPassivatesAfterBeingBusy(t *testing.T) {
	h := newActorHarness(t, nil)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	m := h.pushDelivered(alice)
	time.Sleep(3 * h.cfg.PassivateAfter) // idle timers fire while the message waits for its ack
	if h.r.count(h.r.passivated, alice) != 0 {
		t.Fatal("passivated with a message in flight")
	}
	h.ackS2C(alice, c, m.MsgId)
	h.waitPassivated(alice, 1)
}

// TestFencedActorStopsAndTheNextEnvelopeClaimsAgain: an actor whose write
// the store fences (another activation claimed the identity meanwhile)
// answers its waiting caller with a retryable UNAVAILABLE that says the
// identity moved, delivers nothing, and leaves the routing layer; the
// identity's next envelope activates a fresh actor, which claims the
// identity again and serves it.
func TestFencedActorStopsAndTheNextEnvelopeClaimsAgain(t *testing.T) {
	h := newActorHarness(t, nil)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	release := h.store.holdWrites()
	replies := make(chan *actorpb.Reply, 1)
	go func() {
		replies <- h.r.request(env(alice, &actorpb.Push{Stored: true, Payload: []byte("x"), IdempotencyKey: "k1"}))
	}()
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.held.Load() > 0 }, "the push was never written")
	h.store.claim(alice) // another node loads the identity
	release()
	rep := <-replies
	if f := rep.GetFailure(); f == nil || f.Code != int32(codes.Unavailable) || f.Message != Moved {
		t.Fatalf("the fenced push was answered %v, want UNAVAILABLE %q", rep, Moved)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return h.r.count(h.r.retired, alice) == 1 }, "the fenced actor did not retire")
	if n := len(h.r.frames(uint32(messages.CmdS2C))); n != 0 {
		t.Fatalf("the fenced actor delivered %d messages", n)
	}
	if h.store.stored(alice) != 0 {
		t.Fatal("a fenced write changed the store")
	}
	// The retry with the same key is served by a fresh activation.
	rep = h.r.request(env(alice, &actorpb.Push{Stored: true, Payload: []byte("x"), IdempotencyKey: "k1"}))
	if p := rep.GetPush(); p == nil || p.Duplicate || p.Seq != 1 {
		t.Fatalf("retry after the move: %v", rep)
	}
	if a := h.r.count(h.r.activations, alice); a != 2 {
		t.Fatalf("%d activations, want 2", a)
	}
	if h.store.stored(alice) != 1 {
		t.Fatal("the retry was not stored")
	}
}

// TestDeletionsWaitForTheNextWrite: an acknowledged message is deleted
// with the identity's next write, not a write of its own; an actor that
// writes nothing more writes its deletions before it hands the identity
// off, or before it leaves memory when idle.
func TestDeletionsWaitForTheNextWrite(t *testing.T) {
	h := newActorHarness(t, func(c *Config) { c.PassivateAfter = time.Minute })
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	ackNext := func(id store.Identity) { t.Helper(); h.pushAndAck(id, c) }
	h.login(alice, c)
	ackNext(alice)
	if n := h.store.stored(alice); n != 1 {
		t.Fatalf("%d entries stored after the ack, want 1 (its deletion waits)", n)
	}
	ackNext(alice) // the second push's write deletes the first
	if n := h.store.stored(alice); n != 1 {
		t.Fatalf("%d entries stored after the second ack, want 1", n)
	}
	h.r.handoff(alice)
	testkit.Eventually(t, 5*time.Second, func() bool { return h.r.count(h.r.handedOff, alice) == 1 }, "the actor did not finish its handoff")
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.stored(alice) == 0 }, "the handoff left acknowledged messages stored")

	h2 := newActorHarness(t, nil) // actors leave memory after 100 ms idle
	h, c = h2, &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	ackNext(alice)
	h.waitPassivated(alice, 1)
	if n := h.store.stored(alice); n != 0 {
		t.Fatalf("%d entries stored after passivation, want 0", n)
	}
}

// pushAndAck pushes a stored message to id, which is logged in on c, and
// acknowledges its delivery.
func (h *actorHarness) pushAndAck(id store.Identity, c *actorpb.ConnRef) {
	h.t.Helper()
	m := h.pushDelivered(id)
	h.r.mu.Lock()
	h.r.conns = nil
	h.r.mu.Unlock()
	h.ackS2C(id, c, m.MsgId)
	if p := h.presence(id); p.Pending != 0 { // answered after the ack
		h.t.Fatalf("pending %d after the ack", p.Pending)
	}
}

// pushDelivered pushes a stored message to id, which is logged in, and
// returns the first S2C delivered.
func (h *actorHarness) pushDelivered(id store.Identity) *devicepb.S2C {
	h.t.Helper()
	if rep := h.r.request(env(id, &actorpb.Push{Stored: true, Payload: []byte("x")})); rep.GetPush() == nil {
		h.t.Fatalf("push: %v", rep)
	}
	var s2c []*actorpb.OutFrame
	testkit.Eventually(h.t, 5*time.Second, func() bool { s2c = h.r.frames(uint32(messages.CmdS2C)); return len(s2c) > 0 }, "no delivery")
	var m devicepb.S2C
	if err := proto.Unmarshal(s2c[0].Body, &m); err != nil {
		h.t.Fatal(err)
	}
	return &m
}

// ackS2C sends the S2C_ACK of msgID from id's connection c.
func (h *actorHarness) ackS2C(id store.Identity, c *actorpb.ConnRef, msgID string) {
	ack, _ := proto.Marshal(&devicepb.S2CAck{MsgId: msgID})
	h.r.Send(env(id, &actorpb.DeviceFrame{Conn: c, Epoch: 1, Cmd: uint32(messages.CmdS2CAck), Body: ack}))
}

// writeCount returns how many writes the store has applied.
func (h *actorHarness) writeCount() int {
	h.store.mu.Lock()
	defer h.store.mu.Unlock()
	return len(h.store.writes)
}

// TestHandoffWaitsForTheDeletions: an actor handing its identity off
// finishes only once the deletions of what was acknowledged are stored,
// whether the handoff flushes them (with the meta, or alone while the
// entry with the highest seq stays: a detached write) or an idle check
// did just before; otherwise the new owner could load and deliver again
// what the device acknowledged, and its claim could fence the deletion.
func TestHandoffWaitsForTheDeletions(t *testing.T) {
	for _, tc := range []struct {
		name      string
		unacked   bool // a second message stays unacknowledged
		idleFlush bool // the idle check flushes the deletion first
	}{{"with the meta", false, false}, {"detached", true, false}, {"flushed when idle", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			passivateAfter := time.Minute
			if tc.idleFlush {
				passivateAfter = 100 * time.Millisecond
			}
			h := newActorHarness(t, func(c *Config) { c.PassivateAfter = passivateAfter })
			c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
			h.login(alice, c)
			release := h.store.holdWritesIf(func(w *store.Write) bool { return len(w.Put) == 0 && len(w.Delete) > 0 })
			defer release()
			if tc.unacked {
				// Both delivered, the first acknowledged: its deletion needs
				// no meta, since the second (highest seq) stays.
				for _, p := range []string{"x", "y"} {
					if rep := h.r.request(env(alice, &actorpb.Push{Stored: true, Payload: []byte(p)})); rep.GetPush() == nil {
						t.Fatalf("push: %v", rep)
					}
				}
				var s2c []*actorpb.OutFrame
				testkit.Eventually(t, 5*time.Second, func() bool { s2c = h.r.frames(uint32(messages.CmdS2C)); return len(s2c) == 2 }, "no deliveries")
				var m devicepb.S2C
				if err := proto.Unmarshal(s2c[0].Body, &m); err != nil {
					t.Fatal(err)
				}
				ack, _ := proto.Marshal(&devicepb.S2CAck{MsgId: m.MsgId})
				h.r.Send(env(alice, &actorpb.DeviceFrame{Conn: c, Epoch: 1, Cmd: uint32(messages.CmdS2CAck), Body: ack}))
				if p := h.presence(alice); p.Pending != 1 {
					t.Fatalf("pending %d after the first ack, want 1", p.Pending)
				}
			} else {
				h.pushAndAck(alice, c)
			}
			if tc.idleFlush {
				testkit.Eventually(t, 5*time.Second, func() bool { return h.store.held.Load() > 0 }, "the idle actor never flushed its deletion")
			}
			h.r.handoff(alice)
			testkit.Eventually(t, 5*time.Second, func() bool { return h.store.held.Load() > 0 }, "the deletion was never written")
			time.Sleep(100 * time.Millisecond)
			if n := h.r.count(h.r.handedOff, alice); n != 0 {
				t.Fatal("handed off before the deletion was stored")
			}
			release()
			testkit.Eventually(t, 5*time.Second, func() bool { return h.r.count(h.r.handedOff, alice) == 1 }, "the actor did not finish its handoff")
			want := 0
			if tc.unacked {
				want = 1
			}
			if n := h.store.stored(alice); n != want {
				t.Fatalf("%d entries stored after the handoff, want %d", n, want)
			}
		})
	}
}

// TestFencedDeletionRetiresTheActor: a deletion (written without waiting,
// by the idle actor) that the store fences also ends the actor.
func TestFencedDeletionRetiresTheActor(t *testing.T) {
	h := newActorHarness(t, nil)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	if rep := h.r.request(env(alice, &actorpb.Push{Stored: true, Payload: []byte("x")})); rep.GetPush() == nil {
		t.Fatalf("push: %v", rep)
	}
	var s2c []*actorpb.OutFrame
	testkit.Eventually(t, 5*time.Second, func() bool { s2c = h.r.frames(uint32(messages.CmdS2C)); return len(s2c) > 0 }, "no delivery")
	var m devicepb.S2C
	if err := proto.Unmarshal(s2c[0].Body, &m); err != nil {
		t.Fatal(err)
	}
	h.store.claim(alice)
	ack, _ := proto.Marshal(&devicepb.S2CAck{MsgId: m.MsgId})
	h.r.Send(env(alice, &actorpb.DeviceFrame{Conn: c, Epoch: 1, Cmd: uint32(messages.CmdS2CAck), Body: ack}))
	testkit.Eventually(t, 5*time.Second, func() bool { return h.r.count(h.r.retired, alice) == 1 }, "the actor of a fenced deletion did not retire")
	if p := h.presence(alice); !p.Online || p.Pending != 1 {
		t.Fatalf("the fresh activation: online %v pending %d", p.Online, p.Pending)
	}
}

// TestStorePressureReachesTheCallers: while the store does not complete
// writes, at most the node's budget of writes is pending; beyond it new
// stored pushes, C2C and logins are refused at once with their documented
// codes instead of waiting (or blocking an actor on a full commit queue),
// identities that need no write are served as usual, and what must still
// be written (a session's end) waits for room and is written once the
// store catches up.
func TestStorePressureReachesTheCallers(t *testing.T) {
	h := newActorHarness(t, func(c *Config) { c.MaxPendingWrites = 2 })
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	release := h.store.holdWrites()
	defer release()
	// Two pushes take the budget and wait for the store.
	var waiting sync.WaitGroup
	for _, uid := range []string{"w1", "w2"} {
		waiting.Add(1)
		go func() {
			defer waiting.Done()
			if rep := h.r.request(env(store.Identity{App: 1, UID: uid}, &actorpb.Push{Stored: true})); rep.GetPush() == nil {
				t.Errorf("push to %s once the store caught up: %v", uid, rep)
			}
		}()
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return h.deps.Writes.Full() }, "the pushes never took the budget")
	// New stored work is refused at once.
	start := time.Now()
	for i := range 50 {
		rep := h.r.request(env(store.Identity{App: 1, UID: fmt.Sprint("other-", i)}, &actorpb.Push{Stored: true}))
		if f := rep.GetFailure(); f == nil || f.Code != int32(codes.Unavailable) {
			t.Fatalf("push while the store is behind: %v, want UNAVAILABLE", rep)
		}
	}
	h.r.Send(env(store.Identity{App: 1, UID: "bob"}, &actorpb.C2CSend{ReplyTo: c, FromUid: "carol", FrameSeq: 5,
		C2C: &devicepb.C2C{ToUid: "bob", ClientMsgId: "c1"}}))
	h.r.Send(env(store.Identity{App: 1, UID: "dave"}, &actorpb.DeviceLogin{Conn: c, FrameSeq: 6, Login: &devicepb.Login{Uid: "dave"}}))
	testkit.Eventually(t, 5*time.Second, func() bool {
		return len(h.r.frames(uint32(messages.CmdC2CAck))) == 1 && len(h.r.frames(uint32(messages.CmdLoginAck))) == 2
	}, "C2C and LOGIN were not answered while the store is behind")
	var ca devicepb.C2CAck
	_ = proto.Unmarshal(h.r.frames(uint32(messages.CmdC2CAck))[0].Body, &ca)
	var la devicepb.LoginAck
	_ = proto.Unmarshal(h.r.frames(uint32(messages.CmdLoginAck))[1].Body, &la)
	if ca.Code != devicepb.Code_STORE_UNAVAILABLE || la.Code != devicepb.Code_STORE_UNAVAILABLE {
		t.Fatalf("C2C_ACK %v, LOGIN_ACK %v; want STORE_UNAVAILABLE", ca.Code, la.Code)
	}
	// An identity that needs no write is served as usual.
	h.presence(store.Identity{App: 1, UID: "eve"})
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("answers took %v while the store was behind", d)
	}
	// A session's end must still be written: it waits for room.
	h.r.Send(env(alice, &actorpb.DeviceClosed{Conn: c, Epoch: 1}))
	if p := h.presence(alice); p.Online {
		t.Fatal("presence says online after the close")
	}
	h.store.mu.Lock()
	held := h.store.held.Load() + int32(len(h.store.queue))
	h.store.mu.Unlock()
	if held > 2 {
		t.Fatalf("%d writes handed to the store, budget 2", held)
	}
	release()
	waiting.Wait()
	testkit.Eventually(t, 5*time.Second, func() bool { return !h.store.session(alice).GetOnline() },
		"the session's end was never written")
	testkit.Eventually(t, 5*time.Second, func() bool { return h.deps.Writes.InUse() == 0 }, "write slots leaked")
}

// TestStalledStoreRefusesNewWrites: while the store says a commit has
// waited past its stall bound, new stored pushes and C2C are refused at
// once with UNAVAILABLE / STORE_UNAVAILABLE saying nothing was accepted
// and naming store.stall-after (no write reaches the store, no reload);
// fire-and-forget is served; once the store is back, stored pushes are
// accepted again.
func TestStalledStoreRefusesNewWrites(t *testing.T) {
	h := newActorHarness(t, nil)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	before := h.writeCount()
	h.store.stalled.Store(true)
	rep := h.r.request(env(alice, &actorpb.Push{Stored: true, Payload: []byte("x")}))
	if f := rep.GetFailure(); f == nil || f.Code != int32(codes.Unavailable) ||
		!strings.Contains(f.Message, "store.stall-after") || !strings.Contains(f.Message, "nothing was accepted") ||
		f.Reason != apipb.ReasonStoreBusy || f.Setting != "store.stall-after" {
		t.Fatalf("stored push while the store is stalled: %v", rep)
	}
	h.r.Send(env(store.Identity{App: 1, UID: "bob"}, &actorpb.C2CSend{ReplyTo: c, FromUid: "alice", FrameSeq: 5,
		C2C: &devicepb.C2C{ToUid: "bob", ClientMsgId: "c1"}}))
	testkit.Eventually(t, 5*time.Second, func() bool { return len(h.r.frames(uint32(messages.CmdC2CAck))) == 1 },
		"C2C was not answered while the store is stalled")
	var ca devicepb.C2CAck
	_ = proto.Unmarshal(h.r.frames(uint32(messages.CmdC2CAck))[0].Body, &ca)
	if ca.Code != devicepb.Code_STORE_UNAVAILABLE {
		t.Fatalf("C2C_ACK while the store is stalled: %v %q", ca.Code, ca.Reason)
	}
	if rep := h.r.request(env(alice, &actorpb.Push{Payload: []byte("gps")})); rep.GetPush() == nil {
		t.Fatalf("fire-and-forget while the store is stalled: %v", rep)
	}
	if after := h.writeCount(); after != before {
		t.Fatalf("%d writes reached the store while it was stalled", after-before)
	}
	h.store.stalled.Store(false)
	if rep := h.r.request(env(alice, &actorpb.Push{Stored: true, Payload: []byte("y")})); rep.GetPush() == nil {
		t.Fatalf("stored push once the store is back: %v", rep)
	}
}

// TestAnswersBehindAStuckWriteAreBounded: while an identity's write does
// not complete, what needs no write of its own but is answered behind it
// (fire-and-forget pushes, pulls, presence) is held up to about four
// delivery windows; beyond, it is refused at once (UNAVAILABLE naming
// actors.window-bytes; a PULL_ACK STORE_UNAVAILABLE) instead of piling
// up for as long as the write hangs. Once the write completes, what was
// held goes out and new pushes are served again.
func TestAnswersBehindAStuckWriteAreBounded(t *testing.T) {
	h := newActorHarness(t, func(c *Config) { c.WindowBytes = 64 << 10 })
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	release := h.store.holdWrites()
	defer release()
	stuck := h.r.ask(env(alice, &actorpb.Push{Stored: true, Payload: []byte("x")}))
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.held.Load() > 0 }, "the push was never written")
	payload := make([]byte, 16<<10)
	var held []<-chan *actorpb.Reply
	refused := 0
	for range 40 { // 640 KiB of fire-and-forget pushes behind the write
		ch := h.r.ask(env(alice, &actorpb.Push{Payload: payload}))
		select {
		case rep := <-ch:
			if f := rep.GetFailure(); f == nil || f.Code != int32(codes.Unavailable) || !strings.Contains(f.Message, "actors.window-bytes") ||
				f.Reason != apipb.ReasonStoreBusy || f.Setting != "actors.window-bytes" {
				t.Fatalf("a push answered at once behind a stuck write: %v", rep)
			}
			refused++
		case <-time.After(100 * time.Millisecond):
			held = append(held, ch)
		}
	}
	// 4 × 64 KiB of 16 KiB bodies: 16 held, the rest refused.
	if len(held) < 14 || len(held) > 17 || refused == 0 {
		t.Fatalf("%d pushes held behind the stuck write, %d refused; want about 16 held", len(held), refused)
	}
	if p := h.presence(alice); !p.GetOnline() {
		t.Fatalf("presence behind a stuck write: %v", p)
	}
	h.r.Send(env(alice, &actorpb.DeviceFrame{Conn: c, Epoch: 1, Cmd: uint32(messages.CmdPull), Seq: 7}))
	testkit.Eventually(t, 5*time.Second, func() bool { return len(h.r.frames(uint32(messages.CmdPullAck))) == 1 }, "the PULL was not answered")
	var pa devicepb.PullAck
	_ = proto.Unmarshal(h.r.frames(uint32(messages.CmdPullAck))[0].Body, &pa)
	if pa.Code != devicepb.Code_STORE_UNAVAILABLE {
		t.Fatalf("PULL behind a stuck write: %v", pa.Code)
	}
	release()
	if p := reply(t, stuck).GetPush(); p.GetSeq() != 1 {
		t.Fatalf("the stored push: %v", p)
	}
	for _, ch := range held {
		if p := reply(t, ch).GetPush(); !p.GetOnline() {
			t.Fatalf("a held push: %v", p)
		}
	}
	if rep := h.r.request(env(alice, &actorpb.Push{Payload: payload})); !rep.GetPush().GetOnline() {
		t.Fatalf("a push once the write completed: %v", rep)
	}
}

// TestRefusedWritesBackOff: a close that needs a write while the store
// refuses every write (a stalled disk) is retried with a backoff, not at
// the actor's speed (each retry a load, and a claim of the identity), and
// applied once the store takes writes again.
func TestRefusedWritesBackOff(t *testing.T) {
	h := newActorHarness(t, nil)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	before := h.store.loads.Load()
	h.store.stalled.Store(true)
	h.r.Send(env(alice, &actorpb.DeviceClosed{Conn: c, Epoch: 1}))
	time.Sleep(500 * time.Millisecond)
	if n := h.store.loads.Load() - before; n > 5 {
		t.Fatalf("%d loads in 500 ms while every write was refused", n)
	}
	h.store.stalled.Store(false)
	testkit.Eventually(t, 10*time.Second, func() bool { return !h.store.session(alice).GetOnline() },
		"the session's end was never written once the store took writes again")
}

// handoff does what the routing layer does when another member comes to
// own id: the actor leaves the routing, then hears Handoff.
func (r *testRouter) handoff(id store.Identity) {
	r.mu.Lock()
	c := r.children[id]
	delete(r.children, id)
	r.mu.Unlock()
	r.sys.Root.Send(c.pid, &actorpb.Handoff{})
}

// TestHandoffCompletesWhatIsInFlight: an actor whose identity moves while
// a push is being written completes it (the API hears success, not a
// failure), loads nothing more, and stops; the new activation finds the
// push in the store. Before handoffs, the routing layer poisoned such an
// actor and the push's reply was lost.
func TestHandoffCompletesWhatIsInFlight(t *testing.T) {
	h := newActorHarness(t, nil)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	release := h.store.holdWrites()
	replies := make(chan *actorpb.Reply, 1)
	go func() {
		replies <- h.r.request(env(alice, &actorpb.Push{Stored: true, Payload: []byte("x"), IdempotencyKey: "k1"}))
	}()
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.held.Load() > 0 }, "the push was never written")
	loads := h.store.loads.Load()
	h.r.handoff(alice)
	time.Sleep(50 * time.Millisecond)
	if n := h.r.count(h.r.handedOff, alice); n != 0 {
		t.Fatal("handed off with a write in flight")
	}
	release()
	rep := <-replies
	if p := rep.GetPush(); p == nil || p.Seq != 1 {
		t.Fatalf("the push in flight during the handoff was answered %v, want success", rep)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return h.r.count(h.r.handedOff, alice) == 1 }, "the actor did not finish its handoff")
	if n := h.store.loads.Load(); n != loads {
		t.Fatalf("the actor handing off loaded the identity again (%d loads)", n-loads)
	}
	// The new owner's activation sees what was completed.
	if p := h.presence(alice); p.Pending != 1 {
		t.Fatalf("pending %d after the handoff", p.Pending)
	}
	if a := h.r.count(h.r.activations, alice); a != 2 {
		t.Fatalf("%d activations, want 2", a)
	}
}

// TestHandoffWhileTheWriteFails: a write that fails during a handoff is
// answered with a retryable failure and the actor stops without loading
// the identity again (which would claim it from its new owner).
func TestHandoffWhileTheWriteFails(t *testing.T) {
	h := newActorHarness(t, nil)
	h.presence(alice)
	release := h.store.holdWrites()
	replies := make(chan *actorpb.Reply, 1)
	go func() { replies <- h.r.request(env(alice, &actorpb.Push{Stored: true, Payload: []byte("x")})) }()
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.held.Load() > 0 }, "the push was never written")
	h.store.mu.Lock()
	h.store.failW = func(*store.Write) error { return store.ErrUnavailable }
	h.store.mu.Unlock()
	loads := h.store.loads.Load()
	h.r.handoff(alice)
	release()
	if f := (<-replies).GetFailure(); f == nil || f.Code != int32(codes.Unavailable) {
		t.Fatalf("the failed push was answered %v", f)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return h.r.count(h.r.handedOff, alice) == 1 }, "the actor did not finish its handoff")
	if n := h.store.loads.Load(); n != loads {
		t.Fatalf("the actor handing off loaded the identity again (%d loads)", n-loads)
	}
}

// behindGates is a Gates whose gate g1 is as far behind as behind says.
type behindGates struct {
	behind    atomic.Int64
	requester atomic.Pointer[string]
}

func (g *behindGates) GateAlive(string) bool { return true }

func (g *behindGates) GateBehind(conn *actorpb.ConnRef, requester string) time.Duration {
	g.requester.Store(&requester)
	if conn.GetGateId() != "g1" {
		return 0
	}
	return time.Duration(g.behind.Load())
}

// TestPushRefusedWhileTheGateIsBehind: while the gate holding the
// device's connection is behind (Gates.GateBehind), its pushes, stored or
// not, are refused with RESOURCE_EXHAUSTED before anything is accepted:
// nothing stored, nothing sent, nothing counted; an offline identity's
// pushes wait in the store as usual, and the refusals end with the
// backlog.
func TestPushRefusedWhileTheGateIsBehind(t *testing.T) {
	h := newActorHarness(t, nil)
	g := &behindGates{}
	h.deps.Gates = g
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	sent := func() int {
		h.r.mu.Lock()
		defer h.r.mu.Unlock()
		return len(h.r.conns)
	}
	before := sent()
	g.behind.Store(int64(35 * time.Millisecond))
	for _, stored := range []bool{true, false} {
		rep := h.r.request(env(alice, &actorpb.Push{Stored: stored, Payload: []byte("x")}))
		f := rep.GetFailure()
		if f == nil || f.Code != int32(codes.ResourceExhausted) || !f.GateLate || f.Reason != apipb.ReasonNodeOverloaded || f.Setting != "api.max-gate-backlog" || !strings.HasPrefix(f.Message, Overloaded+": deliveries to the gate holding 1/alice's connection are 35ms late") {
			t.Fatalf("push (stored %v) while the gate is 35 ms behind: %v", stored, rep)
		}
	}
	if r := g.requester.Load(); r == nil || *r != "test" {
		t.Fatalf("GateBehind asked for requester %v, want the push's reply address", r)
	}
	if n := h.store.stored(alice); n != 0 || sent() != before {
		t.Fatalf("refused pushes left %d stored messages and %d frames sent", n, sent()-before)
	}
	if p := h.presence(alice); p.Pending != 0 || !p.Online {
		t.Fatalf("presence after the refusals: %v", p)
	}
	// An identity offline is not refused: its push waits in the store.
	if rep := h.r.request(env(store.Identity{App: 1, UID: "offline"}, &actorpb.Push{Stored: true, Payload: []byte("x")})); rep.GetPush() == nil {
		t.Fatalf("stored push to an offline identity while a gate is behind: %v", rep)
	}
	g.behind.Store(0)
	if rep := h.r.request(env(alice, &actorpb.Push{Stored: true, Payload: []byte("x")})); rep.GetPush() == nil || rep.GetPush().Seq != 1 {
		t.Fatalf("push once the gate caught up: %v", rep)
	}
}

// TestDeliveriesResumeAfterAFailedRebuild: a write fails, and so does the
// load that would rebuild the machine (the store is down). The identity
// may get no other envelope (its device's acks are dropped while the
// store is down, and an idle device sends nothing else): the actor keeps
// retrying the load, and once it succeeds the session resumes and what
// was in flight is delivered again, rather than waiting for the next
// push or login.
func TestDeliveriesResumeAfterAFailedRebuild(t *testing.T) {
	h := newActorHarness(t, nil)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	if rep := h.r.request(env(alice, &actorpb.Push{Stored: true, Payload: []byte("p1")})); rep.GetPush() == nil {
		t.Fatalf("push: %v", rep)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return len(h.r.frames(uint32(messages.CmdS2C))) == 1 }, "p1 not delivered")
	h.store.mu.Lock()
	h.store.failW = func(w *store.Write) error {
		if len(w.Put) > 0 {
			return store.ErrUnavailable
		}
		return nil
	}
	h.store.mu.Unlock()
	h.store.failL.Store(2) // the rebuild fails, and its first retry
	if rep := h.r.request(env(alice, &actorpb.Push{Stored: true, Payload: []byte("p2")})); rep.GetFailure() == nil {
		t.Fatalf("push during the outage: %v", rep)
	}
	h.store.mu.Lock()
	h.store.failW = nil
	h.store.mu.Unlock()
	testkit.Eventually(t, 10*time.Second, func() bool { return len(h.r.frames(uint32(messages.CmdS2C))) >= 2 },
		"p1 was never delivered again after the store came back")
	if h.r.count(h.r.passivated, alice) != 0 {
		t.Fatal("the identity left memory with a session to deliver to")
	}
}

// TestAcknowledgedDeletedWhileActive: an identity that stays active
// without writing (fire-and-forget pushes keep coming) still deletes
// what its device acknowledged, within a few PassivateAfter, rather than
// when it leaves memory.
func TestAcknowledgedDeletedWhileActive(t *testing.T) {
	h := newActorHarness(t, nil)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	h.ackS2C(alice, c, h.pushDelivered(alice).MsgId)
	deadline := time.Now().Add(5 * time.Second)
	for h.store.stored(alice) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the acknowledged entry is still stored after %v of activity", 5*time.Second)
		}
		if rep := h.r.request(env(alice, &actorpb.Push{Payload: []byte("gps")})); rep.GetPush() == nil {
			t.Fatalf("fire-and-forget: %v", rep)
		}
		time.Sleep(h.cfg.PassivateAfter / 4)
	}
	if h.r.count(h.r.passivated, alice) != 0 {
		t.Fatal("the identity left memory: this test needs it active")
	}
}

// TestNoDeletionsWrittenWhileStalled: while the store is stalled, an
// identity with only deletions to write does not try (the write would be
// refused and the identity reloaded, its acknowledged messages delivered
// again); once the store is back, it writes them.
func TestNoDeletionsWrittenWhileStalled(t *testing.T) {
	h := newActorHarness(t, nil)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c)
	m := h.pushDelivered(alice)
	h.store.stalled.Store(true)
	writes := h.writeCount()
	h.ackS2C(alice, c, m.MsgId)
	time.Sleep(5 * h.cfg.PassivateAfter)
	if after := h.writeCount(); after != writes {
		t.Fatalf("%d writes while the store was stalled", after-writes)
	}
	if n := len(h.r.frames(uint32(messages.CmdS2C))); n != 1 {
		t.Fatalf("%d deliveries: the identity was reloaded and delivered again", n)
	}
	h.store.stalled.Store(false)
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.stored(alice) == 0 }, "the deletion was not written once the store was back")
}

// TestCloseBeforeItsLogin: a connection's close that reaches the actor
// before its LOGIN (they came by different ways around a view change)
// keeps the LOGIN from opening a session on the connection that is gone.
func TestCloseBeforeItsLogin(t *testing.T) {
	h := newActorHarness(t, nil)
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 7}
	h.r.Send(env(alice, &actorpb.DeviceClosed{Conn: c, Epoch: 0}))
	h.r.Send(env(alice, &actorpb.DeviceLogin{Conn: c, Login: &devicepb.Login{Uid: alice.UID}, FrameSeq: 1}))
	if p := h.presence(alice); p.Online {
		t.Fatal("online on a connection whose close came first")
	}
	if h.store.session(alice).GetOnline() {
		t.Fatal("the session was stored online")
	}
	// Another connection logs in as usual.
	h.login(alice, &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 8})
}

// TestHandoffEndsWhenTheMachineWentDuringADeletion: an actor handing off
// whose write fails (its machine dropped) while a deletion flushed by the
// handoff is still out finishes the handoff when the deletion completes;
// it used to wait for its next timer, or for good without one (never
// stopped, its handoff counted pending).
func TestHandoffEndsWhenTheMachineWentDuringADeletion(t *testing.T) {
	h := newActorHarness(t, func(c *Config) { c.PassivateAfter = time.Minute })
	c1 := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.login(alice, c1)
	for _, p := range []string{"x", "y"} {
		if rep := h.r.request(env(alice, &actorpb.Push{Stored: true, Payload: []byte(p)})); rep.GetPush() == nil {
			t.Fatalf("push: %v", rep)
		}
	}
	// A second login stores the meta with the last seq: a deletion of the
	// first message alone then needs no meta (it is detachable).
	c2 := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 2}
	h.r.mu.Lock()
	h.r.conns = nil
	h.r.mu.Unlock()
	h.login(alice, c2)
	var s2c []*actorpb.OutFrame
	// Both at the login; on a loaded machine their redeliveries may
	// follow before the first look: the first two are the messages.
	testkit.Eventually(t, 5*time.Second, func() bool { s2c = h.r.frames(uint32(messages.CmdS2C)); return len(s2c) >= 2 }, "no deliveries on the second connection")
	s2c = s2c[:2]
	// A kick's write (the meta) is held; both messages are acknowledged
	// meanwhile, and the handoff flushes their deletion beside the kick's
	// write, detached. Nothing is left to deliver: no timer of the actor
	// runs.
	release := h.store.holdWrites()
	defer release()
	replies := make(chan *actorpb.Reply, 1)
	go func() { replies <- h.r.request(env(alice, &actorpb.Kick{})) }()
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.held.Load() == 1 }, "the kick was never written")
	for _, f := range s2c {
		var m devicepb.S2C
		if err := proto.Unmarshal(f.Body, &m); err != nil {
			t.Fatal(err)
		}
		ack, _ := proto.Marshal(&devicepb.S2CAck{MsgId: m.MsgId})
		h.r.Send(env(alice, &actorpb.DeviceFrame{Conn: c2, Epoch: 2, Cmd: uint32(messages.CmdS2CAck), Body: ack}))
	}
	h.r.handoff(alice)
	testkit.Eventually(t, 5*time.Second, func() bool { return len(h.store.queue) == 1 }, "the deletion was not written beside the kick")
	h.store.mu.Lock()
	h.store.failW = func(w *store.Write) error {
		if w.Meta != nil {
			return store.ErrUnavailable
		}
		return nil
	}
	h.store.mu.Unlock()
	release()
	<-replies
	// At once: it used to end only at the actor's next timer (here the
	// deliveries' retry, 2 s after they went out), or never without one.
	testkit.Eventually(t, time.Second, func() bool { return h.r.count(h.r.handedOff, alice) == 1 }, "the actor did not finish its handoff when the deletion completed")
}

// TestLoginRefusedDuringAHandoffEndsTheSession: a LOGIN_ACK OK that went
// out as a refusal (no lease) while the actor hands its identity off
// still ends the session: its close goes to the identity's next actor
// (it used to be dropped, leaving the session online in the store).
func TestLoginRefusedDuringAHandoffEndsTheSession(t *testing.T) {
	h := newActorHarness(t, func(c *Config) { c.PassivateAfter = time.Minute })
	h.r.leaseless.Store(true)
	release := h.store.holdWrites()
	defer release()
	c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
	h.r.Send(env(alice, &actorpb.DeviceLogin{Conn: c, Login: &devicepb.Login{Uid: alice.UID}, FrameSeq: 1}))
	testkit.Eventually(t, 5*time.Second, func() bool { return h.store.held.Load() == 1 }, "the login was never written")
	h.r.handoff(alice)
	release()
	testkit.Eventually(t, 5*time.Second, func() bool { return h.r.count(h.r.handedOff, alice) == 1 }, "the actor did not finish its handoff")
	testkit.Eventually(t, 5*time.Second, func() bool {
		s := h.store.session(alice)
		return s != nil && !s.GetOnline()
	}, "the refused login's session stayed online")
}

// TestAcknowledgedDeletedBesideAWithheldAck: a device that acknowledges
// every message but one (it cannot parse it) still has the others
// deleted within a PassivateAfter or so, whether the identity is busy
// (presence queries) or quiet; they waited for the next push or the
// session's end, and a crash or a move meanwhile delivered them again.
func TestAcknowledgedDeletedBesideAWithheldAck(t *testing.T) {
	for _, busy := range []bool{false, true} {
		t.Run(fmt.Sprint("busy=", busy), func(t *testing.T) {
			h := newActorHarness(t, nil) // PassivateAfter 100 ms
			c := &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: 1}
			h.login(alice, c)
			for _, p := range []string{"x", "y"} {
				if rep := h.r.request(env(alice, &actorpb.Push{Stored: true, Payload: []byte(p)})); rep.GetPush() == nil {
					t.Fatalf("push: %v", rep)
				}
			}
			var s2c []*actorpb.OutFrame
			testkit.Eventually(t, 5*time.Second, func() bool { s2c = h.r.frames(uint32(messages.CmdS2C)); return len(s2c) >= 2 }, "no deliveries")
			var m devicepb.S2C
			if err := proto.Unmarshal(s2c[1].Body, &m); err != nil {
				t.Fatal(err)
			}
			h.ackS2C(alice, c, m.MsgId) // the second; the first is withheld
			deadline := time.Now().Add(3 * time.Second)
			for h.store.stored(alice) != 1 {
				if time.Now().After(deadline) {
					t.Fatalf("%d entries stored: the acknowledged one was not deleted", h.store.stored(alice))
				}
				if busy {
					h.presence(alice)
				}
				time.Sleep(30 * time.Millisecond)
			}
		})
	}
}

// TestHandoffForwardsWhatRoutingHeld: envelopes routing held for the
// actor (waiting for a release) come inside its Handoff; the actor hands
// them on to the identity's next activation, even when it finishes its
// handoff at once.
func TestHandoffForwardsWhatRoutingHeld(t *testing.T) {
	h := newActorHarness(t, nil)
	h.presence(alice)
	ch := make(chan *actorpb.Reply, 1)
	held := env(alice, nil)
	h.r.mu.Lock()
	h.r.nextReq++
	held.ReqId, held.ReplyAddress = h.r.nextReq, "test"
	h.r.replies[held.ReqId] = ch
	c := h.r.children[alice]
	delete(h.r.children, alice)
	h.r.mu.Unlock()
	h.r.sys.Root.Send(c.pid, &actorpb.Handoff{Held: []*actorpb.Envelope{held}})
	select {
	case r := <-ch:
		if r.GetPresence() == nil {
			t.Fatalf("the held request was answered %v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the held request was lost")
	}
	if a := h.r.count(h.r.activations, alice); a != 2 {
		t.Fatalf("%d activations, want the held request answered by a second", a)
	}
}
