package cluster

import (
	"strconv"
	"sync"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/grpc/codes"

	"github.com/courier-im/courier/messages/actorpb"
)

func hostName(i int) string { return "courier-host-" + strconv.Itoa(i) }

type childKey struct {
	app uint16
	uid string
}

type child struct {
	pid       *actor.PID
	forwarded uint64 // envelopes sent to it, under its shard's lock
}

// localShard is one shard of the identities this node hosts. Its lock is
// held while an envelope is counted and posted to a child (a non-blocking
// mailbox push), while a child is activated, and while one passivates, so
// that a child stops only when it has received every envelope counted for
// it: no envelope is ever lost in the mailbox of a stopping actor.
type localShard struct {
	mu       sync.Mutex
	children map[childKey]*child
}

// routeLocal delivers env to the local actor of its identity, activating
// it if needed. Senders on this node call it directly; envelopes from other
// nodes arrive through the host actors.
func (s *System) routeLocal(hash uint64, env *actorpb.Envelope) {
	if s.newChild == nil {
		s.fail(env, codes.Unavailable, "cluster: this node hosts no identities")
		return
	}
	sh := &s.local[shard(hash, len(s.local))]
	k := childKey{uint16(env.AppCode), env.Uid}
	sh.mu.Lock()
	c, ok := sh.children[k]
	if !ok {
		c = &child{pid: s.spawnCell()}
		sh.children[k] = c
		s.metrics.active.Inc()
		s.metrics.activations.Inc()
	}
	c.forwarded++
	s.actors.Root.Send(c.pid, env)
	sh.mu.Unlock()
}

// Passivate is called by an identity's actor when it is idle and may leave
// memory; seen is the number of envelopes it has received. It is stopped
// only if nothing was sent to it since; otherwise it stays and asks again
// later. pid is the caller's own PID.
func (s *System) Passivate(app uint16, uid string, pid *actor.PID, seen uint64) {
	k := childKey{app, uid}
	sh := &s.local[shard(identityHash(app, uid), len(s.local))]
	sh.mu.Lock()
	c, ok := sh.children[k]
	if !ok || c.pid.Id != pid.Id || c.forwarded != seen {
		sh.mu.Unlock()
		return
	}
	delete(sh.children, k)
	sh.mu.Unlock()
	s.metrics.active.Dec()
	s.metrics.passivations.Inc()
	s.actors.Root.Poison(pid)
}

// Retire stops an identity's actor at once (actors.Router): its
// identity's next envelope activates a fresh actor. It is for an actor
// that must not go on (another activation claimed its identity); the
// envelopes already sent to it still reach it, and it sends them back
// through Send. pid is the caller's own PID.
func (s *System) Retire(app uint16, uid string, pid *actor.PID) {
	k := childKey{app, uid}
	sh := &s.local[shard(identityHash(app, uid), len(s.local))]
	sh.mu.Lock()
	c, ok := sh.children[k]
	if ok && c.pid.Id == pid.Id {
		delete(sh.children, k)
		s.metrics.active.Dec()
		s.metrics.retired.Inc()
	}
	sh.mu.Unlock()
	s.actors.Root.Poison(pid)
}

// dropMoved stops the local actors of identities another member owns now.
// Their state is in the store; they come back on the owner at their next
// envelope.
func (s *System) dropMoved(p *placement) {
	for i := range s.local {
		sh := &s.local[i]
		var moved []*actor.PID
		sh.mu.Lock()
		for k, c := range sh.children {
			if o := p.owner(identityHash(k.app, k.uid)); o != nil && o.address != s.address {
				delete(sh.children, k)
				moved = append(moved, c.pid)
			}
		}
		sh.mu.Unlock()
		for _, pid := range moved {
			s.metrics.active.Dec()
			s.metrics.moved.Inc()
			s.actors.Root.Poison(pid)
		}
	}
}

// host receives the envelopes other members send to this node's
// identities, and forwards those whose owner changed meanwhile.
type host struct{ sys *System }

func newHost(sys *System) actor.Actor { return &host{sys: sys} }

func (h *host) Receive(ctx actor.Context) {
	if env, ok := ctx.Message().(*actorpb.Envelope); ok {
		h.sys.route(env)
	}
}

// route sends env towards the owner of its identity: here, or to the
// owner's host while members disagree (at most MaxHops times, then here).
func (s *System) route(env *actorpb.Envelope) {
	hash := identityHash(uint16(env.AppCode), env.Uid)
	owner := s.placement.Load().owner(hash)
	if owner != nil && owner.address != s.address {
		if int(env.Hops) < s.cfg.MaxHops {
			env.Hops++
			s.actors.Root.Send(owner.hosts[shard(hash, s.cfg.Shards)], env)
			s.metrics.forwarded.Inc()
			return
		}
		// Members disagree for longer than a few hops: serve here rather
		// than bounce; the store keeps the identity's state consistent.
		s.log.Warn("cluster: identity owned elsewhere, serving locally after max hops",
			"app", env.AppCode, "uid", env.Uid, "owner", owner.address)
	}
	s.routeLocal(hash, env)
}
