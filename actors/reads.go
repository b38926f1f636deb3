package actors

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/grpc/codes"

	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
)

// An actor never waits for a store read on its worker: it asks the store
// (Store.LoadAsync, Store.IdempotencyAsync) and goes on; the answer
// comes back as a message (readDone), or at once from a store that reads
// inline (Pebble's idempotency lookups while its disk answers; its loads
// go to reader goroutines). While a read is outstanding the envelopes that arrive
// wait in the actor's stash, in arrival order, and are handled in that
// order once it is answered, so the identity's order holds as if the
// read had been synchronous. A presence query may be handled ahead of
// the stash while an idempotency lookup is outstanding, provided
// everything stashed is a push or a C2C (presence is answered at once
// behind their writes too). Nothing overtakes a load: without a machine
// there is nothing to answer from.

// maxLookupKeys bounds the idempotency keys of one lookup: the key of
// the envelope that waits for it and those of stashed envelopes, looked
// up ahead (prefetched) so that a burst of keyed pushes to one identity
// costs one read, not one per push.
const maxLookupKeys = 128

// stashFull answers an envelope that does not fit in the stash.
const stashFull = "the identity is waiting for the inbox store and has too many requests queued (actors.max-stashed): nothing was accepted; retry later with the same idempotency key"

// pendingRead is a store read an actor waits for: a load of its
// identity, or a lookup of idempotency keys.
type pendingRead struct {
	load bool
	// env is the envelope that waits for the read; nil for a load that
	// only rebuilds the machine (a close to apply, a failed write).
	env *actorpb.Envelope
	// keys are a lookup's keys: env's first, then those prefetched for
	// stashed envelopes.
	keys []string
	// state: 0 while the read runs; 1 if the store answered before the
	// actor went on (inline); 2 if the actor went on, and the answer
	// comes as a readDone message.
	state atomic.Int32
	snap  *store.Snapshot
	recs  []*actorpb.IdempotencyRecord
	err   error
}

// readDone brings the answer of a read the actor did not wait for.
type readDone struct{ r *pendingRead }

// drainStash has the actor handle its stash (after a panic left one).
type drainStash struct{}

// answered delivers the answer (set just before) to the actor.
func (r *pendingRead) answered(root *actor.RootContext, self *actor.PID) {
	if !r.state.CompareAndSwap(0, 1) {
		root.Send(self, &readDone{r})
	}
}

// startRead asks the store for r. If the store answers inline, the
// answer is handled before startRead returns; otherwise r is the
// actor's outstanding read until its readDone arrives.
func (a *deviceActor) startRead(ctx actor.Context, r *pendingRead) {
	self, root := ctx.Self(), ctx.ActorSystem().Root
	deadline := time.Now().Add(a.deps.Config.StoreTimeout)
	if r.load {
		a.deps.Store.LoadAsync(a.id, deadline, func(snap *store.Snapshot, err error) {
			r.snap, r.err = snap, err
			r.answered(root, self)
		})
	} else {
		a.deps.Store.IdempotencyAsync(a.id, r.keys, deadline, func(recs []*actorpb.IdempotencyRecord, err error) {
			if err == nil && len(recs) != len(r.keys) {
				err = fmt.Errorf("actors: the store answered %d records for %d keys", len(recs), len(r.keys))
			}
			r.recs, r.err = recs, err
			r.answered(root, self)
		})
	}
	// Registered only once the call returned: a store that panics
	// leaves no read behind that would never be answered.
	if r.state.CompareAndSwap(0, 2) {
		a.read = r
		return
	}
	a.finishRead(ctx, r)
}

// startLoad loads the identity for env (nil: no envelope waits). An
// actor handing its identity off loads nothing (that would claim the
// identity from its new owner): env goes to the new owner.
func (a *deviceActor) startLoad(ctx actor.Context, env *actorpb.Envelope) {
	if a.handingOff {
		if env != nil {
			a.deps.Router.Send(env)
		}
		return
	}
	a.startRead(ctx, &pendingRead{load: true, env: env})
}

// lookupKey returns the idempotency key env needs looked up before the
// machine can handle it, or "".
func lookupKey(env *actorpb.Envelope) string {
	switch b := env.Body.(type) {
	case *actorpb.Envelope_Push:
		if b.Push.GetStored() && b.Push.GetIdempotencyKey() != "" {
			return PushKey(b.Push.IdempotencyKey)
		}
	case *actorpb.Envelope_C2C:
		if id := b.C2C.GetC2C().GetClientMsgId(); id != "" {
			return C2CKey(b.C2C.FromUid, id)
		}
	}
	return ""
}

// idempotency returns the record the machine needs to handle env (nil
// if none) and true, or false if it has started a lookup that env now
// waits for. A key the machine wrote itself, or one looked up ahead for
// the stash, needs no read.
func (a *deviceActor) idempotency(ctx actor.Context, env *actorpb.Envelope) (*actorpb.IdempotencyRecord, bool) {
	key := lookupKey(env)
	now := a.deps.Now()
	if key == "" || a.d.KnowsIdempotencyKey(key, now) {
		return nil, true
	}
	if rec, ok := a.prefetched[key]; ok {
		delete(a.prefetched, key)
		return rec, true
	}
	keys := []string{key}
	for _, e := range a.stash {
		if len(keys) == maxLookupKeys {
			break
		}
		k := lookupKey(e)
		if _, ok := a.prefetched[k]; k == "" || ok || a.d.KnowsIdempotencyKey(k, now) || slices.Contains(keys, k) {
			continue
		}
		keys = append(keys, k)
	}
	a.startRead(ctx, &pendingRead{env: env, keys: keys})
	return nil, false
}

// finishRead handles the answer of a read (a.read is no longer it).
func (a *deviceActor) finishRead(ctx actor.Context, r *pendingRead) {
	a.current = r.env // answered if the actor panics meanwhile
	a.finishCurrent(ctx, r)
	a.current = nil
}

func (a *deviceActor) finishCurrent(ctx actor.Context, r *pendingRead) {
	if r.load {
		if r.err != nil {
			a.loadFailed(ctx, r)
			return
		}
		a.reloadStep = 0
		a.build(r.snap)
		if r.env != nil {
			a.handle(ctx, r.env)
		}
		return
	}
	if a.d == nil {
		// The machine was dropped meanwhile (its write failed): the
		// envelope starts over, with a load.
		a.handle(ctx, r.env)
		return
	}
	if r.err != nil {
		a.deps.warns.warn(a.deps.Log, time.Now(), "actors: idempotency lookup failed", "identity", a.id, "err", r.err)
		why := readRefusal(r.err)
		a.refuse(r.env, codes.Unavailable, devicepb.Code_STORE_UNAVAILABLE, why)
		// The stashed envelopes whose keys went in the same lookup get
		// the answer they would have had from it.
		a.stash = slices.DeleteFunc(a.stash, func(e *actorpb.Envelope) bool {
			if k := lookupKey(e); k != "" && slices.Contains(r.keys[1:], k) {
				a.refuse(e, codes.Unavailable, devicepb.Code_STORE_UNAVAILABLE, why)
				return true
			}
			return false
		})
		return
	}
	for i, k := range r.keys[1:] {
		if a.prefetched == nil {
			a.prefetched = map[string]*actorpb.IdempotencyRecord{}
		}
		a.prefetched[k] = r.recs[i+1]
	}
	a.apply(r.env, r.recs[0])
}

// readRefusal is what callers are told when a read failed.
func readRefusal(err error) string {
	if errors.Is(err, store.ErrOverloaded) {
		return overloaded
	}
	return storeDown
}

// loadFailed answers what waited for a failed load, as if each had
// tried its own: requests and device frames that expect an answer get a
// retryable failure, a close is kept for a later load (retried), and
// the rest (acknowledgements, which the device repeats) is dropped.
func (a *deviceActor) loadFailed(ctx actor.Context, r *pendingRead) {
	a.deps.warns.warn(a.deps.Log, time.Now(), "actors: loading identity failed", "identity", a.id, "err", r.err)
	why := readRefusal(r.err)
	if errors.Is(r.err, store.ErrOverloaded) {
		a.deps.Refused("read_queue")
	}
	waiting := a.stash
	if r.env != nil {
		waiting = append([]*actorpb.Envelope{r.env}, waiting...)
	}
	for _, e := range waiting {
		if e.GetClosed() != nil {
			a.unapplied = true
			continue
		}
		a.refuse(e, codes.Unavailable, devicepb.Code_STORE_UNAVAILABLE, why)
	}
	clear(a.stash)
	a.stash, a.stashOrdered = nil, 0
	if a.unapplied {
		a.scheduleReload(ctx)
	}
}

// deferred reports whether a presence query may overtake env (see
// mayOvertake): a push or a C2C, which change nothing presence answers
// before they are written.
func deferred(env *actorpb.Envelope) bool {
	switch env.Body.(type) {
	case *actorpb.Envelope_Push, *actorpb.Envelope_C2C:
		return true
	}
	return false
}

// mayOvertake reports whether env may be handled ahead of the stash:
// a presence query, while an idempotency lookup is outstanding and
// everything stashed is deferred. Not a fire-and-forget push: its frame
// would reach the device before the stored pushes accepted ahead of it
// (behind a write, it waits for the write).
func (a *deviceActor) mayOvertake(env *actorpb.Envelope) bool {
	if a.d == nil || a.read == nil || a.read.load || a.stashOrdered > 0 {
		return false
	}
	_, ok := env.Body.(*actorpb.Envelope_Presence)
	return ok
}

// stashEnv keeps env until the outstanding read is answered. Beyond
// Config.MaxStashed it is answered at once instead: a request or a
// frame that expects an answer with a retryable failure; a close, a gate
// going away or a sweep is applied to the machine once the stash has
// been handled (recheck); an acknowledgement is dropped (the device
// repeats it, or the message is delivered again).
func (a *deviceActor) stashEnv(env *actorpb.Envelope) {
	if len(a.stash) >= a.deps.Config.MaxStashed {
		switch env.Body.(type) {
		case *actorpb.Envelope_Closed, *actorpb.Envelope_GateDown, *actorpb.Envelope_Sweep:
			a.recheck = true
		default:
			a.deps.Refused("stash_full")
			a.refuse(env, codes.Unavailable, devicepb.Code_STORE_UNAVAILABLE, stashFull)
		}
		return
	}
	a.stash = append(a.stash, env)
	if !deferred(env) {
		a.stashOrdered++
	}
}

// drain handles the stash in order until it is empty or an envelope
// waits for a read again.
func (a *deviceActor) drain(ctx actor.Context) {
	for a.read == nil && len(a.stash) > 0 && !a.retired {
		env := a.stash[0]
		a.stash[0] = nil
		a.stash = a.stash[1:]
		if !deferred(env) {
			a.stashOrdered--
		}
		a.handle(ctx, env)
	}
	if len(a.stash) > 0 || a.read != nil {
		return
	}
	a.stash, a.stashOrdered, a.prefetched = nil, 0, nil
	if a.recheck && a.d != nil {
		// What did not fit in the stash: closes (remembered), a gate
		// that went away, a sweep.
		a.recheck = false
		now := a.deps.Now()
		for _, c := range a.closes {
			a.d.Closed(now, c)
		}
		if s := a.d.Session(); s != nil && !a.gateAlive(s.GetConn().GetGateId()) {
			a.d.GateDown(now, s.GetConn().GetGateId())
		}
		a.d.Tick(now)
	}
}

// forwardWaiting hands what waits for a read back to routing, for the
// identity's next activation or its new owner (the actor is retiring or
// handing off). The read's answer, if it comes, is ignored. A load
// already sent may still claim the identity after the next activation
// has: that activation's writes are then fenced and it starts over,
// which loses nothing.
func (a *deviceActor) forwardWaiting() {
	if r := a.read; r != nil {
		a.read = nil
		if r.env != nil {
			a.deps.Router.Send(r.env)
		}
	}
	for _, e := range a.stash {
		a.deps.Router.Send(e)
	}
	a.stash, a.stashOrdered, a.prefetched = nil, 0, nil
}
