package gate_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// These tests hold the gate to promises of docs/protocol.md that the
// other gate tests do not reach: the order of the frame checks where two
// fail at once (§5), what is ignored (§2), what counts as activity (§8.4),
// the order of the login and connect checks (§8.1, §8.2), a session that
// outlives its token (§8.2).

// TestCheckOrderWhenTwoChecksFail: a frame that fails two checks gets the
// answer of the one that comes first in §5's table.
func TestCheckOrderWhenTwoChecksFail(t *testing.T) {
	tg := startGate(t, nil)
	d, _ := tg.login(t, "alice", false)
	tests := []struct {
		name string
		h    messages.Header
		body []byte
		code devicepb.Code
	}{
		// 5 flags before 8 appcode.
		{"reserved flag and wrong appcode", messages.Header{Cmd: messages.CmdC2S, AppCode: app2, Flags: 0x20}, mustMarshal(&devicepb.C2S{ClientMsgId: "x"}), devicepb.Code_BAD_FLAGS},
		// 7 command known before 8 appcode.
		{"unknown command and wrong appcode", messages.Header{Cmd: 0x66, AppCode: app2}, nil, devicepb.Code_UNKNOWN_COMMAND},
		// 8 appcode before 10 body.
		{"wrong appcode and bad body", messages.Header{Cmd: messages.CmdC2S, AppCode: app2}, []byte{0xFF, 0xFF}, devicepb.Code_APP_MISMATCH},
		// 10: LOGOUT's body must be empty.
		{"logout with a body", messages.Header{Cmd: messages.CmdLogout, AppCode: app1}, []byte{0x08, 0x01}, devicepb.Code_BAD_BODY},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.h.Seq = uint32(500 + i)
			d.SendRaw(frame(tt.h, tt.body))
			d.ExpectError(tt.code, tt.h.Seq)
			d.Keepalive() // the connection stays open
		})
	}
	// 8 appcode before 9 decompress, on a connection that agreed to zstd.
	z, _ := tg.login(t, "zed", true)
	z.SendRaw(frame(messages.Header{Cmd: messages.CmdC2S, AppCode: app2, Seq: 9, Flags: messages.FlagZstd}, []byte("not zstd")))
	z.ExpectError(devicepb.Code_APP_MISMATCH, 9)
	z.Keepalive()
	// 1 magic before 2 version: no answer at all.
	b := frame(messages.Header{Cmd: messages.CmdKeepalive, AppCode: app1, Seq: 1}, nil)
	b[0], b[2] = 0xAB, 9
	m := tg.dial(t)
	m.SendRaw(b)
	m.ExpectClosed()
	if n := len(tg.h.Frames()); n != 0 {
		t.Fatalf("handler got %d frames from refused input", n)
	}
}

// TestRateLimitComesBeforeFlags: §5 check 4 before 5 — a frame over the
// frame rate waits for the bucket before anything else is checked: its
// wrong flags are answered (BAD_FLAGS, the connection stays) once its
// turn comes, a second later.
func TestRateLimitComesBeforeFlags(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.FramesPerSecond = 1; c.FrameBurst = 2 })
	d, _ := tg.login(t, "quick", false) // the LOGIN takes one token
	d.Send(messages.CmdC2S, 2, &devicepb.C2S{ClientMsgId: "a"})
	sent := time.Now()
	d.SendRaw(frame(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: 3, Flags: 0x40}, mustMarshal(&devicepb.C2S{ClientMsgId: "b"})))
	d.ExpectError(devicepb.Code_BAD_FLAGS, 3)
	if took := time.Since(sent); took < 500*time.Millisecond {
		t.Fatalf("answered after %v: the frame over the rate did not wait", took)
	}
	d.Keepalive() // still open
}

// TestIgnoredParts: §2 — the reserved header byte is ignored on receipt,
// and unknown fields of a body are ignored; §12 — a compressed LOGIN gets
// BAD_FLAGS and the connection stays open for a proper one.
func TestIgnoredParts(t *testing.T) {
	tg := startGate(t, nil)
	login := mustMarshal(&devicepb.Login{Uid: "rita", Token: token(t, app1, "rita"), DeviceId: "d"})
	d := tg.dial(t)
	z, err := messages.NewZstd(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	d.SendRaw(frame(messages.Header{Cmd: messages.CmdLogin, AppCode: app1, Seq: 1, Flags: messages.FlagZstd}, z.Compress(nil, login)))
	d.ExpectError(devicepb.Code_BAD_FLAGS, 1)
	// A LOGIN with the reserved byte set and a field this server does not
	// know (number 99).
	withUnknown := protowire.AppendTag(append([]byte(nil), login...), 99, protowire.BytesType)
	withUnknown = protowire.AppendBytes(withUnknown, []byte("from a newer client"))
	b := frame(messages.Header{Cmd: messages.CmdLogin, AppCode: app1, Seq: 2}, withUnknown)
	b[5] = 0xFF
	d.SendRaw(b)
	f := d.Expect(messages.CmdLoginAck)
	if a := f.Msg.(*devicepb.LoginAck); f.Seq != 2 || a.Code != devicepb.Code_OK {
		t.Fatalf("LOGIN_ACK seq %d %v", f.Seq, a)
	}
	// A KEEPALIVE with the reserved byte set is answered too.
	k := frame(messages.Header{Cmd: messages.CmdKeepalive, AppCode: app1, Seq: 3}, nil)
	k[5] = 0x7E
	d.SendRaw(k)
	if f := d.Expect(messages.CmdKeepaliveAck); f.Seq != 3 {
		t.Fatalf("KEEPALIVE_ACK seq %d", f.Seq)
	}
	if c := tg.connOf(t, "rita"); c.DeviceID != "d" {
		t.Fatalf("login %+v", c)
	}
}

// TestBadMagicAfterLoginCloses: §2 — a frame with another magic closes
// the connection without an answer at any point of a session, and the
// node hears the session ended.
func TestBadMagicAfterLoginCloses(t *testing.T) {
	tg := startGate(t, nil)
	d, _ := tg.login(t, "sam", false)
	b := frame(messages.Header{Cmd: messages.CmdKeepalive, AppCode: app1, Seq: 4}, nil)
	b[1] = 0x00
	d.SendRaw(b)
	d.ExpectClosed()
	testkit.Eventually(t, wait, func() bool { return len(tg.h.closedFor("sam")) == 1 }, "Closed for sam")
	if c := tg.h.closedFor("sam")[0]; c.reason != gate.CloseProtocol || c.info.Epoch == 0 {
		t.Fatalf("Closed %+v", c)
	}
}

// TestBadMagicBeforeAWholeHeader: two bytes of another magic are enough:
// a foreign client that sends less than a header (a probe, the start of
// an HTTP request) is closed at once, not at the login timeout.
func TestBadMagicBeforeAWholeHeader(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.LoginTimeout = time.Minute })
	for _, head := range []string{"GE", "hi\n", "\xc0\xdf"} {
		d := tg.dial(t)
		start := time.Now()
		d.SendRaw([]byte(head))
		d.ExpectClosed()
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("%q closed after %v", head, took)
		}
	}
	// The right magic, a byte at a time, is waited for.
	d := tg.dial(t)
	b := frame(messages.Header{Cmd: messages.CmdLogin, AppCode: app1, Seq: 1}, mustMarshal(&devicepb.Login{Uid: "ann", Token: token(t, app1, "ann")}))
	for i := range b {
		d.SendRaw(b[i : i+1])
		time.Sleep(time.Millisecond)
	}
	if f := d.Expect(messages.CmdLoginAck); f.Msg.(*devicepb.LoginAck).Code != devicepb.Code_OK {
		t.Fatalf("LOGIN_ACK %v", f.Msg)
	}
}

// TestAnyClientFrameIsActivity: §8.4 — any frame from the client counts
// as activity for the idle timeout (not only KEEPALIVE), and frames the
// server sends do not.
func TestAnyClientFrameIsActivity(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.IdleTimeout, c.HeartbeatInterval = time.Second, 500*time.Millisecond })
	chatty, _ := tg.login(t, "chatty", false)
	listener, ack := tg.login(t, "listener", false)
	lc := tg.connOf(t, "listener")
	start := time.Now()
	for i := uint32(1); time.Since(start) < 2500*time.Millisecond; i++ {
		// chatty sends acks only, listener receives pushes only.
		chatty.Send(messages.CmdS2CAck, i, &devicepb.S2CAck{MsgId: "m"})
		_ = tg.Deliver(s2c(lc, ack.Epoch, i, []byte("x")))
		time.Sleep(50 * time.Millisecond) // the clients' pace, well inside the idle timeout
	}
	chatty.Keepalive()
	for {
		f, err := listener.ReadFrame()
		if err != nil {
			if !testkit.Closed(err) {
				t.Fatalf("listener: %v, want closed", err)
			}
			break
		}
		if f.Cmd != messages.CmdS2C {
			t.Fatalf("listener got %v", f.Cmd)
		}
	}
	if c := tg.h.closedFor("listener"); len(c) != 1 || c[0].reason != gate.CloseIdle {
		t.Fatalf("listener's close: %+v, want idle", c)
	}
	if n := len(tg.h.closedFor("chatty")); n != 0 {
		t.Fatal("a client sending acks was closed as idle")
	}
}

// TestSessionOutlivesItsToken: §8.2 — the token is checked only at
// LOGIN: a session goes on after its token expires; the next LOGIN with
// it gets TOKEN_EXPIRED.
func TestSessionOutlivesItsToken(t *testing.T) {
	tg := startGate(t, nil)
	tok, err := gate.MintToken(secret1, app1, "tess", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d := tg.dial(t)
	if a := d.Login("tess", tok, false); a.Code != devicepb.Code_OK {
		t.Fatalf("login: %v", a.Code)
	}
	deadline := time.Now().Add(3500 * time.Millisecond) // exp is in whole seconds
	for time.Now().Before(deadline) {
		d.Keepalive()
		time.Sleep(200 * time.Millisecond) // the heartbeat's pace (1 s in tests)
	}
	d.Keepalive()
	if a := tg.dial(t).Login("tess", tok, false); a.Code != devicepb.Code_TOKEN_EXPIRED {
		t.Fatalf("a new LOGIN with the expired token: %v", a.Code)
	}
}

// TestLoginChecksInOrder: §8.2 — uid, then the other fields' sizes, then
// the token, then the blacklist; the first failure answers.
func TestLoginChecksInOrder(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.Lists.UIDBlacklist = map[uint16][]string{app1: {"mallory"}} })
	long := make([]byte, gate.MaxDeviceIDLen+1)
	for i := range long {
		long[i] = 'd'
	}
	tests := []struct {
		name  string
		login *devicepb.Login
		code  devicepb.Code
	}{
		{"empty uid and a bad token", &devicepb.Login{Uid: "", Token: "garbage"}, devicepb.Code_BAD_UID},
		{"long device_id and a bad token", &devicepb.Login{Uid: "u", Token: "garbage", DeviceId: string(long)}, devicepb.Code_BAD_LOGIN_FIELD},
		{"blacklisted uid and a bad token", &devicepb.Login{Uid: "mallory", Token: "garbage"}, devicepb.Code_AUTH_FAILED},
		{"blacklisted uid and a good token", &devicepb.Login{Uid: "mallory", Token: token(t, app1, "mallory")}, devicepb.Code_UID_BLOCKED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tg.dial(t)
			if a := d.LoginWith(tt.login); a.Code != tt.code {
				t.Fatalf("LOGIN_ACK %v (%q), want %v", a.Code, a.Reason, tt.code)
			}
			d.ExpectClosed()
		})
	}
}

// TestConnectRefusalsInOrder: §8.1 — the IP lists come before the
// connection cap (a blacklisted address is closed without a frame even
// when the gate is full), and the cap before the per-IP rate; the ERROR
// frames at connect carry seq 0 and appcode 0.
func TestConnectRefusalsInOrder(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) {
		c.MaxConns = 1
		c.Lists.IPBlacklist = []string{"127.0.0.9"}
		c.NewConnsPerIP, c.NewConnsPerIPBurst = 0.001, 1
	})
	holder, _ := tg.login(t, "holder", false)
	banned := testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: app1, LocalAddr: "127.0.0.9"})
	banned.ExpectClosed()
	// 127.0.0.10 has one new connection in its budget; at the cap it gets
	// SERVER_BUSY, and the refusal does not spend it.
	over := testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: app1, LocalAddr: "127.0.0.10"})
	f := over.Expect(messages.CmdError)
	if e := f.Msg.(*devicepb.Error); e.Code != devicepb.Code_SERVER_BUSY || f.Seq != 0 || f.AppCode != 0 {
		t.Fatalf("at the cap: %v seq %d appcode %d, want SERVER_BUSY seq 0 appcode 0", e.Code, f.Seq, f.AppCode)
	}
	over.ExpectClosed()
	holder.Close()
	testkit.Eventually(t, wait, func() bool { return tg.Conns() == 0 }, "the holder's connection is gone")
	in := testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: app1, LocalAddr: "127.0.0.10"})
	if a := in.Login("late", token(t, app1, "late"), false); a.Code != devicepb.Code_OK {
		t.Fatalf("127.0.0.10 after the cap freed: %v", a.Code)
	}
	in.Close()
	testkit.Eventually(t, wait, func() bool { return tg.Conns() == 0 }, "gone")
	again := testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: app1, LocalAddr: "127.0.0.10"})
	f = again.Expect(messages.CmdError)
	if e := f.Msg.(*devicepb.Error); e.Code != devicepb.Code_RATE_LIMITED || f.Seq != 0 || f.AppCode != 0 {
		t.Fatalf("over the per-IP rate: %v seq %d appcode %d", e.Code, f.Seq, f.AppCode)
	}
}
