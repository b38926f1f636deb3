package node_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// drainAcking reads what a logged-in device receives and acknowledges
// every stored message as it arrives, until want messages were seen or
// the test fails: a KICKOUT or a closed connection fails it. It returns
// the messages' payloads by msg id.
func drainAcking(t *testing.T, d *testkit.Device, want int) map[string]string {
	t.Helper()
	got := map[string]string{}
	for len(got) < want {
		f, err := d.ReadFrame()
		if err != nil {
			t.Fatalf("after %d of %d messages: %v", len(got), want, err)
		}
		switch m := f.Msg.(type) {
		case *devicepb.S2C:
			got[m.MsgId] = string(m.Payload)
			ackS2C(d, m.MsgId)
		case *devicepb.C2CPush:
			got[m.MsgId] = string(m.Payload)
			d.Send(messages.CmdC2CPushAck, d.NextSeq(), &devicepb.C2CPushAck{MsgId: m.MsgId})
		case *devicepb.C2CPushAckAck:
		case *devicepb.Kickout:
			t.Fatalf("after %d of %d messages: KICKOUT %v %q", len(got), want, m.Reason, m.Detail)
		default:
			t.Fatalf("after %d of %d messages: unexpected %v", len(got), want, f.Cmd)
		}
	}
	return got
}

// TestHugeClientMsgIDsDoNotLockOutTheReceiver is the attack of issue 9:
// one user sends another 40 C2C with 60 KiB client message ids and empty
// payloads. They must be refused with a clear code, and the receiver's
// login must never overflow the gate's queue for its connection.
func TestHugeClientMsgIDsDoNotLockOutTheReceiver(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	mallory := n.Device(t, 1, "mallory")
	for i := range 40 {
		id := fmt.Sprintf("%02d", i) + strings.Repeat("x", 60<<10)
		seq := sendC2C(mallory, "victim", id, "")
		if ack := expectC2CAck(t, mallory, seq); ack.Code != devicepb.Code_CLIENT_MSG_ID_TOO_LONG || ack.ClientMsgId != id {
			t.Fatalf("C2C %d with a 60 KiB client_msg_id: %v %q (echoed %d bytes)", i, ack.Code, ack.Reason, len(ack.ClientMsgId))
		}
	}
	// The limit is 128 bytes, for C2S too.
	if ack := expectC2CAck(t, mallory, sendC2C(mallory, "victim", strings.Repeat("y", 128), "")); ack.Code != devicepb.Code_OK {
		t.Fatalf("C2C with a 128-byte client_msg_id: %v %q", ack.Code, ack.Reason)
	}
	if ack := expectC2CAck(t, mallory, sendC2C(mallory, "victim", strings.Repeat("y", 129), "")); ack.Code != devicepb.Code_CLIENT_MSG_ID_TOO_LONG {
		t.Fatalf("C2C with a 129-byte client_msg_id: %v", ack.Code)
	}
	if ack := sendC2S(t, mallory, 3, strings.Repeat("z", 129)); ack.Code != devicepb.Code_CLIENT_MSG_ID_TOO_LONG {
		t.Fatalf("C2S with a 129-byte client_msg_id: %v", ack.Code)
	}
	// A frame that is all id: echoed, the answer would pass the frame
	// limit (testkit's devices read with that cap), so the id is left
	// out and the seq says what is answered.
	whole := strings.Repeat("w", messages.DefaultMaxBody-len("victim")-2-4)
	if ack := expectC2CAck(t, mallory, sendC2C(mallory, "victim", whole, "")); ack.Code != devicepb.Code_CLIENT_MSG_ID_TOO_LONG || ack.ClientMsgId != "" {
		t.Fatalf("C2C of a whole frame of client_msg_id: %v, echoed %d bytes", ack.Code, len(ack.ClientMsgId))
	}
	if ack := sendC2S(t, mallory, 3, whole[:len(whole)-40]); ack.Code != devicepb.Code_CLIENT_MSG_ID_TOO_LONG || ack.ClientMsgId != "" {
		t.Fatalf("C2S of a whole frame of client_msg_id: %v, echoed %d bytes", ack.Code, len(ack.ClientMsgId))
	}
	victim := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	ack := victim.Login("victim", testkit.Token(t, 1, "victim"), false)
	if ack.Code != devicepb.Code_OK {
		t.Fatalf("LOGIN_ACK %v", ack)
	}
	// Whatever is waiting arrives, without KICKOUT SLOW_CLIENT.
	drainAcking(t, victim, int(ack.Pending))
	// The connection is still open: a keepalive is answered (after the
	// C2C_PUSH_ACK_ACKs of the last acks, which may still be on the way).
	seq := victim.NextSeq()
	victim.Send(messages.CmdKeepalive, seq, nil)
	for {
		f, err := victim.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for KEEPALIVE_ACK: %v", err)
		}
		if f.Cmd == messages.CmdKeepaliveAck && f.Seq == seq {
			break
		}
		if f.Cmd != messages.CmdC2CPushAckAck {
			t.Fatalf("waiting for KEEPALIVE_ACK: got %v", f.Cmd)
		}
	}
}

// TestC2CFloodDoesNotStarveAppServerPushes is the C2C lockout of issue 9:
// users fill another's inbox with C2C until they are refused. An
// app-server's stored push to that user is still accepted, and the user
// logs in, receives and acknowledges everything normally, the push
// included.
func TestC2CFloodDoesNotStarveAppServerPushes(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	api := n.API(t)
	// Ten senders of 100 messages each, then one more each: the default
	// inbox (1000 messages) was full of C2C before the fix. Now C2C has a
	// budget of its own (1000 per receiver) and a share per sender (100).
	stored := 0
	for s := range 10 {
		d := n.Device(t, 1, fmt.Sprintf("flooder-%d", s))
		seqs := make([]uint32, 101)
		for i := range seqs {
			seqs[i] = sendC2C(d, "target", fmt.Sprintf("f%d-%d", s, i), "spam")
		}
		for _, seq := range seqs {
			switch ack := expectC2CAck(t, d, seq); ack.Code {
			case devicepb.Code_OK:
				stored++
			case devicepb.Code_INBOX_FULL:
			default:
				t.Fatalf("C2C_ACK %v %q", ack.Code, ack.Reason)
			}
		}
	}
	if stored != 1000 {
		t.Fatalf("%d C2C stored, want 1000: 100 from each sender", stored)
	}
	// The receiver's C2C room is full: an eleventh sender is refused too.
	late := n.Device(t, 1, "flooder-late")
	if ack := expectC2CAck(t, late, sendC2C(late, "target", "late-1", "spam")); ack.Code != devicepb.Code_INBOX_FULL {
		t.Fatalf("C2C to a receiver with 1000 C2C waiting: %v", ack.Code)
	}
	r, err := api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: "target", Payload: []byte("your ride is here")})
	if err != nil {
		t.Fatalf("app-server push after a C2C flood (%d C2C stored): %v", stored, err)
	}
	victim := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	if ack := victim.Login("target", testkit.Token(t, 1, "target"), false); ack.Code != devicepb.Code_OK || int(ack.Pending) != stored+1 {
		t.Fatalf("LOGIN_ACK %v pending %d, want %d", ack.Code, ack.Pending, stored+1)
	}
	got := drainAcking(t, victim, stored+1)
	if got[r.MsgId] != "your ride is here" {
		t.Fatal("the app-server's push was not delivered")
	}
	// The connection is still fine: the last confirmations of C2C acks,
	// then the answer to a keepalive.
	seq := victim.NextSeq()
	victim.Send(messages.CmdKeepalive, seq, nil)
	for {
		f, err := victim.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for KEEPALIVE_ACK: %v", err)
		}
		if f.Cmd == messages.CmdKeepaliveAck && f.Seq == seq {
			break
		}
		if f.Cmd != messages.CmdC2CPushAckAck {
			t.Fatalf("got %v, want C2C_PUSH_ACK_ACK or KEEPALIVE_ACK", f.Cmd)
		}
	}
}
