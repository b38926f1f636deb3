package cluster

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"

	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/testkit"
)

// echo is a test identity actor: it answers presence queries with the
// number of envelopes it has seen, and passivates when asked through a
// kick.
type echo struct {
	sys  *System
	seen uint64
	app  uint16
	uid  string
	log  *sync.Map // uid -> []string of closes received
	// handedOff: a Handoff came; presence answers then add 1000 to the
	// count (tests of what reaches an actor after its Handoff).
	handedOff bool
}

func (e *echo) Receive(ctx actor.Context) {
	if h, ok := ctx.Message().(*actorpb.Handoff); ok {
		e.handedOff = true
		e.sys.HandedOff(e.app, e.uid, ctx.Self())
		for _, env := range h.Held { // answered as after the Handoff
			e.seen += 1001
			if env.GetPresence() != nil {
				e.sys.Reply(env.ReplyAddress, &actorpb.Reply{ReqId: env.ReqId, Body: &actorpb.Reply_Presence{
					Presence: &actorpb.PresenceReply{Pending: uint32(e.seen)}}})
			}
		}
		return
	}
	env, ok := ctx.Message().(*actorpb.Envelope)
	if !ok {
		return
	}
	e.seen++
	if e.handedOff {
		e.seen += 1000
	}
	e.app, e.uid = uint16(env.AppCode), env.Uid
	switch b := env.Body.(type) {
	case *actorpb.Envelope_Presence:
		e.sys.Reply(env.ReplyAddress, &actorpb.Reply{ReqId: env.ReqId, Body: &actorpb.Reply_Presence{
			Presence: &actorpb.PresenceReply{Pending: uint32(e.seen)}}})
	case *actorpb.Envelope_Kick:
		if b.Kick.Detail == "retire" {
			e.sys.Retire(e.app, e.uid, ctx.Self())
		} else {
			// Asks to leave memory; a stale count must be refused.
			e.sys.Passivate(e.app, e.uid, ctx.Self(), e.seen-1)
			e.sys.Passivate(e.app, e.uid, ctx.Self(), e.seen)
		}
		e.sys.Reply(env.ReplyAddress, &actorpb.Reply{ReqId: env.ReqId, Body: &actorpb.Reply_Kick{Kick: &actorpb.KickReply{}}})
	case *actorpb.Envelope_Closed:
		e.log.Store(env.Uid, b.Closed.Reason)
	case *actorpb.Envelope_GateDown:
		e.log.Store(env.Uid, "gate down "+b.GateDown.GateId)
	}
}

type fakeGate struct {
	mu  sync.Mutex
	got []*actorpb.ToConn
}

func (g *fakeGate) GateID() string { return "gate-1" }

func (g *fakeGate) Backlog() time.Duration { return 0 }

func (g *fakeGate) Deliver(m *actorpb.ToConn) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if m.ConnId == 404 {
		return ErrConnGone
	}
	g.got = append(g.got, m)
	return nil
}

// TestSystemOneMember runs one real member (in-memory membership, real
// remoting) through routing, request/reply, passivation and gate delivery.
// One member per test process: the library's remoting start races with
// other gRPC in the process (FACTS).
func TestSystemOneMember(t *testing.T) {
	var sys *System
	closes := &sync.Map{}
	reg := prometheus.NewRegistry()
	cfg := DefaultConfig()
	sys, err := Start(cfg, func() actor.Actor { return &echo{sys: sys, log: closes} }, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Shutdown)
	// Before joining, no member hosts identities: requests fail at once,
	// retryably.
	early, err := sys.Request(context.Background(), &actorpb.Envelope{AppCode: 1, Uid: "early", Body: &actorpb.Envelope_Presence{Presence: &actorpb.PresenceQuery{}}})
	if err != nil || early.GetFailure().GetCode() != int32(codes.Unavailable) {
		t.Fatalf("request before joining: %v %v", early, err)
	}
	self := membership.Member{Name: "test", Roles: membership.RoleActors | membership.RoleAPI, APIAddr: "127.0.0.1:1"}
	if err := sys.Join(context.Background(), self, nil); err != nil {
		t.Fatal(err)
	}
	if m := sys.Members(); len(m) != 1 || m[0] != sys.Address() {
		t.Fatalf("members %v, address %s", m, sys.Address())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	presence := func(uid string) uint32 {
		t.Helper()
		r, err := sys.Request(ctx, &actorpb.Envelope{AppCode: 1, Uid: uid, Body: &actorpb.Envelope_Presence{Presence: &actorpb.PresenceQuery{}}})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetPresence().GetPending()
	}

	// One actor per identity, each seeing its own envelopes in order.
	for i := uint32(1); i <= 3; i++ {
		if got := presence("alice"); got != i {
			t.Fatalf("alice's actor saw %d envelopes, want %d", got, i)
		}
	}
	if got := presence("bob"); got != 1 {
		t.Fatalf("bob's actor saw %d", got)
	}
	envs := make([]*actorpb.Envelope, 50)
	for i := range envs {
		envs[i] = &actorpb.Envelope{AppCode: 2, Uid: "many", Body: &actorpb.Envelope_Presence{Presence: &actorpb.PresenceQuery{}}}
	}
	reps, errs := sys.RequestMany(ctx, envs)
	seen := map[uint32]bool{}
	for i := range reps {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		seen[reps[i].GetPresence().GetPending()] = true
	}
	if len(seen) != 50 {
		t.Fatalf("RequestMany: %d distinct answers", len(seen))
	}

	// Passivation: only the request with the current count stops the
	// actor; the identity comes back fresh on its next envelope.
	if testutil.ToFloat64(sys.metrics.active) != 3 {
		t.Fatalf("active actors %v", testutil.ToFloat64(sys.metrics.active))
	}
	if _, err := sys.Request(ctx, &actorpb.Envelope{AppCode: 1, Uid: "alice", Body: &actorpb.Envelope_Kick{Kick: &actorpb.Kick{}}}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return testutil.ToFloat64(sys.metrics.passivations) == 1 }, "no passivation")
	if got := presence("alice"); got != 1 {
		t.Fatalf("reactivated alice saw %d envelopes, want 1", got)
	}

	// Gate delivery: a live connection gets the frames; a gone one makes
	// the identity's actor hear of it.
	g := &fakeGate{}
	sys.SetGate(g)
	sys.SendToConn(&actorpb.ConnRef{GateAddress: sys.Address(), GateId: "gate-1", ConnId: 7}, &actorpb.ToConn{ConnId: 7, AppCode: 1, Uid: "bob"})
	sys.SendToConn(&actorpb.ConnRef{GateAddress: sys.Address(), GateId: "gate-1", ConnId: 404}, &actorpb.ToConn{ConnId: 404, AppCode: 1, Uid: "carol"})
	sys.SendToConn(&actorpb.ConnRef{GateAddress: sys.Address(), GateId: "an-earlier-run", ConnId: 8}, &actorpb.ToConn{ConnId: 8, AppCode: 1, Uid: "dave"})
	testkit.Eventually(t, 5*time.Second, func() bool {
		_, c := closes.Load("carol")
		_, d := closes.Load("dave")
		return c && d
	}, "the actors of gone connections were not told")
	g.mu.Lock()
	if len(g.got) != 1 || g.got[0].ConnId != 7 {
		t.Fatalf("delivered %v", g.got)
	}
	g.mu.Unlock()
	if testutil.ToFloat64(sys.metrics.staleConns) != 2 {
		t.Fatalf("stale deliveries %v", testutil.ToFloat64(sys.metrics.staleConns))
	}

	// Gate liveness: the local gate is alive once set; when it goes away
	// every actor in memory hears of it, and counts the envelope (it can
	// still passivate).
	if !sys.GateAlive("gate-1") || sys.GateAlive("an-earlier-run") {
		t.Fatal("live gates: the local gate's instance only")
	}
	sys.AddGate("gate-of-another-member")
	sys.RemoveGate("gate-1")
	if sys.GateAlive("gate-1") || !sys.GateAlive("gate-of-another-member") {
		t.Fatal("RemoveGate did not remove exactly that gate")
	}
	for _, uid := range []string{"bob", "many", "carol", "dave"} {
		testkit.Eventually(t, 5*time.Second, func() bool {
			v, _ := closes.Load(uid)
			return v == "gate down gate-1"
		}, "the actor of "+uid+" was not told that its gate is gone")
	}
	passivated := testutil.ToFloat64(sys.metrics.passivations)
	if _, err := sys.Request(ctx, &actorpb.Envelope{AppCode: 1, Uid: "bob", Body: &actorpb.Envelope_Kick{Kick: &actorpb.Kick{}}}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return testutil.ToFloat64(sys.metrics.passivations) == passivated+1 },
		"bob did not passivate after the gate's broadcast")

	// Retire: the actor leaves at once; the next envelope activates a
	// fresh one.
	presence("erin")
	presence("erin")
	if _, err := sys.Request(ctx, &actorpb.Envelope{AppCode: 1, Uid: "erin", Body: &actorpb.Envelope_Kick{Kick: &actorpb.Kick{Detail: "retire"}}}); err != nil {
		t.Fatal(err)
	}
	if got := presence("erin"); got != 1 || testutil.ToFloat64(sys.metrics.retired) != 1 {
		t.Fatalf("after Retire the next envelope reached an actor that saw %d (retired %v)", got, testutil.ToFloat64(sys.metrics.retired))
	}
}

// TestRouteNeverServesAnotherMembersIdentity: while members disagree about
// an identity's owner, an envelope is forwarded at most MaxHops times and
// then refused retryably; it is never served by a node that does not own
// the identity (two owners could both act for it). One member per test
// process (FACTS): this reuses a fresh single member.
func TestRouteNeverServesAnotherMembersIdentity(t *testing.T) {
	sys := startEchoMember(t)
	// This node believes another member owns everything.
	sys.placement.Store(newPlacement([]string{"127.0.0.1:1"}, sys.cfg.Shards, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := sys.Request(ctx, &actorpb.Envelope{AppCode: 1, Uid: "x", Hops: uint32(sys.cfg.MaxHops),
		Body: &actorpb.Envelope_Presence{Presence: &actorpb.PresenceQuery{}}})
	if err != nil || r.GetFailure().GetCode() != int32(codes.Unavailable) || !strings.Contains(r.GetFailure().GetMessage(), "retry") {
		t.Fatalf("after max hops: %v %v", r, err)
	}
	if got := testutil.ToFloat64(sys.metrics.active); got != 0 {
		t.Fatalf("an actor was activated for an identity owned elsewhere (%v)", got)
	}
	if testutil.ToFloat64(sys.metrics.hopsExceeded) != 1 {
		t.Fatal("not counted")
	}
}

// Request ids start at a random point, so that a late reply meant for an
// earlier run of a node (same address) cannot match a new request.
func TestRequestIDsDoNotRestartAtOne(t *testing.T) {
	var a, b replyRegistry
	a.init()
	b.init()
	idA, _ := a.register()
	idB, _ := b.register()
	if idA == 1 || idB == 1 || idA == idB {
		t.Fatalf("first ids %d and %d", idA, idB)
	}
}

// A request to an identity whose owner cannot be reached (its node died:
// nothing listens at its address) fails at once with a retryable error,
// instead of waiting for the caller's deadline: the app-server retries
// while membership catches up. "At once" is the remoting library's one
// failed dial plus its fixed 2 s pause before it gives the endpoint up;
// the bound leaves room for a loaded machine and stays well below the
// 10 s deadline.
// It must stay the last test of the package to start a System (see the
// concurrent part).
func TestRequestToUnreachableOwnerFailsFast(t *testing.T) {
	sys := startEchoMember(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	sys.placement.Store(newPlacement([]string{dead}, sys.cfg.Shards, 0))
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		r, err := sys.Request(ctx, &actorpb.Envelope{AppCode: 1, Uid: fmt.Sprintf("x%d", i),
			Body: &actorpb.Envelope_Presence{Presence: &actorpb.PresenceQuery{}}})
		cancel()
		if err != nil || r.GetFailure().GetCode() != int32(codes.Unavailable) || !strings.Contains(r.GetFailure().GetMessage(), "retry") {
			t.Fatalf("request %d to an unreachable owner: %v %v after %v", i, r, err, time.Since(start))
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("request %d failed only after %v", i, took)
		}
	}

	// Then from sixteen goroutines at once, for 3 s: they also hit the
	// endpoint being torn down and the next one being started. (Here, not
	// in a test of its own with a System of its own: the endpoint writers
	// close gRPC connections, which read gRPC's global logger, and the
	// actor library's remote.Start sets it without synchronization, so
	// the race detector flags any System started after this one in the
	// same process. A node process starts one.)
	const senders = 16
	until := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var sent int
	var worst time.Duration
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(until); i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
				start := time.Now()
				r, err := sys.Request(ctx, &actorpb.Envelope{AppCode: 1, Uid: fmt.Sprintf("g%d-%d", g, i),
					Body: &actorpb.Envelope_Presence{Presence: &actorpb.PresenceQuery{}}})
				cancel()
				took := time.Since(start)
				mu.Lock()
				sent++
				worst = max(worst, took)
				if err != nil || r.GetFailure().GetCode() != int32(codes.Unavailable) || took > 5*time.Second {
					t.Errorf("sender %d request %d: %v %v after %v", g, i, r, err, took)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d concurrent requests, slowest answered after %v", sent, worst)
}

// Requests sent to a member whose connection broke fail at once; the
// others keep waiting.
func TestRepliesFailToBrokenMember(t *testing.T) {
	var r replyRegistry
	r.init()
	a, cha := r.register()
	b, chb := r.register()
	_, chc := r.register()
	r.sentTo(a, "10.0.0.1:7100")
	r.sentTo(b, "10.0.0.2:7100")
	if n := r.failTo("10.0.0.1:7100"); n != 1 {
		t.Fatalf("failed %d requests, want 1", n)
	}
	select {
	case rep := <-cha:
		if rep.ReqId != a || rep.GetFailure().GetCode() != int32(codes.Unavailable) {
			t.Fatalf("reply %v", rep)
		}
	default:
		t.Fatal("the request to the broken member got no reply")
	}
	select {
	case rep := <-chb:
		t.Fatalf("a request to another member was answered: %v", rep)
	case rep := <-chc:
		t.Fatalf("a request to no member yet was answered: %v", rep)
	default:
	}
	r.deliver(&actorpb.Reply{ReqId: b})
	if rep := <-chb; rep.ReqId != b {
		t.Fatalf("reply %v", rep)
	}
}
