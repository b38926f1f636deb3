package faults

import (
	"testing"
	"time"

	"github.com/courier-im/courier/testkit"
)

// TestConsulRestarted: the Consul agent is killed while pushes, C2C and
// C2S flow, stays away for several TTLs, and comes back on its data.
// Nodes keep serving what they own meanwhile (placement is unchanged: no
// node can tell another left), re-register, and membership converges;
// no member rejoins as a new instance, no device is told to reconnect,
// and nothing accepted is lost.
func TestConsulRestarted(t *testing.T) {
	// A TTL of 2 s: a Consul agent that just restarted answers slowly, and
	// on a busy machine so do the members asked to vouch.
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", ""},
		Args: []string{"--cluster.ttl", "2s"}})
	dumpOnFailure(t, c, "membership", "lease", "vouch", "level=WARN", "level=ERROR")
	cfg := load(c, 20)
	cfg.PushRate, cfg.C2CRate, cfg.C2SRate = 40, 10, 10
	w := startLoad(t, cfg)
	time.Sleep(2 * time.Second)

	rejoins := metrics(c, "courier_cluster_rejoins_total")
	w.Fault("Consul killed")
	c.Consul.Stop()
	time.Sleep(6 * time.Second) // three TTLs
	w.Fault("Consul restarted")
	c.Consul.Restart()
	c.WaitConverged()
	time.Sleep(3 * time.Second)

	l := finish(t, w)
	if !l.Clean(false) {
		t.Error("the ledger is not clean")
	}
	if l.Devices.Reconnects != 0 {
		t.Errorf("%d devices had to reconnect (a reconnect storm)", l.Devices.Reconnects)
	}
	for name, v := range metrics(c, "courier_cluster_rejoins_total") {
		if v != rejoins[name] {
			t.Errorf("%s rejoined as a new instance %v times", name, v-rejoins[name])
		}
	}
	for _, f := range l.Faults {
		if f.Interruption > 2*time.Second || f.APIWait > 2*time.Second {
			t.Errorf("%s interrupted pushes for %v (app-servers waited %v)", f.Name, f.Interruption, f.APIWait)
		}
	}
}
