package cluster

import (
	"context"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/messages/actorpb"
)

// nodeName is the well-known actor of every node that answers
// NodeRequests (cluster-wide services: statistics).
const nodeName = "courier-node"

// NodeHandler answers a NodeRequest on this node. It runs on the node
// actor, one request at a time, and must be quick.
type NodeHandler func(*actorpb.NodeRequest) *actorpb.Reply

// SetNodeHandler installs the node's answer to NodeRequests. Until then,
// and for requests it does not know, the answer is a Failure.
func (s *System) SetNodeHandler(h NodeHandler) { s.nodeHandler.Store(&h) }

func (s *System) answerNode(req *actorpb.NodeRequest) *actorpb.Reply {
	var r *actorpb.Reply
	if req.GetPing() != nil {
		return &actorpb.Reply{ReqId: req.ReqId, Body: &actorpb.Reply_Pong{Pong: &actorpb.Pong{}}}
	}
	if lc := req.GetLeaseCheck(); lc != nil {
		r = s.answerLease(lc)
	} else if h := s.nodeHandler.Load(); h != nil {
		r = (*h)(req)
	}
	if r == nil {
		r = &actorpb.Reply{Body: &actorpb.Reply_Failure{Failure: &actorpb.Failure{
			Code: int32(codes.Unimplemented), Message: "cluster: this node does not answer that request"}}}
	}
	r.ReqId = req.ReqId
	return r
}

// receiveNodeRequest is the node actor: it answers what the cluster's
// own upkeep needs at once (pings, lease checks, seen-out notices) and
// hands the rest (statistics, lists, drains) to the node's work actor,
// in order. A request there may wait on the store (a lists edit): lease
// checks queued behind it would come too late for the members asking
// while the provider is down, and every one of them would lose its lease.
func (s *System) receiveNodeRequest(ctx actor.Context) {
	req, ok := ctx.Message().(*actorpb.NodeRequest)
	if !ok {
		return
	}
	switch {
	case req.GetSeenOut() != nil:
		s.members.SeenOut(req.GetSeenOut().GetMember())
	case req.GetRelease() != nil:
		s.answerRelease(req) // answered now, or by a timer or a handoff's end
	case req.GetPing() != nil, req.GetLeaseCheck() != nil, s.nodeWork == nil:
		s.Reply(req.ReplyAddress, s.answerNode(req))
	default:
		ctx.Send(s.nodeWork, req)
	}
}

// receiveNodeWork is the node's work actor (see receiveNodeRequest).
func (s *System) receiveNodeWork(ctx actor.Context) {
	if req, ok := ctx.Message().(*actorpb.NodeRequest); ok {
		s.Reply(req.ReplyAddress, s.answerNode(req))
	}
}

// seenOutEvery is how often this node tells a member that its view blocks
// that member's instance while the provider still lists it passing.
const seenOutEvery = 2 * time.Second

// tellSeenOut tells the members whose instance this node's view blocks
// though the provider lists it passing (they do not know they are out:
// SeenOut), at most every seenOutEvery each. It runs with each view (on
// the membership's watcher goroutine) and every seenOutEvery (seenOutLoop:
// a quiet cluster's views come every 10 s, and a notice may be lost).
func (s *System) tellSeenOut(v *membership.View) {
	for _, m := range s.seenOutDue(v, time.Now()) {
		s.log.Warn("cluster: a member this node took for gone is still listed passing; telling it to rejoin", "member", m.ID, "address", m.Address)
		s.metrics.seenOut.Inc()
		s.actors.Root.Send(actor.NewPID(m.Address, nodeName), &actorpb.NodeRequest{Body: &actorpb.NodeRequest_SeenOut{SeenOut: &actorpb.SeenOut{Member: m.ID}}})
	}
}

// seenOutLoop sends the notices again while they are due.
func (s *System) seenOutLoop() {
	t := time.NewTicker(seenOutEvery)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			s.tellSeenOut(s.View())
		}
	}
}

// seenOutDue returns the members of v to tell they are out now, and
// records that they were told.
func (s *System) seenOutDue(v *membership.View, now time.Time) []membership.Member {
	s.seenOutMu.Lock()
	defer s.seenOutMu.Unlock()
	var due []membership.Member
	present := map[string]bool{}
	for _, m := range v.Members {
		if !m.Blocked || m.Health != membership.HealthPassing || m.Address == "" || m.Address == s.address {
			continue
		}
		present[m.ID] = true
		if last, ok := s.seenOutSent[m.ID]; ok && now.Sub(last) < seenOutEvery {
			continue
		}
		if s.seenOutSent == nil {
			s.seenOutSent = map[string]time.Time{}
		}
		s.seenOutSent[m.ID] = now
		due = append(due, m)
	}
	for id := range s.seenOutSent {
		if !present[id] {
			delete(s.seenOutSent, id)
		}
	}
	return due
}

// Gather sends req to every live member with all of roles (this node
// answers directly) and returns the replies that came before ctx ended,
// by member name, and the names of the members that did not answer. (Two
// live members of the same name are told apart by their instance ids.)
func (s *System) Gather(ctx context.Context, roles membership.Roles, req *actorpb.NodeRequest) (map[string]*actorpb.Reply, []string) {
	members := onePerAddress(s.View().Live(roles))
	names := map[string]int{}
	for _, m := range members {
		names[m.Name]++
	}
	for i := range members {
		if names[members[i].Name] > 1 {
			members[i].Name += "/" + members[i].ID
		}
	}
	type pending struct {
		name string
		id   uint64
		ch   chan *actorpb.Reply
	}
	replies := make(map[string]*actorpb.Reply, len(members))
	var waiting []pending
	for _, m := range members {
		if m.Address == s.address {
			q := proto.Clone(req).(*actorpb.NodeRequest)
			replies[m.Name] = s.answerNode(q)
			continue
		}
		id, ch := s.replies.register()
		s.replies.sentTo(id, m.Address)
		q := proto.Clone(req).(*actorpb.NodeRequest)
		q.ReqId, q.ReplyAddress = id, s.address
		s.actors.Root.Send(actor.NewPID(m.Address, nodeName), q)
		waiting = append(waiting, pending{m.Name, id, ch})
	}
	var missing []string
	for _, p := range waiting {
		select {
		case r := <-p.ch:
			replies[p.name] = r
			continue
		default:
		}
		select {
		case r := <-p.ch:
			replies[p.name] = r
		case <-ctx.Done():
			s.replies.forget(p.id)
			missing = append(missing, p.name)
		}
	}
	return replies, missing
}

// onePerAddress keeps, of the members listed at one address, the one
// started last: a node restarted within the TTL is still listed as its
// old instance too, and the process at the address answers for both (a
// request sent to each would be answered twice, and counted twice).
func onePerAddress(members []membership.Member) []membership.Member {
	at := map[string]int{}
	out := members[:0:0]
	for _, m := range members {
		if i, ok := at[m.Address]; ok {
			if m.StartedAt.After(out[i].StartedAt) {
				out[i] = m
			}
			continue
		}
		at[m.Address] = len(out)
		out = append(out, m)
	}
	return out
}

// AskNode sends req to the node at address (this node answers directly)
// and returns its reply, or an error when none came before ctx ended.
func (s *System) AskNode(ctx context.Context, address string, req *actorpb.NodeRequest) (*actorpb.Reply, error) {
	if address == s.address {
		return s.answerNode(req), nil
	}
	id, ch := s.replies.register()
	defer s.replies.forget(id)
	s.replies.sentTo(id, address)
	q := proto.Clone(req).(*actorpb.NodeRequest)
	q.ReqId, q.ReplyAddress = id, s.address
	s.actors.Root.Send(actor.NewPID(address, nodeName), q)
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: node %s: %v", ErrNoReply, address, ctx.Err())
	}
}

// Serve spawns the well-known actor name on this node, which hands every
// message other nodes send it (SendNode) to fn, one at a time. fn must
// not block.
func (s *System) Serve(name string, fn func(proto.Message)) error {
	_, err := s.actors.Root.SpawnNamed(actor.PropsFromFunc(func(ctx actor.Context) {
		if m, ok := ctx.Message().(proto.Message); ok {
			fn(m)
		}
	}), name)
	return err
}

// SendNode sends m to the well-known actor name of the node at address
// (this node's included), without waiting.
func (s *System) SendNode(address, name string, m proto.Message) {
	s.actors.Root.Send(actor.NewPID(address, name), m)
}

// OnView has fn called with the membership view whenever the live
// members change (and with the first view), on the membership's goroutine,
// after placement. Call it before Join.
func (s *System) OnView(fn func(*membership.View)) {
	s.viewMu.Lock()
	s.viewHooks = append(s.viewHooks, fn)
	s.viewMu.Unlock()
}
