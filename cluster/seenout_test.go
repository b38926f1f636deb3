package cluster

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/testkit"
)

// TestSeenOutDue: a member this node's view blocks while the provider
// lists it passing is told it is out, again every seenOutEvery while it
// lasts; members merely blocked (gone, critical), this node itself and
// members no longer listed are not, and those are forgotten.
func TestSeenOutDue(t *testing.T) {
	s := &System{address: "10.0.0.1:7003"}
	v := &membership.View{Members: []membership.Member{
		{ID: "zombie", Address: "10.0.0.2:7003", Health: membership.HealthPassing, Blocked: true},
		{ID: "gone", Address: "10.0.0.3:7003", Health: membership.HealthCritical, Blocked: true},
		{ID: "live", Address: "10.0.0.4:7003", Health: membership.HealthPassing},
		{ID: "old-self", Address: "10.0.0.1:7003", Health: membership.HealthPassing, Blocked: true},
	}}
	now := time.Now()
	ids := func(ms []membership.Member) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.ID)
		}
		return out
	}
	if due := ids(s.seenOutDue(v, now)); len(due) != 1 || due[0] != "zombie" {
		t.Fatalf("told %v, want [zombie]", due)
	}
	if due := s.seenOutDue(v, now.Add(seenOutEvery/2)); len(due) != 0 {
		t.Fatalf("told again within %v: %v", seenOutEvery, ids(due))
	}
	if due := ids(s.seenOutDue(v, now.Add(seenOutEvery))); len(due) != 1 {
		t.Fatalf("not told again after %v: %v", seenOutEvery, due)
	}
	v.Members = v.Members[1:]
	if due := s.seenOutDue(v, now.Add(3*seenOutEvery)); len(due) != 0 || len(s.seenOutSent) != 0 {
		t.Fatalf("after the zombie left: told %v, remembered %v", ids(due), s.seenOutSent)
	}
}

// TestNodeActorAnswersLeaseChecksPastSlowWork: a SeenOut notice naming
// this node's instance, sent to its node actor as a member would, makes
// it rejoin as a new instance; and a lease check is answered at once
// while a slow request (a lists edit waiting on the store) is handled.
func TestNodeActorAnswersLeaseChecksPastSlowWork(t *testing.T) {
	sys, err := Start(DefaultConfig(), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Shutdown)
	if err := sys.Join(context.Background(), membership.Member{Name: "t", Roles: membership.RoleAPI, APIAddr: "127.0.0.1:1"}, nil); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	sys.SetNodeHandler(func(req *actorpb.NodeRequest) *actorpb.Reply {
		if req.GetListsGet() != nil {
			<-release
		}
		return &actorpb.Reply{Body: &actorpb.Reply_Pong{Pong: &actorpb.Pong{}}}
	})
	node := actor.NewPID(sys.Address(), nodeName)
	ask := func(req *actorpb.NodeRequest) chan *actorpb.Reply {
		id, ch := sys.replies.register()
		req.ReqId, req.ReplyAddress = id, sys.Address()
		sys.actors.Root.Send(node, req)
		return ch
	}
	slow := ask(&actorpb.NodeRequest{Body: &actorpb.NodeRequest_ListsGet{ListsGet: &actorpb.ListsGet{}}})
	check := ask(&actorpb.NodeRequest{Body: &actorpb.NodeRequest_LeaseCheck{LeaseCheck: &actorpb.LeaseCheck{Member: "x"}}})
	select {
	case r := <-check:
		if r.GetLeaseVouch() == nil {
			t.Fatalf("lease check answered %v", r)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a lease check waited behind a slow request")
	}
	close(release)
	select {
	case <-slow:
	case <-time.After(5 * time.Second):
		t.Fatal("the slow request was never answered")
	}

	first := sys.View().Self.ID
	sys.actors.Root.Send(node, &actorpb.NodeRequest{Body: &actorpb.NodeRequest_SeenOut{SeenOut: &actorpb.SeenOut{Member: first}}})
	testkit.Eventually(t, 5*time.Second, func() bool {
		v := sys.View()
		return v.Self.ID != first && v.Self.Live()
	}, "the node did not rejoin after a member said its instance is out")
}

// TestDepartedAddressesForgotten: the way to a member's gate and the PID
// of its replies actor were kept per address for good; members coming
// back at new addresses (pod IPs) grew them for the life of the process.
// A view without the address drops them.
func TestDepartedAddressesForgotten(t *testing.T) {
	s := &System{address: "10.0.0.1:7003"}
	s.localPath = &gatePath{}
	s.paths.Store(s.address, s.localPath)
	for _, a := range []string{"10.0.0.2:7003", "10.0.0.9:7003"} {
		s.paths.Store(a, &gatePath{})
		s.replyPIDs.Store(a, actor.NewPID(a, "replies"))
	}
	s.forgetDeparted(&membership.View{Members: []membership.Member{{ID: "b", Address: "10.0.0.2:7003", Health: membership.HealthPassing}}})
	for _, m := range []*sync.Map{&s.paths, &s.replyPIDs} {
		if _, ok := m.Load("10.0.0.9:7003"); ok {
			t.Fatal("state of a departed address kept")
		}
		if _, ok := m.Load("10.0.0.2:7003"); !ok {
			t.Fatal("state of a member's address dropped")
		}
	}
	if _, ok := s.paths.Load(s.address); !ok {
		t.Fatal("this node's own path dropped")
	}
}
