package faults

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/courier-im/courier/testkit"
)

// TestPartition cuts one node off the cluster network (network
// namespaces and veth pairs the test makes) while devices and
// app-servers still reach it, then heals the cut. Consul and PostgreSQL
// are on the cluster network, with the majority. The minority node
// refuses rather than diverges: it loses its lease within the TTL, kicks
// its devices to the majority's gate, answers no discovery, serves none
// of its identities (the majority took them over); after healing it
// rejoins as a new instance. Nothing accepted is lost, stored twice or
// delivered out of order, and no identity has two live sessions.
func TestPartition(t *testing.T) {
	nw := testkit.NewNetwork(t)
	pg := testkit.StartPostgresOn(t, nw.ClusterHost())
	// A TTL of 2 s: margin for a busy machine's Consul (a member that
	// cannot refresh in time cannot be vouched for by the node cut off).
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", "gate,actors,api"},
		Network: nw, Postgres: pg, Args: []string{"--cluster.ttl", "2s"}})
	dumpOnFailure(t, c, "lease", "rejoin", "vouch", "level=WARN", "level=ERROR")
	n1, n3 := c.Node("node1"), c.Node("node3")
	cfg := load(c, 40)
	cfg.Gates = []string{n1.GateAddr, n3.GateAddr} // devices start on both sides
	cfg.PushRate, cfg.C2CRate, cfg.C2SRate = 80, 20, 20
	w := startLoad(t, cfg)
	time.Sleep(2 * time.Second)
	if w.OnlineGate(n3.GateAddr) == 0 {
		t.Fatal("no device on the minority's gate")
	}
	before := nodeMetrics(n3, "courier_cluster_lease_lost_total", "courier_cluster_rejoins_total", "courier_cluster_lease_refused_total")

	at := w.Fault("partition: node3 cut off")
	nw.Cut("node3")
	testkit.Eventually(t, 15*time.Second, func() bool { return w.OnlineGate(n1.GateAddr) == cfg.Devices },
		"the minority's devices moved to the majority's gate")
	moved := time.Since(at).Round(time.Millisecond)
	// Without its lease the minority serves nothing: a load balancer
	// checking /readyz must stop sending devices there.
	if code, body := readyz(t, n3); code != http.StatusServiceUnavailable || !strings.Contains(body, "no membership lease") {
		t.Errorf("the minority's /readyz without its lease: %d %q, want 503 no membership lease", code, body)
	}
	time.Sleep(3 * time.Second)
	w.Fault("partition healed")
	nw.Heal("node3")
	c.WaitConverged()
	time.Sleep(3 * time.Second)

	l := finish(t, w)
	if !l.Clean(false) {
		t.Error("the ledger is not clean")
	}
	after := nodeMetrics(n3, "courier_cluster_lease_lost_total", "courier_cluster_rejoins_total", "courier_cluster_lease_refused_total")
	d := func(m string) float64 { return after[m] - before[m] }
	t.Logf("minority: lease lost %v, rejoined %v, %v envelopes or deliveries refused; devices all on the majority %v after the cut; pushes interrupted %v by the cut, %v by the healing",
		d("courier_cluster_lease_lost_total"), d("courier_cluster_rejoins_total"), d("courier_cluster_lease_refused_total"),
		moved, l.Faults[0].Interruption.Round(time.Millisecond), l.Faults[1].Interruption.Round(time.Millisecond))
	if d("courier_cluster_lease_lost_total") < 1 || d("courier_cluster_rejoins_total") < 1 {
		t.Error("the minority did not lose its lease and rejoin")
	}

	// One live session per identity: every device connected once, and
	// presence names the gate it is connected to.
	conns := 0.0
	for _, n := range c.Running() {
		v, _ := n.Metric("courier_gate_connections")
		conns += v
	}
	if int(conns) != cfg.Devices {
		t.Errorf("%v connections on the gates, want %d (one per device)", conns, cfg.Devices)
	}
	current := map[int]string{}
	for _, s := range w.Sessions() {
		if s.Down.IsZero() {
			current[s.Dev] = s.Gate
		}
	}
	api := n1.API(t)
	for i := range cfg.Devices {
		on, gate := presence(t, api, w.UID(i))
		if !on || gate != current[i] {
			t.Errorf("%s: presence online %v at %q, the device is on %q", w.UID(i), on, gate, current[i])
		}
	}
}
