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
// with Pebble, copy the others' lists when they join and when they hold a
// lease again (syncLists).
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
		err := n.lists.Edit(e)
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

// listsShared reports whether this node's gate gets every edit of the
// access lists without asking the other gates: it reads them from a file,
// or it keeps them in the store they share (PostgreSQL: it loaded them at
// start and polls them), or it has none.
func (n *Node) listsShared() bool {
	return n.gate == nil || n.cfg.Gate.ListsFile != "" || n.cfg.Store == "postgres"
}

// syncLists gives a gate with lists of its own (Pebble) the lists the
// other gates have: when it joins, and when it holds a lease again (edits
// made meanwhile went only to the live gates). The edits that reached
// this gate since it could be reached again (durableLists.Record) are
// applied over the copy: the gate copied from may not have applied them
// yet when it answered. gen is the lease generation the copy is for: a
// copy for an earlier one (the lease was lost again since) is dropped;
// rec is the recording it ends (durableLists.Replace).
func (n *Node) syncLists(gen, rec uint64) {
	if n.listsShared() {
		return
	}
	var copied *gate.ListsSnapshot
	if len(n.sys.View().Live(membership.RoleGate)) >= 2 {
		ctx, cancel := context.WithTimeout(context.Background(), listsWait)
		s, err := n.peerLists(ctx)
		cancel()
		if err != nil {
			n.log.Warn("node: could not copy the access lists from the other gates; this gate keeps its own", "err", err)
		} else {
			copied = &s
		}
	}
	if n.leaseGen.Load() != gen {
		return // lost since: the next regain copies them again
	}
	if err := n.lists.Replace(rec, copied); err != nil {
		n.log.Warn("node: could not store the access lists copied from the other gates; this gate keeps its own", "err", err)
	}
}
