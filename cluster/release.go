package cluster

import (
	"context"
	"sync"
	"time"

	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/messages/actorpb"
)

// Planned moves without fencing. When the placement changes while the
// old owner of an identity is still live (it drains, or this node joined
// and takes over part of what it held), that owner hands its actor off:
// the actor completes what it has in flight (a push being written, the
// deletions of what was acknowledged) and stops. The new owner's first
// load claims the identity in the store; a claim before the handoff
// completed would fence those writes (their callers told to retry, the
// acknowledged messages delivered again). So for a while after a change
// (releaseWindow), an identity activated here whose previous owner is a
// live member first asks that member to release it (a Release node
// request, batched per member) and holds the envelopes that reach it
// meanwhile; they go to the actor, in order, once it answers, or after
// releaseWait. Fencing still covers what this does not: an owner that
// died, an answer that comes too late.

// releaseWindow is how long after a change of the placement activations
// ask the identity's previous owner to release it.
const releaseWindow = 10 * time.Second

// releaseWait bounds how long an activation waits for the previous
// owner's answer.
const releaseWait = 2 * time.Second

// releaseBatchMax and releaseBatchDelay bound a batch of Release asks to
// one member; releaseAsksMax bounds the batches awaiting their answer
// (beyond, activations load at once, fencing as before).
const (
	releaseBatchMax   = 512
	releaseBatchDelay = 2 * time.Millisecond
	releaseAsksMax    = 1024
)

// releaseHoldMax is the most envelopes an activation holds while it
// waits; one more sends them on at once.
const releaseHoldMax = 256

// releaseWaitersMax bounds the Release requests this node holds before
// answering them.
const releaseWaitersMax = 1024

// prior is the placement before the last change, while asking its owners
// is worth it.
type prior struct {
	p     *placement
	until time.Time
	live  map[string]bool // addresses of the live members of the view
}

// notePrior records, when a view changes the placement from old to the
// one over addrs, where identities were before. A node placed for the
// first time (joining), or again as a new instance (rejoined: while it
// was out, others held its identities), takes old as the placement over
// the others. A view that places over the same members leaves the last
// record (its owners are still the previous ones).
func (s *System) notePrior(old *placement, addrs []string, v *membership.View, rejoined bool) {
	if !rejoined && old != nil && old.sameMembers(addrs) {
		return
	}
	if rejoined || old == nil || len(old.members) == 0 {
		var others []string
		for _, a := range addrs {
			if a != s.address {
				others = append(others, a)
			}
		}
		old = newPlacement(others, s.cfg.Shards, 0, shardsIn(v))
	}
	live := map[string]bool{}
	for _, m := range v.Live(0) {
		live[m.Address] = true
	}
	s.prior.Store(&prior{p: old, until: time.Now().Add(releaseWindow), live: live})
}

// releaseFrom returns the live member that owned the identity with hash h
// before the last change, if it is not this node and the change is
// recent ("" otherwise).
func (s *System) releaseFrom(h uint64) string {
	pr := s.prior.Load()
	if pr == nil || time.Now().After(pr.until) {
		return ""
	}
	o := pr.p.owner(h)
	if o == nil || o.address == s.address || !pr.live[o.address] {
		return ""
	}
	return o.address
}

// releaseAsks batches the Release asks of activations, by member.
type releaseAsks struct {
	mu       sync.Mutex
	batches  map[string]*releaseBatch
	inFlight int
}

type releaseBatch struct {
	keys  []heldKey
	timer *time.Timer
}

// heldKey is an activation waiting for a release: its identity and its
// child (an answer releases only the child that asked).
type heldKey struct {
	k childKey
	c *child
}

// askRelease asks the member at address to release k for its child c
// (k's shard lock is held by the caller; the answer comes on another
// goroutine). It reports false when no ask could be made: the caller
// does not wait.
func (s *System) askRelease(address string, k childKey, c *child) bool {
	a := &s.asks
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.batches[address]
	if b == nil {
		if a.inFlight >= releaseAsksMax {
			return false
		}
		a.inFlight++
		if a.batches == nil {
			a.batches = map[string]*releaseBatch{}
		}
		b = &releaseBatch{}
		a.batches[address] = b
		b.timer = time.AfterFunc(releaseBatchDelay, func() { s.sendRelease(address, b) })
	}
	b.keys = append(b.keys, heldKey{k, c})
	if len(b.keys) >= releaseBatchMax && b.timer.Stop() {
		delete(a.batches, address)
		go s.sendRelease(address, b)
	}
	return true
}

// sendRelease sends batch b to the member at address, waits for its
// answer (at most releaseWait) and lets the activations go on.
func (s *System) sendRelease(address string, b *releaseBatch) {
	a := &s.asks
	a.mu.Lock()
	if a.batches[address] == b {
		delete(a.batches, address)
	}
	keys := b.keys
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.inFlight--
		a.mu.Unlock()
	}()
	req := &actorpb.Release{WaitMs: releaseWait.Milliseconds() - 100, Identities: make([]*actorpb.ReleaseIdentity, len(keys))}
	for i, h := range keys {
		req.Identities[i] = &actorpb.ReleaseIdentity{AppCode: uint32(h.k.app), Uid: h.k.uid}
	}
	ctx, cancel := context.WithTimeout(context.Background(), releaseWait)
	ask := s.AskNode
	if s.askNodeForTest != nil {
		ask = s.askNodeForTest
	}
	r, err := ask(ctx, address, &actorpb.NodeRequest{Body: &actorpb.NodeRequest_Release{Release: req}})
	cancel()
	switch {
	case err != nil:
		s.metrics.releaseLate.Add(float64(len(keys)))
		s.log.Debug("cluster: the previous owner did not answer a release; loading anyway", "member", address, "identities", len(keys), "err", err)
	case r.GetReleased() == nil:
		// An older node, or one that does not host identities.
		s.metrics.releaseLate.Add(float64(len(keys)))
	default:
		s.metrics.releaseLate.Add(float64(r.GetReleased().GetPending()))
	}
	for _, h := range keys {
		s.released(h.k, h.c, true)
	}
}

// awaitRelease makes c, k's new activation, hold its envelopes while an
// actor of k on this node hands off, or while k's previous owner, a live
// member, has not released it (k's shard lock held).
func (s *System) awaitRelease(hash uint64, k childKey, c *child) {
	if s.waitLocalHandoff(k, c) {
		c.waitLocal = true
		s.metrics.releaseAsked.Inc()
		time.AfterFunc(releaseWait, func() { s.released(k, c, false) })
	}
	if from := s.releaseFrom(hash); from != "" && s.askRelease(from, k, c) {
		c.waitRemote = true
		s.metrics.releaseAsked.Inc()
	}
}

// waitLocalHandoff registers c to go on once this node's actor of k
// finishes handing off, if one does.
func (s *System) waitLocalHandoff(k childKey, c *child) bool {
	if s.handoffsPending() == 0 {
		return false // the usual case: no lock taken per activation
	}
	s.rel.mu.Lock()
	defer s.rel.mu.Unlock()
	if s.rel.busy[k] == 0 {
		return false
	}
	if s.rel.local == nil {
		s.rel.local = map[childKey]*child{}
	}
	s.rel.local[k] = c
	return true
}

// released ends c's wait for the previous owner (remote) or for this
// node's own handoff of k, and sends what it held to its actor once it
// waits for neither; if c is no longer k's child, nothing.
func (s *System) released(k childKey, c *child, remote bool) {
	if !remote {
		s.rel.mu.Lock()
		if s.rel.local[k] == c {
			delete(s.rel.local, k)
		}
		s.rel.mu.Unlock()
	}
	sh := &s.local[shard(identityHash(k.app, k.uid), len(s.local))]
	sh.mu.Lock()
	if sh.children[k] == c {
		if remote {
			c.waitRemote = false
		} else {
			c.waitLocal = false
		}
		if !c.waitRemote && !c.waitLocal {
			s.flushHeld(c)
		}
	}
	sh.mu.Unlock()
}

// takeHeld detaches the envelopes c held (its shard's lock held): for a
// child leaving the routing, which gets them in its Handoff and forwards
// them (sent before, they would have it load, claiming the identity from
// its new owner; after, they could reach a stopped actor).
func takeHeld(c *child) []*actorpb.Envelope {
	held := c.held
	c.held, c.waitRemote, c.waitLocal = nil, false, false
	return held
}

// flushHeld sends the envelopes c held, in order, and ends its waits
// (its shard's lock held).
func (s *System) flushHeld(c *child) {
	for i, env := range c.held {
		s.actors.Root.Send(c.pid, env)
		c.held[i] = nil
	}
	c.held, c.waitRemote, c.waitLocal = nil, false, false
}

// releaser holds the Release requests this node answers once it no
// longer holds their identities.
type releaser struct {
	mu      sync.Mutex
	busy    map[childKey]int    // actors handing off, by identity
	local   map[childKey]*child // activations waiting for one of them
	waiters map[*releaseWaiter]struct{}
	byKey   map[childKey][]*releaseWaiter
}

type releaseWaiter struct {
	req  *actorpb.NodeRequest
	keys map[childKey]bool // not released yet
	done bool
}

// heldHere reports whether this node still holds k: it owns it, has an
// actor of it, or one handing it off.
func (s *System) heldHere(k childKey) bool {
	if s.newChild == nil {
		return false
	}
	h := identityHash(k.app, k.uid)
	if o := s.placement.Load().owner(h); o != nil && o.address == s.address {
		return true
	}
	sh := &s.local[shard(h, len(s.local))]
	sh.mu.Lock()
	_, has := sh.children[k]
	sh.mu.Unlock()
	if has {
		return true
	}
	// A child leaves its shard and is counted busy under the shard's
	// lock: not found there, it is counted here if it hands off.
	s.rel.mu.Lock()
	defer s.rel.mu.Unlock()
	return s.rel.busy[k] > 0
}

// answerRelease answers req (a Release) now if none of its identities is
// held here, or once they are all released, or after its wait.
func (s *System) answerRelease(req *actorpb.NodeRequest) {
	rel := req.GetRelease()
	w := &releaseWaiter{req: req, keys: map[childKey]bool{}}
	for _, id := range rel.GetIdentities() {
		k := childKey{uint16(id.GetAppCode()), id.GetUid()}
		if s.heldHere(k) {
			w.keys[k] = true
		}
	}
	r := &s.rel
	r.mu.Lock()
	if len(w.keys) == 0 || len(r.waiters) >= releaseWaitersMax {
		r.mu.Unlock()
		s.replyReleased(w)
		return
	}
	if r.waiters == nil {
		r.waiters, r.byKey = map[*releaseWaiter]struct{}{}, map[childKey][]*releaseWaiter{}
	}
	r.waiters[w] = struct{}{}
	keys := make([]childKey, 0, len(w.keys))
	for k := range w.keys {
		r.byKey[k] = append(r.byKey[k], w)
		keys = append(keys, k)
	}
	r.mu.Unlock()
	wait := min(max(time.Duration(rel.GetWaitMs())*time.Millisecond, 0), releaseWait)
	time.AfterFunc(wait, func() { s.finishWaiter(w) })
	// A handoff may have ended between the check and the registration.
	s.recheckRelease(keys)
}

// finishAllWaiters answers every Release request still waiting, with
// what it waits for (a node stopping: answered now, before its remoting
// stops, rather than never).
func (s *System) finishAllWaiters() {
	s.rel.mu.Lock()
	ws := make([]*releaseWaiter, 0, len(s.rel.waiters))
	for w := range s.rel.waiters {
		ws = append(ws, w)
	}
	s.rel.mu.Unlock()
	for _, w := range ws {
		s.finishWaiter(w)
	}
}

// recheckRelease answers the waiters whose last held identity among
// keys (nil: every identity waited for) is no longer held here.
func (s *System) recheckRelease(keys []childKey) {
	r := &s.rel
	r.mu.Lock()
	if len(r.waiters) == 0 {
		r.mu.Unlock()
		return
	}
	if keys == nil {
		for k := range r.byKey {
			keys = append(keys, k)
		}
	}
	r.mu.Unlock()
	for _, k := range keys {
		if s.heldHere(k) {
			continue
		}
		var ready []*releaseWaiter
		r.mu.Lock()
		for _, w := range r.byKey[k] {
			delete(w.keys, k)
			if len(w.keys) == 0 && !w.done {
				ready = append(ready, w)
			}
		}
		delete(r.byKey, k)
		r.mu.Unlock()
		for _, w := range ready {
			s.finishWaiter(w)
		}
	}
}

// finishWaiter answers w once, with what it still waits for.
func (s *System) finishWaiter(w *releaseWaiter) {
	r := &s.rel
	r.mu.Lock()
	if w.done {
		r.mu.Unlock()
		return
	}
	w.done = true
	delete(r.waiters, w)
	for k := range w.keys {
		ws := r.byKey[k]
		for i, x := range ws {
			if x == w {
				ws = append(ws[:i:i], ws[i+1:]...)
				break
			}
		}
		if len(ws) == 0 {
			delete(r.byKey, k)
		} else {
			r.byKey[k] = ws
		}
	}
	r.mu.Unlock()
	s.replyReleased(w)
}

func (s *System) replyReleased(w *releaseWaiter) {
	s.Reply(w.req.ReplyAddress, &actorpb.Reply{ReqId: w.req.ReqId,
		Body: &actorpb.Reply_Released{Released: &actorpb.Released{Pending: uint32(len(w.keys))}}})
}

// handingOffKey records that an actor of k hands off (under k's shard
// lock, with markHandingOff).
func (s *System) handingOffKey(k childKey) {
	s.rel.mu.Lock()
	if s.rel.busy == nil {
		s.rel.busy = map[childKey]int{}
	}
	s.rel.busy[k]++
	s.rel.mu.Unlock()
}

// handoffEndedKey records that an actor of k finished handing off, and
// answers the Release requests that waited for it.
func (s *System) handoffEndedKey(k childKey) {
	s.rel.mu.Lock()
	var waiting *child
	if s.rel.busy[k]--; s.rel.busy[k] <= 0 {
		delete(s.rel.busy, k)
		waiting = s.rel.local[k]
	}
	s.rel.mu.Unlock()
	if waiting != nil {
		// An activation here that waited for this node's own handoff of
		// the identity (it came back, or this node rejoined) goes on.
		s.released(k, waiting, false)
	}
	s.recheckRelease([]childKey{k})
}
