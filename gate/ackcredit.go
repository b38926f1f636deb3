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
// used to flood: an ack beyond the credit pays like any frame. A pulled
// message earns its credit once per connection: only the messages of a
// PULL_ACK above the highest seq pulled on the connection so far count
// (a client that never acks could otherwise pull the same page again and
// again, each PULL one frame token earning a page of free frames). A
// KEEPALIVE passes free at most twice per heartbeat interval. The byte
// rate limit still counts every frame.

// maxAckCredit caps the credit a connection can hold: more than the
// deliveries one login burst, window and PULL pages put in flight.
const maxAckCredit = 4096

// ackCredit returns the acks a client owes for frames of f; pulledTo is
// the highest seq pulled on the connection so far, raised by a PULL_ACK
// (s.mu held).
func ackCredit(f *actorpb.OutFrame, pulledTo *uint32) int16 {
	switch messages.Cmd(f.Cmd) {
	case messages.CmdS2C, messages.CmdC2CPush:
		return 1
	case messages.CmdPullAck:
		n, top := pulledAbove(f.Body, *pulledTo)
		*pulledTo = max(*pulledTo, top)
		return int16(min(n, maxAckCredit))
	}
	return 0
}

// pulledAbove counts the messages (field 2) of an encoded PullAck whose
// seq is above floor, and returns the highest seq, without decoding the
// rest.
func pulledAbove(b []byte, floor uint32) (n int32, top uint32) {
	for len(b) > 0 {
		num, typ, tagLen := protowire.ConsumeTag(b)
		if tagLen < 0 {
			return n, top
		}
		valLen := protowire.ConsumeFieldValue(num, typ, b[tagLen:])
		if valLen < 0 {
			return n, top
		}
		if num == 2 && typ == protowire.BytesType {
			if seq := storedSeq(b[tagLen : tagLen+valLen]); seq > floor {
				n++
				top = max(top, seq)
			}
		}
		b = b[tagLen+valLen:]
	}
	return n, top
}

// storedSeq returns the seq (field 1) of an encoded, length-prefixed
// StoredMessage (0: none).
func storedSeq(v []byte) uint32 {
	m, l := protowire.ConsumeBytes(v)
	if l < 0 {
		return 0
	}
	var seq uint32
	for len(m) > 0 {
		num, typ, tagLen := protowire.ConsumeTag(m)
		if tagLen < 0 {
			return seq
		}
		if num == 1 && typ == protowire.VarintType {
			x, vl := protowire.ConsumeVarint(m[tagLen:])
			if vl < 0 {
				return seq
			}
			seq = uint32(x)
			m = m[tagLen+vl:]
			continue
		}
		valLen := protowire.ConsumeFieldValue(num, typ, m[tagLen:])
		if valLen < 0 {
			return seq
		}
		m = m[tagLen+valLen:]
	}
	return seq
}

// addAckCredit credits what drain wrote (event loop only).
func (s *conn) addAckCredit(n int16) {
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
