package gate_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// s2c builds a ToConn with one S2C frame of payload for c.
func s2c(c gate.ConnInfo, epoch uint64, seq uint32, payload []byte) *actorpb.ToConn {
	body := mustMarshal(&devicepb.S2C{MsgId: "m", Payload: payload})
	return &actorpb.ToConn{ConnId: uint64(c.ID), Epoch: epoch,
		Frames: []*actorpb.OutFrame{{Cmd: uint32(messages.CmdS2C), Msgtype: 3, Seq: seq, Body: body}}}
}

func expectS2C(t *testing.T, d *testkit.Device, seq uint32, payload []byte) testkit.Frame {
	t.Helper()
	f := d.Expect(messages.CmdS2C)
	if f.Seq != seq || f.MsgType != 3 || f.AppCode != d.AppCode() || !bytes.Equal(f.Msg.(*devicepb.S2C).Payload, payload) {
		t.Fatalf("S2C seq %d msgtype %d app %d payload %d bytes; want seq %d, %d bytes", f.Seq, f.MsgType, f.AppCode,
			len(f.Msg.(*devicepb.S2C).Payload), seq, len(payload))
	}
	return f
}

// TestCompressionOutsideTheConnLock: a body is compressed before the
// connection's lock is taken (its event loop takes the same lock to
// write: compressing a large body under it stalled every connection of
// the loop), and still reaches the client compressed and whole.
func TestCompressionOutsideTheConnLock(t *testing.T) {
	tg := startGate(t, nil)
	zd, ack := tg.login(t, "zoe", true)
	zc := tg.connOf(t, "zoe")
	var calls, locked atomic.Int32
	gate.SetCompressing(tg.Gate, func() {
		calls.Add(1)
		if gate.ConnLocked(tg.Gate, zc.ID) {
			locked.Add(1)
		}
	})
	big := []byte(strings.Repeat("order 42: pick up at gate 7; ", 100))
	for i := range 3 {
		if err := tg.Deliver(s2c(zc, ack.Epoch, uint32(i+1), big)); err != nil {
			t.Fatal(err)
		}
		if f := expectS2C(t, zd, uint32(i+1), big); !f.Compressed() {
			t.Fatalf("delivery %d not compressed", i)
		}
	}
	if calls.Load() == 0 || locked.Load() != 0 {
		t.Fatalf("%d of %d compressions ran under the connection's lock", locked.Load(), calls.Load())
	}
}

func TestCompression(t *testing.T) {
	tg := startGate(t, nil)
	zd, ack := tg.login(t, "zoe", true)
	if !ack.Zstd || !zd.Compressing() {
		t.Fatal("compression not negotiated")
	}
	plain, plainAck := tg.login(t, "pat", false)
	zc, pc := tg.connOf(t, "zoe"), tg.connOf(t, "pat")

	big := []byte(strings.Repeat("order 42: pick up at gate 7; ", 100))
	small := []byte("tiny")
	random := make([]byte, 4096)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(random)

	// Server to client: compressed above the threshold when it helps,
	// never for a client that did not ask.
	for i, p := range [][]byte{big, small, random} {
		if err := tg.Deliver(s2c(zc, ack.Epoch, uint32(i+1), p)); err != nil {
			t.Fatal(err)
		}
		f := expectS2C(t, zd, uint32(i+1), p)
		if want := i == 0; f.Compressed() != want {
			t.Fatalf("payload %d compressed=%v, want %v", i, f.Compressed(), want)
		}
		if err := tg.Deliver(s2c(pc, plainAck.Epoch, uint32(i+1), p)); err != nil {
			t.Fatal(err)
		}
		if f := expectS2C(t, plain, uint32(i+1), p); f.Compressed() {
			t.Fatal("compressed frame to a client that did not ask")
		}
	}

	// Client to server: the handler gets the decompressed body.
	zd.Send(messages.CmdC2S, 9, &devicepb.C2S{ClientMsgId: "c", Payload: big})
	testkit.Eventually(t, wait, func() bool { return len(tg.h.Frames()) == 1 }, "compressed C2S reaches the handler")
	f := tg.h.Frames()[0]
	if f.h.Compressed() || int(f.h.Length) != len(f.body) ||
		!bytes.Equal(f.body, mustMarshal(&devicepb.C2S{ClientMsgId: "c", Payload: big})) {
		t.Fatalf("handler got header %+v, %d bytes", f.h, len(f.body))
	}

	// A bomb: 10 MiB of zeros compresses to a few hundred bytes; it must
	// be refused (BAD_BODY) and the connection stays open.
	z, err := messages.NewZstd(64 << 20)
	if err != nil {
		t.Fatal(err)
	}
	bomb := z.Compress(nil, make([]byte, 10<<20))
	zd.SendRaw(frame(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: 10, Flags: messages.FlagZstd}, bomb))
	zd.ExpectError(devicepb.Code_BAD_BODY, 10)
	// Not zstd at all.
	zd.SendRaw(frame(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: 11, Flags: messages.FlagZstd}, []byte("not zstd")))
	zd.ExpectError(devicepb.Code_BAD_BODY, 11)
	// Decompresses, but not to a C2S.
	zd.SendRaw(frame(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: 12, Flags: messages.FlagZstd},
		z.Compress(nil, []byte{0xFF, 0xFF, 0xFF, 0xFF})))
	zd.ExpectError(devicepb.Code_BAD_BODY, 12)
	// Flagged compressed but empty: no zstd frame, so it does not
	// decompress (a KEEPALIVE, whose body is empty, too).
	zd.SendRaw(frame(messages.Header{Cmd: messages.CmdKeepalive, AppCode: app1, Seq: 13, Flags: messages.FlagZstd}, nil))
	zd.ExpectError(devicepb.Code_BAD_BODY, 13)
	zd.Keepalive()
	if n := len(tg.h.Frames()); n != 1 {
		t.Fatalf("handler got %d frames", n)
	}
}

func TestDeliverOrderAndBatching(t *testing.T) {
	tg := startGate(t, nil)
	d, ack := tg.login(t, "olga", false)
	c := tg.connOf(t, "olga")
	// One ToConn with several frames.
	multi := &actorpb.ToConn{ConnId: uint64(c.ID), Epoch: ack.Epoch}
	for i := range 20 {
		multi.Frames = append(multi.Frames, s2c(c, 0, uint32(i+1), []byte{byte(i)}).Frames[0])
	}
	if err := tg.Deliver(multi); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		expectS2C(t, d, uint32(i+1), []byte{byte(i)})
	}
	// Many ToConns from many goroutines' worth of calls: in order per
	// caller, and batched (fewer writes than frames).
	before := tg.metric(t, "courier_gate_write_batches_total")
	const n = 1000
	for i := range n {
		if err := tg.Deliver(s2c(c, ack.Epoch, uint32(100+i), []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		expectS2C(t, d, uint32(100+i), []byte("x"))
	}
	if batches := tg.metric(t, "courier_gate_write_batches_total") - before; batches >= n {
		t.Fatalf("%v writes for %d frames: no batching", batches, n)
	} else {
		t.Logf("%d frames in %v writes", n, batches)
	}
}

func TestDeliverEpochsAndErrors(t *testing.T) {
	tg := startGate(t, nil)
	d, ack := tg.login(t, "pete", false)
	c := tg.connOf(t, "pete")

	if err := tg.Deliver(s2c(c, ack.Epoch-1, 1, []byte("stale"))); !errors.Is(err, gate.ErrStaleEpoch) {
		t.Fatalf("stale epoch: %v", err)
	}
	if err := tg.Deliver(s2c(c, ack.Epoch+5, 2, []byte("newer"))); err != nil {
		t.Fatalf("newer epoch: %v", err)
	}
	expectS2C(t, d, 2, []byte("newer")) // the stale one never arrived
	tg.waitMetric(t, 1, "courier_gate_deliver_dropped_total", "reason", "stale_epoch")

	bad := s2c(c, ack.Epoch, 3, nil)
	bad.Frames[0].Cmd = uint32(messages.CmdC2S)
	if err := tg.Deliver(bad); !errors.Is(err, gate.ErrBadFrame) {
		t.Fatalf("client command: %v", err)
	}
	login := &actorpb.ToConn{ConnId: uint64(c.ID), Epoch: ack.Epoch, Login: &actorpb.LoginOutcome{Ok: true, Epoch: ack.Epoch}}
	if err := tg.Deliver(login); !errors.Is(err, gate.ErrNoLoginPending) {
		t.Fatalf("login outcome when logged in: %v", err)
	}
	// Unknown connections; a successful login for an id never issued
	// does not produce a Closed call.
	never := &actorpb.ToConn{ConnId: 1 << 40, Login: &actorpb.LoginOutcome{Ok: true, Uid: "ghost"}}
	if err := tg.Deliver(never); !errors.Is(err, gate.ErrUnknownConn) {
		t.Fatalf("unknown conn: %v", err)
	}
	if n := len(tg.h.closedFor("ghost")); n != 0 {
		t.Fatalf("Closed for a connection that never existed")
	}

	// Close after frames: KICKOUT then EOF; the node hears CloseKicked.
	kick := &actorpb.ToConn{ConnId: uint64(c.ID), Epoch: ack.Epoch, Close: true, CloseReason: "logged in elsewhere",
		Frames: []*actorpb.OutFrame{{Cmd: uint32(messages.CmdKickout),
			Body: mustMarshal(&devicepb.Kickout{Reason: devicepb.KickReason_LOGGED_IN_ELSEWHERE})}}}
	if err := tg.Deliver(kick); err != nil {
		t.Fatal(err)
	}
	if f := d.Expect(messages.CmdKickout); f.Msg.(*devicepb.Kickout).Reason != devicepb.KickReason_LOGGED_IN_ELSEWHERE {
		t.Fatalf("KICKOUT %v", f.Msg)
	}
	d.ExpectClosed()
	testkit.Eventually(t, wait, func() bool { return len(tg.h.closedFor("pete")) == 1 }, "Closed for pete")
	if r := tg.h.closedFor("pete")[0].reason; r != gate.CloseKicked {
		t.Fatalf("reason %v", r)
	}
	if err := tg.Deliver(s2c(c, ack.Epoch, 4, nil)); !errors.Is(err, gate.ErrUnknownConn) {
		t.Fatalf("after close: %v", err)
	}
}

func TestSlowClientQueueFull(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.OutQueueFrames = 4 })
	d, ack := tg.login(t, "quinn", false)
	c := tg.connOf(t, "quinn")
	m := &actorpb.ToConn{ConnId: uint64(c.ID), Epoch: ack.Epoch}
	for i := range 5 {
		m.Frames = append(m.Frames, s2c(c, 0, uint32(i+1), []byte("p")).Frames[0])
	}
	if err := tg.Deliver(m); !errors.Is(err, gate.ErrSlowClient) {
		t.Fatalf("overflow: %v", err)
	}
	if f := d.Expect(messages.CmdKickout); f.Msg.(*devicepb.Kickout).Reason != devicepb.KickReason_SLOW_CLIENT {
		t.Fatalf("KICKOUT %v", f.Msg)
	}
	d.ExpectClosed()
	testkit.Eventually(t, wait, func() bool { return len(tg.h.closedFor("quinn")) == 1 }, "Closed for quinn")
	if r := tg.h.closedFor("quinn")[0].reason; r != gate.CloseSlowClient {
		t.Fatalf("reason %v", r)
	}
	tg.waitMetric(t, 1, "courier_gate_slow_client_disconnects_total")
	tg.waitMetric(t, 1, "courier_gate_limit_hits_total", "limit", "out_queue")
}

// TestSlowClientNotReading: a client that stops reading fills the socket,
// then gnet's buffer; past MaxOutboundBuffered it is disconnected.
func TestSlowClientNotReading(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.MaxOutboundBuffered = 128 << 10 })
	d := tg.dial(t)
	_ = d.Conn().(*net.TCPConn).SetReadBuffer(4096)
	ack := d.Login("rita", token(t, app1, "rita"), false)
	c := tg.connOf(t, "rita")
	payload := make([]byte, 60<<10)
	seq := uint32(0)
	// One frame per poll: the loop drains each before the next, so it is
	// gnet's buffer, not the queue, that overflows.
	testkit.Eventually(t, 20*time.Second, func() bool {
		seq++
		if err := tg.Deliver(s2c(c, ack.Epoch, seq, payload)); err != nil {
			return true // closed or closing
		}
		return false
	}, "slow client disconnected")
	tg.waitMetric(t, 1, "courier_gate_limit_hits_total", "limit", "out_buffered")
	testkit.Eventually(t, wait, func() bool { return len(tg.h.closedFor("rita")) == 1 }, "Closed for rita")
	if r := tg.h.closedFor("rita")[0].reason; r != gate.CloseSlowClient {
		t.Fatalf("reason %v", r)
	}
	t.Logf("disconnected after %d frames of 60 KiB", seq)
}

func TestShutdownKicksEveryone(t *testing.T) {
	tg := startGate(t, nil)
	var devs []*testkit.Device
	for _, uid := range []string{"s1", "s2", "s3"} {
		d, _ := tg.login(t, uid, false)
		devs = append(devs, d)
	}
	fresh := tg.dial(t)
	testkit.Eventually(t, wait, func() bool { return tg.Conns() == 4 }, "4 connections")

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := tg.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if f := d.Expect(messages.CmdKickout); f.Msg.(*devicepb.Kickout).Reason != devicepb.KickReason_SERVER_SHUTDOWN {
			t.Fatalf("KICKOUT %v", f.Msg)
		}
		d.ExpectClosed()
	}
	// A connection not logged in is closed without a frame (its client
	// waits for LOGIN_ACK: a KICKOUT would have no session's appcode).
	fresh.ExpectClosed()
	for _, uid := range []string{"s1", "s2", "s3"} {
		if calls := tg.h.closedFor(uid); len(calls) != 1 || calls[0].reason != gate.CloseShutdown {
			t.Fatalf("Closed for %s: %+v", uid, calls)
		}
	}
	if err := tg.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if _, err := net.DialTimeout("tcp", tg.addr, time.Second); err == nil {
		t.Fatal("dial after Shutdown succeeded")
	}
	if err := tg.Start(); !errors.Is(err, gate.ErrStarted) {
		t.Fatalf("Start after Shutdown: %v", err)
	}
	if err := tg.Deliver(s2c(tg.connOf(t, "s1"), 0, 1, nil)); !errors.Is(err, gate.ErrUnknownConn) {
		t.Fatalf("Deliver after Shutdown: %v", err)
	}
	if tg.metric(t, "courier_gate_connections") != 0 {
		t.Fatal("connections gauge not 0")
	}
}

func TestRunReturnsAfterShutdown(t *testing.T) {
	cfg := testConfig()
	h := &fakeHandler{}
	g, err := gate.New(cfg, h, nil, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	h.g.Store(g)
	done := make(chan error, 1)
	go func() { done <- g.Run() }()
	// Addr is known as soon as the port is reserved (bound, not yet
	// listening): wait for Run to accept connections.
	testkit.Eventually(t, wait, func() bool {
		a := g.Addr()
		if a == nil {
			return false
		}
		c, err := net.Dial("tcp", a.String())
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "listening")
	d := testkit.Dial(t, g.Addr().String(), testkit.DeviceConfig{AppCode: app1})
	if ack := d.Login("run", token(t, app1, "run"), false); ack.Code != devicepb.Code_OK {
		t.Fatal(ack.Code)
	}
	select {
	case <-g.Done():
		t.Fatal("Done closed while the gate runs")
	default:
	}
	if err := g.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Run did not return")
	}
	select {
	case <-g.Done():
	default:
		t.Fatal("Done not closed after Shutdown")
	}
	if err := g.Err(); err != nil {
		t.Fatalf("Err after Shutdown: %v", err)
	}
}

// overflowAtLogin answers a login with LOGIN_ACK OK and, while that is
// still queued (both Delivers run inside the Login callback, on the
// connection's loop, before its queue drains), more frames than the
// queue holds: in one Deliver with the LOGIN_ACK (together) or in a
// second one (after).
type overflowAtLogin struct {
	*fakeHandler
	together bool
}

func (h *overflowAtLogin) Login(c gate.ConnInfo, seq uint32, l *devicepb.Login) {
	g := h.g.Load()
	epoch := 100 + h.epoch.Add(1)
	ack := &actorpb.OutFrame{Cmd: uint32(messages.CmdLoginAck), Seq: seq,
		Body: mustMarshal(&devicepb.LoginAck{Code: devicepb.Code_OK, Epoch: epoch, HeartbeatSeconds: 1})}
	login := &actorpb.LoginOutcome{Ok: true, AppCode: uint32(c.AppCode), Uid: c.UID, Epoch: epoch}
	burst := s2c(c, epoch, 1, make([]byte, 40<<10)).Frames[0]
	if h.together {
		_ = g.Deliver(&actorpb.ToConn{ConnId: uint64(c.ID), Epoch: epoch, Login: login,
			Frames: []*actorpb.OutFrame{ack, burst, burst, burst}})
		return
	}
	_ = g.Deliver(&actorpb.ToConn{ConnId: uint64(c.ID), Epoch: epoch, Login: login, Frames: []*actorpb.OutFrame{ack}})
	for range 3 {
		_ = g.Deliver(&actorpb.ToConn{ConnId: uint64(c.ID), Epoch: epoch, Frames: []*actorpb.OutFrame{burst}})
	}
}

// TestLoginOutcomeSurvivesQueueOverflow: when the outbound queue
// overflows while a LOGIN_ACK waits in it, the client still gets the
// LOGIN_ACK (then KICKOUT SLOW_CLIENT): a client always learns the
// outcome of its login. The node hears the session end with its epoch.
func TestLoginOutcomeSurvivesQueueOverflow(t *testing.T) {
	for _, together := range []bool{false, true} {
		t.Run(map[bool]string{false: "overflow after the LOGIN_ACK", true: "overflow with the LOGIN_ACK"}[together], func(t *testing.T) {
			cfg := testConfig()
			cfg.OutQueueBytes = 100 << 10 // two 40 KiB frames fit, not three
			h := &overflowAtLogin{fakeHandler: &fakeHandler{}, together: together}
			g, err := gate.New(cfg, h, nil, testLogger())
			if err != nil {
				t.Fatal(err)
			}
			h.g.Store(g)
			if err := g.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), wait)
				defer cancel()
				_ = g.Shutdown(ctx)
			})
			d := testkit.Dial(t, g.Addr().String(), testkit.DeviceConfig{AppCode: app1})
			d.Send(messages.CmdLogin, 1, &devicepb.Login{Uid: "uma", Token: token(t, app1, "uma")})
			f, err := d.ReadFrame()
			if err != nil || f.Cmd != messages.CmdLoginAck || f.Seq != 1 || f.Msg.(*devicepb.LoginAck).Code != devicepb.Code_OK {
				t.Fatalf("first frame %v %v %v: the client did not learn the outcome of its login", f.Cmd, f.Msg, err)
			}
			if f := d.Expect(messages.CmdKickout); f.Msg.(*devicepb.Kickout).Reason != devicepb.KickReason_SLOW_CLIENT {
				t.Fatalf("kickout %v", f.Msg)
			}
			d.ExpectClosed()
			testkit.Eventually(t, wait, func() bool { return len(h.closedFor("uma")) > 0 }, "Closed for uma")
			c := h.closedFor("uma")[0]
			if c.reason != gate.CloseSlowClient || c.info.Epoch == 0 {
				t.Fatalf("Closed %+v: want slow_client with the session's epoch", c)
			}
		})
	}
}
