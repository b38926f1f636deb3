package node

import (
	"context"
	"encoding/json"
	"errors"
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

// notJoined answers the calls that need the cluster's view before this
// node has joined (its API serves from the start).
const notJoined = "this node has not joined the cluster yet: retry"

// listsWait bounds how long an edit of the access lists waits for every
// gate to confirm it: an edit is in force on every live gate within this
// time, or the call fails.
const listsWait = 2 * time.Second

// clusterLists are the access lists of every gate in the cluster
// (api.Lists): an edit is sent to every live member with the gate role,
// which stores it (its durableLists: in the shared PostgreSQL store, where
// the edit is idempotent, or in its own Pebble) and applies it; the answer
// comes from this node's gate, or from another one. Gates that were not
// live then get it from the shared store within a second (listsPoll), or,
// with Pebble, copy the others' lists when they join.
type clusterLists struct{ n *Node }

func (l clusterLists) Edit(ctx context.Context, r *apipb.UpdateAccessListRequest) error {
	ctx, cancel := context.WithTimeout(ctx, listsWait)
	defer cancel()
	if l.n.sys.View().Self.ID == "" {
		return status.Error(codes.Unavailable, notJoined)
	}
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
		// Stored first (in force here once stored), then in the gate.
		err := n.lists.Modify(func(s *gate.ListsSnapshot) { api.ApplyListEdit(s, e) })
		switch {
		case errors.Is(err, gate.ErrBadLists):
			return fail(codes.InvalidArgument, err.Error())
		case err != nil:
			return fail(codes.Unavailable, "not stored: "+err.Error())
		}
	}
	b, err := json.Marshal(n.gate.Lists().Snapshot())
	if err != nil {
		return fail(codes.Internal, err.Error())
	}
	return &actorpb.Reply{Body: &actorpb.Reply_Lists{Lists: &actorpb.ListsReply{Json: b}}}
}

// syncLists gives a gate that just joined the lists the other gates
// have, unless it reads them from a file or shares the store they keep
// them in (PostgreSQL: it loaded them at start). With a store of its own
// (Pebble), an edit made between its joining and this copy may be
// overwritten on this gate.
func (n *Node) syncLists() {
	if n.gate == nil || n.cfg.Gate.ListsFile != "" || n.cfg.Store == "postgres" || len(n.sys.View().Live(membership.RoleGate)) < 2 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), listsWait)
	defer cancel()
	s, err := n.peerLists(ctx)
	if err == nil {
		err = n.lists.Modify(func(l *gate.ListsSnapshot) { *l = s })
	}
	if err != nil {
		n.log.Warn("node: could not copy the access lists from the other gates; this gate starts with its own", "err", err)
	}
}
