package cluster

import (
	"maps"
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
	// waitRemote: the identity's previous owner, another member, is
	// asked to release it; waitLocal: an actor of it on this node hands
	// off (release.go). While either waits, held are the envelopes
	// counted for the actor and not sent to it yet, in order.
	waitRemote, waitLocal bool
	held                  []*actorpb.Envelope
}

// localShard is one shard of the identities this node hosts. Its lock is
// held while an envelope is counted and posted to a child (a non-blocking
// mailbox push), while a child is activated, and while one passivates, so
// that a child stops only when it has received every envelope counted for
// it: no envelope is ever lost in the mailbox of a stopping actor.
type localShard struct {
	mu       sync.Mutex
	children map[childKey]*child
	peak     int // the most children held since the map was made
}

// shardShrinkMin is the least peak after which a shard's map is rebuilt
// smaller (shrink).
const shardShrinkMin = 64

// shrink rebuilds the shard's map once it holds at most a quarter of its
// peak (call with mu held). Go maps never give back their room, so after
// a wave of passivations the routing would go on costing what the peak
// needed (about 60 bytes per identity); the copy is paid for by the
// deletions since the peak.
func (sh *localShard) shrink() {
	if sh.peak < shardShrinkMin || len(sh.children) > sh.peak/4 {
		return
	}
	m := make(map[childKey]*child, len(sh.children))
	maps.Copy(m, sh.children)
	sh.children, sh.peak = m, len(m)
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
		// The caller read the placement before taking the lock: a view
		// change may have moved the identity since, and its dropMoved
		// (which takes this lock after storing the placement) already
		// run. An actor activated now would be in no handoff, and would
		// claim the identity from its new owner: route it again.
		if o := s.placement.Load().owner(hash); o == nil || o.address != s.address {
			sh.mu.Unlock()
			s.route(env)
			return
		}
		// Nor may the lease have lapsed since the caller checked it: the
		// dropAll of its loss may have run already, and an actor
		// activated now would claim the identity, fencing its real
		// owner, until this node rejoins.
		if !s.leaseHeld() {
			sh.mu.Unlock()
			s.metrics.leaseRefused.Inc()
			s.fail(env, codes.Unavailable, "cluster: this node is not sure it is still a member (its membership lease lapsed); retry")
			return
		}
		c = &child{pid: s.spawnCell()}
		sh.children[k] = c
		sh.peak = max(sh.peak, len(sh.children))
		s.metrics.active.Inc()
		s.metrics.activations.Inc()
		s.awaitRelease(hash, k, c)
	}
	c.forwarded++
	if c.waitRemote || c.waitLocal {
		if len(c.held) < releaseHoldMax {
			c.held = append(c.held, env)
			sh.mu.Unlock()
			return
		}
		s.flushHeld(c)
	}
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
	sh.shrink()
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
		sh.shrink()
		s.metrics.active.Dec()
		s.metrics.retired.Inc()
	}
	sh.mu.Unlock()
	s.handoffEnded(pid) // fenced while handing off
	s.actors.Root.Poison(pid)
}

// HandedOff is called by an identity's actor that finished handing its
// identity off (actors.Router): it stops.
func (s *System) HandedOff(_ uint16, _ string, pid *actor.PID) {
	s.handoffEnded(pid)
	s.actors.Root.Poison(pid)
}

// handoff tells actors that left this node's routing (another member owns
// their identity now, or this node is leaving) to complete what they have
// in flight and stop (*actorpb.Handoff), with what its activation held
// for a release, which it forwards. The caller recorded them in
// handingOff, under their shard's lock.
func (s *System) handoff(pids []*actor.PID, held map[*actor.PID][]*actorpb.Envelope) {
	if s.beforeHandoff != nil {
		s.beforeHandoff(pids)
	}
	for _, pid := range pids {
		s.metrics.handoffs.Inc()
		s.actors.Root.Send(pid, &actorpb.Handoff{Held: held[pid]})
	}
}

// markHandingOff records that c's actor, of identity k, is handing off,
// until handoffEnded (under k's shard lock). It returns the envelopes c
// held waiting for a release: they go to the actor after its Handoff.
func (s *System) markHandingOff(k childKey, c *child) []*actorpb.Envelope {
	pid := c.pid
	held := takeHeld(c)
	if _, loaded := s.handingOff.LoadOrStore(pid.Id, k); !loaded {
		s.handingOffN.Add(1)
		s.metrics.handingOff.Inc()
		s.handingOffKey(k)
	}
	return held
}

func (s *System) handoffEnded(pid *actor.PID) {
	if k, ok := s.handingOff.LoadAndDelete(pid.Id); ok {
		s.handingOffN.Add(-1)
		s.metrics.handingOff.Dec()
		s.handoffEndedKey(k.(childKey))
	}
}

// handoffsPending reports how many actors have not finished handing off.
func (s *System) handoffsPending() int { return int(s.handingOffN.Load()) }

// dropMoved hands off the local actors of identities this node does not
// own under p (another member does, or none: this node is leaving). They
// leave the routing at once, under their shard's lock, so that no
// envelope is sent to them after the Handoff: every envelope they got
// before it is theirs to complete. The new owner loads the identity from
// the store at its next envelope, once this node answered that it
// released it (release.go), or without that answer after a while
// (claiming it: a write of the old activation that lands after that
// claim is fenced, and its caller is told to retry).
func (s *System) dropMoved(p *placement) {
	for i := range s.local {
		sh := &s.local[i]
		var moved []*actor.PID
		var held map[*actor.PID][]*actorpb.Envelope
		sh.mu.Lock()
		for k, c := range sh.children {
			if o := p.owner(identityHash(k.app, k.uid)); o == nil || o.address != s.address {
				delete(sh.children, k)
				moved = append(moved, c.pid)
				// Under the lock: a Retire of the actor after it (fenced)
				// finds the entry and ends it.
				if h := s.markHandingOff(k, c); len(h) > 0 {
					if held == nil {
						held = map[*actor.PID][]*actorpb.Envelope{}
					}
					held[c.pid] = h
				}
			}
		}
		sh.shrink()
		sh.mu.Unlock()
		s.metrics.active.Sub(float64(len(moved)))
		s.metrics.moved.Add(float64(len(moved)))
		s.handoff(moved, held)
	}
}

// dropAll hands off every local actor: this node rejoined as a new
// instance, and while it was taken for gone other members may have taken
// over its identities (their writes fence this node's).
func (s *System) dropAll() {
	for i := range s.local {
		sh := &s.local[i]
		sh.mu.Lock()
		children := sh.children
		sh.children, sh.peak = map[childKey]*child{}, 0
		pids := make([]*actor.PID, 0, len(children))
		var held map[*actor.PID][]*actorpb.Envelope
		for k, c := range children {
			pids = append(pids, c.pid)
			if h := s.markHandingOff(k, c); len(h) > 0 { // as in dropMoved
				if held == nil {
					held = map[*actor.PID][]*actorpb.Envelope{}
				}
				held[c.pid] = h
			}
		}
		sh.mu.Unlock()
		s.metrics.active.Sub(float64(len(pids)))
		s.metrics.moved.Add(float64(len(pids)))
		s.handoff(pids, held)
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
// owner's host. While members disagree about the owner an envelope may be
// forwarded up to MaxHops times; beyond, when no member hosts
// identities, or when this node owns the identity but holds no lease, a
// request fails with a retryable error and a one-way envelope is counted
// as undeliverable and refused through OnUndeliverable (a device's
// LOGIN, C2C or PULL gets its retryable answer). An identity is never served by a
// node that does not own it: two owners could both act for it.
func (s *System) route(env *actorpb.Envelope) {
	hash := identityHash(uint16(env.AppCode), env.Uid)
	owner := s.placement.Load().owner(hash)
	switch {
	case owner == nil:
		s.fail(env, codes.Unavailable, "cluster: no live member hosts identities; retry")
	case owner.address == s.address && !s.leaseHeld():
		s.metrics.leaseRefused.Inc()
		s.fail(env, codes.Unavailable, "cluster: this node is not sure it is still a member (its membership lease lapsed); retry")
	case owner.address == s.address:
		s.routeLocal(hash, env)
	case int(env.Hops) >= s.cfg.MaxHops:
		s.metrics.hopsExceeded.Inc()
		s.log.Warn("cluster: members disagree about an identity's owner; refusing rather than serving it here",
			"app", env.AppCode, "uid", env.Uid, "owner", owner.address, "hops", env.Hops)
		s.fail(env, codes.Unavailable, "cluster: the identity's owner is changing; retry")
	default:
		env.Hops++
		if env.ReqId != 0 && env.ReplyAddress == s.address {
			s.replies.sentTo(env.ReqId, owner.address)
		}
		s.actors.Root.Send(owner.hosts[shard(hash, len(owner.hosts))], env) // the owner's shards
		s.metrics.forwarded.Inc()
	}
}
