package cluster

import (
	"testing"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages/actorpb"
)

// TestReplyBatch: a RequestMany's replies are collected by id, in any
// order; the wait ends with the last one; a batch given up leaves nothing
// registered, and replies that come after are dropped.
func TestReplyBatch(t *testing.T) {
	var r replyRegistry
	w := r.registerMany(3)
	for _, i := range []uint64{2, 0, 1} {
		select {
		case <-w.done:
			t.Fatal("done before the last reply")
		default:
		}
		r.deliver(&actorpb.Reply{ReqId: w.base + i})
	}
	<-w.done
	for i := range w.slots {
		if rep := w.slots[i].Load(); rep == nil || rep.ReqId != w.base+uint64(i) {
			t.Fatalf("slot %d: %v", i, rep)
		}
	}
	r.forgetMany(w)

	g := r.registerMany(4)
	if g.base <= w.base+2 {
		t.Fatalf("ids reused: %d after %d", g.base, w.base)
	}
	r.deliver(&actorpb.Reply{ReqId: g.base + 1})
	r.forgetMany(g) // given up with three missing
	r.deliver(&actorpb.Reply{ReqId: g.base + 2})
	if g.slots[1].Load() == nil || g.slots[2].Load() != nil {
		t.Fatal("a reply after the batch was given up was kept, or one before was lost")
	}
	for i := range r.shards {
		if n := len(r.shards[i].many) + len(r.shards[i].waiting); n != 0 {
			t.Fatalf("shard %d still holds %d entries", i, n)
		}
	}
}

// TestLeaselessReplies: a node without its lease answers an identity's
// push or presence with a retryable failure (the push was not delivered,
// and no other node wakes the identity to deliver it), and lets a kick's
// answer (its KICKOUT goes), failures and the node's own replies through
// as they are.
func TestLeaselessReplies(t *testing.T) {
	sys, err := Start(DefaultConfig(), func() actor.Actor { return &echo{} }, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Shutdown)
	// Not joined: no lease.
	cases := []struct {
		in      *actorpb.Reply
		failure bool // becomes UNAVAILABLE
	}{
		{&actorpb.Reply{Body: &actorpb.Reply_Push{Push: &actorpb.PushReply{MsgId: "m", Seq: 4}}}, true},
		// A kick that ended a session did what it says: the session's end
		// is stored and its KICKOUT goes (actors.Leaseless). One that
		// found none may be stale.
		{&actorpb.Reply{Body: &actorpb.Reply_Kick{Kick: &actorpb.KickReply{WasOnline: true}}}, false},
		{&actorpb.Reply{Body: &actorpb.Reply_Kick{Kick: &actorpb.KickReply{}}}, true},
		{&actorpb.Reply{Body: &actorpb.Reply_Presence{Presence: &actorpb.PresenceReply{Online: true}}}, true},
		{&actorpb.Reply{Body: &actorpb.Reply_Failure{Failure: &actorpb.Failure{Code: int32(codes.ResourceExhausted), Message: "full"}}}, false},
		{&actorpb.Reply{Body: &actorpb.Reply_Pong{Pong: &actorpb.Pong{}}}, false},
		{&actorpb.Reply{Body: &actorpb.Reply_LeaseVouch{LeaseVouch: &actorpb.LeaseVouch{}}}, false},
	}
	for _, c := range cases {
		w := sys.replies.registerMany(1)
		c.in.ReqId = w.base
		sys.Reply(sys.Address(), c.in)
		<-w.done
		got := w.slots[0].Load()
		sys.replies.forgetMany(w)
		switch {
		case c.failure && got.GetFailure().GetCode() != int32(codes.Unavailable):
			t.Errorf("%v went out as %v, want UNAVAILABLE", c.in, got)
		case !c.failure && !proto.Equal(got, c.in):
			t.Errorf("%v went out as %v, want it as it is", c.in, got)
		}
	}
}
