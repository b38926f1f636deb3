package faults

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/courier-im/courier/testkit"
)

// TestRollingUpgrade restarts every actor node one after the other (SIGTERM:
// drain, hand the identities off, exit; then start again on its data, as a
// deploy of new logic does) while devices and app-servers keep working
// through a gate-only node: no device reconnects (its gate is untouched)
// and nothing accepted is lost, stored twice or delivered out of order.
func TestRollingUpgrade(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", "actors", "actors"}, Store: "postgres"})
	dumpOnFailure(t, c, "handoff", "drain", "level=WARN", "level=ERROR")
	cfg := load(c, 40)
	cfg.PushRate, cfg.C2CRate, cfg.C2SRate = 80, 20, 20
	w := startLoad(t, cfg)
	time.Sleep(2 * time.Second)

	for _, name := range []string{"node2", "node3", "node4"} {
		n := c.Node(name)
		w.Fault(fmt.Sprintf("restart %s", name))
		n.Stop(syscall.SIGTERM)
		n.Restart()
		c.WaitConverged()
		time.Sleep(time.Second)
	}
	time.Sleep(2 * time.Second)

	l := finish(t, w)
	if !l.Clean(false) {
		t.Error("the ledger is not clean")
	}
	if l.Devices.Reconnects != 0 {
		t.Errorf("%d device reconnects during a rolling restart of the actor nodes", l.Devices.Reconnects)
	}
	for _, f := range l.Faults {
		t.Logf("%s: pushes interrupted %v (median %v), app-servers waited at most %v", f.Name,
			f.Interruption.Round(time.Millisecond), f.Median.Round(time.Millisecond), f.APIWait.Round(time.Millisecond))
	}
}
