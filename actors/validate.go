package actors

import (
	"fmt"

	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/messages/actorpb"
)

// checkEnvelope returns why env cannot be handed to the state machine, or
// "". Envelopes come from other members of the cluster as well as from
// this node's gate and API: the state machine relies on the fields each
// body needs, so an envelope that lacks one is refused at the actor's door
// rather than panicking inside it.
func checkEnvelope(env *actorpb.Envelope) string {
	if env.AppCode == 0 || env.AppCode > 0xFFFF {
		return fmt.Sprintf("app_code %d: must be in [1, 65535]", env.AppCode)
	}
	if !(store.Identity{UID: env.Uid}).Valid() {
		return fmt.Sprintf("uid: must be 1 to %d bytes", store.MaxUIDLen)
	}
	switch b := env.Body.(type) {
	case nil:
		return "no body"
	case *actorpb.Envelope_Login:
		if b.Login.GetConn() == nil {
			return "login.conn: missing"
		}
	case *actorpb.Envelope_Frame:
		if b.Frame.GetConn() == nil {
			return "frame.conn: missing"
		}
	case *actorpb.Envelope_Closed:
		if b.Closed.GetConn() == nil {
			return "closed.conn: missing"
		}
	case *actorpb.Envelope_C2C:
		m := b.C2C
		switch {
		case m.GetReplyTo() == nil:
			return "c2c.reply_to: missing"
		case m.GetC2C() == nil:
			return "c2c.c2c: missing"
		case !(store.Identity{UID: m.GetFromUid()}).Valid():
			return fmt.Sprintf("c2c.from_uid: must be 1 to %d bytes", store.MaxUIDLen)
		case len(m.GetC2C().GetClientMsgId()) > MaxClientMsgIDLen:
			return fmt.Sprintf("c2c.client_msg_id: %d bytes, limit %d", len(m.GetC2C().GetClientMsgId()), MaxClientMsgIDLen)
		}
	case *actorpb.Envelope_Push:
		if b.Push == nil {
			return "push: missing"
		}
	case *actorpb.Envelope_Kick:
		if b.Kick == nil {
			return "kick: missing"
		}
	case *actorpb.Envelope_GateDown:
		if b.GateDown.GetGateId() == "" {
			return "gate_down.gate_id: missing"
		}
	case *actorpb.Envelope_Presence, *actorpb.Envelope_Sweep:
		// No fields are read.
	default:
		return fmt.Sprintf("unknown body %T", b)
	}
	return ""
}
