package faults

import (
	"testing"
	"time"

	"github.com/courier-im/courier/testkit"
)

// TestPostgresRestarted stops the cluster's PostgreSQL for five seconds
// while stored pushes, fire-and-forget pushes, C2C and C2S stream, and
// starts it again on its data. Meanwhile stored pushes are refused with a
// retryable status (retried with the same key), fire-and-forget pushes to
// online devices go on, and so does C2S; afterwards the nodes recover by
// themselves and everything accepted is delivered, once stored, in order.
func TestPostgresRestarted(t *testing.T) {
	pg := testkit.StartPostgres(t)
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", ""}, Postgres: pg})
	dumpOnFailure(t, c, "store", "level=WARN", "level=ERROR")
	cfg := load(c, 30)
	cfg.PushRate, cfg.FireAndForgetRate, cfg.C2CRate, cfg.C2SRate = 60, 40, 10, 10
	w := startLoad(t, cfg)
	time.Sleep(2 * time.Second)

	w.Fault("PostgreSQL stopped")
	pg.Stop(false)
	down := w.Ledger()
	time.Sleep(5 * time.Second)
	during := w.Ledger()
	w.Fault("PostgreSQL started")
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)

	l := finish(t, w)
	if !l.Clean(false) {
		t.Error("the ledger is not clean")
	}
	ff := during.FireAndForget.Delivered - down.FireAndForget.Delivered
	c2s := during.C2S.Delivered - down.C2S.Delivered
	refused := during.Calls.Retried - down.Calls.Retried
	t.Logf("while PostgreSQL was down (5 s): %d fire-and-forget pushes delivered, %d C2S delivered, %d stored pushes refused retryably (%v); after it was back pushes flowed again within %v; devices reconnected %d times",
		ff, c2s, refused, during.Calls.Codes, l.Faults[1].Interruption.Round(time.Millisecond), l.Devices.Reconnects)
	if ff == 0 {
		t.Error("no fire-and-forget push was delivered while PostgreSQL was down")
	}
	if c2s == 0 {
		t.Error("no C2S was delivered while PostgreSQL was down")
	}
	if l.Devices.Reconnects != 0 {
		t.Errorf("%d device reconnects: connected devices must stay connected while PostgreSQL is down", l.Devices.Reconnects)
	}
	if refused == 0 {
		t.Error("no stored push was refused while PostgreSQL was down: the fault did not bite")
	}
	if l.Faults[1].Interruption > 15*time.Second {
		t.Errorf("pushes flowed again only %v after PostgreSQL was back", l.Faults[1].Interruption)
	}
}
