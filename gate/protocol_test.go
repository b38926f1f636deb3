package gate_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// TestProtocolErrorsBeforeLogin covers the answers to broken frames on a
// fresh connection, in the protocol's check order.
func TestProtocolErrorsBeforeLogin(t *testing.T) {
	tg := startGate(t, nil)
	hdr := func(mut func(b []byte)) []byte {
		b := frame(messages.Header{Cmd: messages.CmdKeepalive, AppCode: app1, Seq: 77}, nil)
		mut(b)
		return b
	}
	tests := []struct {
		name   string
		in     []byte
		code   devicepb.Code // OK: closed without an answer
		closes bool
	}{
		{"bad magic", hdr(func(b []byte) { b[0] = 0x00 }), devicepb.Code_OK, true},
		{"http request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), devicepb.Code_OK, true},
		{"unsupported version", hdr(func(b []byte) { b[2] = 2 }), devicepb.Code_UNSUPPORTED_VERSION, true},
		{"version before length", hdr(func(b []byte) { b[2] = 9; binary.BigEndian.PutUint32(b[14:], 1<<30) }), devicepb.Code_UNSUPPORTED_VERSION, true},
		// The body of an oversized frame is never sent: the gate must
		// answer from the header alone.
		{"frame too large", hdr(func(b []byte) { binary.BigEndian.PutUint32(b[14:], messages.DefaultMaxBody+1) }), devicepb.Code_FRAME_TOO_LARGE, true},
		{"length before flags", hdr(func(b []byte) { b[4] = 0x80; binary.BigEndian.PutUint32(b[14:], 1<<20) }), devicepb.Code_FRAME_TOO_LARGE, true},
		{"bad flags stays open", hdr(func(b []byte) { b[4] = 0x02 }), devicepb.Code_BAD_FLAGS, false},
		{"zstd flag not negotiated", hdr(func(b []byte) { b[4] = messages.FlagZstd }), devicepb.Code_BAD_FLAGS, false},
		{"flags before logged in", hdr(func(b []byte) { b[3] = byte(messages.CmdC2S); b[4] = 0x40 }), devicepb.Code_BAD_FLAGS, false},
		{"keepalive before login", hdr(func([]byte) {}), devicepb.Code_NOT_LOGGED_IN, true},
		{"unknown command before login", hdr(func(b []byte) { b[3] = 0x99 }), devicepb.Code_NOT_LOGGED_IN, true},
		{"login with bad body stays open", frame(messages.Header{Cmd: messages.CmdLogin, AppCode: app1, Seq: 77}, []byte{0xFF, 0xFF, 0xFF}), devicepb.Code_BAD_BODY, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tg.dial(t)
			d.SendRaw(tt.in)
			if tt.code != devicepb.Code_OK {
				d.ExpectError(tt.code, 77)
			}
			if tt.closes {
				d.ExpectClosed()
				return
			}
			// Still open and still usable: a login works.
			if ack := d.Login("open-"+t.Name(), token(t, app1, "open-"+t.Name()), false); ack.Code != devicepb.Code_OK {
				t.Fatalf("login after a non-fatal error: %v", ack.Code)
			}
			d.Keepalive()
		})
	}
	// A frame refused for its flags does not count as the first: a
	// non-LOGIN frame after it is still the first frame, and closes.
	t.Run("bad flags then not LOGIN", func(t *testing.T) {
		d := tg.dial(t)
		d.SendRaw(hdr(func(b []byte) { b[4] = 0x02 }))
		d.ExpectError(devicepb.Code_BAD_FLAGS, 77)
		d.SendRaw(hdr(func([]byte) {}))
		d.ExpectError(devicepb.Code_NOT_LOGGED_IN, 77)
		d.ExpectClosed()
	})
	tg.waitMetric(t, 2, "courier_gate_protocol_errors_total", "code", "BAD_MAGIC")
	tg.waitMetric(t, 1, "courier_gate_limit_hits_total", "limit", "frame_size")
}

// TestProtocolErrorsAfterLogin covers the answers to broken frames of a
// logged-in connection; all but LOGOUT leave it open.
func TestProtocolErrorsAfterLogin(t *testing.T) {
	tg := startGate(t, nil)
	d, _ := tg.login(t, "alice", false)
	c2s := mustMarshal(&devicepb.C2S{ClientMsgId: "m1", Payload: []byte("hi")})
	tests := []struct {
		name string
		h    messages.Header
		body []byte
		code devicepb.Code
	}{
		{"unknown command", messages.Header{Cmd: 0x99, AppCode: app1}, nil, devicepb.Code_UNKNOWN_COMMAND},
		{"server-only command", messages.Header{Cmd: messages.CmdS2C, AppCode: app1}, nil, devicepb.Code_UNKNOWN_COMMAND},
		{"server-only ERROR", messages.Header{Cmd: messages.CmdError, AppCode: app1}, nil, devicepb.Code_UNKNOWN_COMMAND},
		{"bad body", messages.Header{Cmd: messages.CmdC2S, AppCode: app1}, []byte{0x0A, 0x05, 'a'}, devicepb.Code_BAD_BODY},
		{"keepalive with body", messages.Header{Cmd: messages.CmdKeepalive, AppCode: app1}, []byte{1}, devicepb.Code_BAD_BODY},
		{"app mismatch", messages.Header{Cmd: messages.CmdC2S, AppCode: app2}, c2s, devicepb.Code_APP_MISMATCH},
		{"second login", messages.Header{Cmd: messages.CmdLogin, AppCode: app1}, mustMarshal(&devicepb.Login{Uid: "alice", Token: token(t, app1, "alice")}), devicepb.Code_ALREADY_LOGGED_IN},
		{"zstd flag not negotiated", messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Flags: messages.FlagZstd}, c2s, devicepb.Code_BAD_FLAGS},
		{"reserved flag", messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Flags: 0x10}, c2s, devicepb.Code_BAD_FLAGS},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seq := uint32(1000 + i)
			tt.h.Seq = seq
			d.SendRaw(frame(tt.h, tt.body))
			d.ExpectError(tt.code, seq)
			d.Keepalive()
		})
	}
	if n := len(tg.h.Frames()); n != 0 {
		t.Fatalf("handler got %d frames from broken input", n)
	}
	// A good C2S reaches the handler, with the connection's identity.
	d.Send(messages.CmdC2S, 5, &devicepb.C2S{ClientMsgId: "m1", Payload: []byte("hi")})
	testkit.Eventually(t, wait, func() bool { return len(tg.h.Frames()) == 1 }, "C2S reaches the handler")
	f := tg.h.Frames()[0]
	if f.h.Cmd != messages.CmdC2S || f.h.Seq != 5 || !bytes.Equal(f.body, c2s) || f.info.UID != "alice" || f.info.Epoch == 0 {
		t.Fatalf("handler got %+v", f)
	}
	tg.waitMetric(t, 2, "courier_gate_protocol_errors_total", "code", "BAD_FLAGS")
	tg.waitMetric(t, 1, "courier_gate_protocol_errors_total", "code", "APP_MISMATCH")
}

// TestFrameBeforeLoginAck: a frame sent behind a LOGIN, before its
// LOGIN_ACK, is answered NOT_LOGGED_IN and the connection stays open:
// PROTOCOL.md closes only a connection whose first frame is not LOGIN.
// The login goes on, and the connection serves once it has succeeded.
func TestFrameBeforeLoginAck(t *testing.T) {
	tg := startGate(t, nil)
	tg.h.hold.Store(true)
	d := tg.dial(t)
	d.Send(messages.CmdLogin, 1, &devicepb.Login{Uid: "bob", Token: token(t, app1, "bob")})
	testkit.Eventually(t, wait, func() bool { return len(tg.h.Logins()) == 1 }, "login reaches the handler")
	// A second LOGIN while pending: ALREADY_LOGGED_IN, still open.
	d.Send(messages.CmdLogin, 2, &devicepb.Login{Uid: "bob", Token: token(t, app1, "bob")})
	d.ExpectError(devicepb.Code_ALREADY_LOGGED_IN, 2)
	// Anything else while pending: NOT_LOGGED_IN, still open, and the
	// frame never reaches the node.
	d.Send(messages.CmdKeepalive, 3, nil)
	d.ExpectError(devicepb.Code_NOT_LOGGED_IN, 3)
	d.Send(messages.CmdC2S, 4, &devicepb.C2S{ClientMsgId: "early", Payload: []byte("x")})
	d.ExpectError(devicepb.Code_NOT_LOGGED_IN, 4)
	if n := len(tg.h.Frames()); n != 0 {
		t.Fatalf("the node got %d frames sent before LOGIN_ACK", n)
	}
	// The node answers the login: the connection serves.
	if err := tg.h.answer(tg.h.Logins()[0], 1, false, true); err != nil {
		t.Fatal(err)
	}
	if f := d.Expect(messages.CmdLoginAck); f.Msg.(*devicepb.LoginAck).Code != devicepb.Code_OK || f.Seq != 1 {
		t.Fatalf("LOGIN_ACK %+v", f)
	}
	d.Send(messages.CmdKeepalive, 5, nil)
	if f := d.Expect(messages.CmdKeepaliveAck); f.Seq != 5 {
		t.Fatalf("KEEPALIVE_ACK seq %d, want 5", f.Seq)
	}
	if c := tg.h.closedFor("bob"); len(c) != 0 {
		t.Fatalf("Closed %+v", c)
	}
}

// TestFrameAfterARefusedLogin: only a first frame that is not LOGIN
// closes the connection. A first LOGIN refused with the connection left
// open (a body that does not decode, a flag not negotiated) does not make
// the next frame a first one: it gets NOT_LOGGED_IN, the connection stays
// open, and a good LOGIN then succeeds.
func TestFrameAfterARefusedLogin(t *testing.T) {
	tg := startGate(t, nil)
	d := tg.dial(t)
	d.SendRaw(frame(messages.Header{Cmd: messages.CmdLogin, AppCode: app1, Seq: 1}, []byte{0xff, 0xff}))
	d.ExpectError(devicepb.Code_BAD_BODY, 1)
	d.Send(messages.CmdKeepalive, 2, nil)
	d.ExpectError(devicepb.Code_NOT_LOGGED_IN, 2)
	d.SendRaw(frame(messages.Header{Cmd: messages.CmdLogin, AppCode: app1, Seq: 3, Flags: messages.FlagZstd}, []byte{1}))
	d.ExpectError(devicepb.Code_BAD_FLAGS, 3)
	d.Send(messages.CmdC2S, 4, &devicepb.C2S{ClientMsgId: "early", Payload: []byte("x")})
	d.ExpectError(devicepb.Code_NOT_LOGGED_IN, 4)
	if n := len(tg.h.Frames()); n != 0 {
		t.Fatalf("the node got %d frames sent before a login", n)
	}
	if ack := d.Login("bob", token(t, app1, "bob"), false); ack.Code != devicepb.Code_OK {
		t.Fatalf("LOGIN after refused frames: %v", ack.Code)
	}
	// A connection whose first frame is not LOGIN is still closed.
	d2 := tg.dial(t)
	d2.Send(messages.CmdKeepalive, 7, nil)
	d2.ExpectError(devicepb.Code_NOT_LOGGED_IN, 7)
	d2.ExpectClosed()
}

// TestPartialAndPipelinedFrames sends frames a byte at a time, and many
// frames in one write.
func TestPartialAndPipelinedFrames(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.FramesPerSecond = 0 })
	d := tg.dial(t)
	login := frame(messages.Header{Cmd: messages.CmdLogin, AppCode: app1, Seq: 1},
		mustMarshal(&devicepb.Login{Uid: "carol", Token: token(t, app1, "carol")}))
	for i := range login {
		d.SendRaw(login[i : i+1])
	}
	if f := d.Expect(messages.CmdLoginAck); f.Seq != 1 || f.Msg.(*devicepb.LoginAck).Code != devicepb.Code_OK {
		t.Fatalf("LOGIN_ACK %+v", f)
	}
	var batch []byte
	const n = 300
	for i := range n {
		batch = append(batch, frame(messages.Header{Cmd: messages.CmdKeepalive, AppCode: app1, Seq: uint32(10 + i)}, nil)...)
	}
	// Split mid-header and mid-frame.
	d.SendRaw(batch[:7])
	d.SendRaw(batch[7 : len(batch)/2+5])
	d.SendRaw(batch[len(batch)/2+5:])
	for i := range n {
		if f := d.Expect(messages.CmdKeepaliveAck); f.Seq != uint32(10+i) {
			t.Fatalf("ack %d has seq %d", i, f.Seq)
		}
	}
	tg.waitMetric(t, n, "courier_gate_frames_out_total", "cmd", "KEEPALIVE_ACK")
}

func TestKeepaliveAndLogout(t *testing.T) {
	tg := startGate(t, nil)
	d, ack := tg.login(t, "dave", false)
	if ack.HeartbeatSeconds != 1 {
		t.Fatalf("heartbeat in LOGIN_ACK %d", ack.HeartbeatSeconds)
	}
	d.Send(messages.CmdKeepalive, 4242, nil)
	if f := d.Expect(messages.CmdKeepaliveAck); f.Seq != 4242 || f.AppCode != app1 {
		t.Fatalf("KEEPALIVE_ACK %+v", f.Header)
	}
	d.Send(messages.CmdLogout, 9, nil)
	if f := d.Expect(messages.CmdLogoutAck); f.Seq != 9 {
		t.Fatalf("LOGOUT_ACK seq %d", f.Seq)
	}
	d.ExpectClosed()
	testkit.Eventually(t, wait, func() bool { return len(tg.h.closedFor("dave")) == 1 }, "Closed for dave")
	if c := tg.h.closedFor("dave")[0]; c.reason != gate.CloseLogout || c.info.Epoch == 0 {
		t.Fatalf("Closed %+v", c)
	}
	tg.waitMetric(t, 1, "courier_gate_closes_total", "reason", "logout")
}

// TestAnswersBeforeLogoutAreSent: a device that sends a C2S and LOGOUT in
// one write (an app closing) gets the C2S_ACK the handler gave at once,
// then LOGOUT_ACK: the close used to drop the answers queued through
// Deliver, and the device sent the C2S again on its next connection.
func TestAnswersBeforeLogoutAreSent(t *testing.T) {
	tg := startGate(t, nil)
	tg.h.ackC2S.Store(true)
	d, _ := tg.login(t, "leaver", false)
	c2s := frame(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: 5}, mustMarshal(&devicepb.C2S{ClientMsgId: "c1", Payload: []byte("bye")}))
	logout := frame(messages.Header{Cmd: messages.CmdLogout, AppCode: app1, Seq: 6}, nil)
	d.SendRaw(append(c2s, logout...))
	f := d.Expect(messages.CmdC2SAck)
	if f.Seq != 5 || f.Msg.(*devicepb.C2SAck).Code != devicepb.Code_OK {
		t.Fatalf("C2S_ACK %v seq %d", f.Msg, f.Seq)
	}
	if f := d.Expect(messages.CmdLogoutAck); f.Seq != 6 {
		t.Fatalf("LOGOUT_ACK seq %d", f.Seq)
	}
	d.ExpectClosed()
}
