package workload_test

import (
	"context"
	"testing"
	"time"

	"github.com/courier-im/courier/testkit"
	"github.com/courier-im/courier/testkit/workload"
)

// A workload against one real node: every kind of traffic, and a clean
// ledger with exact counts (ledger_test.go shows it sees what goes wrong).
func TestWorkloadOnOneNode(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	cfg := workload.DefaultConfig()
	cfg.Secret = []byte(testkit.App1Secret)
	cfg.APIKey = testkit.App1Key
	cfg.Discover = []string{n.HTTPAddr}
	cfg.APIs = []string{n.APIAddr}
	cfg.Devices = 6
	cfg.PushRate, cfg.FireAndForgetRate, cfg.C2CRate, cfg.C2SRate = 50, 10, 20, 20
	w, err := workload.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WaitOnline(ctx); err != nil {
		t.Fatal(err)
	}
	w.Run()
	time.Sleep(2 * time.Second)
	w.StopTraffic()
	if err := w.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	l := w.Ledger()
	t.Logf("ledger:\n%s", l.String())
	if !l.Clean(false) {
		t.Fatalf("ledger not clean:\n%s", l.String())
	}
	if l.Pushes.Accepted < 50 || l.Pushes.Delivered != l.Pushes.Accepted || l.C2C.Accepted < 20 ||
		l.C2C.Delivered != l.C2C.Accepted || l.C2S.Accepted < 20 || l.C2S.Delivered != l.C2S.Accepted ||
		l.FireAndForget.Sent < 10 || l.Devices.Sessions != 6 || l.Devices.Reconnects != 0 {
		t.Fatalf("unexpected counts:\n%s", l.String())
	}
}
