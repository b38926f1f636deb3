package node_test

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// These tests hold the node to what docs/protocol.md promises a client,
// one promise per check, over real TCP against a real node process.

// send writes a frame with an explicit header (msgtype included).
func send(t *testing.T, d *testkit.Device, h messages.Header, body proto.Message) {
	t.Helper()
	if h.AppCode == 0 {
		h.AppCode = d.AppCode()
	}
	if err := d.TrySend(h, body); err != nil {
		t.Fatalf("send %v: %v", h.Cmd, err)
	}
}

// expectHeader reads the next frame of cmd and checks its seq, msgtype
// and appcode. Waiting for an answer, it skips pushes (S2C, C2C_PUSH):
// on a loaded machine a redelivery (300 ms in tests) may come first.
func expectHeader(t *testing.T, d *testkit.Device, cmd messages.Cmd, seq uint32, msgtype, app uint16) testkit.Frame {
	t.Helper()
	var f testkit.Frame
	for {
		var err error
		if f, err = d.ReadFrame(); err != nil {
			t.Fatalf("waiting for %v: %v", cmd, err)
		}
		push := f.Cmd == messages.CmdS2C || f.Cmd == messages.CmdC2CPush
		if f.Cmd == cmd || !push {
			break
		}
	}
	if f.Cmd != cmd {
		t.Fatalf("got %v (seq %d, body %v), want %v", f.Cmd, f.Seq, f.Msg, cmd)
	}
	if f.Seq != seq || f.MsgType != msgtype || f.AppCode != app {
		t.Fatalf("%v: seq %d msgtype %d appcode %d, want seq %d msgtype %d appcode %d", cmd, f.Seq, f.MsgType, f.AppCode, seq, msgtype, app)
	}
	return f
}

// TestRepliesEchoSeqMsgtypeZero: §3 "Seq echo" — LOGIN_ACK, LOGOUT_ACK,
// KEEPALIVE_ACK, C2S_ACK, C2C_ACK, C2C_PUSH_ACK_ACK, PULL_ACK and ERROR
// carry the seq of the frame they answer, and msgtype 0 (PROTOCOL.md: "0
// on control frames", whatever the request's); server frames carry the session's appcode (§2); C2C_PUSH
// carries the sender's msgtype and the receiver's inbox seq; KICKOUT has
// seq 0 and msgtype 0 (§7).
func TestRepliesEchoSeqMsgtypeZero(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	const app = 2
	rider := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: app})
	send(t, rider, messages.Header{Cmd: messages.CmdLogin, Seq: 101}, &devicepb.Login{Uid: "rider", Token: testkit.Token(t, app, "rider")})
	if a := expectHeader(t, rider, messages.CmdLoginAck, 101, 0, app).Msg.(*devicepb.LoginAck); a.Code != devicepb.Code_OK {
		t.Fatalf("LOGIN_ACK %v", a)
	}
	driver := n.Device(t, app, "driver")

	send(t, rider, messages.Header{Cmd: messages.CmdKeepalive, Seq: 102, MsgType: 5}, nil)
	expectHeader(t, rider, messages.CmdKeepaliveAck, 102, 0, app)

	send(t, rider, messages.Header{Cmd: messages.CmdC2S, Seq: 103, MsgType: 9}, &devicepb.C2S{ClientMsgId: "gps-1", Payload: []byte("x")})
	if a := expectHeader(t, rider, messages.CmdC2SAck, 103, 0, app).Msg.(*devicepb.C2SAck); a.Code != devicepb.Code_NO_SUBSCRIBER || a.ClientMsgId != "gps-1" || a.MsgId != "" {
		t.Fatalf("C2S_ACK %v: want NO_SUBSCRIBER, client_msg_id echoed, no msg_id", a)
	}

	send(t, rider, messages.Header{Cmd: messages.CmdC2C, Seq: 104, MsgType: 6}, &devicepb.C2C{ToUid: "driver", ClientMsgId: "c-1", Payload: []byte("hi")})
	c2cAck := expectHeader(t, rider, messages.CmdC2CAck, 104, 0, app).Msg.(*devicepb.C2CAck)
	if c2cAck.Code != devicepb.Code_OK || c2cAck.ClientMsgId != "c-1" || c2cAck.MsgId == "" {
		t.Fatalf("C2C_ACK %v", c2cAck)
	}
	p := expectHeader(t, driver, messages.CmdC2CPush, 1, 6, app).Msg.(*devicepb.C2CPush)
	if p.MsgId != c2cAck.MsgId || p.FromUid != "rider" || p.ClientMsgId != "c-1" || p.SentAtMs == 0 {
		t.Fatalf("C2C_PUSH %v", p)
	}
	send(t, driver, messages.Header{Cmd: messages.CmdC2CPushAck, Seq: 201, MsgType: 6}, &devicepb.C2CPushAck{MsgId: p.MsgId})
	if aa := expectHeader(t, driver, messages.CmdC2CPushAckAck, 201, 0, app).Msg.(*devicepb.C2CPushAckAck); aa.MsgId != p.MsgId {
		t.Fatalf("C2C_PUSH_ACK_ACK %v", aa)
	}

	send(t, rider, messages.Header{Cmd: messages.CmdPull, Seq: 105, MsgType: 4}, &devicepb.Pull{})
	if pa := expectHeader(t, rider, messages.CmdPullAck, 105, 0, app).Msg.(*devicepb.PullAck); pa.Code != devicepb.Code_OK || len(pa.Messages) != 0 || pa.HasMore {
		t.Fatalf("PULL_ACK %v", pa)
	}

	send(t, rider, messages.Header{Cmd: 0x66, Seq: 106, MsgType: 3}, nil)
	if e := expectHeader(t, rider, messages.CmdError, 106, 0, app).Msg.(*devicepb.Error); e.Code != devicepb.Code_UNKNOWN_COMMAND {
		t.Fatalf("ERROR %v", e)
	}

	r := push(t, n.API(t), testkit.App2Key, &apipb.PushRequest{AppCode: app, Uid: "rider", Msgtype: 12, Payload: []byte("p")})
	if m := expectHeader(t, rider, messages.CmdS2C, r.Seq, 12, app).Msg.(*devicepb.S2C); m.MsgId != r.MsgId {
		t.Fatalf("S2C %v", m)
	}

	send(t, rider, messages.Header{Cmd: messages.CmdLogout, Seq: 107, MsgType: 2}, nil)
	expectHeader(t, rider, messages.CmdLogoutAck, 107, 0, app)
	rider.ExpectClosed()

	// A newer login kicks driver's session: KICKOUT seq 0, msgtype 0.
	n.Device(t, app, "driver")
	if k := expectHeader(t, driver, messages.CmdKickout, 0, 0, app).Msg.(*devicepb.Kickout); k.Reason != devicepb.KickReason_LOGGED_IN_ELSEWHERE {
		t.Fatalf("KICKOUT %v", k)
	}
	driver.ExpectClosed()
}

// TestAnswersBeforeLoginCarryTheFramesAppcode: §2 — before a login has
// been accepted, an answer carries the appcode of the frame it answers
// (ERROR, a failed LOGIN_ACK, which also carries server_time_ms).
func TestAnswersBeforeLoginCarryTheFramesAppcode(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 7})
	send(t, d, messages.Header{Cmd: messages.CmdKeepalive, Seq: 3, Flags: 0x04}, nil)
	if e := expectHeader(t, d, messages.CmdError, 3, 0, 7).Msg.(*devicepb.Error); e.Code != devicepb.Code_BAD_FLAGS {
		t.Fatalf("ERROR %v", e)
	}
	send(t, d, messages.Header{Cmd: messages.CmdLogin, Seq: 4}, &devicepb.Login{Uid: "u", Token: testkit.Token(t, 1, "u")})
	a := expectHeader(t, d, messages.CmdLoginAck, 4, 0, 7).Msg.(*devicepb.LoginAck)
	if a.Code != devicepb.Code_UNKNOWN_APP || a.ServerTimeMs == 0 || a.Epoch != 0 {
		t.Fatalf("LOGIN_ACK %v: want UNKNOWN_APP with server_time_ms and no epoch", a)
	}
	d.ExpectClosed()
}

// TestLoginAckAndEpochs: §4 — LOGIN_ACK has the heartbeat, the server's
// time, pending and last_seq; the epoch strictly increases per identity,
// also across a restart of the node.
func TestLoginAckAndEpochs(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	api := n.API(t)
	for range 3 {
		push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "kim", Payload: []byte("x")})
	}
	push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "kim", Payload: []byte("ff"), Delivery: apipb.Delivery_DELIVERY_FIRE_AND_FORGET})
	login := func() *devicepb.LoginAck {
		t.Helper()
		d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
		a := d.Login("kim", testkit.Token(t, 1, "kim"), false)
		d.Close()
		return a
	}
	before := time.Now().UnixMilli()
	a := login()
	if a.Code != devicepb.Code_OK || a.HeartbeatSeconds != 30 || a.Pending != 3 || a.LastSeq != 3 || a.ServerTimeMs < before-1000 || a.Epoch == 0 {
		t.Fatalf("LOGIN_ACK %v: want heartbeat 30, pending 3 (fire-and-forget not counted), last_seq 3, server time, an epoch", a)
	}
	b := login()
	n.Stop(syscall.SIGTERM)
	n.Restart()
	c := login()
	if !(a.Epoch < b.Epoch && b.Epoch < c.Epoch) {
		t.Fatalf("epochs %d, %d, %d (the last after a restart): not strictly increasing", a.Epoch, b.Epoch, c.Epoch)
	}
}

// TestWindowAndRedelivery: §9.3 — at most the window of stored messages
// is delivered and not acknowledged; a client that never acks gets one
// window and then only redeliveries of it (same msg_id and seq); an ack
// lets the next message out; a new session gets everything still in the
// inbox again from the lowest seq, same msg_id and seq.
func TestWindowAndRedelivery(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--actors.window", "3"}})
	api := n.API(t)
	d := n.Device(t, 1, "lee")
	ids := map[uint32]string{}
	for i := range 6 {
		r := push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "lee", Payload: []byte(strconv.Itoa(i))})
		ids[r.Seq] = r.MsgId
	}
	// Redeliveries come after 300 ms, then up to every 1 s (testkit):
	// read for 2.5 s.
	seen := map[uint32]int{}
	deadline := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(deadline) {
		_ = d.Conn().SetReadDeadline(time.Now().Add(time.Until(deadline)))
		f, err := d.ReadFrame()
		if err != nil {
			break
		}
		if f.Cmd != messages.CmdS2C {
			t.Fatalf("got %v", f.Cmd)
		}
		if m := f.Msg.(*devicepb.S2C); m.MsgId != ids[f.Seq] {
			t.Fatalf("seq %d came with msg_id %s, want %s", f.Seq, m.MsgId, ids[f.Seq])
		}
		seen[f.Seq]++
	}
	if len(seen) != 3 || seen[1] == 0 || seen[2] == 0 || seen[3] == 0 {
		t.Fatalf("delivered seqs %v: want exactly the window, 1 to 3", seen)
	}
	if seen[1] < 2 {
		t.Fatalf("seq 1 delivered %d times in 2.5 s without an ack: no redelivery", seen[1])
	}
	ackS2C(d, ids[1])
	// The window has room for one more: seq 4 (redeliveries of 1 to 3
	// may come first).
	for {
		seq, m := expectS2C(t, d)
		if seq == 4 {
			if m.MsgId != ids[4] {
				t.Fatalf("seq 4 msg_id %s", m.MsgId)
			}
			break
		}
		if seq > 3 {
			t.Fatalf("after acking seq 1: seq %d, want 4 (or a redelivery of 1 to 3)", seq)
		}
	}
	d.Close()
	// The next session: 2 to 6 wait; 2, 3, 4 come first, in seq order.
	d2 := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	if a := d2.Login("lee", testkit.Token(t, 1, "lee"), false); a.Pending != 5 || a.LastSeq != 6 {
		t.Fatalf("LOGIN_ACK pending %d last_seq %d, want 5 and 6", a.Pending, a.LastSeq)
	}
	for want := uint32(2); want <= 4; want++ {
		if seq, m := expectS2C(t, d2); seq != want || m.MsgId != ids[want] {
			t.Fatalf("after reconnecting: seq %d (%s), want %d (%s)", seq, m.MsgId, want, ids[want])
		}
	}
}

// TestPullPromises: §9.6 — limit 0 or above the page size means the page
// size; has_more pages on; a PULL_ACK's messages stay within the window's
// bytes (with large messages a page holds fewer, has_more set); PULL
// returns what is still in the inbox (not fire-and-forget pushes, not
// acknowledged messages) and does not change delivery; a pulled message
// acknowledged with the command of its kind leaves the inbox.
func TestPullPromises(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--actors.window", "1", "--actors.pull-page", "3", "--actors.window-bytes", "4096"}})
	api := n.API(t)
	d := n.Device(t, 1, "max")
	rider := n.Device(t, 1, "rider")
	var ids []string
	for i := range 5 {
		r := push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "max", Msgtype: uint32(i), Payload: []byte("small " + strconv.Itoa(i))})
		ids = append(ids, r.MsgId)
	}
	// A C2C (seq 6) and a fire-and-forget push (no seq, not stored).
	if a := expectC2CAck(t, rider, sendC2C(rider, "max", "c-1", "from rider")); a.Code != devicepb.Code_OK {
		t.Fatalf("C2C_ACK %v", a)
	}
	push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "max", Payload: []byte("ff"), Delivery: apipb.Delivery_DELIVERY_FIRE_AND_FORGET})
	// Three large ones (seq 7 to 9): about 1.5 KiB each.
	for range 3 {
		push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "max", Payload: []byte(strings.Repeat("L", 1500))})
	}
	// pullAsked sends a PULL whose limit is asked (nil: left out).
	pullAsked := func(after uint32, asked *uint32) *devicepb.PullAck {
		t.Helper()
		seq := d.NextSeq()
		d.Send(messages.CmdPull, seq, &devicepb.Pull{AfterSeq: after, Limit: asked})
		for {
			f, err := d.ReadFrame()
			if err != nil {
				t.Fatalf("waiting for PULL_ACK %d: %v", seq, err)
			}
			if f.Cmd == messages.CmdPullAck && f.Seq == seq {
				pa := f.Msg.(*devicepb.PullAck)
				if pa.Code != devicepb.Code_OK {
					t.Fatalf("PULL_ACK %v", pa.Code)
				}
				return pa
			}
			// Deliveries (the window of 1, its redeliveries, the
			// fire-and-forget push) interleave.
		}
	}
	// pull's limit 0 leaves the field out (the page size).
	pull := func(after, limit uint32) *devicepb.PullAck {
		t.Helper()
		if limit == 0 {
			return pullAsked(after, nil)
		}
		return pullAsked(after, &limit)
	}
	seqs := func(pa *devicepb.PullAck) []uint32 {
		var out []uint32
		for _, m := range pa.Messages {
			out = append(out, m.Seq)
		}
		return out
	}
	for _, limit := range []uint32{0, 1000} {
		if pa := pull(0, limit); len(pa.Messages) != 3 || !pa.HasMore || pa.Messages[0].Seq != 1 {
			t.Fatalf("limit %d: seqs %v has_more %v, want the page size (3) from seq 1", limit, seqs(pa), pa.HasMore)
		}
	}
	if pa := pull(0, 2); len(pa.Messages) != 2 || !pa.HasMore {
		t.Fatalf("limit 2: seqs %v", seqs(pa))
	}
	// "At most limit": an explicit 0 gets no message, and has_more says
	// that some are stored.
	if pa := pullAsked(0, new(uint32)); len(pa.Messages) != 0 || !pa.HasMore {
		t.Fatalf("limit 0 given: seqs %v has_more %v, want none and more", seqs(pa), pa.HasMore)
	}
	pa := pull(4, 0)
	if got := seqs(pa); len(got) != 3 || got[0] != 5 || got[1] != 6 || got[2] != 7 || !pa.HasMore {
		t.Fatalf("after 4: seqs %v has_more %v, want 5 6 7 and more", got, pa.HasMore)
	}
	c2c := pa.Messages[1]
	if c2c.Kind != devicepb.Kind_KIND_C2C || c2c.FromUid != "rider" || c2c.ClientMsgId != "c-1" || c2c.ExpiresAtMs == 0 {
		t.Fatalf("the C2C in PULL_ACK: %v", c2c)
	}
	if s := pa.Messages[0]; s.Kind != devicepb.Kind_KIND_S2C || s.MsgId != ids[4] || s.Msgtype != 4 || s.ExpiresAtMs == 0 {
		t.Fatalf("an S2C in PULL_ACK: %v", s)
	}
	// The large ones: fewer than the page fit 4 KiB; has_more until the end.
	var large []uint32
	for after := uint32(6); ; {
		pa := pull(after, 0)
		if len(pa.Messages) == 0 || len(pa.Messages) > 2 {
			t.Fatalf("a page of large messages after %d: seqs %v, want 1 or 2 within 4 KiB", after, seqs(pa))
		}
		large = append(large, seqs(pa)...)
		after = pa.Messages[len(pa.Messages)-1].Seq
		if !pa.HasMore {
			break
		}
	}
	if len(large) != 3 || large[0] != 7 || large[2] != 9 {
		t.Fatalf("large messages pulled: %v", large)
	}
	// Ack pulled messages by their kind: seq 5 (S2C) and 6 (C2C).
	ackS2C(d, ids[4])
	d.Send(messages.CmdC2CPushAck, d.NextSeq(), &devicepb.C2CPushAck{MsgId: c2c.MsgId})
	testkit.Eventually(t, 10*time.Second, func() bool {
		got := seqs(pull(4, 0))
		return len(got) > 0 && got[0] == 7
	}, "acknowledged pulled messages still in the inbox")
	// Pulling changed nothing about delivery: seq 1, never acked, is
	// still being delivered.
	testkit.Eventually(t, 10*time.Second, func() bool {
		f, err := d.ReadFrame()
		return err == nil && f.Cmd == messages.CmdS2C && f.Seq == 1
	}, "seq 1 no longer delivered after PULLs")
	if a := pull(9, 0); len(a.Messages) != 0 || a.HasMore {
		t.Fatalf("after the last seq: %v", seqs(a))
	}
}

// TestAcksOfUnknownMessages: §9.3 — an ack of an unknown msg_id is
// ignored; §10 — C2C_PUSH_ACK is always answered C2C_PUSH_ACK_ACK with its
// seq and msg_id, even for an id the server does not hold.
func TestAcksOfUnknownMessages(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	d := n.Device(t, 1, "nora")
	ackS2C(d, "no-such-message")
	send(t, d, messages.Header{Cmd: messages.CmdC2CPushAck, Seq: 55}, &devicepb.C2CPushAck{MsgId: "no-such-message"})
	if aa := expectHeader(t, d, messages.CmdC2CPushAckAck, 55, 0, 1).Msg.(*devicepb.C2CPushAckAck); aa.MsgId != "no-such-message" {
		t.Fatalf("C2C_PUSH_ACK_ACK %v", aa)
	}
	d.Keepalive()
}

// TestC2CResendIsAnsweredWhenTheInboxIsFull: §10 — a resend of a message
// already stored is answered OK with the original msg_id, also when the
// receiver's room is full for new ones (INBOX_FULL).
func TestC2CResendIsAnsweredWhenTheInboxIsFull(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--actors.c2c-sender-max-messages", "2"}})
	rider := n.Device(t, 1, "rider")
	first := expectC2CAck(t, rider, sendC2C(rider, "olga", "c-1", "one"))
	if a := expectC2CAck(t, rider, sendC2C(rider, "olga", "c-2", "two")); a.Code != devicepb.Code_OK {
		t.Fatalf("second: %v", a)
	}
	if a := expectC2CAck(t, rider, sendC2C(rider, "olga", "c-3", "three")); a.Code != devicepb.Code_INBOX_FULL || a.MsgId != "" {
		t.Fatalf("third, over the sender's share: %v, want INBOX_FULL", a)
	}
	again := expectC2CAck(t, rider, sendC2C(rider, "olga", "c-1", "one"))
	if again.Code != devicepb.Code_OK || again.MsgId != first.MsgId {
		t.Fatalf("resend of a stored message with the room full: %v, want OK with msg_id %s", again, first.MsgId)
	}
}

// TestKickByOperator: §7 — a kick through the API with an operator key
// is KICKOUT KICKED_BY_OPERATOR with the reason given as detail; the
// stored messages stay for the next session.
func TestKickByOperator(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	api := n.API(t)
	d := n.Device(t, 1, "pia")
	r := push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "pia", Payload: []byte("kept")})
	expectS2C(t, d) // delivered, not acknowledged
	k, err := api.Kick(testkit.Ctx(t, testkit.OperatorKey), &apipb.KickRequest{AppCode: 1, Uid: "pia", Reason: "maintenance"})
	if err != nil || !k.WasOnline {
		t.Fatalf("kick: %v %v", k, err)
	}
	for {
		f, err := d.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for KICKOUT: %v", err)
		}
		if f.Cmd != messages.CmdKickout && f.Cmd != messages.CmdS2C { // a redelivery may come first
			t.Fatalf("got %v", f.Cmd)
		}
		if f.Cmd == messages.CmdKickout {
			if ko := f.Msg.(*devicepb.Kickout); ko.Reason != devicepb.KickReason_KICKED_BY_OPERATOR || ko.Detail != "maintenance" || f.Seq != 0 {
				t.Fatalf("KICKOUT %v seq %d", ko, f.Seq)
			}
			break
		}
	}
	d.ExpectClosed()
	d2 := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	if a := d2.Login("pia", testkit.Token(t, 1, "pia"), false); a.Pending != 1 {
		t.Fatalf("pending %d after the kick", a.Pending)
	}
	if seq, m := expectS2C(t, d2); seq != r.Seq || m.MsgId != r.MsgId {
		t.Fatalf("after the kick: seq %d %s", seq, m.MsgId)
	}
}
