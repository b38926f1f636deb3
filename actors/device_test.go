package actors

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
)

// harness drives a Device like the actor wrapper does, with an in-memory
// store of the writes, so the state machine is tested without a cluster.
type harness struct {
	t       *testing.T
	cfg     Config
	d       *Device
	now     time.Time
	writes  []*store.Write
	effects []Effect
	ids     int
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, cfg: DefaultConfig(), now: time.UnixMilli(1_800_000_000_000)}
	h.d = NewDevice(&h.cfg, store.Identity{App: 2, UID: "driver-7"}, &store.Snapshot{}, nil, func() string {
		h.ids++
		return fmt.Sprintf("m%d", h.ids)
	})
	return h
}

// settle commits every pending write successfully and collects effects.
func (h *harness) settle() []Effect {
	h.t.Helper()
	for {
		if w := h.d.TakeDetached(); w != nil {
			h.writes = append(h.writes, w)
		}
		h.effects = append(h.effects, h.d.Effects()...)
		w := h.d.TakeWrite()
		if w == nil {
			break
		}
		h.writes = append(h.writes, w)
		h.d.WriteDone(nil)
	}
	out := h.effects
	h.effects = nil
	return out
}

func conn(id uint64) *actorpb.ConnRef {
	return &actorpb.ConnRef{GateAddress: "n1", GateId: "g1", ConnId: id}
}

func (h *harness) login(c uint64) uint64 {
	h.d.Login(h.now, &actorpb.DeviceLogin{Conn: conn(c), FrameSeq: 1, Login: &devicepb.Login{Uid: "driver-7"}})
	return h.d.session.Epoch
}

// ackOf acknowledges msg id on connection 1, session epoch 1.
func (h *harness) ackOf(id string) {
	ack, _ := proto.Marshal(&devicepb.S2CAck{MsgId: id})
	h.d.Frame(h.now, &actorpb.DeviceFrame{Conn: conn(1), Epoch: 1, Cmd: uint32(messages.CmdS2CAck), Body: ack})
}

func (h *harness) push(payload string, reqID uint64) {
	h.d.Push(h.now, ReplyTo{"api", reqID}, &actorpb.Push{Stored: true, Payload: []byte(payload), SentAtMs: h.now.UnixMilli(),
		ExpiresAtMs: h.now.Add(time.Hour).UnixMilli()}, nil)
}

// frames returns the decoded frames of the effects sent to conn c.
func framesTo(effs []Effect, c uint64) []*actorpb.OutFrame {
	var out []*actorpb.OutFrame
	for _, e := range effs {
		if e.ToConn != nil && e.Conn.ConnId == c {
			out = append(out, e.ToConn.Frames...)
		}
	}
	return out
}

func cmds(fs []*actorpb.OutFrame) []messages.Cmd {
	var out []messages.Cmd
	for _, f := range fs {
		out = append(out, messages.Cmd(f.Cmd))
	}
	return out
}

func body[T proto.Message](t *testing.T, f *actorpb.OutFrame, m T) T {
	t.Helper()
	if err := proto.Unmarshal(f.Body, m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestLoginAckThenPendingInSeqOrder(t *testing.T) {
	h := newHarness(t)
	for i := range 3 {
		h.push(fmt.Sprintf("p%d", i), uint64(i+1))
	}
	effs := h.settle()
	if len(framesTo(effs, 1)) != 0 {
		t.Fatal("frames sent while offline")
	}
	replies := 0
	for _, e := range effs {
		if r := e.Reply.GetPush(); r != nil {
			replies++
			if r.Seq != uint32(replies) || r.Online {
				t.Fatalf("reply %d: %v", replies, r)
			}
		}
	}
	if replies != 3 {
		t.Fatalf("%d push replies", replies)
	}
	h.login(1)
	fs := framesTo(h.settle(), 1)
	if got := cmds(fs); len(got) != 4 || got[0] != messages.CmdLoginAck || got[1] != messages.CmdS2C {
		t.Fatalf("frames after login: %v", got)
	}
	ack := body(t, fs[0], &devicepb.LoginAck{})
	if ack.Pending != 3 || ack.Epoch != 1 || ack.LastSeq != 3 || ack.Code != devicepb.Code_OK {
		t.Fatalf("login ack: %v", ack)
	}
	for i, f := range fs[1:] {
		if f.Seq != uint32(i+1) || string(body(t, f, &devicepb.S2C{}).Payload) != fmt.Sprintf("p%d", i) {
			t.Fatalf("push %d: seq %d", i, f.Seq)
		}
	}
}

// TestOutputCommit checks that nothing depending on a write leaves the
// machine before the write is durable, and that a failed write turns the
// replies into failures and drops the deliveries.
func TestOutputCommit(t *testing.T) {
	h := newHarness(t)
	h.login(1)
	h.settle()
	h.push("a", 7)
	if effs := h.d.Effects(); len(effs) != 0 {
		t.Fatalf("effects before the write: %v", effs)
	}
	w := h.d.TakeWrite()
	if w == nil || len(w.Put) != 1 {
		t.Fatalf("write = %v", w)
	}
	h.push("b", 8) // accumulates into the next write while one is in flight
	if h.d.TakeWrite() != nil {
		t.Fatal("second write while one is in flight")
	}
	h.d.WriteDone(errors.New("disk on fire"))
	if !h.d.Broken() {
		t.Fatal("not broken after a failed write")
	}
	effs := h.d.Effects()
	if len(framesTo(effs, 1)) != 0 {
		t.Fatal("delivered a message whose write failed")
	}
	var codesSeen []int32
	for _, e := range effs {
		if f := e.Reply.GetFailure(); f != nil {
			codesSeen = append(codesSeen, f.Code)
		}
	}
	if len(codesSeen) != 2 || codesSeen[0] != int32(codes.Unavailable) {
		t.Fatalf("failure replies: %v", codesSeen)
	}
}

func TestAckDeletesAndRetryBacksOff(t *testing.T) {
	h := newHarness(t)
	h.cfg.RetryInitial, h.cfg.RetryMax = time.Second, 3*time.Second
	h.login(1)
	h.push("a", 1)
	h.settle()
	if due := h.d.NextDue(); !due.Equal(h.now.Add(time.Second)) {
		t.Fatalf("next due %v", due.Sub(h.now))
	}
	// No ack: redelivered after 1 s, 2 s, 3 s (capped), same seq and id.
	for _, wait := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second} {
		h.now = h.now.Add(wait)
		h.d.Tick(h.now)
		fs := framesTo(h.settle(), 1)
		if len(fs) != 1 || fs[0].Seq != 1 || body(t, fs[0], &devicepb.S2C{}).MsgId != "m1" {
			t.Fatalf("retry after %v: %v", wait, fs)
		}
	}
	ackBody, _ := proto.Marshal(&devicepb.S2CAck{MsgId: "m1"})
	h.d.Frame(h.now, &actorpb.DeviceFrame{Conn: conn(1), Epoch: 1, Cmd: uint32(messages.CmdS2CAck), Body: ackBody})
	writes := len(h.writes)
	h.settle()
	// The deletion waits for the identity's next write; the machine is
	// idle but for it, and writes it alone when asked to.
	if len(h.writes) != writes || h.d.Idle() || !h.d.IdleButDeletions() {
		t.Fatalf("after ack: %d writes (was %d), idle %v", len(h.writes), writes, h.d.Idle())
	}
	if !h.d.FlushDeletions() {
		t.Fatal("nothing to flush")
	}
	w := h.d.TakeDetached()
	// The machine is leaving: its entry's expiry bucket is unindexed too.
	bucket := store.ExpiryBucket(h.now.Add(-9 * time.Second).Add(time.Hour).UnixMilli())
	if w == nil || len(w.Delete) != 1 || w.Delete[0] != 1 || w.Meta != nil ||
		len(w.Unindex) != 1 || w.Unindex[0] != bucket {
		t.Fatalf("ack did not delete: %+v", w)
	}
	if h.d.Pending() != 0 || !h.d.Idle() || !h.d.NextDue().IsZero() {
		t.Fatalf("after ack: pending %d idle %v", h.d.Pending(), h.d.Idle())
	}
}

func TestExpiry(t *testing.T) {
	h := newHarness(t)
	h.d.Push(h.now, ReplyTo{}, &actorpb.Push{Stored: true, Payload: []byte("x"), ExpiresAtMs: h.now.Add(time.Minute).UnixMilli()}, nil)
	h.push("y", 0)
	h.settle()
	h.now = h.now.Add(2 * time.Minute)
	h.d.Tick(h.now)
	h.settle()
	if h.d.Pending() != 1 {
		t.Fatalf("pending after expiry = %d", h.d.Pending())
	}
	h.login(1)
	fs := framesTo(h.settle(), 1)
	if len(fs) != 2 || fs[1].Seq != 2 {
		t.Fatalf("expired message delivered: %v", cmds(fs))
	}
}

func TestSecondLoginKicksFirstAndStaleCloseIsIgnored(t *testing.T) {
	h := newHarness(t)
	e1 := h.login(1)
	h.settle()
	e2 := h.login(2)
	effs := h.settle()
	old := framesTo(effs, 1)
	if len(old) != 1 || messages.Cmd(old[0].Cmd) != messages.CmdKickout {
		t.Fatalf("old connection got %v", cmds(old))
	}
	if k := body(t, old[0], &devicepb.Kickout{}); k.Reason != devicepb.KickReason_LOGGED_IN_ELSEWHERE {
		t.Fatalf("kick reason %v", k.Reason)
	}
	for _, e := range effs {
		if e.Conn.ConnId == 1 && (!e.ToConn.Close || e.ToConn.Epoch != e1) {
			t.Fatalf("kick not closing with the old epoch: %+v", e.ToConn)
		}
	}
	if e2 <= e1 {
		t.Fatalf("epochs %d then %d", e1, e2)
	}
	// The old connection's close arrives late: the new session stays.
	h.d.Closed(h.now, &actorpb.DeviceClosed{Conn: conn(1), Epoch: e1})
	h.settle()
	if !h.d.Online() || h.d.session.Conn.ConnId != 2 {
		t.Fatal("stale close ended the new session")
	}
	h.d.Closed(h.now, &actorpb.DeviceClosed{Conn: conn(2), Epoch: e2})
	h.settle()
	if h.d.Online() {
		t.Fatal("close of the current connection did not end the session")
	}
}

func TestIdempotentPush(t *testing.T) {
	h := newHarness(t)
	p := &actorpb.Push{Stored: true, Payload: []byte("x"), IdempotencyKey: "order-1"}
	h.d.Push(h.now, ReplyTo{"api", 1}, p, nil)
	h.d.Push(h.now, ReplyTo{"api", 2}, p, nil) // before the first is durable
	effs := h.settle()
	if h.d.Pending() != 1 {
		t.Fatalf("stored %d copies", h.d.Pending())
	}
	r1, r2 := effs[0].Reply.GetPush(), effs[1].Reply.GetPush()
	if r1.Duplicate || !r2.Duplicate || r1.MsgId != r2.MsgId || r1.Seq != r2.Seq {
		t.Fatalf("replies %v / %v", r1, r2)
	}
	if len(h.writes[0].Idem) != 1 {
		t.Fatal("idempotency key not stored")
	}
	// After a restart the caller passes the stored record.
	h.d.Push(h.now, ReplyTo{"api", 3}, p, &actorpb.IdempotencyRecord{MsgId: "old", Seq: 9})
	if r := h.settle()[0].Reply.GetPush(); !r.Duplicate || r.MsgId != "m1" {
		t.Fatalf("recent key must win over an older record: %v", r)
	}
}

func TestInboxLimit(t *testing.T) {
	h := newHarness(t)
	h.cfg.InboxMaxMessages = 2
	for i := range 3 {
		h.push("x", uint64(i+1))
	}
	effs := h.settle()
	if f := effs[2].Reply.GetFailure(); f == nil || f.Code != int32(codes.ResourceExhausted) ||
		f.Reason != apipb.ReasonInboxFull || f.Setting != "actors.inbox-max-messages" {
		t.Fatalf("third push: %v", effs[2].Reply)
	}
	if h.d.Pending() != 2 {
		t.Fatalf("pending %d", h.d.Pending())
	}
}

func TestWindowAndPull(t *testing.T) {
	h := newHarness(t)
	h.cfg.Window, h.cfg.PullPage = 2, 3
	for i := range 5 {
		h.push(fmt.Sprint(i), 0)
	}
	h.settle()
	h.login(1)
	if fs := framesTo(h.settle(), 1); len(fs) != 3 { // LOGIN_ACK + window of 2
		t.Fatalf("frames after login: %v", cmds(fs))
	}
	pull, _ := proto.Marshal(&devicepb.Pull{AfterSeq: 1, Limit: proto.Uint32(10)})
	h.d.Frame(h.now, &actorpb.DeviceFrame{Conn: conn(1), Epoch: 1, Cmd: uint32(messages.CmdPull), Seq: 44, Body: pull})
	fs := framesTo(h.settle(), 1)
	if len(fs) != 1 || fs[0].Seq != 44 {
		t.Fatalf("pull answer: %v", fs)
	}
	pa := body(t, fs[0], &devicepb.PullAck{})
	if len(pa.Messages) != 3 || pa.Messages[0].Seq != 2 || !pa.HasMore {
		t.Fatalf("pull ack: %v", pa)
	}
	// Acking one opens the window for the next in seq order.
	ack, _ := proto.Marshal(&devicepb.S2CAck{MsgId: "m1"})
	h.d.Frame(h.now, &actorpb.DeviceFrame{Conn: conn(1), Epoch: 1, Cmd: uint32(messages.CmdS2CAck), Body: ack})
	if fs := framesTo(h.settle(), 1); len(fs) != 1 || fs[0].Seq != 3 {
		t.Fatalf("after ack: %v", fs)
	}
}

func TestFireAndForget(t *testing.T) {
	h := newHarness(t)
	h.d.Push(h.now, ReplyTo{"api", 1}, &actorpb.Push{Payload: []byte("gps")}, nil)
	effs := h.settle()
	if r := effs[0].Reply.GetPush(); r.Online || r.Seq != 0 || len(h.writes) != 0 {
		t.Fatalf("offline fire-and-forget: %v, %d writes", r, len(h.writes))
	}
	h.login(1)
	h.d.Push(h.now, ReplyTo{"api", 2}, &actorpb.Push{Payload: []byte("gps")}, nil)
	fs := framesTo(h.settle(), 1)
	if got := cmds(fs); len(got) != 2 || got[0] != messages.CmdLoginAck || got[1] != messages.CmdS2C || fs[1].Seq != 0 {
		t.Fatalf("fire-and-forget must follow LOGIN_ACK with seq 0: %v", got)
	}
}

func TestC2CStoreAckDeliverAckAck(t *testing.T) {
	h := newHarness(t)
	h.login(1)
	h.settle()
	send := &actorpb.C2CSend{ReplyTo: conn(9), ReplyEpoch: 4, FrameSeq: 77, FromUid: "rider-3",
		C2C: &devicepb.C2C{ToUid: "driver-7", ClientMsgId: "c-1", Payload: []byte("where are you")}}
	h.d.C2C(h.now, send, nil)
	effs := h.settle()
	toSender := framesTo(effs, 9)
	if len(toSender) != 1 || toSender[0].Seq != 77 {
		t.Fatalf("sender frames: %v", toSender)
	}
	ca := body(t, toSender[0], &devicepb.C2CAck{})
	if ca.Code != devicepb.Code_OK || ca.ClientMsgId != "c-1" || ca.MsgId == "" {
		t.Fatalf("C2C_ACK %v", ca)
	}
	push := framesTo(effs, 1)
	cp := body(t, push[0], &devicepb.C2CPush{})
	if messages.Cmd(push[0].Cmd) != messages.CmdC2CPush || cp.FromUid != "rider-3" || cp.MsgId != ca.MsgId {
		t.Fatalf("C2C_PUSH %v", cp)
	}
	// Resent before the receiver's ack: acknowledged again, stored once.
	h.d.C2C(h.now, send, nil)
	if ca2 := body(t, framesTo(h.settle(), 9)[0], &devicepb.C2CAck{}); ca2.MsgId != ca.MsgId || h.d.Pending() != 1 {
		t.Fatalf("resend: %v, pending %d", ca2, h.d.Pending())
	}
	ack, _ := proto.Marshal(&devicepb.C2CPushAck{MsgId: ca.MsgId})
	h.d.Frame(h.now, &actorpb.DeviceFrame{Conn: conn(1), Epoch: 1, Cmd: uint32(messages.CmdC2CPushAck), Seq: 5, Body: ack})
	aa := framesTo(h.settle(), 1)
	if len(aa) != 1 || messages.Cmd(aa[0].Cmd) != messages.CmdC2CPushAckAck || aa[0].Seq != 5 || h.d.Pending() != 0 {
		t.Fatalf("ack-ack: %v pending %d", cmds(aa), h.d.Pending())
	}
	// Resent after the ack: still acknowledged with the same id, not stored.
	h.d.C2C(h.now, send, nil)
	if ca3 := body(t, framesTo(h.settle(), 9)[0], &devicepb.C2CAck{}); ca3.MsgId != ca.MsgId || h.d.Pending() != 0 {
		t.Fatalf("resend after ack: %v", ca3)
	}
}

func TestKickAndPresence(t *testing.T) {
	h := newHarness(t)
	h.d.Kick(h.now, ReplyTo{"api", 1}, &actorpb.Kick{Detail: "bye"})
	if r := h.settle()[0].Reply.GetKick(); r.WasOnline {
		t.Fatal("kick of an offline identity reported online")
	}
	h.login(1)
	h.settle()
	h.d.Presence(ReplyTo{"api", 2})
	if p := h.settle()[0].Reply.GetPresence(); !p.Online || p.Conn.ConnId != 1 {
		t.Fatalf("presence %v", p)
	}
	h.d.Kick(h.now, ReplyTo{"api", 3}, &actorpb.Kick{Detail: "bye"})
	effs := h.settle()
	k := framesTo(effs, 1)
	if len(k) != 1 || body(t, k[0], &devicepb.Kickout{}).Reason != devicepb.KickReason_KICKED_BY_APP_SERVER {
		t.Fatalf("kick frames %v", k)
	}
	if h.d.Online() {
		t.Fatal("still online after kick")
	}
}

func TestRestoreFromSnapshot(t *testing.T) {
	cfg := DefaultConfig()
	snap := &store.Snapshot{
		Meta: &actorpb.IdentityMeta{LastSeq: 9, LastEpoch: 3, Session: &actorpb.SessionRecord{Epoch: 3, Conn: conn(5), Online: true}},
		Inbox: []*actorpb.InboxEntry{
			{Seq: 8, MsgId: "b", Payload: []byte("2")},
			{Seq: 4, MsgId: "a", Payload: []byte("1")},
		},
	}
	d := NewDevice(&cfg, store.Identity{App: 1, UID: "u"}, snap, nil, func() string { return "n" })
	if !d.Online() || d.Pending() != 2 || d.inbox[0].e.Seq != 4 {
		t.Fatal("snapshot not restored")
	}
	now := time.Now()
	d.Tick(now)
	var fs []*actorpb.OutFrame
	for _, e := range d.Effects() {
		fs = append(fs, e.ToConn.Frames...)
	}
	if len(fs) != 2 || fs[0].Seq != 4 || fs[1].Seq != 8 {
		t.Fatalf("resumed delivery: %v", fs)
	}
	d.Push(now, ReplyTo{}, &actorpb.Push{Stored: true}, nil)
	if w := d.TakeWrite(); w.Put[0].Seq != 10 {
		t.Fatalf("next seq %d, want 10", w.Put[0].Seq)
	}
}

// TestWindowBytes: large messages are delivered a few at a time, so a
// login with a big backlog never overflows the gate's queue; a single
// message larger than the window still goes out.
func TestWindowBytes(t *testing.T) {
	h := newHarness(t)
	h.cfg.WindowBytes = 100 << 10
	h.cfg.MaxFrameSize = 1 << 20 // the window, not the frame limit, ends the PULL_ACK
	big := string(make([]byte, 40<<10))
	for range 5 {
		h.push(big, 0)
	}
	h.settle()
	h.login(1)
	if fs := framesTo(h.settle(), 1); len(fs) != 3 { // LOGIN_ACK + 2 × 40 KiB
		t.Fatalf("frames after login: %d", len(fs))
	}
	pull, _ := proto.Marshal(&devicepb.Pull{})
	h.d.Frame(h.now, &actorpb.DeviceFrame{Conn: conn(1), Epoch: 1, Cmd: uint32(messages.CmdPull), Body: pull})
	pa := body(t, framesTo(h.settle(), 1)[0], &devicepb.PullAck{})
	if len(pa.Messages) != 2 || !pa.HasMore {
		t.Fatalf("PULL_ACK of %d messages, has_more %v", len(pa.Messages), pa.HasMore)
	}
	h2 := newHarness(t)
	h2.cfg.WindowBytes = 1024
	h2.push(string(make([]byte, 4096)), 0)
	h2.settle()
	h2.login(1)
	if fs := framesTo(h2.settle(), 1); len(fs) != 2 {
		t.Fatalf("a message above the window must still go out: %d frames", len(fs))
	}
}

// TestWriteSnapshotsMeta: a write handed to the store is not changed by
// what the machine does while it is in flight (the committer encodes it on
// its own goroutine).
func TestWriteSnapshotsMeta(t *testing.T) {
	h := newHarness(t)
	h.login(1)
	w := h.d.TakeWrite()
	if w == nil || w.Meta == nil || !w.Meta.Session.Online {
		t.Fatalf("login write %+v", w)
	}
	h.d.Closed(h.now, &actorpb.DeviceClosed{Conn: conn(1), Epoch: 1})
	h.push("x", 0)
	if !w.Meta.Session.Online || w.Meta.LastSeq != 0 {
		t.Fatalf("in-flight write changed: online %v last_seq %d", w.Meta.Session.Online, w.Meta.LastSeq)
	}
	h.d.WriteDone(nil)
	next := h.d.TakeWrite()
	if next.Meta.Session.Online || next.Meta.LastSeq != 1 {
		t.Fatalf("next write: online %v last_seq %d", next.Meta.Session.Online, next.Meta.LastSeq)
	}
}

// TestLastSeqWithoutMetaWrites: a push stores only its entry; the meta's
// last seq catches up in the write that deletes entries, so a restart
// never reuses a seq.
func TestLastSeqWithoutMetaWrites(t *testing.T) {
	h := newHarness(t)
	h.push("a", 0)
	h.push("b", 0)
	h.settle()
	for _, w := range h.writes {
		if w.Meta != nil || !w.Sync {
			t.Fatalf("push write: meta %v sync %v", w.Meta, w.Sync)
		}
	}
	// Restored from entries alone, the seq goes on after the highest.
	cfg := DefaultConfig()
	d := NewDevice(&cfg, store.Identity{App: 1, UID: "u"}, &store.Snapshot{
		Meta: &actorpb.IdentityMeta{LastSeq: 3}, Inbox: []*actorpb.InboxEntry{{Seq: 12, MsgId: "x"}}}, nil, func() string { return "y" })
	d.Push(h.now, ReplyTo{}, &actorpb.Push{Stored: true}, nil)
	if w := d.TakeWrite(); w.Put[0].Seq != 13 {
		t.Fatalf("next seq %d, want 13", w.Put[0].Seq)
	}
	// (An ack may come on any connection, even while the identity has no
	// session.)
	// The deletion of the highest seq rides in the next push's write,
	// whose entry carries a higher one: no meta.
	h.ackOf("m2")
	h.push("c", 0)
	w := h.d.TakeWrite()
	if len(w.Put) != 1 || w.Put[0].Seq != 3 || fmt.Sprint(w.Delete) != "[2]" || w.Meta != nil {
		t.Fatalf("push write with a deletion: %+v", w)
	}
	// A deletion flushed while that write is in flight brings the last
	// seq along (the write may fail, and the deletion land), and waits
	// for it.
	h.ackOf("m1")
	h.d.FlushDeletions()
	if h.d.TakeDetached() != nil {
		t.Fatal("a deletion that brings the meta was detached")
	}
	h.d.WriteDone(nil)
	w = h.d.TakeWrite()
	if fmt.Sprint(w.Delete) != "[1]" || w.Meta == nil || w.Meta.LastSeq != 3 || w.Sync {
		t.Fatalf("flushed deletion: %+v", w)
	}
	h.d.WriteDone(nil)
	// Deleting the entry that carries the highest seq brings it along,
	// without a sync; once stored, later deletions do not repeat it.
	h.ackOf("m3")
	h.d.FlushDeletions()
	if w := h.d.TakeDetached(); w == nil || fmt.Sprint(w.Delete) != "[3]" || w.Meta != nil {
		t.Fatalf("deletion after the meta: %+v", w)
	}
	h.push("d", 0)
	h.d.TakeWrite()
	h.d.WriteDone(nil)
	h.ackOf("m4")
	h.d.FlushDeletions()
	if w := h.d.TakeWrite(); w == nil || fmt.Sprint(w.Delete) != "[4]" || w.Meta.GetLastSeq() != 4 || w.Sync {
		t.Fatalf("deletion of the highest seq: %+v", w)
	}
}

// TestLoginBurstCountsWholeEntries: the window and a PULL_ACK are bounded
// by the bytes of whole entries, not of payloads, so that entries with
// large ids (stored before ids were capped, or ids a peer sent) never make
// a login burst overflow the gate's queue.
func TestLoginBurstCountsWholeEntries(t *testing.T) {
	cfg := DefaultConfig()
	bigID := string(make([]byte, 60<<10))
	snap := &store.Snapshot{}
	for i := range 40 {
		snap.Inbox = append(snap.Inbox, &actorpb.InboxEntry{Seq: uint32(i + 1), Kind: devicepb.Kind_KIND_C2C,
			MsgId: fmt.Sprintf("m%d", i), FromUid: "mallory", ClientMsgId: fmt.Sprintf("%02d", i) + bigID})
	}
	d := NewDevice(&cfg, store.Identity{App: 1, UID: "victim"}, snap, nil, func() string { return "n" })
	now := time.Now()
	d.Login(now, &actorpb.DeviceLogin{Conn: conn(1), FrameSeq: 1, Login: &devicepb.Login{Uid: "victim"}})
	d.TakeWrite()
	d.WriteDone(nil)
	burst, frames := 0, 0
	for _, e := range d.Effects() {
		for _, f := range e.ToConn.GetFrames() {
			burst += messages.HeaderSize + len(f.Body)
			frames++
		}
	}
	if frames < 2 || burst > cfg.WindowBytes+1024 {
		t.Fatalf("login burst of %d frames, %d bytes: over the window of %d bytes", frames, burst, cfg.WindowBytes)
	}
	pull, _ := proto.Marshal(&devicepb.Pull{})
	d.Frame(now, &actorpb.DeviceFrame{Conn: conn(1), Epoch: 1, Cmd: uint32(messages.CmdPull), Seq: 9, Body: pull})
	effs := d.Effects()
	if len(effs) != 1 || len(effs[0].ToConn.Frames) != 1 {
		t.Fatalf("PULL answered with %d effects", len(effs))
	}
	if f := effs[0].ToConn.Frames[0]; messages.HeaderSize+len(f.Body) > cfg.WindowBytes+1024 {
		t.Fatalf("PULL_ACK of %d bytes: over the window of %d bytes", messages.HeaderSize+len(f.Body), cfg.WindowBytes)
	}
}

// TestRecentKeysKeptUntilDurable: an idempotency key the machine has
// accepted is found in memory until its record is durable, however many
// keys came since; the store cannot answer for it before. Once durable,
// keys may leave memory (the store has them).
func TestRecentKeysKeptUntilDurable(t *testing.T) {
	h := newHarness(t)
	h.cfg.InboxMaxMessages = 10_000
	key := func(i int) string { return fmt.Sprintf("order-%d", i) }
	h.d.Push(h.now, ReplyTo{"api", 1}, &actorpb.Push{Stored: true, IdempotencyKey: key(0)}, nil)
	inFlight := h.d.TakeWrite() // the first write stays in flight
	const n = 3 * maxRecentIdem
	for i := 1; i < n; i++ {
		h.d.Push(h.now, ReplyTo{"api", uint64(i + 1)}, &actorpb.Push{Stored: true, IdempotencyKey: key(i)}, nil)
	}
	// Retries of every key, before anything is durable: the store has
	// none of them (the caller passes no record).
	for i := range n {
		if !h.d.KnowsIdempotencyKey(PushKey(key(i)), h.now) {
			t.Fatalf("key %d forgotten before its record is durable", i)
		}
		h.d.Push(h.now, ReplyTo{"api", uint64(n + i + 1)}, &actorpb.Push{Stored: true, IdempotencyKey: key(i)}, nil)
	}
	if h.d.Pending() != n {
		t.Fatalf("%d messages stored for %d keys", h.d.Pending(), n)
	}
	if inFlight == nil || len(inFlight.Idem) != 1 {
		t.Fatalf("first write %+v", inFlight)
	}
	h.d.WriteDone(nil)
	h.settle()
	h.d.Push(h.now, ReplyTo{"api", 9999}, &actorpb.Push{Stored: true, IdempotencyKey: "one-more"}, nil)
	h.settle()
	if len(h.d.recent.m) > maxRecentIdem {
		t.Fatalf("%d keys in memory once durable, want at most %d", len(h.d.recent.m), maxRecentIdem)
	}
}

// TestFencedWriteAnswersMovedAndDeliversNothing: every write carries the
// snapshot's owner epoch; when the store fences one (another activation
// claimed the identity), the machine answers every waiting caller with a
// retryable failure that says the identity moved, delivers nothing more,
// and reports itself fenced.
func TestFencedWriteAnswersMovedAndDeliversNothing(t *testing.T) {
	cfg := DefaultConfig()
	d := NewDevice(&cfg, store.Identity{App: 1, UID: "u"}, &store.Snapshot{Owner: 7}, nil, func() string { return "m" })
	now := time.Now()
	d.Login(now, &actorpb.DeviceLogin{Conn: conn(1), FrameSeq: 1, Login: &devicepb.Login{Uid: "u"}})
	w := d.TakeWrite()
	if w.Owner != 7 {
		t.Fatalf("write owner %d, want the snapshot's 7", w.Owner)
	}
	d.Push(now, ReplyTo{"api", 1}, &actorpb.Push{Stored: true, Payload: []byte("x"), IdempotencyKey: "k"}, nil)
	d.C2C(now, &actorpb.C2CSend{ReplyTo: conn(2), FromUid: "v", FrameSeq: 3, C2C: &devicepb.C2C{ToUid: "u", ClientMsgId: "c"}}, nil)
	d.WriteDone(fmt.Errorf("commit: %w", store.ErrFenced))
	if !d.Fenced() || !d.Broken() {
		t.Fatal("a fenced write must leave the machine fenced and broken")
	}
	var replies, acks int
	for _, e := range d.Effects() {
		if f := e.Reply.GetFailure(); f != nil {
			replies++
			if f.Code != int32(codes.Unavailable) || f.Message != Moved {
				t.Fatalf("waiting push answered %v", f)
			}
			continue
		}
		for _, f := range e.ToConn.GetFrames() {
			switch messages.Cmd(f.Cmd) {
			case messages.CmdC2CAck:
				if a := body(t, f, &devicepb.C2CAck{}); a.Code != devicepb.Code_STORE_UNAVAILABLE {
					t.Fatalf("waiting C2C answered %v", a)
				}
				acks++
			case messages.CmdLoginAck:
				if a := body(t, f, &devicepb.LoginAck{}); a.Code != devicepb.Code_STORE_UNAVAILABLE {
					t.Fatalf("waiting login answered %v", a)
				}
				if tc := e.ToConn; f.Seq != 1 || tc.ConnId != 1 || tc.Uid != "u" || tc.Login == nil || tc.Login.Ok {
					t.Fatalf("waiting login answered seq %d on conn %d of %q, outcome %v", f.Seq, tc.ConnId, tc.Uid, tc.Login)
				}
				acks++
			default:
				t.Fatalf("a fenced machine delivered %v", messages.Cmd(f.Cmd))
			}
		}
	}
	if replies != 1 || acks != 2 {
		t.Fatalf("%d replies and %d device answers, want 1 and 2", replies, acks)
	}
	if d.TakeWrite() != nil || d.TakeDetached() != nil {
		t.Fatal("a fenced machine wrote again")
	}
}

// TestExpiryIndexHints: a stream of messages to one identity indexes each
// expiry bucket once (later writes tell the store it is indexed), keeps
// the newest bucket while the machine stays, unindexes a bucket once no
// entry is left in it, and every bucket when the machine leaves.
func TestExpiryIndexHints(t *testing.T) {
	h := newHarness(t)
	take := func() *store.Write {
		t.Helper()
		w := h.d.TakeWrite()
		if w == nil {
			t.Fatal("no write")
		}
		h.d.WriteDone(nil)
		return w
	}
	b1 := store.ExpiryBucket(h.now.Add(time.Hour).UnixMilli())
	h.push("a", 0)
	if w := take(); len(w.Put) != 1 || len(w.Indexed) != 0 || w.Unindex != nil {
		t.Fatalf("first write: indexed %v unindex %v", w.Indexed, w.Unindex)
	}
	h.ackOf("m1")
	h.push("b", 0)
	if w := take(); fmt.Sprint(w.Delete) != "[1]" || fmt.Sprint(w.Indexed) != fmt.Sprint([]int64{b1}) || w.Unindex != nil {
		t.Fatalf("second write: delete %v indexed %v unindex %v", w.Delete, w.Indexed, w.Unindex)
	}
	// Two minutes later the next message expires in the next bucket; the
	// inbox holds nothing in the first any more.
	h.now = h.now.Add(2 * time.Minute)
	b2 := store.ExpiryBucket(h.now.Add(time.Hour).UnixMilli())
	h.ackOf("m2")
	h.push("c", 0)
	if w := take(); b2 == b1 || len(w.Indexed) != 0 || fmt.Sprint(w.Unindex) != fmt.Sprint([]int64{b1}) {
		t.Fatalf("write in the next bucket: indexed %v unindex %v (buckets %d, %d)", w.Indexed, w.Unindex, b1, b2)
	}
	// Emptied, the inbox keeps the newest bucket indexed until the
	// machine leaves.
	h.ackOf("m3")
	h.push("d", 0)
	h.ackOf("m4")
	if w := take(); fmt.Sprint(w.Delete) != "[3 4]" || fmt.Sprint(w.Indexed) != fmt.Sprint([]int64{b2}) || w.Unindex != nil {
		t.Fatalf("write emptying the inbox: delete %v indexed %v unindex %v", w.Delete, w.Indexed, w.Unindex)
	}
	h.push("e", 0)
	take()
	h.ackOf("m5")
	if !h.d.FlushDeletions() {
		t.Fatal("nothing to flush")
	}
	w := h.d.TakeDetached()
	if w == nil {
		w = take() // it brings the meta along
	}
	if fmt.Sprint(w.Delete) != "[5]" || fmt.Sprint(w.Unindex) != fmt.Sprint([]int64{b2}) {
		t.Fatalf("leaving: delete %v unindex %v", w.Delete, w.Unindex)
	}
	// Rebuilt from the store, a machine knows its entries' buckets are
	// indexed, and keeps those that still hold entries.
	cfg := DefaultConfig()
	exp := h.now.Add(time.Hour).UnixMilli()
	d := NewDevice(&cfg, store.Identity{App: 1, UID: "u"}, &store.Snapshot{Inbox: []*actorpb.InboxEntry{
		{Seq: 1, MsgId: "x", ExpiresAtMs: exp - 3*store.ExpiryBucketMs}, {Seq: 2, MsgId: "y", ExpiresAtMs: exp}}}, nil, func() string { return "z" })
	d.Push(h.now, ReplyTo{}, &actorpb.Push{Stored: true, ExpiresAtMs: exp}, nil)
	if w := d.TakeWrite(); fmt.Sprint(w.Indexed) != fmt.Sprint([]int64{store.ExpiryBucket(exp)}) || w.Unindex != nil {
		t.Fatalf("rebuilt machine's write: indexed %v unindex %v", w.Indexed, w.Unindex)
	}
}

// TestFailedDeletionKeepsTheIndex: a detached deletion that failed left
// its entry stored; a later write must not unindex the bucket the entry
// still falls in, or the entry would never expire.
func TestFailedDeletionKeepsTheIndex(t *testing.T) {
	h := newHarness(t)
	b := store.ExpiryBucket(h.now.Add(time.Hour).UnixMilli())
	h.push("a", 0)
	h.settle()
	h.login(1) // its meta stores the last seq: m1's deletion needs no meta
	h.settle()
	h.ackOf("m1")
	if !h.d.FlushDeletions() {
		t.Fatal("nothing to flush")
	}
	w := h.d.TakeDetached()
	if w == nil || fmt.Sprint(w.Delete) != "[1]" || fmt.Sprint(w.Unindex) != fmt.Sprint([]int64{b}) {
		t.Fatalf("flush: %+v", w)
	}
	h.d.DetachedDone(true) // m1 stays stored, indexed under b
	// The machine stays (a push came), its next entry in the same bucket.
	h.push("b", 0)
	if w := h.d.TakeWrite(); w == nil || len(w.Put) != 1 {
		t.Fatalf("second write %+v", w)
	}
	h.d.WriteDone(nil)
	h.ackOf("m2")
	if !h.d.FlushDeletions() {
		t.Fatal("nothing to flush")
	}
	if w = h.d.TakeDetached(); w == nil {
		w = h.d.TakeWrite() // it brings the meta's last seq along
	}
	if w == nil || fmt.Sprint(w.Delete) != "[2]" || len(w.Unindex) != 0 {
		t.Fatalf("flush after a failed deletion: delete %v unindex %v, want [2] and no bucket", w.Delete, w.Unindex)
	}
}

// TestDeletionOutKeepsTheIndex: while a detached deletion is out, a later
// write does not unindex its entries' bucket: the deletion may yet fail
// (the store fails batches apart) and leave its entry stored.
func TestDeletionOutKeepsTheIndex(t *testing.T) {
	h := newHarness(t)
	b := store.ExpiryBucket(h.now.Add(time.Hour).UnixMilli())
	h.push("a", 0)
	h.push("b", 0)
	h.settle()
	h.login(1) // its meta stores the last seq: the deletions need no meta
	h.settle()
	h.ackOf("m1")
	if !h.d.FlushDeletions() {
		t.Fatal("nothing to flush")
	}
	d1 := h.d.TakeDetached() // m1's deletion, out
	if d1 == nil || fmt.Sprint(d1.Delete) != "[1]" || len(d1.Unindex) != 0 {
		t.Fatalf("first flush: %+v", d1)
	}
	h.ackOf("m2")
	if !h.d.FlushDeletions() {
		t.Fatal("nothing to flush")
	}
	d2 := h.d.TakeDetached()
	if d2 == nil || fmt.Sprint(d2.Delete) != "[2]" || len(d2.Unindex) != 0 {
		t.Fatalf("flush while m1's deletion is out: delete %v unindex %v, want [2] and no bucket (%d)", d2.Delete, d2.Unindex, b)
	}
	h.d.DetachedDone(false)
	h.d.DetachedDone(false)
}

// TestExpiryIndexHintsManyBuckets: messages of one identity expiring in
// many minutes, in any order, are each indexed once; a write's hints
// are ascending and without repeats, as the store reads them, and never
// name a bucket that an earlier entry of the same write brings (the
// store would then index neither).
func TestExpiryIndexHintsManyBuckets(t *testing.T) {
	h := newHarness(t)
	for _, m := range []int{7, 3, 9, 3, 1} {
		h.d.Push(h.now, ReplyTo{}, &actorpb.Push{Stored: true, ExpiresAtMs: h.now.Add(time.Duration(m) * time.Minute).UnixMilli()}, nil)
	}
	if w := h.d.TakeWrite(); len(w.Put) != 5 || len(w.Indexed) != 0 {
		t.Fatalf("first write: %d entries, indexed %v", len(w.Put), w.Indexed)
	}
	h.d.WriteDone(nil)
	for _, m := range []int{9, 1, 9, 3} {
		h.d.Push(h.now, ReplyTo{}, &actorpb.Push{Stored: true, ExpiresAtMs: h.now.Add(time.Duration(m) * time.Minute).UnixMilli()}, nil)
	}
	w := h.d.TakeWrite()
	var want []int64
	for _, m := range []int{1, 3, 9} {
		want = append(want, store.ExpiryBucket(h.now.Add(time.Duration(m)*time.Minute).UnixMilli()))
	}
	if fmt.Sprint(w.Indexed) != fmt.Sprint(want) {
		t.Fatalf("indexed %v, want %v", w.Indexed, want)
	}
	if !slices.IsSorted(h.d.indexed) || len(h.d.indexed) != 4 {
		t.Fatalf("the machine's buckets %v", h.d.indexed)
	}
}

// TestC2CIdsRememberedWhileTheMessageLives: a C2C client message id is
// remembered as long as its message may still be delivered (the C2C
// expiry, 7 days), not only the push idempotency keys' 24 hours: a phone
// offline for two days that resends its outbox must not store it twice.
func TestC2CIdsRememberedWhileTheMessageLives(t *testing.T) {
	h := newHarness(t)
	h.d.C2C(h.now, &actorpb.C2CSend{ReplyTo: conn(9), FrameSeq: 1, FromUid: "rider-3",
		C2C: &devicepb.C2C{ToUid: "driver-7", ClientMsgId: "c-1", Payload: []byte("hi")}}, nil)
	h.d.Push(h.now, ReplyTo{"api", 1}, &actorpb.Push{Stored: true, Payload: []byte("order"), IdempotencyKey: "k-1",
		SentAtMs: h.now.UnixMilli(), ExpiresAtMs: h.now.Add(time.Hour).UnixMilli()}, nil)
	h.settle()
	got := map[string]int64{}
	for _, w := range h.writes {
		for _, p := range w.Idem {
			got[p.Key] = p.Record.ExpiresAtMs - h.now.UnixMilli()
		}
	}
	cfg := DefaultConfig()
	if d := got[C2CKey("rider-3", "c-1")]; d != cfg.C2CTTL.Milliseconds() {
		t.Fatalf("the C2C id is remembered for %v, want the C2C expiry %v (records %v)", time.Duration(d)*time.Millisecond, cfg.C2CTTL, got)
	}
	if d := got[PushKey("k-1")]; d != cfg.IdempotencyTTL.Milliseconds() {
		t.Fatalf("the push key is remembered for %v, want %v (records %v)", time.Duration(d)*time.Millisecond, cfg.IdempotencyTTL, got)
	}
}

// TestC2CKeysOfUIDsWithNUL: a NUL in a sender's uid must not make two
// senders' messages share a de-duplication key; the second would be
// acknowledged and never stored. Keys of ordinary uids keep the form
// their stored records have.
func TestC2CKeysOfUIDsWithNUL(t *testing.T) {
	if C2CKey("a\x00b", "c") == C2CKey("a", "b\x00c") {
		t.Fatal("C2CKey(\"a\\x00b\", \"c\") == C2CKey(\"a\", \"b\\x00c\")")
	}
	if got := C2CKey("rider-3", "c-1"); got != "c2c:rider-3\x00c-1" {
		t.Fatalf("the key of an ordinary uid changed: %q", got)
	}
	h := newHarness(t)
	for i, s := range []struct{ from, id string }{{"a\x00b", "c"}, {"a", "b\x00c"}, {"a\x00", "b\x00c"}, {"a", "\x00b\x00c"}} {
		h.d.C2C(h.now, &actorpb.C2CSend{ReplyTo: conn(9), FrameSeq: uint32(i + 1), FromUid: s.from, AtMs: h.now.UnixMilli(),
			C2C: &devicepb.C2C{ToUid: "driver-7", ClientMsgId: s.id, Payload: []byte("hi")}}, nil)
		ack := body(t, framesTo(h.settle(), 9)[0], &devicepb.C2CAck{})
		if ack.Code != devicepb.Code_OK || h.d.Pending() != i+1 {
			t.Fatalf("C2C %d from %q id %q: %v, %d stored, want %d", i, s.from, s.id, ack.Code, h.d.Pending(), i+1)
		}
	}
}

// TestLoginWriteFailureKeepsServerTime: the LOGIN_ACK STORE_UNAVAILABLE
// that replaces the OK one when the session's write fails carries the
// server time, as every LOGIN_ACK does.
func TestLoginWriteFailureKeepsServerTime(t *testing.T) {
	h := newHarness(t)
	h.d.Login(h.now, &actorpb.DeviceLogin{Conn: conn(1), FrameSeq: 5, Login: &devicepb.Login{Uid: "driver-7"}})
	if w := h.d.TakeWrite(); w == nil {
		t.Fatal("a login without a write")
	}
	h.d.WriteDone(errors.New("disk on fire"))
	fs := framesTo(h.d.Effects(), 1)
	if len(fs) != 1 || messages.Cmd(fs[0].Cmd) != messages.CmdLoginAck || fs[0].Seq != 5 {
		t.Fatalf("answer to a login whose write failed: %v", fs)
	}
	if a := body(t, fs[0], &devicepb.LoginAck{}); a.Code != devicepb.Code_STORE_UNAVAILABLE || a.ServerTimeMs != h.now.UnixMilli() {
		t.Fatalf("LOGIN_ACK %v at %d, want STORE_UNAVAILABLE at %d", a.Code, a.ServerTimeMs, h.now.UnixMilli())
	}
}

// TestPullAnsweredWhenTheWriteBeforeItFails: a PULL_ACK waits for the
// writes before it; when one fails, the PULL is answered STORE_UNAVAILABLE
// (PULL again later), not left without an answer.
func TestPullAnsweredWhenTheWriteBeforeItFails(t *testing.T) {
	h := newHarness(t)
	h.login(1)
	h.settle()
	h.push("a", 7)
	if w := h.d.TakeWrite(); w == nil {
		t.Fatal("a push without a write")
	}
	pull, _ := proto.Marshal(&devicepb.Pull{})
	h.d.Frame(h.now, &actorpb.DeviceFrame{Conn: conn(1), Epoch: h.d.session.Epoch, Cmd: uint32(messages.CmdPull), Seq: 44, Body: pull})
	h.d.WriteDone(errors.New("disk on fire"))
	fs := framesTo(h.d.Effects(), 1)
	if len(fs) != 1 || messages.Cmd(fs[0].Cmd) != messages.CmdPullAck || fs[0].Seq != 44 {
		t.Fatalf("answer to a PULL behind a failed write: %v", cmds(fs))
	}
	if a := body(t, fs[0], &devicepb.PullAck{}); a.Code != devicepb.Code_STORE_UNAVAILABLE || len(a.Messages) != 0 {
		t.Fatalf("PULL_ACK %v with %d messages, want STORE_UNAVAILABLE and none", a.Code, len(a.Messages))
	}
}

// TestLateLoginDoesNotKickANewerSession: a LOGIN held up (a partition)
// while the device logged in again on a new connection reaches the
// identity after that session began. It must not kick the device's only
// live session: it is answered as a login at once superseded (LOGIN_ACK
// OK, KICKOUT LOGGED_IN_ELSEWHERE, close) and the session stays. Older
// means received before the session's LOGIN by the same gate (its
// login_order; without one, from a gate of an older version, an earlier
// connection of that gate), or a LOGIN past its gate's deadline by more
// than the clocks may differ. A LOGIN the same gate received later is
// newer whatever its connection (PROTOCOL.md: a newer LOGIN kicks the
// older one), and so is one from another gate within its deadline.
func TestLateLoginDoesNotKickANewerSession(t *testing.T) {
	other := func(id uint64) *actorpb.ConnRef {
		return &actorpb.ConnRef{GateAddress: "n2", GateId: "g2", ConnId: id}
	}
	for _, tt := range []struct {
		name    string
		late    *actorpb.ConnRef
		dl      time.Duration // deadline relative to now
		kicks   bool
		refused bool // LOGIN_ACK STORE_UNAVAILABLE rather than OK + KICKOUT
		// login_order of the session's LOGIN and of the late one (0: a
		// gate that does not count them)
		sessionOrder, lateOrder uint64
	}{
		{"an earlier connection of the same gate, no order", conn(3), 10 * time.Second, false, false, 0, 0},
		{"received earlier by the same gate, on a later connection", conn(7), 10 * time.Second, false, false, 5, 4},
		{"received later by the same gate, on an earlier connection", conn(3), 10 * time.Second, true, false, 4, 5},
		{"received later by the same gate, long past its deadline", conn(7), -loginSkew - time.Second, false, true, 4, 5},
		{"another gate, long past its deadline", other(9), -loginSkew - time.Second, false, true, 0, 0},
		{"another gate, within its deadline", other(9), 10 * time.Second, true, false, 0, 0},
		{"another gate, received earlier there", other(9), 10 * time.Second, true, false, 5, 4},
		{"another gate, just past its deadline (clock skew)", other(9), -time.Second, true, false, 0, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.d.Login(h.now, &actorpb.DeviceLogin{Conn: conn(5), FrameSeq: 1, Login: &devicepb.Login{Uid: "driver-7"}, LoginOrder: tt.sessionOrder})
			e := h.d.session.Epoch
			h.settle()
			h.d.Login(h.now, &actorpb.DeviceLogin{Conn: tt.late, FrameSeq: 7, Login: &devicepb.Login{Uid: "driver-7"},
				DeadlineMs: h.now.Add(tt.dl).UnixMilli(), LoginOrder: tt.lateOrder})
			effs := h.settle()
			toSession := framesTo(effs, 5)
			if tt.kicks {
				if len(toSession) != 1 || messages.Cmd(toSession[0].Cmd) != messages.CmdKickout || h.d.session.Conn.ConnId != tt.late.ConnId {
					t.Fatalf("a newer login: the session got %v and is on conn %d", cmds(toSession), h.d.session.Conn.ConnId)
				}
				return
			}
			if len(toSession) != 0 || !h.d.Online() || h.d.session.Conn.ConnId != 5 || h.d.session.Epoch != e {
				t.Fatalf("the late login touched the session: it got %v, session %+v", cmds(toSession), h.d.session)
			}
			var answer *actorpb.ToConn
			for _, f := range effs {
				if f.Conn.ConnId == tt.late.ConnId {
					answer = f.ToConn
				}
			}
			if tt.refused {
				// Judged by two clocks: refused, to reconnect, not kicked
				// for good.
				if answer == nil || len(answer.Frames) != 1 || answer.GetLogin().GetOk() ||
					body(t, answer.Frames[0], &devicepb.LoginAck{}).Code != devicepb.Code_STORE_UNAVAILABLE {
					t.Fatalf("the late login's answer: %+v", answer)
				}
				return
			}
			if answer == nil || len(answer.Frames) != 2 || !answer.Close || !answer.GetLogin().GetOk() {
				t.Fatalf("the older login's answer: %+v", answer)
			}
			if a := body(t, answer.Frames[0], &devicepb.LoginAck{}); messages.Cmd(answer.Frames[0].Cmd) != messages.CmdLoginAck ||
				a.Code != devicepb.Code_OK || answer.Frames[0].Seq != 7 || a.ServerTimeMs == 0 {
				t.Fatalf("its LOGIN_ACK: %v", a)
			}
			if k := body(t, answer.Frames[1], &devicepb.Kickout{}); k.Reason != devicepb.KickReason_LOGGED_IN_ELSEWHERE {
				t.Fatalf("its KICKOUT: %v", k)
			}
			// Nothing was written for it: the session's record is as it was.
			for _, w := range h.writes[1:] {
				if w.Meta != nil {
					t.Fatalf("the late login wrote the identity's record: %v", w.Meta)
				}
			}
		})
	}
}

// TestRememberedKeysExpire: an idempotency key is remembered for
// actors.idempotency-ttl, in memory as in the store: an identity that
// stays in memory (traffic keeps it active) takes the same key again,
// a day later, as a new push, not as a duplicate of the old one.
func TestRememberedKeysExpire(t *testing.T) {
	h := newHarness(t)
	push := func(reqID uint64) {
		h.d.Push(h.now, ReplyTo{"api", reqID}, &actorpb.Push{Stored: true, IdempotencyKey: "order-1", Payload: []byte("x"),
			SentAtMs: h.now.UnixMilli(), ExpiresAtMs: h.now.Add(72 * time.Hour).UnixMilli()}, nil)
		h.settle()
	}
	push(1)
	h.now = h.now.Add(time.Hour)
	push(2) // within the TTL: a duplicate
	if n := h.d.Pending(); n != 1 {
		t.Fatalf("%d stored after a retry within the TTL", n)
	}
	h.now = h.now.Add(h.cfg.IdempotencyTTL)
	if h.d.KnowsIdempotencyKey(PushKey("order-1"), h.now) {
		t.Fatal("an expired key is still known")
	}
	push(3)
	if n := h.d.Pending(); n != 2 {
		t.Fatalf("%d stored: the key was taken for the expired one's duplicate", n)
	}
}

// TestC2CResendAnsweredWhenTheWriteFails: a C2C resent while the
// original's write is in flight is answered once that write is done; if
// it fails, both get STORE_UNAVAILABLE (the resend's answer used to be
// dropped: the device waited for a C2C_ACK that never came).
func TestC2CResendAnsweredWhenTheWriteFails(t *testing.T) {
	h := newHarness(t)
	send := func(seq uint32) {
		h.d.C2C(h.now, &actorpb.C2CSend{ReplyTo: conn(9), ReplyEpoch: 4, FrameSeq: seq, FromUid: "rider-3",
			C2C: &devicepb.C2C{ToUid: "driver-7", ClientMsgId: "c-1", Payload: []byte("hi")}}, nil)
	}
	send(1)
	if w := h.d.TakeWrite(); w == nil {
		t.Fatal("no write for the C2C")
	}
	send(2) // the resend, while the original's write is in flight
	h.d.WriteDone(errors.New("disk"))
	got := map[uint32]devicepb.Code{}
	for _, f := range framesTo(h.d.Effects(), 9) {
		got[f.Seq] = body(t, f, &devicepb.C2CAck{}).Code
	}
	if got[1] != devicepb.Code_STORE_UNAVAILABLE || got[2] != devicepb.Code_STORE_UNAVAILABLE || len(got) != 2 {
		t.Fatalf("answers %v, want STORE_UNAVAILABLE for seq 1 and 2", got)
	}
}

// TestSeqsDoNotWrap: an identity given the last seq (2^32-1) stores no
// more messages (seq 0 means "not stored", and the next would reuse the
// seqs of messages still stored): pushes and C2C are refused as a full
// inbox, nothing is written.
func TestSeqsDoNotWrap(t *testing.T) {
	cfg := DefaultConfig()
	d := NewDevice(&cfg, store.Identity{App: 1, UID: "u"}, &store.Snapshot{Meta: &actorpb.IdentityMeta{LastSeq: math.MaxUint32 - 1}}, nil, func() string { return "m" })
	now := time.Now()
	d.Push(now, ReplyTo{"api", 1}, &actorpb.Push{Stored: true, Payload: []byte("x")}, nil)
	w := d.TakeWrite()
	if w == nil || len(w.Put) != 1 || w.Put[0].Seq != math.MaxUint32 {
		t.Fatalf("the last seq was not given: %v", w)
	}
	d.WriteDone(nil)
	d.Effects()
	d.Push(now, ReplyTo{"api", 2}, &actorpb.Push{Stored: true, Payload: []byte("y")}, nil)
	d.C2C(now, &actorpb.C2CSend{ReplyTo: conn(2), FromUid: "v", FrameSeq: 3, C2C: &devicepb.C2C{ToUid: "u", ClientMsgId: "c"}}, nil)
	if w := d.TakeWrite(); w != nil {
		t.Fatalf("a message was stored past the last seq: %v", w)
	}
	var refusedPush, refusedC2C bool
	for _, e := range d.Effects() {
		if f := e.Reply.GetFailure(); f != nil && f.Code == int32(codes.ResourceExhausted) && strings.Contains(f.Message, "every seq") {
			refusedPush = true
		}
		for _, f := range e.ToConn.GetFrames() {
			if messages.Cmd(f.Cmd) == messages.CmdC2CAck && body(t, f, &devicepb.C2CAck{}).Code == devicepb.Code_INBOX_FULL {
				refusedC2C = true
			}
		}
	}
	if !refusedPush || !refusedC2C {
		t.Fatalf("past the last seq: push refused %v, C2C refused %v", refusedPush, refusedC2C)
	}
}

// TestAckLetsOutNothingExpired: an ack that frees the window lets out
// the next message only if it has not expired meanwhile (the expiry
// timer's tick may not have come yet): the acks' path did not expire.
func TestAckLetsOutNothingExpired(t *testing.T) {
	h := newHarness(t)
	h.cfg.Window = 1
	h.login(1)
	h.settle()
	at := h.now
	for i, exp := range []time.Duration{time.Hour, time.Second} {
		h.d.Push(h.now, ReplyTo{"api", uint64(i + 1)}, &actorpb.Push{Stored: true, Payload: []byte(fmt.Sprint("p", i)),
			SentAtMs: at.UnixMilli(), ExpiresAtMs: at.Add(exp).UnixMilli()}, nil)
	}
	fs := framesTo(h.settle(), 1)
	var first *devicepb.S2C
	for _, f := range fs {
		if messages.Cmd(f.Cmd) == messages.CmdS2C {
			first = body(t, f, &devicepb.S2C{})
		}
	}
	if first == nil || string(first.Payload) != "p0" {
		t.Fatalf("first delivery %v", first)
	}
	h.now = at.Add(2 * time.Second) // the second has expired; no Tick yet
	ack, _ := proto.Marshal(&devicepb.S2CAck{MsgId: first.MsgId})
	h.d.Frame(h.now, &actorpb.DeviceFrame{Conn: conn(1), Epoch: h.d.session.Epoch, Cmd: uint32(messages.CmdS2CAck), Body: ack})
	for _, f := range framesTo(h.settle(), 1) {
		if messages.Cmd(f.Cmd) == messages.CmdS2C {
			t.Fatalf("an expired message went out after the ack: %q", body(t, f, &devicepb.S2C{}).Payload)
		}
	}
}

// TestLoginAckAnnouncesTheGatesHeartbeat: the gate that holds the
// connection closes it when silent for 3 of its heartbeats; LOGIN_ACK
// announces that gate's interval, not the one this node's actors are set
// to (in a cluster of gate-only and actors-only nodes, they differ). A
// gate that does not say (0) gets the actors' own.
func TestLoginAckAnnouncesTheGatesHeartbeat(t *testing.T) {
	for _, tt := range []struct {
		gate, want uint32
	}{{5, 5}, {0, uint32(DefaultConfig().Heartbeat / time.Second)}} {
		h := newHarness(t)
		h.d.Login(h.now, &actorpb.DeviceLogin{Conn: conn(1), FrameSeq: 1, Login: &devicepb.Login{Uid: "driver-7"}, HeartbeatSeconds: tt.gate,
			MaxFrameSize: tt.gate * 1024})
		fs := framesTo(h.settle(), 1)
		if len(fs) == 0 || messages.Cmd(fs[0].Cmd) != messages.CmdLoginAck {
			t.Fatalf("gate heartbeat %d: frames %v", tt.gate, cmds(fs))
		}
		if a := body(t, fs[0], &devicepb.LoginAck{}); a.HeartbeatSeconds != tt.want {
			t.Fatalf("gate heartbeat %d: LOGIN_ACK announces %d, want %d", tt.gate, a.HeartbeatSeconds, tt.want)
		} else if want := cmp.Or(tt.gate*1024, uint32(DefaultConfig().MaxFrameSize)); a.MaxFrameSize != want {
			// The frame limit likewise: the gate enforces it.
			t.Fatalf("gate frame limit %d: LOGIN_ACK announces %d, want %d", tt.gate*1024, a.MaxFrameSize, want)
		}
		// A LOGIN older than this session, answered at once superseded,
		// announces its own gate's too.
		h.d.Login(h.now, &actorpb.DeviceLogin{Conn: conn(0), FrameSeq: 2, Login: &devicepb.Login{Uid: "driver-7"}, HeartbeatSeconds: 7})
		if fs := framesTo(h.settle(), 0); len(fs) != 2 || body(t, fs[0], &devicepb.LoginAck{}).HeartbeatSeconds != 7 {
			t.Fatalf("superseded login: frames %v", cmds(fs))
		}
	}
}

// TestLoginRate: one identity's LOGINs beyond actors.logins-per-second
// (after a burst of actors.login-burst) are answered LOGIN_ACK
// RATE_LIMITED, saying when to log in again, without ending the session
// or writing anything; the rate refills.
func TestLoginRate(t *testing.T) {
	h := newHarness(t)
	h.cfg.LoginsPerSecond, h.cfg.LoginBurst = 1, 3
	for i := range 3 {
		h.login(uint64(i + 1))
	}
	h.settle()
	epoch, writes := h.d.session.Epoch, len(h.writes)
	h.d.Login(h.now, &actorpb.DeviceLogin{Conn: conn(9), FrameSeq: 4, Login: &devicepb.Login{Uid: "driver-7"}})
	fs := framesTo(h.settle(), 9)
	if len(fs) != 1 || messages.Cmd(fs[0].Cmd) != messages.CmdLoginAck || fs[0].Seq != 4 {
		t.Fatalf("the fourth login's answer: %v", cmds(fs))
	}
	if a := body(t, fs[0], &devicepb.LoginAck{}); a.Code != devicepb.Code_RATE_LIMITED || !strings.Contains(a.Reason, "log in again in 1s") || a.ServerTimeMs == 0 {
		t.Fatalf("the fourth login: %v", a)
	}
	if h.d.session.Epoch != epoch || h.d.session.Conn.ConnId != 3 || len(h.writes) != writes {
		t.Fatalf("a refused login changed the session (epoch %d, conn %d) or wrote (%d writes)", h.d.session.Epoch, h.d.session.Conn.ConnId, len(h.writes)-writes)
	}
	// A LOGIN older than the session (held up on its way) is answered as
	// superseded, OK and kicked, as without the rate: it writes nothing.
	h.d.Login(h.now, &actorpb.DeviceLogin{Conn: conn(0), FrameSeq: 5, Login: &devicepb.Login{Uid: "driver-7"}})
	if fs := framesTo(h.settle(), 0); len(fs) != 2 || body(t, fs[0], &devicepb.LoginAck{}).Code != devicepb.Code_OK ||
		messages.Cmd(fs[1].Cmd) != messages.CmdKickout {
		t.Fatalf("an older login past the rate: %v", cmds(fs))
	}
	h.now = h.now.Add(time.Second)
	if h.login(10) != epoch+1 {
		t.Fatal("a login a second later was not let in")
	}
}
