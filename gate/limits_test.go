package gate_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

func TestConnectionCap(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.MaxConns = 3 })
	var devs []*testkit.Device
	for i := range 3 {
		d, _ := tg.login(t, "cap"+string(rune('a'+i)), false)
		devs = append(devs, d)
	}
	over := tg.dial(t)
	over.ExpectError(devicepb.Code_SERVER_BUSY, 0)
	over.ExpectClosed()
	tg.waitMetric(t, 1, "courier_gate_refusals_total", "reason", "conn_cap")
	tg.waitMetric(t, 1, "courier_gate_limit_hits_total", "limit", "conn_cap")
	// A place frees up: a new connection gets in.
	devs[0].Close()
	testkit.Eventually(t, wait, func() bool { return tg.Conns() == 2 }, "one connection gone")
	tg.login(t, "capd", false)
}

func TestNewConnectionsPerIP(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.NewConnsPerIP = 0.001; c.NewConnsPerIPBurst = 2 })
	from := func(ip string) *testkit.Device {
		return testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: app1, LocalAddr: ip})
	}
	// Three from one address with a burst of 2: one is refused. Which
	// one depends on which loop's listener accepts first.
	devs := []*testkit.Device{from("127.0.0.5"), from("127.0.0.5"), from("127.0.0.5"), from("127.0.0.6")}
	var ok, refused int
	for i, d := range devs {
		uid := "ip" + string(rune('a'+i))
		_ = d.TrySend(messages.Header{Cmd: messages.CmdLogin, AppCode: app1, Seq: 1},
			&devicepb.Login{Uid: uid, Token: token(t, app1, uid)})
		f, err := d.ReadFrame()
		switch {
		case err == nil && f.Cmd == messages.CmdLoginAck && f.Msg.(*devicepb.LoginAck).Code == devicepb.Code_OK:
			ok++
		case err == nil && f.Cmd == messages.CmdError && f.Msg.(*devicepb.Error).Code == devicepb.Code_RATE_LIMITED && f.Seq == 0:
			if i == 3 {
				t.Fatal("the other address was refused")
			}
			refused++
			d.ExpectClosed()
		default:
			t.Fatalf("device %d: %v %v", i, f.Msg, err)
		}
	}
	if ok != 3 || refused != 1 {
		t.Fatalf("%d admitted, %d refused; want 3 and 1", ok, refused)
	}
	tg.waitMetric(t, 1, "courier_gate_limit_hits_total", "limit", "ip_conn_rate")
}

// TestFramesOverTheRateWait: frames past the frame rate wait in the
// gate, in order, until the bucket has refilled: a client that bursts
// (an outbox flushed after a reconnect) is slowed down, not cut off (the
// contract has no rate limit). Only one that keeps sending while its
// frames wait, past what the gate holds, is answered RATE_LIMITED and
// closed.
func TestFramesOverTheRateWait(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.FramesPerSecond = 2; c.FrameBurst = 6 })
	d, _ := tg.login(t, "fast", false) // the LOGIN takes one token
	for range 6 {                      // the first KEEPALIVE of a half heartbeat is free
		d.Keepalive()
	}
	start := time.Now()
	for i := range 3 {
		d.Send(messages.CmdC2S, uint32(50+i), &devicepb.C2S{ClientMsgId: fmt.Sprint("c", i)})
	}
	testkit.Eventually(t, wait, func() bool { return len(tg.h.Frames()) == 3 }, "the frames over the rate never reached the handler")
	if took := time.Since(start); took < time.Second {
		t.Fatalf("3 frames over a rate of 2/s all passed in %v", took)
	}
	for i, f := range tg.h.Frames() {
		if f.h.Seq != uint32(50+i) {
			t.Fatalf("frames handled out of order: %v", tg.h.Frames())
		}
	}
	tg.waitMetric(t, 1, "courier_gate_limit_hits_total", "limit", "frame_rate")
	// A flood while frames wait: past what the gate holds, the end.
	payload := make([]byte, 8<<10)
	var err error
	for i := 0; err == nil && i < 1000; i++ {
		err = d.TrySend(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: uint32(100 + i)}, &devicepb.C2S{Payload: payload})
	}
	for {
		f, err := d.ReadFrame()
		if err != nil {
			t.Fatalf("no RATE_LIMITED before the close: %v", err)
		}
		if f.Cmd == messages.CmdError {
			if e := f.Msg.(*devicepb.Error); e.Code != devicepb.Code_RATE_LIMITED {
				t.Fatalf("ERROR %v", e)
			}
			break
		}
	}
	d.ExpectClosed()
	testkit.Eventually(t, wait, func() bool { return len(tg.h.closedFor("fast")) == 1 }, "Closed for fast")
	if r := tg.h.closedFor("fast")[0].reason; r != gate.CloseRateLimited {
		t.Fatalf("reason %v", r)
	}
}

// TestAcksAreCreditedAgainstDeliveries: acks of frames the gate wrote
// (S2C, C2C_PUSH, each message of a PULL_ACK) pass the frame limit on
// credit, however fast they come; acks beyond what was delivered pay
// like any frame and run the limit dry.
func TestAcksAreCreditedAgainstDeliveries(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.FramesPerSecond = 1; c.FrameBurst = 5 })
	d, ack := tg.login(t, "acker", false) // the LOGIN takes one token
	c := tg.connOf(t, "acker")
	tc := &actorpb.ToConn{ConnId: uint64(c.ID), Epoch: ack.Epoch}
	for i := range 20 {
		tc.Frames = append(tc.Frames, s2c(c, 0, uint32(i+1), []byte("x")).Frames[0])
	}
	pull := &devicepb.PullAck{}
	for i := range 10 {
		pull.Messages = append(pull.Messages, &devicepb.StoredMessage{Seq: uint32(21 + i), Kind: devicepb.Kind_KIND_C2C, MsgId: "p"})
	}
	tc.Frames = append(tc.Frames, &actorpb.OutFrame{Cmd: uint32(messages.CmdPullAck), Seq: 7, Body: mustMarshal(pull)})
	if err := tg.Deliver(tc); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		d.Expect(messages.CmdS2C)
	}
	d.Expect(messages.CmdPullAck)
	// 30 acks back to back, 6 times the burst: all on credit.
	for i := range 20 {
		d.Send(messages.CmdS2CAck, uint32(100+i), &devicepb.S2CAck{MsgId: "m"})
	}
	for i := range 10 {
		d.Send(messages.CmdC2CPushAck, uint32(200+i), &devicepb.C2CPushAck{MsgId: "p"})
	}
	d.Keepalive() // free as well: the first of this half heartbeat
	testkit.Eventually(t, wait, func() bool { return len(tg.h.Frames()) == 30 }, "30 acks reach the handler (got %d)", len(tg.h.Frames()))
	// The credit is spent: more acks take tokens (4 left) and then wait
	// for the bucket, one a second.
	for i := range 10 {
		d.Send(messages.CmdS2CAck, uint32(300+i), &devicepb.S2CAck{MsgId: "m"})
	}
	tg.waitMetric(t, 1, "courier_gate_limit_hits_total", "limit", "frame_rate")
	if n := len(tg.h.Frames()); n > 30+4+2 {
		t.Fatalf("handler got %d frames when the bucket ran dry: acks beyond the credit were not limited", n)
	}
}

// TestRepeatedPullsEarnCreditOnce: a client that never acks can PULL the
// same page again and again; its messages earn ack credit once per
// connection, so each PULL (one frame token) does not buy a page of free
// frames. A later page with higher seqs earns its own.
func TestRepeatedPullsEarnCreditOnce(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.FramesPerSecond = 1; c.FrameBurst = 5 })
	d, ack := tg.login(t, "puller", false) // the LOGIN takes one token
	c := tg.connOf(t, "puller")
	page := func(from uint32) {
		pull := &devicepb.PullAck{}
		for i := range uint32(10) {
			pull.Messages = append(pull.Messages, &devicepb.StoredMessage{Seq: from + i, Kind: devicepb.Kind_KIND_S2C, MsgId: "p"})
		}
		tc := &actorpb.ToConn{ConnId: uint64(c.ID), Epoch: ack.Epoch, Frames: []*actorpb.OutFrame{{Cmd: uint32(messages.CmdPullAck), Seq: 7, Body: mustMarshal(pull)}}}
		if err := tg.Deliver(tc); err != nil {
			t.Fatal(err)
		}
		d.Expect(messages.CmdPullAck)
	}
	page(1)
	page(1) // the same page again: no more credit
	page(1)
	page(11) // the next page: 10 more
	// 20 credits and 4 tokens: 24 acks pass, the 25th waits for the
	// bucket (one a second).
	for i := range 40 {
		d.Send(messages.CmdS2CAck, uint32(300+i), &devicepb.S2CAck{MsgId: "never-sent"})
	}
	tg.waitMetric(t, 1, "courier_gate_limit_hits_total", "limit", "frame_rate")
	frames := tg.h.Frames()
	if n := len(frames); n < 24 || n > 24+2 {
		t.Fatalf("handler got %d acks when the bucket ran dry, want 24 (20 credits and 4 tokens)", n)
	}
	if f := frames[len(frames)-1]; f.h.Seq != uint32(300+len(frames)-1) {
		t.Fatalf("acks handled out of order: last seq %d of %d", f.h.Seq, len(frames))
	}
}

func TestByteRateLimit(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) {
		c.MaxFrameSize = 16 << 10
		c.BytesPerSecond = 100
		c.ByteBurst = 40 << 10
	})
	d, _ := tg.login(t, "bulky", false)
	payload := []byte(strings.Repeat("b", 15<<10))
	d.Send(messages.CmdC2S, 1, &devicepb.C2S{Payload: payload})
	d.Send(messages.CmdC2S, 2, &devicepb.C2S{Payload: payload})
	d.Send(messages.CmdC2S, 3, &devicepb.C2S{Payload: payload}) // 45 KiB > 40 KiB burst: it waits
	tg.waitMetric(t, 1, "courier_gate_limit_hits_total", "limit", "byte_rate")
	if n := len(tg.h.Frames()); n != 2 {
		t.Fatalf("handler got %d frames, want the 2 within the burst", n)
	}
	if n := gate.HeldConns(tg.Gate); n != 1 {
		t.Fatalf("%d connections held, want 1", n)
	}
	// More while it waits: past what the gate holds (128 KiB), the end;
	// the answer names the frame that waits.
	for seq := uint32(4); ; seq++ {
		if err := d.TrySend(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: seq}, &devicepb.C2S{Payload: payload}); err != nil || seq > 100 {
			break
		}
	}
	d.ExpectError(devicepb.Code_RATE_LIMITED, 3)
	d.ExpectClosed()
	if n := len(tg.h.Frames()); n != 2 {
		t.Fatalf("handler got %d frames, want the 2 within the burst", n)
	}
	// Its timer (about 50 s away) went with the connection: nothing of it
	// outlives the gate.
	testkit.Eventually(t, wait, func() bool { return gate.HeldConns(tg.Gate) == 0 }, "a closed connection's hold timer left")
}

func TestConfiguredMaxFrameSize(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.MaxFrameSize = 2048 })
	d, _ := tg.login(t, "sizer", false)
	d.Send(messages.CmdC2S, 1, &devicepb.C2S{Payload: make([]byte, 2000)}) // body just under 2048
	testkit.Eventually(t, wait, func() bool { return len(tg.h.Frames()) == 1 }, "frame under the limit delivered")
	d.Send(messages.CmdC2S, 2, &devicepb.C2S{Payload: make([]byte, 2100)})
	d.ExpectError(devicepb.Code_FRAME_TOO_LARGE, 2)
	d.ExpectClosed()
}

// TestByteRateCountsDecompressedBodies: a few bytes of zstd can stand for
// a whole frame of payload; the byte rate counts what they decompress to,
// so compression does not multiply what a connection makes the node
// store and forward. A body over what the rate has left is taken on
// credit, and the frames after it wait, as behind the same bodies sent
// uncompressed: none is refused, the connection stays.
func TestByteRateCountsDecompressedBodies(t *testing.T) {
	const rate, burst = 40 << 10, 40 << 10
	tg := startGate(t, func(c *gate.Config) {
		c.MaxFrameSize = 16 << 10
		c.BytesPerSecond = rate
		c.ByteBurst = burst
	})
	d, ack := tg.login(t, "squeezer", true)
	if !ack.Zstd {
		t.Fatal("compression not on")
	}
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	body := enc.EncodeAll(mustMarshal(&devicepb.C2S{Payload: []byte(strings.Repeat("b", 15<<10))}), nil)
	if len(body) > 200 {
		t.Fatalf("compressed to %d bytes", len(body))
	}
	const frames = 6 // 90 KiB decompressed: 50 KiB over the burst
	start := time.Now()
	for seq := uint32(1); seq <= frames; seq++ {
		d.SendRaw(frame(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: seq, Flags: messages.FlagZstd}, body))
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return len(tg.h.Frames()) == frames }, "the compressed frames do not all reach the handler")
	// The last frame waits for the 5 before it: 75 KiB, 35 KiB over the
	// burst, at 40 KiB/s (its own 15 KiB are owed after it).
	if took, least := time.Since(start), time.Duration((5*15<<10-burst)*int64(time.Second)/rate); took < least*9/10 {
		t.Fatalf("%d frames of 15 KiB decompressed passed in %v: the byte rate lets them through in no less than %v", frames, took, least)
	}
	d.Keepalive()
}

// TestC2CRate: a connection's C2C messages beyond gate.c2c-per-second
// (and its burst) are answered C2C_ACK RATE_LIMITED with their
// client_msg_id, not handed on (nothing stored), and the connection goes
// on; the bucket refills. Each C2C is stored for its receiver, so this
// rate, times the C2C TTL, bounds what one device makes the cluster
// store.
func TestC2CRate(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.C2CPerSecond, c.C2CBurst = 1, 3 })
	d, _ := tg.login(t, "chatty", false)
	c2cs := func() int {
		n := 0
		for _, f := range tg.h.Frames() {
			if f.h.Cmd == messages.CmdC2C {
				n++
			}
		}
		return n
	}
	seqs := map[uint32]string{}
	for i := range 5 {
		seq := d.NextSeq()
		id := fmt.Sprint("c-", i)
		seqs[seq] = id
		d.Send(messages.CmdC2C, seq, &devicepb.C2C{ToUid: "friend", ClientMsgId: id, Payload: []byte("hi")})
	}
	for range 2 {
		f := d.Expect(messages.CmdC2CAck)
		a := f.Msg.(*devicepb.C2CAck)
		if a.Code != devicepb.Code_RATE_LIMITED || a.ClientMsgId != seqs[f.Seq] || a.MsgId != "" || !strings.Contains(a.Reason, "gate.c2c-per-second") {
			t.Fatalf("C2C_ACK seq %d: %v", f.Seq, a)
		}
	}
	testkit.Eventually(t, wait, func() bool { return c2cs() == 3 }, "the burst of 3 was not handed on")
	// The rate is the identity's: a new connection of it gets no fresh
	// burst.
	d2, _ := tg.login(t, "chatty", false)
	seq2 := d2.NextSeq()
	d2.Send(messages.CmdC2C, seq2, &devicepb.C2C{ToUid: "friend", ClientMsgId: "again", Payload: []byte("hi")})
	if f := d2.Expect(messages.CmdC2CAck); f.Seq != seq2 || f.Msg.(*devicepb.C2CAck).Code != devicepb.Code_RATE_LIMITED {
		t.Fatalf("a C2C on a new connection of the same identity: %v", f.Msg)
	}
	tg.waitMetric(t, 3, "courier_gate_limit_hits_total", "limit", "c2c_rate")
	// The connection goes on, and the bucket refills at 1 a second.
	seq := d.NextSeq()
	d.Send(messages.CmdKeepalive, seq, nil)
	d.Expect(messages.CmdKeepaliveAck)
	time.Sleep(1100 * time.Millisecond)
	d.Send(messages.CmdC2C, d.NextSeq(), &devicepb.C2C{ToUid: "friend", ClientMsgId: "later", Payload: []byte("hi")})
	testkit.Eventually(t, wait, func() bool { return c2cs() == 4 }, "a C2C after the refill was not handed on")
}

// TestRefusedZstdBombsCountAgainstTheByteRate: a few bytes of zstd that
// decode past the frame limit are refused BAD_BODY, but only after the
// gate decoded that much: each is charged a whole frame's body against
// the byte rate, so a stream of them waits like a stream of whole
// frames (they cost one frame token and their few bytes before).
func TestRefusedZstdBombsCountAgainstTheByteRate(t *testing.T) {
	const rate, burst = 40 << 10, 40 << 10
	tg := startGate(t, func(c *gate.Config) {
		c.MaxFrameSize = 16 << 10
		c.BytesPerSecond = rate
		c.ByteBurst = burst
	})
	d, _ := tg.login(t, "bomber", true)
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	bomb := enc.EncodeAll(make([]byte, 64<<10), nil) // 4 frame limits of zeros
	if len(bomb) > 200 {
		t.Fatalf("compressed to %d bytes", len(bomb))
	}
	const bombs = 6 // 6 × 16 KiB charged: 56 KiB over the burst
	start := time.Now()
	for seq := uint32(1); seq <= bombs; seq++ {
		d.SendRaw(frame(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: seq, Flags: messages.FlagZstd}, bomb))
	}
	for seq := uint32(1); seq <= bombs; seq++ {
		d.ExpectError(devicepb.Code_BAD_BODY, seq)
	}
	// A keepalive behind them waits for what the bombs owe: the last
	// ones' 5 × 16 KiB minus the burst, at 40 KiB/s.
	d.Keepalive()
	if took, least := time.Since(start), time.Duration((5*16<<10-burst)*int64(time.Second)/rate); took < least*9/10 {
		t.Fatalf("%d refused bombs and a keepalive passed in %v: charged a frame each, they take no less than %v", bombs, took, least)
	}
}
