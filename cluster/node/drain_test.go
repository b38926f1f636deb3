package node_test

import (
	"syscall"
	"testing"
	"time"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// A node alone (no other gate to move its devices to) does not spread
// its kickouts over the drain window on SIGTERM: its devices are told at
// once and it stops without waiting.
func TestDrainAloneStopsAtOnce(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--drain-window", "20s", "--shutdown-grace", "40s"}})
	var devs []*testkit.Device
	for _, uid := range []string{"a1", "a2", "a3"} {
		devs = append(devs, n.Device(t, 1, uid))
	}
	start := time.Now()
	n.Signal(syscall.SIGTERM)
	for _, d := range devs {
		if k := d.Expect(messages.CmdKickout).Msg.(*devicepb.Kickout); k.Reason != devicepb.KickReason_SERVER_SHUTDOWN {
			t.Fatalf("KICKOUT %v", k)
		}
	}
	kicked := time.Since(start)
	n.WaitExit(10 * time.Second)
	if took := time.Since(start); kicked > 5*time.Second || took > 10*time.Second {
		t.Fatalf("a lone node's devices were kicked after %v and it stopped after %v (drain window 20 s)", kicked, took)
	}
}
