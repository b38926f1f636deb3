package gate_test

import (
	"strings"
	"testing"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
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

func TestFrameRateLimit(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.FramesPerSecond = 1; c.FrameBurst = 6 })
	d, _ := tg.login(t, "fast", false) // the LOGIN takes one token
	for range 5 {
		d.Keepalive()
	}
	d.Send(messages.CmdKeepalive, 99, nil)
	d.ExpectError(devicepb.Code_RATE_LIMITED, 99)
	d.ExpectClosed()
	testkit.Eventually(t, wait, func() bool { return len(tg.h.closedFor("fast")) == 1 }, "Closed for fast")
	if r := tg.h.closedFor("fast")[0].reason; r != gate.CloseRateLimited {
		t.Fatalf("reason %v", r)
	}
	tg.waitMetric(t, 1, "courier_gate_limit_hits_total", "limit", "frame_rate")
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
	d.Send(messages.CmdC2S, 3, &devicepb.C2S{Payload: payload}) // 45 KiB > 40 KiB burst
	d.ExpectError(devicepb.Code_RATE_LIMITED, 3)
	d.ExpectClosed()
	if n := len(tg.h.Frames()); n != 2 {
		t.Fatalf("handler got %d frames, want the 2 within the burst", n)
	}
	tg.waitMetric(t, 1, "courier_gate_limit_hits_total", "limit", "byte_rate")
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
