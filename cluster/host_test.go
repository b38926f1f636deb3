package cluster

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"

	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/testkit"
)

// TestShardShrinksAfterPassivations: a shard's map is rebuilt once it
// holds a quarter of its peak, keeping every child still in it.
func TestShardShrinksAfterPassivations(t *testing.T) {
	sh := &localShard{children: map[childKey]*child{}}
	add := func(i int) {
		sh.children[childKey{1, strconv.Itoa(i)}] = &child{forwarded: uint64(i)}
		sh.peak = max(sh.peak, len(sh.children))
	}
	for i := range 1000 {
		add(i)
	}
	before := sh.children
	for i := range 749 { // 251 left: above a quarter of the peak
		delete(sh.children, childKey{1, strconv.Itoa(i)})
		sh.shrink()
	}
	if sh.peak != 1000 {
		t.Fatalf("rebuilt at %d children (peak %d), want no rebuild above a quarter of 1000", len(sh.children), sh.peak)
	}
	delete(sh.children, childKey{1, "749"})
	sh.shrink()
	if sh.peak != 250 || len(sh.children) != 250 {
		t.Fatalf("after 750 of 1000 left: peak %d, %d children; want a rebuild to 250", sh.peak, len(sh.children))
	}
	before[childKey{1, "x"}] = &child{} // the old map is no longer the shard's
	if _, ok := sh.children[childKey{1, "x"}]; ok {
		t.Fatal("the shard still uses the old map")
	}
	for i := 750; i < 1000; i++ {
		if c := sh.children[childKey{1, strconv.Itoa(i)}]; c == nil || c.forwarded != uint64(i) {
			t.Fatalf("child %d lost or changed in the rebuild: %+v", i, c)
		}
	}
	small := &localShard{children: map[childKey]*child{}}
	for i := range shardShrinkMin - 1 {
		small.children[childKey{1, strconv.Itoa(i)}] = &child{}
		small.peak = len(small.children)
	}
	m := small.children
	for i := range shardShrinkMin - 2 {
		delete(small.children, childKey{1, strconv.Itoa(i)})
		small.shrink()
	}
	m[childKey{1, "y"}] = &child{}
	if _, ok := small.children[childKey{1, "y"}]; !ok {
		t.Fatal("a shard that never held shardShrinkMin children was rebuilt")
	}
}

// (In this file, not system_test.go: a System started after
// TestRequestToUnreachableOwnerFailsFast races with the gRPC logger its
// endpoint writers use; see there.)
// TestNoActivationAfterTheIdentityMoved: a sender that read the
// placement before a view change moved an identity away (and dropMoved
// ran) does not activate it here: it is routed again (here, with no
// member left, refused), not served by a node that does not own it. And
// an actor retired while it is handed off leaves no handoff pending.
func TestNoActivationAfterTheIdentityMoved(t *testing.T) {
	sys := startEchoMember(t)
	presence := func(uid string) *actorpb.Envelope {
		return &actorpb.Envelope{AppCode: 1, Uid: uid, Body: &actorpb.Envelope_Presence{Presence: &actorpb.PresenceQuery{}}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := sys.Request(ctx, presence("held")); err != nil {
		t.Fatal(err)
	}
	held := identityHash(1, "held")
	sh := &sys.local[shard(held, len(sys.local))]
	sh.mu.Lock()
	pid := sh.children[childKey{1, "held"}].pid
	sh.mu.Unlock()

	// The view changes: no member hosts identities any more.
	gone := newPlacement(nil, sys.cfg.Shards, 99)
	sys.placement.Store(gone)
	// A handoff whose actor is retired (fenced) after dropMoved let go of
	// its shard's lock, before its Handoff is sent.
	sys.beforeHandoff = func(pids []*actor.PID) {
		for _, p := range pids {
			if p.Id == pid.Id {
				sys.Retire(1, "held", pid)
			}
		}
	}
	sys.dropMoved(gone)
	sys.beforeHandoff = nil
	if n := sys.handoffsPending(); n != 0 {
		t.Fatalf("%d handoffs pending after the actor was retired", n)
	}

	// A sender that read the old placement delivers here.
	routeLocalRefused(t, sys, "late", "a request for a moved identity")
}

// routeLocalRefused delivers a presence query for uid straight to this
// node's shard, as a sender that checked placement and lease before they
// changed would, and expects it refused UNAVAILABLE, with no actor
// activated.
func routeLocalRefused(t *testing.T, sys *System, uid, what string) {
	t.Helper()
	id, ch := sys.replies.register()
	env := &actorpb.Envelope{AppCode: 1, Uid: uid, ReqId: id, ReplyAddress: sys.Address(),
		Body: &actorpb.Envelope_Presence{Presence: &actorpb.PresenceQuery{}}}
	sys.routeLocal(identityHash(1, uid), env)
	select {
	case r := <-ch:
		if r.GetFailure().GetCode() != int32(codes.Unavailable) {
			t.Fatalf("%s answered %v, want UNAVAILABLE", what, r)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no answer", what)
	}
	sh := &sys.local[shard(identityHash(1, uid), len(sys.local))]
	sh.mu.Lock()
	_, activated := sh.children[childKey{1, uid}]
	sh.mu.Unlock()
	if activated {
		t.Fatalf("%s: the identity was activated here", what)
	}
}

// startEchoMember starts a System of echo actors, joined as the only
// member (one member per test process), stopped at the test's end.
func startEchoMember(t *testing.T) *System {
	t.Helper()
	var sys *System
	sys, err := Start(DefaultConfig(), func() actor.Actor { return &echo{sys: sys, log: &sync.Map{}} }, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Shutdown)
	if err := sys.Join(context.Background(), membership.Member{Name: "t", Roles: membership.RoleActors}, nil); err != nil {
		t.Fatal(err)
	}
	return sys
}

// TestNoActivationWithoutALease: a sender checks the lease before it
// takes the identity's shard lock; the lease may lapse meanwhile, and
// its loss's dropAll empty the shard before the sender activates an
// actor there, which would then claim the identity from its real owner
// until this node rejoins. The activation checks the lease again.
func TestNoActivationWithoutALease(t *testing.T) {
	sys := startEchoMember(t)
	// The lease lapses after the sender's check in route.
	sys.leaseLapsedForTest.Store(true)
	defer sys.leaseLapsedForTest.Store(false)
	routeLocalRefused(t, sys, "late", "a request without a lease")
}

// TestReleaseAnsweredOnceHandedOff: a member asked to release identities
// answers once it neither owns them nor has an actor of them handing
// off; one it still owns is answered when the wait runs out, as pending.
func TestReleaseAnsweredOnceHandedOff(t *testing.T) {
	sys := startEchoMember(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := sys.Request(ctx, &actorpb.Envelope{AppCode: 1, Uid: "held", Body: &actorpb.Envelope_Presence{Presence: &actorpb.PresenceQuery{}}}); err != nil {
		t.Fatal(err)
	}
	ask := func(uid string, wait time.Duration) chan *actorpb.Reply {
		id, ch := sys.replies.register()
		sys.answerRelease(&actorpb.NodeRequest{ReqId: id, ReplyAddress: sys.Address(), Body: &actorpb.NodeRequest_Release{
			Release: &actorpb.Release{WaitMs: wait.Milliseconds(), Identities: []*actorpb.ReleaseIdentity{{AppCode: 1, Uid: uid}}}}})
		return ch
	}
	// Owned here: answered when the wait runs out, with it pending.
	owned := ask("held", 300*time.Millisecond)
	select {
	case r := <-owned:
		t.Fatalf("answered %v while the identity is owned here", r)
	case <-time.After(150 * time.Millisecond):
	}
	select {
	case r := <-owned:
		if r.GetReleased().GetPending() != 1 {
			t.Fatalf("answered %v, want Released with 1 pending", r)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("not answered after its wait")
	}

	// The identity moves away; its actor's handoff is held up before the
	// Handoff is sent.
	gone := newPlacement(nil, sys.cfg.Shards, 99)
	sys.placement.Store(gone)
	release := holdHandoffs(t, sys, func() { sys.dropMoved(gone) })
	moving := ask("held", 5*time.Second)
	if r := <-ask("never-here", 5*time.Second); r.GetReleased().GetPending() != 0 {
		t.Fatalf("an identity never held here: %v", r)
	}
	select {
	case r := <-moving:
		t.Fatalf("answered %v while the actor hands off", r)
	case <-time.After(150 * time.Millisecond):
	}
	release()
	select {
	case r := <-moving:
		if r.GetReleased().GetPending() != 0 {
			t.Fatalf("answered %v, want Released with none pending", r)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("not answered once the handoff ended")
	}
}

// TestActivationHoldsEnvelopesUntilReleased: an identity whose previous
// owner is a live member is activated here holding its envelopes, in
// order, until that member answers (here it cannot: after releaseWait).
func TestActivationHoldsEnvelopesUntilReleased(t *testing.T) {
	sys := startEchoMember(t)
	const gone = "127.0.0.1:1" // live in the prior view, never answers
	sys.askNodeForTest = silentMember
	sys.prior.Store(&prior{p: newPlacement([]string{gone}, sys.cfg.Shards, 1), until: time.Now().Add(time.Minute),
		live: map[string]bool{gone: true}})
	start := time.Now()
	var replies []chan *actorpb.Reply
	for range 3 {
		id, ch := sys.replies.register()
		sys.route(&actorpb.Envelope{AppCode: 1, Uid: "moved", ReqId: id, ReplyAddress: sys.Address(),
			Body: &actorpb.Envelope_Presence{Presence: &actorpb.PresenceQuery{}}})
		replies = append(replies, ch)
	}
	for i, ch := range replies {
		select {
		case r := <-ch:
			// The echo counts the envelopes it saw: in order, none lost.
			if got := r.GetPresence().GetPending(); got != uint32(i+1) {
				t.Fatalf("reply %d: %v, want the actor's count %d", i, r, i+1)
			}
		case <-time.After(releaseWait + 3*time.Second):
			t.Fatalf("reply %d never came", i)
		}
	}
	if waited := time.Since(start); waited < releaseWait-200*time.Millisecond {
		t.Fatalf("answered after %v: the activation did not wait for the previous owner", waited)
	}
	if v := testutil.ToFloat64(sys.metrics.releaseLate); v != 1 {
		t.Fatalf("release_late %v, want 1", v)
	}
}

// presenceTo routes a presence query for uid and returns where its reply
// comes.
func presenceTo(sys *System, uid string) chan *actorpb.Reply {
	id, ch := sys.replies.register()
	sys.route(&actorpb.Envelope{AppCode: 1, Uid: uid, ReqId: id, ReplyAddress: sys.Address(),
		Body: &actorpb.Envelope_Presence{Presence: &actorpb.PresenceQuery{}}})
	return ch
}

// TestHeldEnvelopesGoAfterTheHandoff: an activation holding envelopes
// for a release that moves away again hands them to its actor after the
// Handoff (which forwards them), not before: sent before, the actor
// would load the identity, claiming it from its new owner.
func TestHeldEnvelopesGoAfterTheHandoff(t *testing.T) {
	sys := startEchoMember(t)
	const silent = "127.0.0.1:1"
	sys.askNodeForTest = silentMember
	sys.prior.Store(&prior{p: newPlacement([]string{silent}, sys.cfg.Shards, 1), until: time.Now().Add(time.Minute),
		live: map[string]bool{silent: true}})
	reply := presenceTo(sys, "moving")
	testkit.Eventually(t, 5*time.Second, func() bool {
		sh := &sys.local[shard(identityHash(1, "moving"), len(sys.local))]
		sh.mu.Lock()
		defer sh.mu.Unlock()
		c := sh.children[childKey{1, "moving"}]
		return c != nil && c.waitRemote && len(c.held) == 1
	}, "the activation does not hold the envelope")
	sys.dropMoved(newPlacement(nil, sys.cfg.Shards, 99))
	select {
	case r := <-reply:
		if n := r.GetPresence().GetPending(); n < 1000 {
			t.Fatalf("the actor handled the held envelope before its Handoff (count %d)", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the held envelope never reached the actor")
	}
}

// TestActivationWaitsForItsOwnHandoff: an identity whose actor here is
// still handing off (this node rejoined, or the identity came back) is
// activated anew holding its envelopes until that handoff ends.
func TestActivationWaitsForItsOwnHandoff(t *testing.T) {
	sys := startEchoMember(t)
	if r := <-presenceTo(sys, "back"); r.GetPresence() == nil {
		t.Fatalf("first activation: %v", r)
	}
	release := holdHandoffs(t, sys, sys.dropAll)
	reply := presenceTo(sys, "back") // still owned here: a new activation
	select {
	case r := <-reply:
		t.Fatalf("answered %v while the identity's old actor here hands off", r)
	case <-time.After(200 * time.Millisecond):
	}
	release()
	select {
	case r := <-reply:
		if r.GetPresence().GetPending() != 1 {
			t.Fatalf("answered %v, want the new actor's first envelope", r)
		}
	case <-time.After(releaseWait):
		t.Fatal("the new activation did not go on when the handoff ended")
	}
}

// TestReleaseGoesToTheChildThatAsked: an answer to an older activation's
// ask does not release a newer one waiting for another member.
func TestReleaseGoesToTheChildThatAsked(t *testing.T) {
	sys := startEchoMember(t)
	const silent = "127.0.0.1:1"
	sys.askNodeForTest = silentMember
	sys.prior.Store(&prior{p: newPlacement([]string{silent}, sys.cfg.Shards, 1), until: time.Now().Add(time.Minute),
		live: map[string]bool{silent: true}})
	presenceTo(sys, "asked")
	k := childKey{1, "asked"}
	sh := &sys.local[shard(identityHash(1, "asked"), len(sys.local))]
	sys.released(k, &child{}, true) // an answer meant for an earlier child
	sh.mu.Lock()
	c := sh.children[k]
	waiting := c != nil && c.waitRemote && len(c.held) == 1
	sh.mu.Unlock()
	if !waiting {
		t.Fatal("an answer for another child released this one")
	}
	sys.released(k, c, true)
	sh.mu.Lock()
	waiting = c.waitRemote || len(c.held) > 0
	sh.mu.Unlock()
	if waiting {
		t.Fatal("its own answer did not release it")
	}
}

// silentMember is a member that never answers a Release ask.
func silentMember(ctx context.Context, address string, _ *actorpb.NodeRequest) (*actorpb.Reply, error) {
	<-ctx.Done()
	return nil, fmt.Errorf("%w: node %s: %v", ErrNoReply, address, ctx.Err())
}

// holdHandoffs runs drop (which hands one actor off) with the Handoff
// held up after the actor left the routing, until release is called
// (release waits for drop to return; it is called at the test's end if
// not before).
func holdHandoffs(t *testing.T, sys *System, drop func()) (release func()) {
	t.Helper()
	hold := make(chan struct{})
	var once sync.Once
	sys.beforeHandoff = func(pids []*actor.PID) {
		if len(pids) > 0 {
			<-hold
		}
	}
	dropped := make(chan struct{})
	go func() { drop(); close(dropped) }()
	release = func() {
		once.Do(func() {
			close(hold)
			<-dropped
			sys.beforeHandoff = nil
		})
	}
	t.Cleanup(release)
	testkit.Eventually(t, 5*time.Second, func() bool { return sys.handoffsPending() == 1 }, "the handoff was not registered")
	return release
}
