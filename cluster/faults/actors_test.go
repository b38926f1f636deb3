package faults

import (
	"syscall"
	"testing"
	"time"

	"github.com/courier-im/courier/testkit"
)

// TestActorNodeKilled: SIGKILL of a node hosting identities' actors while
// pushes, C2C and C2S stream to them, with the default membership TTL
// (3 s). Its identities move to the other actor node (loaded from
// PostgreSQL); API calls in the gap fail retryably and, retried with the
// same idempotency key, are never stored twice; every accepted message is
// delivered, in seq order. The time until pushes to the moved identities
// flow again is measured (target: within 5 s).
func TestActorNodeKilled(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", "actors"}, Store: "postgres",
		Args: []string{"--cluster.ttl", "3s"}})
	dumpOnFailure(t, c, "lease", "rejoin", "level=WARN", "level=ERROR")
	cfg := load(c, 40)
	cfg.PushRate, cfg.C2CRate, cfg.C2SRate = 80, 20, 20
	// App-servers with a call deadline as long as the node's request
	// timeout (5 s): calls to the dead node fail at once (it cannot be
	// reached), not at their deadline.
	cfg.CallTimeout = 5 * time.Second
	w := startLoad(t, cfg)
	time.Sleep(2 * time.Second)

	w.Fault("SIGKILL actor node2")
	c.Node("node2").Stop(syscall.SIGKILL)
	time.Sleep(8 * time.Second)

	l := finish(t, w)
	if !l.Clean(false) {
		t.Fatal("the ledger is not clean")
	}
	if l.Calls.Retried == 0 {
		t.Error("no call failed while node2's identities moved: the fault did not bite")
	}
	f := l.Faults[0]
	t.Logf("pushes to the moved identities flowed again %v after the kill (median over identities %v); app-servers waited at most %v; TTL 3 s",
		f.Interruption.Round(time.Millisecond), f.Median.Round(time.Millisecond), f.APIWait.Round(time.Millisecond))
	// Alone on this 2-core machine it takes 4.5-5.5 s (the TTL, 3 s, then
	// the loads on the new owner); on 2026-12-02's slower VM 5.4-8.7 s,
	// the binary of the day before the same. Under make test it runs
	// beside other packages' tests: runs took 8.4, 10.6 and 11.5 s, their
	// app-servers refused 952-2417 times as overloaded meanwhile (114-146
	// alone). The bound is for a node that never takes over, not for the
	// machine's load.
	if f.Interruption > 15*time.Second {
		t.Errorf("pushes interrupted %v (target 5 s)", f.Interruption)
	}
	if v := metrics(c, "courier_cluster_unreachable_total")["node1"]; v == 0 {
		t.Error("no call to the dead node was answered at once")
	}
}

// TestPausedActorNode: an actor node is frozen (SIGSTOP) for four TTLs
// while pushes, C2C and C2S stream, then continued (SIGCONT): a zombie.
// While it was gone its identities moved to the other actor node. When it
// wakes it holds no lease: it accepts nothing, delivers nothing, and a
// write its actors still had queued is fenced by the store (counted);
// then it rejoins as a new instance and takes its share back. Nothing
// accepted is lost, stored twice or delivered out of order.
func TestPausedActorNode(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", "actors"}, Store: "postgres"})
	dumpOnFailure(t, c, "lease", "rejoin", "fenced", "level=WARN", "level=ERROR")
	n2 := c.Node("node2")
	cfg := load(c, 40)
	cfg.PushRate, cfg.C2CRate, cfg.C2SRate = 80, 20, 20
	w := startLoad(t, cfg)
	time.Sleep(2 * time.Second)

	before := nodeMetrics(n2, "courier_cluster_rejoins_total", "courier_cluster_lease_lost_total",
		"courier_store_fenced_writes_total", "courier_cluster_lease_refused_total")
	w.Fault("SIGSTOP actor node2")
	n2.Pause()
	time.Sleep(4 * time.Second) // four TTLs: node2 is taken for gone
	w.Fault("SIGCONT actor node2")
	n2.Resume()
	c.WaitConverged()
	time.Sleep(3 * time.Second)

	l := finish(t, w)
	if !l.Clean(false) {
		t.Error("the ledger is not clean")
	}
	after := nodeMetrics(n2, "courier_cluster_rejoins_total", "courier_cluster_lease_lost_total",
		"courier_store_fenced_writes_total", "courier_cluster_lease_refused_total")
	d := func(m string) float64 { return after[m] - before[m] }
	t.Logf("the zombie: lease lost %v times, rejoined %v times, %v writes fenced by the store, %v envelopes or deliveries refused without a lease; pushes interrupted %v by the pause",
		d("courier_cluster_lease_lost_total"), d("courier_cluster_rejoins_total"), d("courier_store_fenced_writes_total"),
		d("courier_cluster_lease_refused_total"), l.Faults[0].Interruption.Round(time.Millisecond))
	if d("courier_cluster_rejoins_total") < 1 || d("courier_cluster_lease_lost_total") < 1 {
		t.Error("the zombie did not lose its lease and rejoin")
	}
	// What the zombie still had when it woke was refused (no lease) or
	// its writes fenced by the store, depending on where the pause caught
	// it: at least one of the two, or the fault did not bite.
	if d("courier_cluster_lease_refused_total")+d("courier_store_fenced_writes_total") < 1 {
		t.Error("the zombie neither refused anything nor had a write fenced: what reached it while paused was served, or the fault did not bite")
	}
}
