package gate_test

import (
	"context"
	"testing"
	"time"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// Refuse turns new connections away with SERVER_BUSY and leaves the open
// ones alone; Refuse(false) takes new ones again.
func TestRefuse(t *testing.T) {
	tg := startGate(t, nil)
	d, _ := tg.login(t, "r1", false)
	tg.Refuse(true)
	busy := tg.dial(t)
	busy.ExpectError(devicepb.Code_SERVER_BUSY, 0)
	busy.ExpectClosed()
	d.Keepalive()
	tg.Refuse(false)
	tg.login(t, "r2", false)
	if got := tg.metric(t, "courier_gate_refusals_total", "reason", "draining"); got != 1 {
		t.Fatalf("refusals %v", got)
	}
}

// MoveOff kicks every connection with SERVER_SHUTDOWN, in even shares
// over the window rather than at once, refusing new ones meanwhile.
func TestMoveOffSpreadsKickouts(t *testing.T) {
	tg := startGate(t, nil)
	const n = 40
	devs := make([]*testkit.Device, n)
	for i := range devs {
		devs[i], _ = tg.login(t, "m"+string(rune('A'+i)), false)
	}
	window := time.Second
	kicked := make(chan time.Time, n)
	for _, d := range devs {
		go func() {
			f, err := d.ReadFrame()
			if err == nil && f.Cmd == messages.CmdKickout && f.Msg.(*devicepb.Kickout).Reason == devicepb.KickReason_SERVER_SHUTDOWN {
				kicked <- time.Now()
				return
			}
			kicked <- time.Time{}
		}()
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tg.MoveOff(ctx, window); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	var times []time.Time
	for range n {
		at := <-kicked
		if at.IsZero() {
			t.Fatal("a device was not kicked with SERVER_SHUTDOWN")
		}
		times = append(times, at)
	}
	// 40 connections over 1 s in 50 ms steps: 2 per step. No 100 ms holds
	// more than a few, and the whole takes about the window.
	peak := 0
	for _, a := range times {
		c := 0
		for _, b := range times {
			if !b.Before(a) && b.Sub(a) < 100*time.Millisecond {
				c++
			}
		}
		peak = max(peak, c)
	}
	// Even, 4 per 100 ms; all at once, 40. Client receive times bunch up
	// when the test's goroutines are descheduled: up to 20 is spread.
	if peak > 20 || took < window*3/4 {
		t.Fatalf("kickouts not spread: peak %d per 100 ms, took %v", peak, took)
	}
	busy := tg.dial(t)
	busy.ExpectError(devicepb.Code_SERVER_BUSY, 0)
	if tg.Conns() > 1 {
		t.Fatalf("%d connections left", tg.Conns())
	}
}
