package actors

import (
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
)

// The S2C body is encoded by hand: it is the body of every push the node
// delivers, and proto.Marshal of a devicepb.S2C needs the message built
// first and walks it by reflection. appendS2C writes exactly the bytes
// proto.Marshal writes for devicepb.S2C{MsgId, Payload, SentAtMs,
// ExpiresAtMs} (fields in number order, zero values left out; checked by
// TestS2CBodyMatchesProtoMarshal).
const (
	s2cMsgID     = 1
	s2cPayload   = 2
	s2cSentAt    = 3
	s2cExpiresAt = 4
)

func sizeS2C(msgID string, payload []byte, sentAtMs, expiresAtMs int64) int {
	n := 0
	if msgID != "" {
		n += protowire.SizeTag(s2cMsgID) + protowire.SizeBytes(len(msgID))
	}
	if len(payload) > 0 {
		n += protowire.SizeTag(s2cPayload) + protowire.SizeBytes(len(payload))
	}
	if sentAtMs != 0 {
		n += protowire.SizeTag(s2cSentAt) + protowire.SizeVarint(uint64(sentAtMs))
	}
	if expiresAtMs != 0 {
		n += protowire.SizeTag(s2cExpiresAt) + protowire.SizeVarint(uint64(expiresAtMs))
	}
	return n
}

func appendS2C(b []byte, msgID string, payload []byte, sentAtMs, expiresAtMs int64) []byte {
	if msgID != "" {
		b = protowire.AppendTag(b, s2cMsgID, protowire.BytesType)
		b = protowire.AppendString(b, msgID)
	}
	if len(payload) > 0 {
		b = protowire.AppendTag(b, s2cPayload, protowire.BytesType)
		b = protowire.AppendBytes(b, payload)
	}
	if sentAtMs != 0 {
		b = protowire.AppendTag(b, s2cSentAt, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(sentAtMs))
	}
	if expiresAtMs != 0 {
		b = protowire.AppendTag(b, s2cExpiresAt, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(expiresAtMs))
	}
	return b
}

// s2cBody returns the encoded S2C body in a buffer of its exact size.
func s2cBody(msgID string, payload []byte, sentAtMs, expiresAtMs int64) []byte {
	return appendS2C(make([]byte, 0, sizeS2C(msgID, payload, sentAtMs, expiresAtMs)), msgID, payload, sentAtMs, expiresAtMs)
}

// s2cFrame returns the S2C frame of a push, its body encoded by hand.
func s2cFrame(msgtype, seq uint32, msgID string, payload []byte, sentAtMs, expiresAtMs int64) *actorpb.OutFrame {
	return &actorpb.OutFrame{Cmd: uint32(messages.CmdS2C), Msgtype: msgtype, Seq: seq,
		Body: s2cBody(msgID, payload, sentAtMs, expiresAtMs)}
}

// oneFrameToConn is a ToConn carrying one frame, in one allocation with
// its frame list and the frame itself: a fire-and-forget push's delivery.
type oneFrameToConn struct {
	tc     actorpb.ToConn
	frame  actorpb.OutFrame
	frames [1]*actorpb.OutFrame
}

// s2cToConn returns the delivery of a fire-and-forget push (seq 0) to the
// session's connection; the body is the frame's only other allocation.
func (d *Device) s2cToConn(msgtype uint32, msgID string, payload []byte, sentAtMs, expiresAtMs int64) *actorpb.ToConn {
	o := &oneFrameToConn{}
	o.frame = actorpb.OutFrame{Cmd: uint32(messages.CmdS2C), Msgtype: msgtype, Body: s2cBody(msgID, payload, sentAtMs, expiresAtMs)}
	o.frames[0] = &o.frame
	o.tc = actorpb.ToConn{AppCode: uint32(d.id.App), Uid: d.id.UID, ConnId: d.session.Conn.ConnId, Epoch: d.session.Epoch,
		Frames: o.frames[:]}
	return &o.tc
}
