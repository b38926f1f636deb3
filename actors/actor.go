package actors

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/gate/wheel"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
)

// Router is how a device actor reaches gates, callers and other actors
// anywhere in the cluster, and leaves memory (implemented by
// *cluster.System).
type Router interface {
	// SendToConn sends m to a device's connection and reports whether it
	// went out as it is: false when this node holds no membership lease
	// (then only the answers to the device's requests go, as retryable
	// refusals, or nothing).
	SendToConn(conn *actorpb.ConnRef, m *actorpb.ToConn) bool
	Reply(address string, r *actorpb.Reply)
	// Passivate asks to stop the actor; seen is the number of envelopes
	// it has received. It stops only if that is every envelope sent to it.
	Passivate(app uint16, uid string, pid *actor.PID, seen uint64)
	// Retire stops the actor at once: the identity's next envelope
	// activates a fresh actor. Envelopes already on their way to the
	// retired one reach it anyway; it hands them back to Send.
	Retire(app uint16, uid string, pid *actor.PID)
	// HandedOff says the actor finished a handoff (*actorpb.Handoff):
	// nothing it accepted is in flight any more, and it stops.
	HandedOff(app uint16, uid string, pid *actor.PID)
	// Send delivers an envelope to its identity's actor, wherever it is.
	Send(env *actorpb.Envelope)
}

// Gates tells which gate instances are alive, and which are behind
// (implemented by *cluster.System). A session on a gate instance that is
// not alive has ended, even if nobody said so: its connection went with
// the gate.
type Gates interface {
	GateAlive(id string) bool
	// GateBehind returns how far behind the gate holding conn is, if it
	// is over api.max-gate-backlog, else 0: a push to conn that came
	// through the API of the node at requester is then refused.
	GateBehind(conn *actorpb.ConnRef, requester string) time.Duration
}

// Deps are what every device actor of a node shares.
type Deps struct {
	Config *Config
	Store  store.Store
	Router Router
	// Gates may be nil: every gate instance is then taken for alive.
	Gates Gates
	Stats Stats
	IDs   *IDGen
	Log   *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Writes is the node's budget of pending store writes (default: one
	// of Config.MaxPendingWrites slots).
	Writes *WriteBudget
	// Fenced, if set, is called for each write the store refused because
	// another activation had claimed the identity since (store.ErrFenced).
	Fenced func()
	// Refused, if set, is called for each request refused at once for
	// the node's store pressure, with why: "pending_writes"
	// (actors.max-pending-writes), "store_stalled" (store.stall-after),
	// "stash_full" (actors.max-stashed), "read_queue" (store.read-queue),
	// "answers_waiting" (Device.Backlogged: about four times
	// actors.window-bytes of answers behind a write that does not
	// complete).
	Refused func(why string)

	idle     *idleWheel  // the actors' idle checks
	machines *MachineEnv // what the machines share
	warns    *warnThrottle
}

// NewDeps fills in the defaults of d (the clock, no statistics, the write
// budget) and returns it. Call it once, before the actors start.
func NewDeps(d Deps) *Deps {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Stats == nil {
		d.Stats = NopStats{}
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if d.Writes == nil {
		n := d.Config.MaxPendingWrites
		if n <= 0 {
			n = DefaultConfig().MaxPendingWrites
		}
		d.Writes = NewWriteBudget(n)
	}
	if d.Fenced == nil {
		d.Fenced = func() {}
	}
	if d.Refused == nil {
		d.Refused = func(string) {}
	}
	d.idle = newIdleWheel(d.Config.PassivateAfter)
	d.warns = &warnThrottle{}
	d.machines = &MachineEnv{Config: d.Config, Stats: d.Stats, NewID: d.IDs.Next}
	return &d
}

// NewActor makes a device actor; it takes its identity from the first
// envelope it receives. It fits cluster.ChildFactory; d must come from
// NewDeps.
func (d *Deps) NewActor() actor.Actor { return &deviceActor{deps: d} }

// Messages a device actor sends itself.
type (
	writeDone struct{ err error }
	// detachedDone: a detached deletion is done; fenced, with the owner
	// epoch it was written under (a fence of an older activation's write,
	// after this actor reloaded the identity, ends nothing).
	detachedDone struct {
		failed, fenced bool
		owner          uint64
	}
	slotFree struct{}
	tick     struct{}
)

// writeOK is the completion of every successful write (it is only read).
var writeOK = &writeDone{}

type (
	reload    struct{}
	idleCheck struct{}
)

// Answers of envelopes the actor cannot hand to its machine.
const (
	overloaded = "the inbox store is overloaded (the node's store writes in flight, actors.max-pending-writes, or reads queued, store.read-queue, are at their bound): nothing was accepted; retry later with the same idempotency key"
	backlogged = "the identity's store writes have not completed and its answers wait behind them (about four times actors.window-bytes): nothing was done; retry later"
	stalled    = "the inbox store has not completed a commit for longer than store.stall-after (its disk does not answer): nothing was accepted; retry later with the same idempotency key"
	crashed    = "the identity's actor failed while this request was in flight: it may or may not have been accepted; retry later with the same idempotency key"
)

// keptCloses is how many recent connection closes an actor remembers, to
// apply again whenever it rebuilds its machine from the store (a close
// whose write failed, or that came while the store could not be read,
// must not leave the session online).
const keptCloses = 8

// deviceActor performs the I/O of one identity's Device: it loads the
// state, submits writes, sends effects, arms the retry timer and asks to
// passivate when idle. It recovers from its own panics (the library's
// supervisor would replace it with a fresh actor that knows neither its
// identity nor how many envelopes it has received, and could never
// passivate again): the machine is dropped and rebuilt from the store.
type deviceActor struct {
	deps *Deps
	id   store.Identity
	d    *Device // nil until loaded (or after a failed write or a panic)
	seen uint64  // envelopes received, for the passivation handshake

	timer   *time.Timer
	timerAt int64 // when timer fires (Unix nanoseconds; 0: not armed)
	// idleNode schedules, on the node's idle wheel, a check every
	// PassivateAfter whether the actor has been idle that long (the
	// library's receive timeout is not used: it fires once, and its timer
	// races with the mailbox). self is the PID the check is posted to
	// (guarded by the wheel's lock).
	idleNode wheel.Node[deviceActor]
	self     *actor.PID
	// refusedLogin is the session a LOGIN_ACK OK opened that the router
	// could not send (the node lost its lease): perform posts it back to
	// the actor as a close (loginRefused).
	refusedLogin *actorpb.DeviceClosed
	lastActive   time.Duration // the last envelope's time (since the idle wheel's start)
	// detached counts deletions submitted without waiting whose
	// detachedDone has not come: the actor does not passivate or finish
	// a handoff before they are done, or the next activation would load
	// the entries again (and its claim could fence the deletion).
	detached int32
	// stashOrdered and reloadStep are described below (Store reads,
	// closes); they and the flags that follow share one word.
	stashOrdered int32
	reloadStep   uint8
	// crashes counts the panics since the last write that succeeded: a
	// machine that panics again and again (a record this binary cannot
	// handle) is not reloaded by itself more than maxCrashReloads times.
	crashes uint8
	// refusals counts the loginRefused posted and not handled yet: the
	// actor does not passivate before it applied them (a close that
	// needs a load would be cut off by the stop).
	refusals uint16
	// writeFails counts the store writes that failed in a row: from the
	// second, the reload that follows waits (scheduleReload). Only a write
	// that succeeds clears it: a store that refuses every write still
	// loads (a Pebble stall), and each ack or push after a load would
	// otherwise write, fail and reload at once again.
	writeFails uint8
	// writing: a write taken from a machine has not completed. No machine
	// is loaded meanwhile (the load could miss the write).
	writing bool
	// slotWait: registered with the write budget, waiting for a slot.
	slotWait bool
	// fenceSeen: a detached write was fenced while a write was in flight;
	// the actor stops when that write completes.
	fenceSeen bool
	// retired: the actor left the routing layer (fenced, or handed off);
	// it only hands the envelopes that still reach it back to the router.
	retired bool
	// handingOff: another member owns the identity now; the actor
	// completes what is in flight, loads nothing, and then stops.
	handingOff bool
	// unapplied: a machine must be loaded, for a close that came while
	// none could be (see closes), or because one with work left (a
	// session to deliver to, stored messages) was dropped after a failed
	// write or a panic: only a machine retries deliveries, and the
	// identity may get no other envelope to rebuild one.
	unapplied bool
	recheck   bool // see Store reads

	// closes are the recent closes of the identity's connections,
	// applied again to every machine loaded; unapplied says one came
	// while no machine could be loaded (the load is retried meanwhile,
	// after 100 ms doubling to 5 s: reloadStep counts the retries).
	closes      []*actorpb.DeviceClosed
	reloadTimer *time.Timer

	// Store reads (reads.go). read is the one outstanding (nil: none);
	// stash holds the envelopes that arrived meanwhile, in order (at
	// most Config.MaxStashed), stashOrdered how many of them are not
	// deferred (mayOvertake). prefetched are idempotency records looked
	// up ahead for stashed envelopes, by key (nil: none stored). recheck:
	// a close, a gate's end or a sweep did not fit in the stash and is
	// applied once it is handled. current is the envelope being handled,
	// answered if the actor panics.
	read       *pendingRead
	stash      []*actorpb.Envelope
	prefetched map[string]*actorpb.IdempotencyRecord
	current    *actorpb.Envelope
}

func (a *deviceActor) Receive(ctx actor.Context) {
	defer func() {
		if r := recover(); r != nil {
			a.crashed(ctx, r)
		}
	}()
	msg := ctx.Message()
	switch m := msg.(type) {
	case *actor.Started:
		a.lastActive = a.deps.idle.since()
		a.armIdle(ctx, a.deps.Config.PassivateAfter)
	case *actorpb.Envelope:
		// Only envelopes count as activity: the actor's own timers and
		// completions do not keep it in memory.
		a.lastActive = a.deps.idle.since()
		if a.seen == 0 {
			a.id = store.Identity{App: uint16(m.AppCode), UID: m.Uid}
		}
		a.seen++
		if a.retired || a.handingOff {
			a.deps.Router.Send(m)
			return
		}
		a.envelope(ctx, m)
	case *readDone:
		if a.retired || m.r != a.read {
			return // given up: the actor was fenced
		}
		a.read = nil
		a.finishRead(ctx, m.r)
	case loginRefused:
		// Not an envelope: it does not count in the passivation
		// handshake (the router did not send it).
		a.refusals--
		env := &actorpb.Envelope{AppCode: uint32(a.id.App), Uid: a.id.UID, Body: &actorpb.Envelope_Closed{Closed: m.c}}
		if a.retired || a.handingOff {
			// The identity's next actor (here or at its new owner) ends
			// the session: dropped, it stayed online in the store.
			a.deps.Router.Send(env)
			return
		}
		a.envelope(ctx, env)
	case drainStash:
	case *writeDone:
		a.writing = false
		if a.retired {
			return
		}
		a.writeDone(ctx, m.err)
		if a.retired {
			return
		}
	case *actorpb.Handoff:
		if a.retired {
			a.forwardHeld(m)
			return
		}
		a.handingOff = true
		// What waits for a store read was not accepted: the new owner
		// takes it, in order, ahead of what reaches this actor later.
		a.forwardWaiting()
		a.forwardHeld(m)
		if a.d != nil {
			// The new owner would deliver them again.
			a.d.FlushDeletions()
		}
	case detachedDone:
		a.detached--
		if a.retired {
			return
		}
		if a.d == nil {
			// Its machine was dropped (a failed write, a panic) while the
			// deletion was out: a handoff waiting for it ends now.
			if a.handingOff {
				a.finishHandoff(ctx)
			}
			return
		}
		if m.owner == a.d.Owner() {
			a.d.DetachedDone(m.failed)
		}
		if m.fenced && m.owner == a.d.Owner() {
			if a.writing {
				a.fenceSeen = true // the write in flight ends it
				return
			}
			a.fence(ctx)
			return
		}
	case slotFree:
		a.slotWait = false
		if a.retired || a.d == nil || !a.d.WriteReady() {
			// Nothing to write after all (the machine was dropped
			// meanwhile): the freed slot this wake-up stands for goes to
			// the next waiter, or it would wait for an unrelated write.
			a.deps.Writes.Forget(a)
		}
	case tick:
		a.timerAt = 0
		if a.d != nil {
			a.d.Tick(a.deps.Now())
		}
	case reload:
		a.reloadTimer = nil
		if a.retired || a.d != nil || a.writing || !a.unapplied || a.read != nil {
			return
		}
		a.startLoad(ctx, nil)
	case idleCheck:
		if wait := a.deps.Config.PassivateAfter - (a.deps.idle.since() - a.lastActive); wait > 0 {
			a.armIdle(ctx, wait)
			if a.d != nil && a.d.DeletionsWaiting() && a.quiet() && !a.deps.Store.Stalled() {
				// Active (presence queries, fire-and-forget pushes) but
				// writing nothing: the deletions of what was acknowledged
				// would wait for a write for as long as that lasts, the
				// entries stored and delivered again after a crash or a
				// move. At most one such write per PassivateAfter.
				a.d.FlushDeletions()
				break
			}
			return
		}
		if a.d != nil && a.d.IdleButDeletions() && a.quiet() {
			if a.deps.Store.Stalled() {
				// The write would be refused, and the failure reload the
				// identity (its acknowledged messages delivered again):
				// stay, and try at the next check.
				a.armIdle(ctx, a.deps.Config.PassivateAfter)
				return
			}
			// Idle but for the deletions of what was acknowledged last:
			// write them, and look again once they are written.
			a.d.FlushDeletions()
			a.armIdle(ctx, min(a.deps.Config.PassivateAfter, flushSettle))
			break
		}
		a.armIdle(ctx, a.deps.Config.PassivateAfter) // in case the router says not yet
		if a.d != nil && a.d.DeletionsWaiting() && a.quiet() && !a.deps.Store.Stalled() {
			// Not idle (a delivery waits for its acknowledgement, for as
			// long as the device withholds it), but what it did
			// acknowledge is deleted: stored, it would be delivered again
			// after a crash or a move. At most one such write per
			// PassivateAfter.
			a.d.FlushDeletions()
			break
		}
		if a.idle() {
			a.deps.Router.Passivate(a.id.App, a.id.UID, ctx.Self(), a.seen)
		}
		return
	case *actor.Stopping:
		a.stopTimers()
		if a.slotWait {
			a.deps.Writes.Forget(a)
		}
		return
	default:
		return
	}
	a.drain(ctx)
	a.perform(ctx)
	if a.handingOff {
		a.finishHandoff(ctx)
	}
}

// forwardHeld sends on the envelopes routing held for this actor and
// never sent it (cluster/release.go): they are the identity's new
// owner's.
func (a *deviceActor) forwardHeld(m *actorpb.Handoff) {
	for _, env := range m.GetHeld() {
		a.deps.Router.Send(env)
	}
}

// finishHandoff stops an actor handing its identity off once nothing it
// accepted is in flight: no write pending, in flight or waiting for a
// slot (the deletions of what was acknowledged, flushed by the handoff or
// an idle check, included), no effect waiting for a write. Deliveries the
// device has not acknowledged need not wait: the new owner loads them and
// delivers them again (same seq and msg id). Recent closes are sent on to the new owner,
// which applies them to the session it loads.
func (a *deviceActor) finishHandoff(ctx actor.Context) {
	if a.retired || a.writing || a.slotWait || a.detached > 0 || (a.d != nil && !a.d.Settled()) {
		return
	}
	a.retired = true
	a.d = nil
	a.stopTimers()
	a.deps.Router.HandedOff(a.id.App, a.id.UID, ctx.Self())
	for _, c := range a.closes {
		a.deps.Router.Send(&actorpb.Envelope{AppCode: uint32(a.id.App), Uid: a.id.UID, Body: &actorpb.Envelope_Closed{Closed: c}})
	}
}

// idle reports whether the actor may leave memory without losing
// anything.
func (a *deviceActor) idle() bool {
	return a.quiet() && (a.d == nil || a.d.Idle())
}

// quiet is idle but for the machine: nothing of the actor itself in flight.
func (a *deviceActor) quiet() bool {
	return a.seen > 0 && !a.retired && a.detached == 0 && !a.writing && !a.unapplied && !a.slotWait &&
		a.read == nil && len(a.stash) == 0 && a.refusals == 0
}

// flushSettle is how long after writing its pending deletions an
// otherwise idle actor looks again whether it may leave memory.
const flushSettle = time.Second

// armIdle schedules the next idle check.
func (a *deviceActor) armIdle(ctx actor.Context, after time.Duration) {
	a.deps.idle.schedule(a, ctx.Self(), ctx.ActorSystem().Root, after)
}

func (a *deviceActor) stopTimers() {
	if a.timer != nil {
		a.timer.Stop()
	}
	a.deps.idle.cancel(a)
	if a.reloadTimer != nil {
		a.reloadTimer.Stop()
		a.reloadTimer = nil
	}
}

func (a *deviceActor) writeDone(ctx actor.Context, err error) {
	if a.d == nil {
		// The write of a machine dropped after a panic: the store has it
		// now, so a machine may be loaded again.
		if a.unapplied && a.read == nil {
			a.startLoad(ctx, nil)
		}
		return
	}
	a.d.WriteDone(err)
	switch {
	case a.d.Fenced(), a.fenceSeen:
		a.fence(ctx)
	case err != nil:
		a.deps.warns.warn(a.deps.Log, time.Now(), "actors: store write failed; reloading identity", "identity", a.id, "err", err)
		a.perform(ctx) // the failures
		a.unapplied = a.unapplied || hasWork(a.d)
		a.d, a.prefetched = nil, nil
		if a.writeFails < 255 {
			a.writeFails++
		}
		switch {
		case a.read != nil: // the lookup's answer starts its envelope over
		case a.writeFails == 1:
			a.startLoad(ctx, nil)
		default:
			// Failing again (a store refusing every write: a stalled
			// disk): each reload would claim the identity and write the
			// same again at once. Later, then, and for sure (a close
			// applied by the load must still be written).
			a.unapplied = true
			a.scheduleReload(ctx)
		}
	default:
		a.crashes, a.writeFails = 0, 0 // the machine works
	}
}

// fence ends an actor whose identity another activation has claimed:
// every waiting caller gets a retryable failure (the machine's Abort),
// nothing more is delivered, and the actor leaves the routing layer, so
// that the identity's next envelope activates a fresh actor that claims
// it again (here, or on the member that owns it now).
func (a *deviceActor) fence(ctx actor.Context) {
	if !a.d.Broken() {
		a.d.Abort(codes.Unavailable, Moved)
	}
	a.sendEffects()
	a.deps.Log.Info("actors: identity claimed by another activation; stopping", "identity", a.id)
	a.retired = true
	a.d = nil
	a.stopTimers()
	a.deps.Router.Retire(a.id.App, a.id.UID, ctx.Self())
	a.forwardWaiting()
	// The next activation reads the store, where a close this actor
	// applied may have been fenced: it hears of them again.
	for _, c := range a.closes {
		a.deps.Router.Send(&actorpb.Envelope{AppCode: uint32(a.id.App), Uid: a.id.UID, Body: &actorpb.Envelope_Closed{Closed: c}})
	}
}

// maxCrashReloads is how many panics in a row the actor reloads its
// machine after by itself; after more, the identity's next envelope does.
const maxCrashReloads = 3

// hasWork reports whether d had something only a machine does: a
// session to deliver to, or stored messages.
func hasWork(d *Device) bool {
	return d != nil && (d.Session() != nil || d.Pending() > 0)
}

// crashed handles a panic of the actor (a bug): the envelope being
// handled is answered, the machine's waiting callers get a retryable
// failure, and the machine is dropped, to be rebuilt from the store once
// no write of it is in flight.
func (a *deviceActor) crashed(ctx actor.Context, r any) {
	defer func() {
		if r2 := recover(); r2 != nil {
			a.deps.Log.Error("actors: panic while recovering from a panic", "identity", a.id, "panic", r2)
			a.d = nil
		}
	}()
	a.deps.Log.Error("actors: panic in an identity's actor; its state is rebuilt from the store",
		"identity", a.id, "panic", r, "message", fmt.Sprintf("%T", ctx.Message()), "stack", string(debug.Stack()))
	if env := a.current; env != nil {
		a.current = nil
		a.refuse(env, codes.Internal, devicepb.Code_INTERNAL, crashed)
	}
	a.prefetched = nil
	if a.d != nil {
		d := a.d
		a.d = nil
		if a.crashes < 255 {
			a.crashes++
		}
		a.unapplied = a.unapplied || (hasWork(d) && a.crashes <= maxCrashReloads)
		d.Abort(codes.Unavailable, crashed)
		for _, e := range d.Effects() {
			a.send(e)
		}
	}
	if a.unapplied && !a.writing && a.read == nil {
		a.scheduleReload(ctx) // after the recovery (writeDone loads once a write in flight ends)
	}
	if a.read == nil && len(a.stash) > 0 {
		// What waits is handled after this message, not inside the
		// recovery.
		ctx.ActorSystem().Root.Send(ctx.Self(), drainStash{})
	}
}

// build makes the machine from a snapshot the store loaded. The session
// it finds has ended if its gate instance is gone or one of the recent
// closes names its connection.
func (a *deviceActor) build(snap *store.Snapshot) {
	d := NewDeviceIn(a.deps.machines, a.id, snap)
	a.d = d
	now := a.deps.Now()
	if s := d.Session(); s != nil && !a.gateAlive(s.GetConn().GetGateId()) {
		d.GateDown(now, s.GetConn().GetGateId())
	}
	for _, c := range a.closes {
		d.Closed(now, c)
	}
	a.unapplied = false
	// A session on a live gate resumes: what was in flight is delivered
	// again (a gate that no longer has the connection says so, and the
	// session ends).
	d.Tick(now)
}

func (a *deviceActor) gateAlive(id string) bool {
	return a.deps.Gates == nil || a.deps.Gates.GateAlive(id)
}

// maxReloadStep is the retry from which a reload waits the most (5 s).
const maxReloadStep = 7

// scheduleReload retries a failed load later (100 ms, doubling to 5 s),
// for a close that must still be applied.
func (a *deviceActor) scheduleReload(ctx actor.Context) {
	if a.reloadTimer != nil {
		return
	}
	if a.reloadStep < maxReloadStep {
		a.reloadStep++
	}
	// A load that succeeds resets reloadStep; writes failing one after
	// the other still wait longer each time.
	step := max(int(a.reloadStep), min(int(a.writeFails)-1, maxReloadStep))
	wait := min(100*time.Millisecond<<(step-1), 5*time.Second)
	// From half to the whole of it: the actors a store outage stopped do
	// not all retry at the same moments.
	wait = wait/2 + rand.N(wait/2+1)
	self, root := ctx.Self(), ctx.ActorSystem().Root
	a.reloadTimer = time.AfterFunc(wait, func() { root.Send(self, reload{}) })
}

// closedConn reports whether a recent close names connection c.
func (a *deviceActor) closedConn(c *actorpb.ConnRef) bool {
	for _, k := range a.closes {
		if kc := k.GetConn(); kc.GetGateId() == c.GetGateId() && kc.GetConnId() == c.GetConnId() {
			return true
		}
	}
	return false
}

// noteClose remembers a close of one of the identity's connections.
func (a *deviceActor) noteClose(c *actorpb.DeviceClosed) {
	if len(a.closes) == keptCloses {
		copy(a.closes, a.closes[1:])
		a.closes = a.closes[:keptCloses-1]
	}
	a.closes = append(a.closes, c)
}

// answersOnly reports whether env is answered behind the machine's
// writes but brings no stored message of its own (Device.Backlogged): a
// fire-and-forget push, a kick (at most a session's end to write), a
// PULL. Not presence: it is answered at once, whatever is in flight.
func answersOnly(env *actorpb.Envelope) bool {
	switch b := env.Body.(type) {
	case *actorpb.Envelope_Push:
		return !b.Push.GetStored()
	case *actorpb.Envelope_Kick:
		return true
	case *actorpb.Envelope_Frame:
		return messages.Cmd(b.Frame.Cmd) == messages.CmdPull
	}
	return false
}

// needsWrite reports whether handling env stores something new.
func needsWrite(env *actorpb.Envelope) bool {
	switch b := env.Body.(type) {
	case *actorpb.Envelope_Login, *actorpb.Envelope_C2C:
		return true
	case *actorpb.Envelope_Push:
		return b.Push.GetStored()
	}
	return false
}

// envelope takes in an envelope: it is handled now, or waits in the
// stash behind an outstanding store read (reads.go).
func (a *deviceActor) envelope(ctx actor.Context, env *actorpb.Envelope) {
	a.current = env
	if why := checkEnvelope(env); why != "" {
		a.current = nil
		a.deps.Log.Debug("actors: refusing a bad envelope", "identity", a.id, "why", why)
		if env.ReqId != 0 {
			a.reply(ReplyTo{Address: env.ReplyAddress, ReqID: env.ReqId}, failure(codes.InvalidArgument, "actors: bad envelope: "+why))
		}
		return
	}
	if c := env.GetClosed(); c != nil {
		a.noteClose(c)
	}
	if l := env.GetLogin(); l != nil && a.closedConn(l.GetConn()) {
		// The connection's close overtook its LOGIN (they came by
		// different ways, around a view change): a session opened now
		// would be online on a connection that is gone. Nobody is left
		// to answer.
		a.current = nil
		a.deps.Log.Debug("actors: LOGIN of a connection already closed; dropped", "identity", a.id)
		return
	}
	if (a.read == nil && len(a.stash) == 0) || a.mayOvertake(env) {
		a.handle(ctx, env)
		return
	}
	a.current = nil
	a.stashEnv(env)
}

// handle hands env to the machine, first loading the machine or looking
// up env's idempotency key if needed; then env waits for that read.
// Until it returns env is the actor's current envelope, answered if the
// actor panics (not with a deferred reset: the recovery runs after it).
func (a *deviceActor) handle(ctx actor.Context, env *actorpb.Envelope) {
	a.current = env
	a.handleCurrent(ctx, env)
	a.current = nil
}

func (a *deviceActor) handleCurrent(ctx actor.Context, env *actorpb.Envelope) {
	if needsWrite(env) {
		if a.deps.Writes.Full() {
			a.deps.Refused("pending_writes")
			a.refuse(env, codes.Unavailable, devicepb.Code_STORE_UNAVAILABLE, overloaded)
			return
		}
		if a.deps.Store.Stalled() {
			a.deps.Refused("store_stalled")
			a.refuse(env, codes.Unavailable, devicepb.Code_STORE_UNAVAILABLE, stalled)
			return
		}
	}
	if a.d == nil {
		if env.GetGateDown() != nil {
			return // the next load checks the session's gate anyway
		}
		if env.GetClosed() != nil {
			a.unapplied = true
		}
		if a.writing {
			a.refuse(env, codes.Unavailable, devicepb.Code_STORE_UNAVAILABLE, storeDown)
			return
		}
		a.startLoad(ctx, env)
		return
	}
	if a.d.Backlogged() && answersOnly(env) {
		a.deps.Refused("answers_waiting")
		a.refuse(env, codes.Unavailable, devicepb.Code_STORE_UNAVAILABLE, backlogged)
		return
	}
	if why := a.gateBehind(env); why != "" {
		if env.ReqId != 0 {
			a.reply(ReplyTo{Address: env.ReplyAddress, ReqID: env.ReqId}, &actorpb.Reply{Body: &actorpb.Reply_Failure{
				Failure: &actorpb.Failure{Code: int32(codes.ResourceExhausted), Message: why, GateLate: true,
					Reason: apipb.ReasonNodeOverloaded, Setting: "api.max-gate-backlog"}}})
		}
		return
	}
	rec, ok := a.idempotency(ctx, env)
	if !ok {
		return
	}
	a.apply(env, rec)
}

// gateBehind returns why a push is refused because the gate holding the
// device's connection is behind (Gates.GateBehind), or "". An offline
// device's pushes wait in the store or are dropped as usual.
func (a *deviceActor) gateBehind(env *actorpb.Envelope) string {
	if env.GetPush() == nil || a.deps.Gates == nil || !a.d.Online() {
		return ""
	}
	b := a.deps.Gates.GateBehind(a.d.Session().GetConn(), env.ReplyAddress)
	if b <= 0 {
		return ""
	}
	return fmt.Sprintf("%s: deliveries to the gate holding %s's connection are %v late (api.max-gate-backlog); nothing was accepted: retry later, backing off",
		Overloaded, a.id, b.Round(100*time.Microsecond))
}

// Overloaded starts the message of every push refused because the node
// (its API, or the gate of the push's device) is overloaded, as the API
// documents it.
const Overloaded = "node overloaded"

// apply hands env to the machine; rec is the idempotency record of its
// key, if it has one and the store holds it.
func (a *deviceActor) apply(env *actorpb.Envelope, rec *actorpb.IdempotencyRecord) {
	to := ReplyTo{Address: env.ReplyAddress, ReqID: env.ReqId}
	now := a.deps.Now()
	d := a.d
	switch b := env.Body.(type) {
	case *actorpb.Envelope_Login:
		d.Login(now, b.Login)
	case *actorpb.Envelope_Frame:
		d.Frame(now, b.Frame)
	case *actorpb.Envelope_Closed:
		d.Closed(now, b.Closed)
	case *actorpb.Envelope_GateDown:
		d.GateDown(now, b.GateDown.GateId)
	case *actorpb.Envelope_C2C:
		d.C2C(now, b.C2C, rec)
	case *actorpb.Envelope_Push:
		d.Push(now, to, b.Push, rec)
	case *actorpb.Envelope_Kick:
		d.Kick(now, to, b.Kick)
	case *actorpb.Envelope_Presence:
		d.Presence(to)
	case *actorpb.Envelope_Sweep:
		d.Tick(now)
	}
}

func (a *deviceActor) reply(to ReplyTo, r *actorpb.Reply) {
	r.ReqId = to.ReqID
	a.deps.Router.Reply(to.Address, r)
}

// refuse answers an envelope the machine does not get (Refusal).
func (a *deviceActor) refuse(env *actorpb.Envelope, code codes.Code, dc devicepb.Code, why string) {
	conn, tc, r := Refusal(env, code, dc, why)
	if tc != nil {
		a.deps.Router.SendToConn(conn, tc)
	}
	if r != nil {
		a.reply(ReplyTo{Address: env.ReplyAddress, ReqID: env.ReqId}, r)
	}
}

// Refusal is the answer to an envelope that will not be handled: to a
// request, a failure with code and why; to a LOGIN, C2C or PULL, the
// device's answer frame with the device code dc, for the gate that holds
// conn; to anything else nothing (an acknowledgement is then repeated by
// the device, or its message delivered again). The routing layer uses it
// for envelopes it could not deliver.
func Refusal(env *actorpb.Envelope, code codes.Code, dc devicepb.Code, why string) (conn *actorpb.ConnRef, tc *actorpb.ToConn, r *actorpb.Reply) {
	switch b := env.Body.(type) {
	case *actorpb.Envelope_Login:
		return b.Login.Conn, &actorpb.ToConn{AppCode: env.AppCode, Uid: env.Uid, ConnId: b.Login.GetConn().GetConnId(),
			Frames: []*actorpb.OutFrame{frame(messages.CmdLoginAck, 0, b.Login.FrameSeq,
				&devicepb.LoginAck{Code: dc, Reason: why, ServerTimeMs: time.Now().UnixMilli()})},
			Login: &actorpb.LoginOutcome{Ok: false}}, nil
	case *actorpb.Envelope_C2C:
		m := b.C2C
		return m.ReplyTo, &actorpb.ToConn{AppCode: env.AppCode, Uid: m.FromUid, ConnId: m.ReplyTo.GetConnId(), Epoch: m.ReplyEpoch,
			Frames: []*actorpb.OutFrame{frame(messages.CmdC2CAck, 0, m.FrameSeq, &devicepb.C2CAck{
				Code: dc, ClientMsgId: m.GetC2C().GetClientMsgId(), Reason: why})}}, nil
	case *actorpb.Envelope_Frame:
		if messages.Cmd(b.Frame.Cmd) == messages.CmdPull {
			return b.Frame.Conn, &actorpb.ToConn{AppCode: env.AppCode, Uid: env.Uid,
				ConnId: b.Frame.GetConn().GetConnId(), Epoch: b.Frame.Epoch,
				Frames: []*actorpb.OutFrame{frame(messages.CmdPullAck, 0, b.Frame.Seq,
					&devicepb.PullAck{Code: dc})}}, nil
		}
	default:
		if env.ReqId != 0 {
			r := failure(code, why)
			if setting, ok := storeBusy[why]; ok {
				r.GetFailure().Reason, r.GetFailure().Setting = apipb.ReasonStoreBusy, setting
			}
			return nil, nil, r
		}
	}
	return nil, nil, nil
}

// storeBusy maps the refusals for the store's pressure, which accept
// nothing, to the setting that bounds each (apipb.ReasonStoreBusy).
var storeBusy = map[string]string{
	overloaded: "actors.max-pending-writes",
	stalled:    "store.stall-after",
	stashFull:  "actors.max-stashed",
	backlogged: "actors.window-bytes",
}

// leaselessWhy is the reason of the refusals a node without its
// membership lease sends in place of its answers (Leaseless).
const leaselessWhy = "the node serving this identity lost its place in the cluster meanwhile: retry (a C2C with the same client_msg_id: it is never stored twice)"

// Leaseless is what a node that lost its membership lease still sends of
// tc (cluster.System.OnLeaseless). It may no longer own the identity, so
// it delivers nothing and confirms nothing; but a device's LOGIN, C2C or
// PULL must not go unanswered. So each LOGIN_ACK, C2C_ACK and PULL_ACK of
// tc goes out as a retryable refusal (STORE_UNAVAILABLE; one that already
// refuses goes out as it is), a login's outcome as failed (the gate
// closes the connection after its LOGIN_ACK, and the session ends wherever
// it was recorded). A KICKOUT and close of a session's connection go out
// too (not of a login's, which ends as a failed login): effects wait for their
// write, so the session's end they carry out is in the store already,
// written while this node still owned the identity (else the write was
// fenced and the effect voided); dropped, the connection would stay
// logged in with nobody to deliver to it, the store saying it ended. (The
// epoch keeps them from a newer session.) Every other frame is dropped:
// the identity's owner sends it, or the device repeats what it
// acknowledges. The result is nil when nothing is left.
func Leaseless(tc *actorpb.ToConn) *actorpb.ToConn {
	var frames []*actorpb.OutFrame
	for _, f := range tc.GetFrames() {
		if r := leaselessAnswer(f); r != nil {
			frames = append(frames, r)
		} else if tc.Close && tc.Login == nil && messages.Cmd(f.Cmd) == messages.CmdKickout {
			// (A login's outcome becomes a failure below: its
			// connection closes after the LOGIN_ACK, no session to end.)
			frames = append(frames, f)
		}
	}
	if len(frames) == 0 && !tc.Close {
		return nil
	}
	out := &actorpb.ToConn{AppCode: tc.AppCode, Uid: tc.Uid, GateId: tc.GateId, ConnId: tc.ConnId, Epoch: tc.Epoch, Frames: frames, Close: tc.Close}
	if tc.Login != nil {
		out.Login, out.Epoch = &actorpb.LoginOutcome{Ok: false}, 0
	}
	return out
}

// leaselessAnswer is f as a node without its lease sends it: an answer
// refusing (as it was, or STORE_UNAVAILABLE in place of OK), or nil.
func leaselessAnswer(f *actorpb.OutFrame) *actorpb.OutFrame {
	cmd := messages.Cmd(f.Cmd)
	switch cmd {
	case messages.CmdLoginAck:
		var ack devicepb.LoginAck
		if proto.Unmarshal(f.Body, &ack) == nil && ack.Code != devicepb.Code_OK {
			return f
		}
		return frame(cmd, f.Msgtype, f.Seq, &devicepb.LoginAck{Code: devicepb.Code_STORE_UNAVAILABLE, Reason: leaselessWhy, ServerTimeMs: ack.ServerTimeMs})
	case messages.CmdC2CAck:
		var ack devicepb.C2CAck
		if proto.Unmarshal(f.Body, &ack) == nil && ack.Code != devicepb.Code_OK {
			return f
		}
		return frame(cmd, f.Msgtype, f.Seq, &devicepb.C2CAck{Code: devicepb.Code_STORE_UNAVAILABLE,
			ClientMsgId: ack.ClientMsgId, Reason: leaselessWhy})
	case messages.CmdPullAck:
		var ack devicepb.PullAck
		if proto.Unmarshal(f.Body, &ack) == nil && ack.Code != devicepb.Code_OK {
			return f
		}
		return frame(cmd, f.Msgtype, f.Seq, &devicepb.PullAck{Code: devicepb.Code_STORE_UNAVAILABLE})
	}
	return nil
}

// perform submits the next write (when the budget has a slot), sends
// released effects and re-arms the timer.
func (a *deviceActor) perform(ctx actor.Context) {
	d := a.d
	if d == nil {
		return
	}
	if d.WriteReady() && !a.slotWait {
		self, root := ctx.Self(), ctx.ActorSystem().Root
		// The wake-up closure is made only when there is no slot: a
		// write per message would otherwise allocate it.
		if a.deps.Writes.TryAcquire() || a.deps.Writes.Acquire(a, func() { root.Send(self, slotFree{}) }) {
			a.submit(ctx)
		} else {
			a.slotWait = true
		}
	}
	a.sendEffects()
	if c := a.refusedLogin; c != nil {
		a.refusedLogin = nil
		a.refusals++
		ctx.ActorSystem().Root.Send(ctx.Self(), loginRefused{c})
	}
	next := d.NextDue()
	if next.IsZero() || (a.timerAt != 0 && next.UnixNano() >= a.timerAt) {
		return
	}
	if a.timer != nil {
		a.timer.Stop()
	}
	a.timerAt = next.UnixNano()
	self, root := ctx.Self(), ctx.ActorSystem().Root
	a.timer = time.AfterFunc(max(time.Until(next), time.Millisecond), func() { root.Send(self, tick{}) })
}

// submit hands the machine's ready write to the store; the caller holds a
// slot of the write budget, which the write's completion frees.
func (a *deviceActor) submit(ctx actor.Context) {
	d := a.d
	self, root := ctx.Self(), ctx.ActorSystem().Root
	budget := a.deps.Writes
	if w := d.TakeDetached(); w != nil {
		a.detached++
		a.deps.Store.Submit(w, func(err error) {
			budget.Release()
			if errors.Is(err, store.ErrFenced) {
				a.deps.Fenced()
			}
			if err != nil {
				a.deps.Log.Debug("actors: deleting acknowledged messages failed; they will be delivered again", "identity", w.ID, "err", err)
			}
			root.Send(self, detachedDone{failed: err != nil, fenced: errors.Is(err, store.ErrFenced), owner: w.Owner})
		})
		return
	}
	w := d.TakeWrite()
	if w == nil { // not ready after all: give the slot back
		budget.Release()
		return
	}
	a.writing = true
	// A closure per write, not one kept per activation: kept, it would
	// cost every identity in memory its bytes (about 80 per device,
	// measured), for no CPU measurable per message.
	a.deps.Store.Submit(w, func(err error) {
		budget.Release()
		if err == nil {
			root.Send(self, writeOK) // no allocation for the usual outcome
			return
		}
		if errors.Is(err, store.ErrFenced) {
			a.deps.Fenced()
		}
		root.Send(self, &writeDone{err})
	})
}

func (a *deviceActor) sendEffects() {
	if a.d == nil {
		return
	}
	effs := a.d.Effects()
	for i := range effs {
		a.send(effs[i])
		// An idle actor must not keep its last frames and replies alive
		// until its next message.
		effs[i] = Effect{}
	}
	a.d.Release()
}

// loginRefused ends a session whose LOGIN_ACK OK went out as a refusal.
type loginRefused struct{ c *actorpb.DeviceClosed }

func (a *deviceActor) send(e Effect) {
	if e.ToConn != nil {
		if !a.deps.Router.SendToConn(e.Conn, e.ToConn) && e.ToConn.GetLogin().GetOk() {
			// The node lost its lease while the LOGIN was on its way: the
			// device was refused, so the session the machine just opened
			// ends (perform posts it), instead of showing online until a
			// delivery finds the connection gone.
			a.refusedLogin = &actorpb.DeviceClosed{Conn: e.Conn, Epoch: e.ToConn.Epoch, Reason: "login refused: the node holds no membership lease"}
		}
	} else if e.Reply != nil {
		a.deps.Router.Reply(e.ReplyTo.Address, e.Reply)
	}
}
