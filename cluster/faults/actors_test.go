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
	if f.Interruption > 10*time.Second {
		t.Errorf("pushes interrupted %v (target 5 s)", f.Interruption)
	}
}
