package actors

import (
	"testing"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
)

// A node without its lease answers a device's requests with retryable
// refusals and sends nothing else but the kickouts its store writes
// decided: no success it could not stand behind, no delivery.
func TestLeaseless(t *testing.T) {
	okLogin := &actorpb.ToConn{AppCode: 1, Uid: "u", ConnId: 7, Epoch: 3,
		Frames: []*actorpb.OutFrame{frame(messages.CmdLoginAck, 0, 11, &devicepb.LoginAck{Code: devicepb.Code_OK, Epoch: 3, Pending: 2, ServerTimeMs: 1234})},
		Login:  &actorpb.LoginOutcome{Ok: true, AppCode: 1, Uid: "u", Epoch: 3}}
	got := Leaseless(okLogin)
	if got == nil || len(got.Frames) != 1 || got.Login == nil || got.Login.Ok || got.Epoch != 0 || got.ConnId != 7 {
		t.Fatalf("login: %v", got)
	}
	if f := got.Frames[0]; messages.Cmd(f.Cmd) != messages.CmdLoginAck || f.Seq != 11 ||
		body(t, f, &devicepb.LoginAck{}).Code != devicepb.Code_STORE_UNAVAILABLE || body(t, f, &devicepb.LoginAck{}).ServerTimeMs != 1234 {
		t.Fatalf("LOGIN_ACK OK became %v (every LOGIN_ACK carries the server time)", f)
	}

	// A refusal goes out as it is.
	_, refusal, _ := Refusal(&actorpb.Envelope{AppCode: 1, Uid: "u", Body: &actorpb.Envelope_Login{Login: &actorpb.DeviceLogin{
		Conn: &actorpb.ConnRef{ConnId: 7}, FrameSeq: 12}}}, 0, devicepb.Code_INTERNAL, "boom")
	if got := Leaseless(refusal); got == nil || body(t, got.Frames[0], &devicepb.LoginAck{}).Code != devicepb.Code_INTERNAL ||
		body(t, got.Frames[0], &devicepb.LoginAck{}).ServerTimeMs == 0 || got.Login.Ok || got.Frames[0].Seq != 12 {
		t.Fatalf("refusal: %v", got)
	}

	c2c := &actorpb.ToConn{ConnId: 8, Epoch: 5, Frames: []*actorpb.OutFrame{frame(messages.CmdC2CAck, 4, 13,
		&devicepb.C2CAck{Code: devicepb.Code_OK, MsgId: "m1", ClientMsgId: "c1"})}}
	got = Leaseless(c2c)
	if got == nil || got.Epoch != 5 || got.Login != nil || got.Frames[0].Msgtype != 4 || got.Frames[0].Seq != 13 {
		t.Fatalf("c2c: %v", got)
	}
	if a := body(t, got.Frames[0], &devicepb.C2CAck{}); a.Code != devicepb.Code_STORE_UNAVAILABLE || a.ClientMsgId != "c1" || a.MsgId != "" {
		t.Fatalf("C2C_ACK OK became %v", a)
	}
	full := &actorpb.ToConn{ConnId: 8, Epoch: 5, Frames: []*actorpb.OutFrame{frame(messages.CmdC2CAck, 4, 14,
		&devicepb.C2CAck{Code: devicepb.Code_INBOX_FULL, ClientMsgId: "c2"})}}
	if got := Leaseless(full); got == nil || body(t, got.Frames[0], &devicepb.C2CAck{}).Code != devicepb.Code_INBOX_FULL {
		t.Fatalf("INBOX_FULL: %v", got)
	}

	pull := &actorpb.ToConn{ConnId: 8, Epoch: 5, Frames: []*actorpb.OutFrame{frame(messages.CmdPullAck, 0, 15,
		&devicepb.PullAck{Code: devicepb.Code_OK, Messages: []*devicepb.StoredMessage{{Seq: 1}}, HasMore: true})}}
	got = Leaseless(pull)
	if a := body(t, got.Frames[0], &devicepb.PullAck{}); a.Code != devicepb.Code_STORE_UNAVAILABLE || len(a.Messages) != 0 || a.HasMore {
		t.Fatalf("PULL_ACK became %v", a)
	}

	// Deliveries and acks of acks are the owner's to send.
	for name, tc := range map[string]*actorpb.ToConn{
		"S2C":              {ConnId: 8, Epoch: 5, Frames: []*actorpb.OutFrame{frame(messages.CmdS2C, 0, 1, &devicepb.S2C{MsgId: "m"})}},
		"C2C_PUSH_ACK_ACK": {ConnId: 8, Epoch: 5, Frames: []*actorpb.OutFrame{frame(messages.CmdC2CPushAckAck, 0, 2, &devicepb.C2CPushAckAck{MsgId: "m"})}},
	} {
		if got := Leaseless(tc); got != nil {
			t.Errorf("%s: sent %v", name, got)
		}
	}
	// A KICKOUT and close carry out a session's end the store has already
	// (effects wait for their write): they go, or the kicked connection
	// would stay logged in with nobody delivering to it.
	kick := frame(messages.CmdKickout, 0, 0, &devicepb.Kickout{Reason: devicepb.KickReason_LOGGED_IN_ELSEWHERE})
	if got := Leaseless(&actorpb.ToConn{ConnId: 8, Epoch: 5, Close: true, Frames: []*actorpb.OutFrame{
		frame(messages.CmdS2C, 0, 1, &devicepb.S2C{MsgId: "m"}), kick}}); got == nil || !got.Close || got.Epoch != 5 ||
		len(got.Frames) != 1 || messages.Cmd(got.Frames[0].Cmd) != messages.CmdKickout {
		t.Fatalf("KICKOUT: %v", got)
	}
	// A login superseded at once (LOGIN_ACK OK, KICKOUT, close) is a
	// failed login: its LOGIN_ACK refuses, and no KICKOUT follows it
	// (there is no session to end; the connection closes after it).
	superseded := &actorpb.ToConn{ConnId: 8, Epoch: 5, Close: true, Login: &actorpb.LoginOutcome{Ok: true, Epoch: 5},
		Frames: []*actorpb.OutFrame{frame(messages.CmdLoginAck, 0, 1, &devicepb.LoginAck{Code: devicepb.Code_OK, Epoch: 5}), kick}}
	if got := Leaseless(superseded); got == nil || !got.Close || got.GetLogin().GetOk() || len(got.Frames) != 1 ||
		body(t, got.Frames[0], &devicepb.LoginAck{}).Code != devicepb.Code_STORE_UNAVAILABLE {
		t.Fatalf("a superseded login: %v", got)
	}
	if got := Leaseless(&actorpb.ToConn{ConnId: 8, Epoch: 5, Close: true}); got == nil || !got.Close || len(got.Frames) != 0 {
		t.Fatalf("close only: %v", got)
	}
	// An answer among deliveries goes out alone.
	mixed := &actorpb.ToConn{ConnId: 8, Epoch: 5, Frames: []*actorpb.OutFrame{
		frame(messages.CmdS2C, 0, 1, &devicepb.S2C{MsgId: "m"}), c2c.Frames[0]}}
	if got := Leaseless(mixed); got == nil || len(got.Frames) != 1 || messages.Cmd(got.Frames[0].Cmd) != messages.CmdC2CAck {
		t.Fatalf("mixed: %v", got)
	}
}
