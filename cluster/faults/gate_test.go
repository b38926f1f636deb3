package faults

import (
	"syscall"
	"testing"
	"time"

	"github.com/courier-im/courier/testkit"
)

// TestGateKilled: SIGKILL of a gate-only node while pushes, C2C and C2S
// flow. Its sessions end cluster-wide (a device that does not come back
// is offline within the TTL + 1 s); the others reconnect through gate
// discovery to the remaining gate and receive what waited for them:
// nothing accepted and stored is lost. C2S the dead node held for the
// app-servers is lost by contract (docs/protocol.md §11) and only
// reported.
func TestGateKilled(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", "gate"}})
	n1, n3 := c.Node("node1"), c.Node("node3")
	api := n1.API(t)

	cfg := load(c, 40)
	cfg.Gates = []string{n3.GateAddr} // every device starts on the gate that dies
	cfg.PushRate, cfg.C2CRate, cfg.C2SRate = 80, 20, 20
	w := startLoad(t, cfg)
	// One more device that will not come back.
	stray := n3.Device(t, 1, "stray")
	time.Sleep(2 * time.Second)

	at := w.Fault("SIGKILL gate node3")
	n3.Stop(syscall.SIGKILL)
	testkit.Eventually(t, 30*time.Second, func() bool { return w.OnlineGate(n1.GateAddr) == cfg.Devices },
		"every device back, on node1's gate")
	back := time.Since(at)
	testkit.Eventually(t, 5*time.Second, func() bool { on, _ := presence(t, api, "stray"); return !on },
		"the session of a device that did not come back ended")
	offline := time.Since(at)
	stray.Close()
	time.Sleep(2 * time.Second)

	l := finishCrashed(t, w)
	if !l.Clean(true) {
		t.Fatal("the ledger is not clean")
	}
	if l.Pushes.Accepted == 0 || l.C2C.Accepted == 0 {
		t.Fatal("no traffic")
	}
	f := l.Faults[0]
	t.Logf("%d devices back on the other gate %v after the kill (ledger: %v); the stray session offline after %v; pushes interrupted %v",
		cfg.Devices, back.Round(time.Millisecond), f.DevicesBack.Round(time.Millisecond), offline.Round(time.Millisecond),
		f.Interruption.Round(time.Millisecond))
	if offline > 2*time.Second+time.Second { // TTL 1 s + 1 s, and the polling
		t.Errorf("a session on the dead gate lasted %v", offline)
	}
}

// TestGateAndActorNodeKilled: SIGKILL of a node that holds both the
// devices' connections and some of their identities' actors. The devices
// reconnect to the other gate at once; those whose identities lived on
// the dead node cannot log in until the cluster takes it for gone (the
// TTL), and are told so at once (LOGIN_ACK STORE_UNAVAILABLE: retry)
// rather than left waiting for the login timeout.
func TestGateAndActorNodeKilled(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", "gate,actors"}, Store: "postgres"})
	n1, n3 := c.Node("node1"), c.Node("node3")
	cfg := load(c, 40)
	cfg.Gates = []string{n3.GateAddr}
	cfg.PushRate, cfg.C2CRate = 80, 20
	w := startLoad(t, cfg)
	time.Sleep(2 * time.Second)

	w.Fault("SIGKILL gate and actor node3")
	n3.Stop(syscall.SIGKILL)
	testkit.Eventually(t, 30*time.Second, func() bool { return w.OnlineGate(n1.GateAddr) == cfg.Devices },
		"every device back, on node1's gate")
	time.Sleep(2 * time.Second)

	l := finishCrashed(t, w)
	if !l.Clean(true) {
		t.Fatal("the ledger is not clean")
	}
	f := l.Faults[0]
	t.Logf("devices back %v after the kill (TTL 1 s); pushes interrupted %v; %s", f.DevicesBack.Round(time.Millisecond),
		f.Interruption.Round(time.Millisecond), f.Worst)
	if f.DevicesBack > 6*time.Second {
		t.Errorf("the last device came back only %v after the kill", f.DevicesBack)
	}
}
