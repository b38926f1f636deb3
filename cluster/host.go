package cluster

import (
	"strconv"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/grpc/codes"

	"github.com/courier-im/courier/messages/actorpb"
)

// Passivate is what an identity's actor sends its host (its parent) when it
// is idle and may leave memory. Seen is the number of envelopes it has
// received; the host stops it only if it has forwarded no more than that,
// so no envelope is ever lost in the mailbox of a stopping actor.
type Passivate struct {
	App  uint16
	UID  string
	Seen uint64
}

// topologyChanged tells hosts to give up identities they no longer own.
type topologyChanged struct{ p *placement }

func hostName(i int) string { return "courier-host-" + strconv.Itoa(i) }

type childKey struct {
	app uint16
	uid string
}

type child struct {
	pid       *actor.PID
	forwarded uint64
}

// host owns the actors of the identities of one shard on this node. It
// activates an identity's actor on its first envelope, forwards envelopes
// for identities another node owns, and stops actors that ask to passivate
// or that moved elsewhere.
type host struct {
	sys      *System
	children map[childKey]*child
	byPID    map[string]childKey
}

func newHost(sys *System) actor.Actor {
	return &host{sys: sys, children: map[childKey]*child{}, byPID: map[string]childKey{}}
}

func (h *host) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actorpb.Envelope:
		h.route(ctx, m)
	case *Passivate:
		k := childKey{m.App, m.UID}
		c, ok := h.children[k]
		if !ok || ctx.Sender() == nil || c.pid.Id != ctx.Sender().Id || c.forwarded != m.Seen {
			return
		}
		h.drop(k, c)
		ctx.Poison(c.pid)
		h.sys.metrics.passivations.Inc()
	case *actor.Terminated:
		if k, ok := h.byPID[m.Who.Id]; ok {
			h.drop(k, h.children[k])
		}
	case *topologyChanged:
		for k, c := range h.children {
			if o := m.p.owner(identityHash(k.app, k.uid)); o != nil && o.address != h.sys.address {
				h.drop(k, c)
				ctx.Poison(c.pid)
				h.sys.metrics.moved.Inc()
			}
		}
	}
}

func (h *host) drop(k childKey, c *child) {
	delete(h.children, k)
	delete(h.byPID, c.pid.Id)
	h.sys.metrics.active.Dec()
}

func (h *host) route(ctx actor.Context, env *actorpb.Envelope) {
	hash := identityHash(uint16(env.AppCode), env.Uid)
	owner := h.sys.placement.Load().owner(hash)
	if owner != nil && owner.address != h.sys.address {
		if int(env.Hops) < h.sys.cfg.MaxHops {
			env.Hops++
			ctx.Send(owner.hosts[shard(hash, h.sys.cfg.Shards)], env)
			h.sys.metrics.forwarded.Inc()
			return
		}
		// Nodes disagree for longer than a few hops: serve here rather
		// than bounce; the store keeps the identity's state consistent.
		h.sys.log.Warn("cluster: identity owned elsewhere, serving locally after max hops",
			"app", env.AppCode, "uid", env.Uid, "owner", owner.address)
	}
	k := childKey{uint16(env.AppCode), env.Uid}
	c, ok := h.children[k]
	if !ok {
		if h.sys.newChild == nil {
			h.sys.fail(env, codes.Unavailable, "cluster: this node hosts no identities")
			return
		}
		pid := ctx.Spawn(actor.PropsFromProducer(h.sys.newChild(k.app, k.uid), actor.WithDispatcher(h.sys.dispatcher)))
		c = &child{pid: pid}
		h.children[k] = c
		h.byPID[pid.Id] = k
		h.sys.metrics.active.Inc()
		h.sys.metrics.activations.Inc()
	}
	c.forwarded++
	ctx.Send(c.pid, env)
}
