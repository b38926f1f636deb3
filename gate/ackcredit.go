package gate

import (
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"google.golang.org/protobuf/encoding/protowire"
)

// Acknowledgements of what the server sent must not be what the frame
// rate limit punishes: a client that acks each push as it arrives drains
// a backlog at the server's pace, not its own. Each frame written to a
// client that asks for an ack (S2C, C2C_PUSH, and every message of a
// PULL_ACK) earns the connection one credit; an S2C_ACK or C2C_PUSH_ACK
// spends a credit instead of a frame token. Credits come only from what
// the server delivered and are capped (maxAckCredit), so acks cannot be
// used to flood: an ack beyond the credit pays like any frame. A
// KEEPALIVE passes free at most twice per heartbeat interval. The byte
// rate limit still counts every frame.

// maxAckCredit caps the credit a connection can hold: more than the
// deliveries one login burst, window and PULL pages put in flight.
const maxAckCredit = 4096

// ackCredit returns the acks a client owes for frames of f.
func ackCredit(f *actorpb.OutFrame) int32 {
	switch messages.Cmd(f.Cmd) {
	case messages.CmdS2C, messages.CmdC2CPush:
		return 1
	case messages.CmdPullAck:
		return pulledMessages(f.Body)
	}
	return 0
}

// pulledMessages counts the messages (field 2) of an encoded PullAck
// without decoding them.
func pulledMessages(b []byte) int32 {
	var n int32
	for len(b) > 0 {
		num, typ, tagLen := protowire.ConsumeTag(b)
		if tagLen < 0 {
			return n
		}
		valLen := protowire.ConsumeFieldValue(num, typ, b[tagLen:])
		if valLen < 0 {
			return n
		}
		if num == 2 && typ == protowire.BytesType {
			n++
		}
		b = b[tagLen+valLen:]
	}
	return n
}

// addAckCredit credits what drain wrote (event loop only).
func (s *conn) addAckCredit(n int32) {
	s.ackCredit = min(s.ackCredit+n, maxAckCredit)
}

// freeFrame reports whether a frame of cmd passes the frame rate limit
// without a token, and spends what it uses instead (event loop only).
func (s *conn) freeFrame(cmd messages.Cmd, now int64) bool {
	switch cmd {
	case messages.CmdS2CAck, messages.CmdC2CPushAck:
		if s.ackCredit > 0 {
			s.ackCredit--
			return true
		}
	case messages.CmdKeepalive:
		if now >= s.freeKeepalive {
			s.freeKeepalive = now + int64(s.loop.g.cfg.HeartbeatInterval/2)
			return true
		}
	}
	return false
}
