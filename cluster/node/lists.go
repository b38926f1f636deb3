package node

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/cluster/api"
	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
)

// listsWait bounds how long an edit of the access lists waits for every
// gate to confirm it: an edit is in force on every live gate within this
// time, or the call fails.
const listsWait = 2 * time.Second

// clusterLists are the access lists of every gate in the cluster
// (api.Lists): an edit is sent to every live member with the gate role,
// which applies it to its own lists; the answer comes from this node's
// gate, or from another one.
type clusterLists struct{ n *Node }

func (l clusterLists) Edit(ctx context.Context, r *apipb.UpdateAccessListRequest) error {
	ctx, cancel := context.WithTimeout(ctx, listsWait)
	defer cancel()
	replies, missing := l.n.sys.Gather(ctx, membership.RoleGate, &actorpb.NodeRequest{Body: &actorpb.NodeRequest_ListsEdit{ListsEdit: r}})
	if len(replies) == 0 && len(missing) == 0 {
		return status.Error(codes.FailedPrecondition, "no gate in the cluster")
	}
	var failed []string
	applied := 0
	for name, rep := range replies {
		f := rep.GetFailure()
		switch {
		case f == nil:
			applied++
		case f.Code == int32(codes.InvalidArgument):
			return status.Errorf(codes.InvalidArgument, "lists: %s", f.Message)
		default:
			failed = append(failed, fmt.Sprintf("%s (%s)", name, f.Message))
		}
	}
	failed = append(failed, missing...)
	if len(failed) > 0 {
		sort.Strings(failed)
		return status.Errorf(codes.Unavailable, "the edit is in force on %d gate(s) but not confirmed by %s within %v; retry it (edits can be repeated)",
			applied, strings.Join(failed, ", "), listsWait)
	}
	return nil
}

func (l clusterLists) Snapshot(ctx context.Context) (gate.ListsSnapshot, error) {
	if l.n.gate != nil {
		return l.n.gate.Lists().Snapshot(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, listsWait)
	defer cancel()
	return l.n.peerLists(ctx)
}

// peerLists asks the other live gates for their lists and returns the
// first answer.
func (n *Node) peerLists(ctx context.Context) (gate.ListsSnapshot, error) {
	replies, _ := n.sys.Gather(ctx, membership.RoleGate, &actorpb.NodeRequest{Body: &actorpb.NodeRequest_ListsGet{ListsGet: &actorpb.ListsGet{}}})
	self := n.cfg.Name
	for name, r := range replies {
		if name == self {
			continue
		}
		if lr := r.GetLists(); lr != nil {
			return gate.ParseListsSnapshot(lr.Json)
		}
	}
	return gate.ListsSnapshot{}, status.Error(codes.Unavailable, "no gate answered with its lists")
}

// answerLists applies a lists request to this node's gate.
func (n *Node) answerLists(req *actorpb.NodeRequest) *actorpb.Reply {
	fail := func(code codes.Code, msg string) *actorpb.Reply {
		return &actorpb.Reply{Body: &actorpb.Reply_Failure{Failure: &actorpb.Failure{Code: int32(code), Message: msg}}}
	}
	if n.gate == nil {
		return fail(codes.FailedPrecondition, "this node has no gate")
	}
	if e := req.GetListsEdit(); e != nil {
		if err := n.gate.Lists().Modify(func(s *gate.ListsSnapshot) { api.ApplyListEdit(s, e) }); err != nil {
			return fail(codes.InvalidArgument, err.Error())
		}
	}
	b, err := json.Marshal(n.gate.Lists().Snapshot())
	if err != nil {
		return fail(codes.Internal, err.Error())
	}
	return &actorpb.Reply{Body: &actorpb.Reply_Lists{Lists: &actorpb.ListsReply{Json: b}}}
}

// syncLists gives a gate that just joined the lists the other gates
// have, unless it reads them from a file. An edit made between its
// joining and this copy may be overwritten on this gate (until the lists
// live in the shared store).
func (n *Node) syncLists() {
	if n.gate == nil || n.cfg.Gate.ListsFile != "" || len(n.sys.View().Live(membership.RoleGate)) < 2 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), listsWait)
	defer cancel()
	s, err := n.peerLists(ctx)
	if err == nil {
		err = n.gate.Lists().Update(s)
	}
	if err != nil {
		n.log.Warn("node: could not copy the access lists from the other gates; this gate starts with its own", "err", err)
	}
}
