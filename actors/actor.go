package actors

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/grpc/codes"

	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
)

// Router is how a device actor reaches gates and callers anywhere in the
// cluster, and leaves memory (implemented by *cluster.System).
type Router interface {
	SendToConn(conn *actorpb.ConnRef, m *actorpb.ToConn)
	Reply(address string, r *actorpb.Reply)
	// Passivate asks to stop the actor; seen is the number of envelopes
	// it has received.
	Passivate(app uint16, uid string, pid *actor.PID, seen uint64)
}

// Deps are what every device actor of a node shares.
type Deps struct {
	Config *Config
	Store  store.Store
	Router Router
	Stats  Stats
	IDs    *IDGen
	Log    *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// NewDeps fills in the defaults of d (the clock, no statistics) and
// returns it. Call it once, before the actors start.
func NewDeps(d Deps) *Deps {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Stats == nil {
		d.Stats = NopStats{}
	}
	return &d
}

// NewActor makes a device actor; it takes its identity from the first
// envelope it receives. It fits cluster.ChildFactory; d must come from
// NewDeps.
func (d *Deps) NewActor() actor.Actor { return &deviceActor{deps: d} }

// Messages a device actor sends itself.
type (
	writeDone struct{ err error }
	tick      struct{}
)

// deviceActor performs the I/O of one identity's Device: it loads the
// state, submits writes, sends effects, arms the retry timer and asks to
// passivate when idle.
type deviceActor struct {
	deps *Deps
	id   store.Identity
	d    *Device // nil until loaded (or after a failed reload)
	// owner is the owner epoch of the last Load: every write carries it,
	// and fails with store.ErrFenced once another activation claimed
	// the identity.
	owner uint64
	seen  uint64 // envelopes received, for the passivation handshake

	timer   *time.Timer
	timerAt time.Time
	// detached counts deletions submitted without waiting that the store
	// has not finished: the actor does not passivate before they are
	// done, or its next activation would load the entries again.
	detached atomic.Int32
}

func (a *deviceActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		ctx.SetReceiveTimeout(a.deps.Config.PassivateAfter)
	case *actorpb.Envelope:
		if a.seen == 0 {
			a.id = store.Identity{App: uint16(m.AppCode), UID: m.Uid}
		}
		a.seen++
		a.envelope(ctx, m)
	case *writeDone:
		if a.d == nil {
			return
		}
		a.d.WriteDone(m.err)
		if m.err != nil {
			a.deps.Log.Warn("actors: store write failed; reloading identity", "identity", a.id, "err", m.err)
			a.perform(ctx)
			a.d = nil
			a.load()
		}
	case tick:
		a.timerAt = time.Time{}
		if a.d != nil {
			a.d.Tick(a.deps.Now())
		}
	case *actor.ReceiveTimeout:
		if a.seen > 0 && (a.d == nil || a.d.Idle()) && a.detached.Load() == 0 {
			a.deps.Router.Passivate(a.id.App, a.id.UID, ctx.Self(), a.seen)
		}
		return
	case *actor.Stopping:
		if a.timer != nil {
			a.timer.Stop()
		}
		return
	default:
		return
	}
	a.perform(ctx)
}

func (a *deviceActor) load() bool {
	snap, err := a.deps.Store.Load(context.Background(), a.id)
	if err != nil {
		a.deps.Log.Warn("actors: loading identity failed", "identity", a.id, "err", err)
		return false
	}
	a.owner = snap.Owner
	a.d = NewDevice(a.deps.Config, a.id, snap, a.deps.Stats, a.deps.IDs.Next)
	// A restarted node finds sessions that were live: resume delivery of
	// what waits for them (a gate that no longer has the connection says
	// so, and the session ends).
	a.d.Tick(a.deps.Now())
	return true
}

func (a *deviceActor) envelope(ctx actor.Context, env *actorpb.Envelope) {
	to := ReplyTo{Address: env.ReplyAddress, ReqID: env.ReqId}
	if a.d == nil && !a.load() {
		a.unavailable(env, to)
		return
	}
	now := a.deps.Now()
	d := a.d
	switch b := env.Body.(type) {
	case *actorpb.Envelope_Login:
		d.Login(now, b.Login)
	case *actorpb.Envelope_Frame:
		d.Frame(now, b.Frame)
	case *actorpb.Envelope_Closed:
		d.Closed(now, b.Closed)
	case *actorpb.Envelope_C2C:
		rec, err := a.idempotency(d, C2CKey(b.C2C.FromUid, b.C2C.GetC2C().GetClientMsgId()), b.C2C.GetC2C().GetClientMsgId() != "")
		if err != nil {
			a.unavailable(env, to)
			return
		}
		d.C2C(now, b.C2C, rec)
	case *actorpb.Envelope_Push:
		rec, err := a.idempotency(d, PushKey(b.Push.IdempotencyKey), b.Push.Stored && b.Push.IdempotencyKey != "")
		if err != nil {
			a.unavailable(env, to)
			return
		}
		d.Push(now, to, b.Push, rec)
	case *actorpb.Envelope_Kick:
		d.Kick(now, to, b.Kick)
	case *actorpb.Envelope_Presence:
		d.Presence(to)
	case *actorpb.Envelope_Sweep:
		d.Tick(now)
	default:
		if to.ReqID != 0 {
			a.deps.Router.Reply(to.Address, failure(codes.Unimplemented, "actors: unknown request"))
		}
	}
}

// idempotency looks key up in the store unless the device knows it.
func (a *deviceActor) idempotency(d *Device, key string, use bool) (*actorpb.IdempotencyRecord, error) {
	if !use || d.KnowsIdempotencyKey(key) {
		return nil, nil
	}
	return a.deps.Store.Idempotency(context.Background(), a.id, key)
}

// unavailable answers an envelope that cannot be handled because the
// store cannot be read.
func (a *deviceActor) unavailable(env *actorpb.Envelope, to ReplyTo) {
	const why = "the inbox store is unavailable; retry"
	switch b := env.Body.(type) {
	case *actorpb.Envelope_Login:
		tc := &actorpb.ToConn{AppCode: uint32(a.id.App), Uid: a.id.UID, ConnId: b.Login.GetConn().GetConnId(),
			Frames: []*actorpb.OutFrame{frame(messages.CmdLoginAck, 0, b.Login.FrameSeq,
				&devicepb.LoginAck{Code: devicepb.Code_STORE_UNAVAILABLE, Reason: why})},
			Login: &actorpb.LoginOutcome{Ok: false}}
		a.deps.Router.SendToConn(b.Login.Conn, tc)
	case *actorpb.Envelope_C2C:
		m := b.C2C
		tc := &actorpb.ToConn{AppCode: uint32(a.id.App), Uid: m.FromUid, ConnId: m.ReplyTo.GetConnId(), Epoch: m.ReplyEpoch,
			Frames: []*actorpb.OutFrame{frame(messages.CmdC2CAck, m.Msgtype, m.FrameSeq, &devicepb.C2CAck{
				Code: devicepb.Code_STORE_UNAVAILABLE, ClientMsgId: m.GetC2C().GetClientMsgId(), Reason: why})}}
		a.deps.Router.SendToConn(m.ReplyTo, tc)
	case *actorpb.Envelope_Frame:
		if messages.Cmd(b.Frame.Cmd) == messages.CmdPull {
			a.deps.Router.SendToConn(b.Frame.Conn, &actorpb.ToConn{AppCode: uint32(a.id.App), Uid: a.id.UID,
				ConnId: b.Frame.GetConn().GetConnId(), Epoch: b.Frame.Epoch,
				Frames: []*actorpb.OutFrame{frame(messages.CmdPullAck, b.Frame.Msgtype, b.Frame.Seq,
					&devicepb.PullAck{Code: devicepb.Code_STORE_UNAVAILABLE})}})
		}
	default:
		if to.ReqID != 0 {
			r := failure(codes.Unavailable, why)
			r.ReqId = to.ReqID
			a.deps.Router.Reply(to.Address, r)
		}
	}
}

// perform submits the next write, sends released effects and re-arms the
// timer.
func (a *deviceActor) perform(ctx actor.Context) {
	d := a.d
	if d == nil {
		return
	}
	if w := d.TakeDetached(); w != nil {
		w.Owner = a.owner
		a.detached.Add(1)
		a.deps.Store.Submit(w, func(err error) {
			if err != nil {
				a.deps.Log.Debug("actors: deleting acknowledged messages failed; they will be delivered again", "identity", w.ID, "err", err)
			}
			a.detached.Add(-1)
		})
	}
	if w := d.TakeWrite(); w != nil {
		w.Owner = a.owner
		self, root := ctx.Self(), ctx.ActorSystem().Root
		a.deps.Store.Submit(w, func(err error) { root.Send(self, &writeDone{err}) })
	}
	for _, e := range d.Effects() {
		if e.ToConn != nil {
			a.deps.Router.SendToConn(e.Conn, e.ToConn)
		} else if e.Reply != nil {
			a.deps.Router.Reply(e.ReplyTo.Address, e.Reply)
		}
	}
	next := d.NextDue()
	if next.IsZero() || (!a.timerAt.IsZero() && !next.Before(a.timerAt)) {
		return
	}
	if a.timer != nil {
		a.timer.Stop()
	}
	a.timerAt = next
	self, root := ctx.Self(), ctx.ActorSystem().Root
	a.timer = time.AfterFunc(max(time.Until(next), time.Millisecond), func() { root.Send(self, tick{}) })
}
