package node

import (
	"bytes"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/actors"
	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/cluster"
	"github.com/courier-im/courier/cluster/upstream"
	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
)

// bridge is the gate's Handler: it turns the gate's events into envelopes
// for the identities' actors. It runs on the gate's event loops and never
// blocks: sends to actors are asynchronous.
type bridge struct {
	sys      *cluster.System
	gateID   string
	gateAddr atomic.Pointer[string] // the gate's public address, for presence (known after Start)
	node     string
	g        *gate.Gate // set after the gate is created
	up       *upstream.Router
	ids      *actors.IDGen
	maxFrame int // the gate's frame limit, which its answers keep within
	// loginTimeout is the gate's: a LOGIN's deadline (DeviceLogin.deadline_ms).
	loginTimeout time.Duration
	logins       atomic.Uint64 // LOGINs forwarded (DeviceLogin.login_order)
	// upRefused counts a C2S refused, by why (nil: not counted).
	upRefused func(why string)
	// heartbeatSeconds is the gate's heartbeat interval: LOGIN_ACK
	// announces it, whichever node the identity's actor is on.
	heartbeatSeconds uint32
}

func (b *bridge) ref(id gate.ConnID) *actorpb.ConnRef {
	return &actorpb.ConnRef{GateAddress: b.sys.Address(), GateId: b.gateID, ConnId: uint64(id), GateNode: b.node}
}

func (b *bridge) publicAddr() string {
	if p := b.gateAddr.Load(); p != nil {
		return *p
	}
	return ""
}

// Login implements gate.Handler.
func (b *bridge) Login(c gate.ConnInfo, frameSeq uint32, login *devicepb.Login) {
	e := &loginEnvelope{}
	now := time.Now()
	deadline := c.LoginDeadline // the gate's: its timeout from the connection's opening
	if deadline.IsZero() {
		deadline = now.Add(b.loginTimeout)
	}
	e.login = actorpb.DeviceLogin{Conn: b.ref(c.ID), Login: login, FrameSeq: frameSeq, AtMs: now.UnixMilli(), GateAddr: b.publicAddr(),
		DeadlineMs: deadline.UnixMilli(), LoginOrder: b.logins.Add(1), HeartbeatSeconds: b.heartbeatSeconds,
		MaxFrameSize: uint32(b.maxFrame)}
	e.body.Login = &e.login
	e.env = actorpb.Envelope{AppCode: uint32(c.AppCode), Uid: c.UID, Body: &e.body}
	b.sys.Send(&e.env)
}

// loginEnvelope is the envelope of a LOGIN for its actor in one
// allocation, but for the connection's ConnRef: the session keeps that
// one while it lasts, and must not keep the rest alive with it.
type loginEnvelope struct {
	env   actorpb.Envelope
	body  actorpb.Envelope_Login
	login actorpb.DeviceLogin
}

// Frame implements gate.Handler.
func (b *bridge) Frame(c gate.ConnInfo, h messages.Header, body []byte) {
	switch h.Cmd {
	case messages.CmdC2S:
		var m devicepb.C2S
		if err := proto.Unmarshal(body, &m); err != nil {
			return // the gate checked the body decodes
		}
		if len(m.ClientMsgId) > actors.MaxClientMsgIDLen {
			b.reply(c, h, messages.CmdC2SAck, &devicepb.C2SAck{Code: devicepb.Code_CLIENT_MSG_ID_TOO_LONG,
				ClientMsgId: b.echoID(m.ClientMsgId), Reason: clientIDTooLong(len(m.ClientMsgId))})
			return
		}
		b.reply(c, h, messages.CmdC2SAck, b.c2s(c, h, &m))
	case messages.CmdC2C:
		var m devicepb.C2C
		if err := proto.Unmarshal(body, &m); err != nil {
			return
		}
		if len(m.ClientMsgId) > actors.MaxClientMsgIDLen {
			b.reply(c, h, messages.CmdC2CAck, &devicepb.C2CAck{Code: devicepb.Code_CLIENT_MSG_ID_TOO_LONG,
				ClientMsgId: b.echoID(m.ClientMsgId), Reason: clientIDTooLong(len(m.ClientMsgId))})
			return
		}
		if m.ToUid == "" || len(m.ToUid) > store.MaxUIDLen || m.ToUid == c.UID {
			b.reply(c, h, messages.CmdC2CAck, &devicepb.C2CAck{Code: devicepb.Code_BAD_RECEIVER, ClientMsgId: m.ClientMsgId,
				Reason: "to_uid must be another user's uid of at most 128 bytes"})
			return
		}
		if b.g != nil && b.g.Lists().UIDBlocked(c.AppCode, m.ToUid) {
			b.reply(c, h, messages.CmdC2CAck, &devicepb.C2CAck{Code: devicepb.Code_RECEIVER_BLOCKED, ClientMsgId: m.ClientMsgId,
				Reason: "the receiver is blocked"})
			return
		}
		b.sys.Send(&actorpb.Envelope{AppCode: uint32(c.AppCode), Uid: m.ToUid, Body: &actorpb.Envelope_C2C{C2C: &actorpb.C2CSend{
			ReplyTo: b.ref(c.ID), ReplyEpoch: c.Epoch, FrameSeq: h.Seq, Msgtype: uint32(h.MsgType), FromUid: c.UID,
			C2C: &m, AtMs: time.Now().UnixMilli(),
		}}})
	default: // S2C_ACK, C2C_PUSH_ACK, PULL: the device's own actor
		e := &frameEnvelope{}
		e.ref = actorpb.ConnRef{GateAddress: b.sys.Address(), GateId: b.gateID, ConnId: uint64(c.ID), GateNode: b.node}
		e.frame = actorpb.DeviceFrame{Conn: &e.ref, Epoch: c.Epoch, Cmd: uint32(h.Cmd), Msgtype: uint32(h.MsgType), Seq: h.Seq}
		if len(body) <= len(e.buf) {
			e.frame.Body = append(e.buf[:0:len(e.buf)], body...)
		} else {
			e.frame.Body = bytes.Clone(body)
		}
		e.body.Frame = &e.frame
		e.env = actorpb.Envelope{AppCode: uint32(c.AppCode), Uid: c.UID, Body: &e.body}
		b.sys.Send(&e.env)
	}
}

// frameEnvelope is the envelope of a device's frame for its actor in one
// allocation (the gate's busiest path: every acknowledgement), with room
// for the body of an S2C_ACK or C2C_PUSH_ACK.
type frameEnvelope struct {
	env   actorpb.Envelope
	body  actorpb.Envelope_Frame
	frame actorpb.DeviceFrame
	ref   actorpb.ConnRef
	buf   [48]byte
}

// echoID is the client_msg_id an answer to a refused C2S or C2C echoes:
// the id, unless it is too long for the answer to fit the frame limit
// with its code and reason (a C2C of a whole frame that is nearly all
// id). Then it is empty, and the frame's seq says what is answered.
func (b *bridge) echoID(id string) string {
	if len(id) > b.maxFrame-1024 {
		return ""
	}
	return id
}

func clientIDTooLong(n int) string {
	return fmt.Sprintf("client_msg_id of %d bytes: at most %d", n, actors.MaxClientMsgIDLen)
}

// c2s hands a C2S to the upstream router (never through the device
// actor) and returns the answer for the device.
func (b *bridge) c2s(c gate.ConnInfo, h messages.Header, m *devicepb.C2S) *devicepb.C2SAck {
	id := b.ids.Next()
	err := b.up.Publish(&apipb.UpstreamMessage{
		AppCode: uint32(c.AppCode), Msgtype: uint32(h.MsgType), Uid: c.UID, DeviceId: c.DeviceID,
		MsgId: id, ClientMsgId: m.ClientMsgId, Payload: m.Payload, ReceivedAtMs: time.Now().UnixMilli(),
	})
	ack := &devicepb.C2SAck{Code: devicepb.Code_OK, MsgId: id, ClientMsgId: m.ClientMsgId}
	why := ""
	switch {
	case errors.Is(err, upstream.ErrTooLarge):
		why, ack.Code, ack.MsgId, ack.Reason = "too_large", devicepb.Code_MESSAGE_TOO_LARGE, "", fmt.Sprintf("a C2S goes to the app-servers in one gRPC message: at most %d bytes with its ids", upstream.MaxMessageSize)
	case errors.Is(err, upstream.ErrNoSubscriber):
		why, ack.Code, ack.MsgId, ack.Reason = "no_subscriber", devicepb.Code_NO_SUBSCRIBER, "", "no app-server is subscribed to this appcode and msgtype"
	case errors.Is(err, upstream.ErrFull):
		why, ack.Code, ack.MsgId, ack.Reason = "queue_full", devicepb.Code_UPSTREAM_BUSY, "", "the app-servers are behind: retry later"
	case errors.Is(err, upstream.ErrDeviceOverBudget):
		why, ack.Code, ack.MsgId, ack.Reason = "device_over_budget", devicepb.Code_UPSTREAM_BUSY, "", "the app-servers are behind, and this device's messages waiting for them are at its share (upstream.uid-max-bytes): retry later"
	case errors.Is(err, upstream.ErrOverBudget):
		why, ack.Code, ack.MsgId, ack.Reason = "over_budget", devicepb.Code_UPSTREAM_BUSY, "", "the app-servers are behind (upstream memory budget full): retry later"
	case err != nil:
		why, ack.Code, ack.MsgId, ack.Reason = "closed", devicepb.Code_UNAVAILABLE, "", "the node is shutting down: retry"
	}
	if why != "" && b.upRefused != nil {
		b.upRefused(why)
	}
	return ack
}

// reply answers a frame on its own connection, straight through the gate,
// with msgtype 0: PROTOCOL.md's control replies are control frames.
func (b *bridge) reply(c gate.ConnInfo, h messages.Header, cmd messages.Cmd, m proto.Message) {
	body, _ := proto.Marshal(m)
	if b.g == nil {
		return
	}
	_ = b.g.Deliver(&actorpb.ToConn{AppCode: uint32(c.AppCode), Uid: c.UID, ConnId: uint64(c.ID), Epoch: c.Epoch,
		Frames: []*actorpb.OutFrame{{Cmd: uint32(cmd), Seq: h.Seq, Body: body}}})
}

// Closed implements gate.Handler.
func (b *bridge) Closed(c gate.ConnInfo, reason gate.CloseReason) {
	b.sys.Send(&actorpb.Envelope{AppCode: uint32(c.AppCode), Uid: c.UID, Body: &actorpb.Envelope_Closed{Closed: &actorpb.DeviceClosed{
		Conn: b.ref(c.ID), Epoch: c.Epoch, Reason: reason.String(),
	}}})
}

// sink adapts the gate to cluster.GateSink.
type sink struct {
	g  *gate.Gate
	id string
}

func (s sink) GateID() string { return s.id }

func (s sink) Backlog() time.Duration { return s.g.Backlog() }

// Deliver reports only a connection that is gone: the gate itself handles
// (and tells the actor about) slow clients, and a stale epoch is a late
// write the current session must not hear of.
func (s sink) Deliver(m *actorpb.ToConn) error {
	if err := s.g.Deliver(m); errors.Is(err, gate.ErrUnknownConn) || errors.Is(err, gate.ErrClosed) {
		return cluster.ErrConnGone
	}
	return nil
}
