package api

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
)

func TestDrainRequests(t *testing.T) {
	live := func(id, name string) membership.Member {
		return membership.Member{ID: id, Name: name, Address: "h:" + id, Roles: membership.RoleGate, Health: membership.HealthPassing}
	}
	view := &membership.View{Members: []membership.Member{live("n1-a", "n1"), live("n2-a", "n2"), live("n2-b", "n2"),
		{ID: "n3-a", Name: "n3", Health: membership.HealthCritical}}}
	view.Self = view.Members[0]
	// Before this node joined, its view is empty: come back, rather than
	// "no such node".
	early := New(Deps{Members: func() *membership.View { return &membership.View{} },
		Drain: func(context.Context, membership.Member, time.Duration) (*actorpb.DrainStarted, error) {
			return nil, nil
		}})
	if _, err := early.Drain(scoped(AllApps), &apipb.DrainRequest{Node: "n1"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("Drain before the node joined: %v, want UNAVAILABLE", err)
	}
	if _, err := early.Members(scoped(AllApps), &apipb.MembersRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("Members before the node joined: %v, want UNAVAILABLE", err)
	}
	var asked []string
	var windows []time.Duration
	fail, gone, oldVersion := "", "", ""
	s := New(Deps{Members: func() *membership.View { return view }, Drain: func(_ context.Context, m membership.Member, w time.Duration) (*actorpb.DrainStarted, error) {
		if m.ID == fail {
			return nil, errors.New("no answer")
		}
		if m.ID == gone {
			return nil, status.Error(codes.NotFound, "instance "+m.ID+" is gone")
		}
		if m.ID == oldVersion { // does not check the instance: drains n2-b, which serves the address
			return &actorpb.DrainStarted{Member: "n2-b", WindowMs: 7000}, nil
		}
		asked = append(asked, m.ID)
		windows = append(windows, w)
		return &actorpb.DrainStarted{Member: m.ID, WindowMs: 7000, Conns: 3}, nil
	}})
	op := scoped(AllApps)
	for _, tc := range []struct {
		name string
		ctx  context.Context
		req  *apipb.DrainRequest
		code codes.Code
	}{
		{"an app's key", scoped(1), &apipb.DrainRequest{Node: "n1"}, codes.PermissionDenied},
		{"no node", op, &apipb.DrainRequest{}, codes.InvalidArgument},
		{"negative window", op, &apipb.DrainRequest{Node: "n1", WindowMs: -1}, codes.InvalidArgument},
		{"window over 10 minutes", op, &apipb.DrainRequest{Node: "n1", WindowMs: 600_001}, codes.InvalidArgument},
		{"window wrapping as a Duration", op, &apipb.DrainRequest{Node: "n1", WindowMs: 18_446_744_073_710}, codes.InvalidArgument},
		{"unknown node", op, &apipb.DrainRequest{Node: "n9"}, codes.NotFound},
		{"a node that is not live", op, &apipb.DrainRequest{Node: "n3"}, codes.NotFound},
	} {
		if _, err := s.Drain(tc.ctx, tc.req); status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.code)
		}
	}
	if len(asked) != 0 {
		t.Fatalf("refused calls drained %v", asked)
	}
	r, err := s.Drain(op, &apipb.DrainRequest{Node: "n2", WindowMs: 2000})
	if err != nil || len(r.Members) != 2 || r.WindowMs != 7000 || r.Members[0].Conns != 3 || !r.Members[1].Draining {
		t.Fatalf("Drain n2: %v %v", r, err)
	}
	if len(asked) != 2 || asked[0] != "n2-a" || asked[1] != "n2-b" || windows[0] != 2*time.Second {
		t.Fatalf("asked %v %v", asked, windows)
	}
	if _, err := s.Drain(op, &apipb.DrainRequest{Node: "n1-a"}); err != nil || asked[2] != "n1-a" || windows[2] != 0 {
		t.Fatalf("Drain by instance id: %v %v %v", err, asked, windows)
	}
	fail = "n1-a"
	if _, err := s.Drain(op, &apipb.DrainRequest{Node: "n1"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("a node that did not answer: %v", err)
	}
	// n2-a is an old instance still listed: its address answers for n2-b
	// and refuses (NOT_FOUND). By name, n2-b drains alone; by n2-a's id,
	// nothing drains and the caller hears the instance is gone.
	fail, gone = "", "n2-a"
	asked = nil
	r, err = s.Drain(op, &apipb.DrainRequest{Node: "n2"})
	if err != nil || len(r.Members) != 1 || r.Members[0].Id != "n2-b" || len(asked) != 1 || asked[0] != "n2-b" {
		t.Fatalf("Drain n2 with its old instance listed: %v %v, asked %v", r, err, asked)
	}
	if _, err := s.Drain(op, &apipb.DrainRequest{Node: "n2-a"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Drain of an instance that is gone: %v, want NOT_FOUND", err)
	}
	// A node of an older version drains what serves the address: the
	// instance asked for is not reported draining.
	gone, oldVersion = "", "n2-a"
	r, err = s.Drain(op, &apipb.DrainRequest{Node: "n2"})
	if err != nil || len(r.Members) != 1 || r.Members[0].Id != "n2-b" {
		t.Fatalf("Drain n2 through a node of an older version: %v %v", r, err)
	}
}
