package faults

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/testkit"
	"github.com/courier-im/courier/testkit/workload"
)

// load returns a workload config for c: devices of app 1 that find their
// gates through every api node's discovery, pushes through every api
// node, and test-sized timers.
func load(c *testkit.Cluster, devices int) workload.Config {
	cfg := workload.DefaultConfig()
	cfg.Secret = []byte(testkit.App1Secret)
	cfg.APIKey = testkit.App1Key
	cfg.Devices = devices
	cfg.UIDPrefix = "f-"
	for _, n := range c.Running() {
		if n.APIAddr != "" {
			cfg.APIs = append(cfg.APIs, n.APIAddr)
			cfg.Discover = append(cfg.Discover, n.HTTPAddr)
		}
	}
	cfg.CallTimeout = 3 * time.Second
	return cfg
}

// startLoad starts cfg's workload, waits until every device is online and
// starts the traffic. The workload stops at the end of the test.
func startLoad(t *testing.T, cfg workload.Config) *workload.Workload {
	t.Helper()
	w, err := workload.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := w.WaitOnline(ctx); err != nil {
		t.Fatal(err)
	}
	w.Run()
	return w
}

// finish stops the traffic, waits until everything accepted has arrived
// (or a minute), logs the ledger and returns it.
func finish(t *testing.T, w *workload.Workload) workload.Ledger { return finishWith(t, w, -1) }

// finishCrashed is finish for a test that crashed a node: C2S the dead
// node held for the app-servers is lost by contract, so only a few
// seconds are given to C2S still on their way once everything else
// arrived (the ledger reports the rest as lost; Clean(true) allows it).
func finishCrashed(t *testing.T, w *workload.Workload) workload.Ledger {
	return finishWith(t, w, 5*time.Second)
}

func finishWith(t *testing.T, w *workload.Workload, c2sGrace time.Duration) workload.Ledger {
	t.Helper()
	w.StopTraffic()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var err error
	if c2sGrace >= 0 {
		err = w.SettleStored(ctx, c2sGrace)
	} else {
		err = w.Settle(ctx)
	}
	l := w.Ledger()
	t.Logf("ledger:\n%s", l.String())
	if err != nil {
		t.Error(err)
	}
	return l
}

// presence asks api whether app 1's uid is online and on which gate.
func presence(t *testing.T, api apipb.CourierClient, uid string) (bool, string) {
	t.Helper()
	r, err := api.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{uid}})
	if err != nil {
		t.Fatalf("presence of %s: %v", uid, err)
	}
	e := r.Entries[0]
	if !e.Online {
		return false, ""
	}
	return true, e.Session.GateAddr
}

// dumpOnFailure logs, if the test failed, every node's log lines that
// contain one of words.
func dumpOnFailure(t *testing.T, c *testkit.Cluster, words ...string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range c.Nodes {
			var b strings.Builder
			for _, line := range strings.Split(n.Logs(), "\n") {
				for _, w := range words {
					if strings.Contains(line, w) {
						b.WriteString(line)
						b.WriteByte('\n')
						break
					}
				}
			}
			t.Logf("%s:\n%s", n.Name(), b.String())
		}
	})
}

// metrics reads one series from every running node, by node name.
func metrics(c *testkit.Cluster, series string) map[string]float64 {
	out := map[string]float64{}
	for _, n := range c.Running() {
		v, _ := n.Metric(series)
		out[n.Name()] = v
	}
	return out
}

// nodeMetrics reads series from one node.
func nodeMetrics(n *testkit.Node, series ...string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range series {
		out[s], _ = n.Metric(s)
	}
	return out
}
