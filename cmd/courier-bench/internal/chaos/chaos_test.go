package chaos

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/courier-im/courier/testkit/workload"
)

func writeCluster(t *testing.T, addrs string, pgCtl bool) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "addrs.json"), []byte(addrs), 0o644); err != nil {
		t.Fatal(err)
	}
	if pgCtl {
		if err := os.WriteFile(filepath.Join(dir, "pg_ctl"), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const loopback = `{"consul": "127.0.0.1:8500", "nodes": [
  {"name":"node1","roles":"gate,api","gate":"127.0.0.1:7000","api":"127.0.0.1:7001","http":"127.0.0.1:7002","cluster":"127.0.0.1:7003"},
  {"name":"node2","roles":"actors","http":"127.0.0.1:7012","cluster":"127.0.0.1:7013"}]}`

func TestReadClusterLoopbackOnly(t *testing.T) {
	if _, err := readCluster(writeCluster(t, loopback, false)); err != nil {
		t.Fatal(err)
	}
	remote := strings.Replace(loopback, `"127.0.0.1:7013"`, `"10.0.0.2:7013"`, 1)
	if _, err := readCluster(writeCluster(t, remote, false)); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("a cluster with a remote address: %v", err)
	}
	if _, err := readCluster(t.TempDir()); err == nil || !strings.Contains(err.Error(), "make cluster") {
		t.Fatalf("no addrs.json: %v", err)
	}
	if _, err := readCluster(writeCluster(t, `{"nodes": []}`, false)); err == nil {
		t.Fatal("a cluster without nodes was read")
	}
}

func TestPlan(t *testing.T) {
	c, err := readCluster(writeCluster(t, loopback, false))
	if err != nil {
		t.Fatal(err)
	}
	all, err := c.plan(nil)
	if err != nil || len(all) != len(Kinds)-1 {
		t.Fatalf("default plan without PostgreSQL: %v %v", all, err)
	}
	for _, p := range all {
		if p.kind == Postgres {
			t.Fatal("postgres faults planned without a pg_ctl")
		}
	}
	p, err := c.plan([]string{"kill:node2", " pause ", "consul"})
	if err != nil || len(p) != 3 || p[0].String() != "kill:node2" || p[1].kind != Pause || p[1].target != "" {
		t.Fatalf("plan %v %v", p, err)
	}
	for _, bad := range []string{"explode", "kill:node9", "consul:node1", "postgres"} {
		if _, err := c.plan([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	c, _ = readCluster(writeCluster(t, loopback, true))
	if p, err := c.plan([]string{"postgres"}); err != nil || len(p) != 1 {
		t.Fatalf("postgres with a pg_ctl: %v %v", p, err)
	}
}

// TestVerdict: C2S may be lost only through the gate of a node killed;
// a run with no fault, a fault that did not apply or heal, or what did
// not settle is not clean, and the verdict says why.
func TestVerdict(t *testing.T) {
	killed := []Applied{{Name: "kill node1"}}
	lostAt := func(gate string) *workload.Ledger {
		return &workload.Ledger{C2S: workload.Upstream{Accepted: 10, Delivered: 7, Lost: 3, LostByGate: map[string]int64{gate: 3}}}
	}
	cases := []struct {
		name    string
		faults  []Applied
		crashed []string
		l       *workload.Ledger
		settle  error
		want    string // in the reasons; "": clean
	}{
		{"C2S lost by the killed node's gate", killed, []string{"127.0.0.1:7000"}, lostAt("127.0.0.1:7000"), nil, ""},
		{"C2S lost by another gate", killed, []string{"127.0.0.1:7000"}, lostAt("127.0.0.1:7020"), nil, "gate 127.0.0.1:7020"},
		{"C2S lost to a pause", []Applied{{Name: "pause node1"}}, nil, lostAt("127.0.0.1:7000"), nil, "its node did not crash"},
		{"no fault", nil, nil, &workload.Ledger{}, nil, "no fault ran"},
		{"a fault that failed", []Applied{{Name: "term node2", Err: "chaos: the process id of node2: no such file"}}, nil,
			&workload.Ledger{}, nil, "fault 1 (term node2) failed"},
		{"not whole again", []Applied{{Name: "consul", Err: "after 2m0s: not live: node3"}}, nil,
			&workload.Ledger{}, nil, "not whole"},
		{"not settled", killed, nil, &workload.Ledger{}, errors.New("workload: 4 stored messages not delivered"), "not everything accepted arrived"},
		{"a push lost", killed, []string{"127.0.0.1:7000"}, &workload.Ledger{Pushes: workload.Counts{Accepted: 5, Delivered: 4, Lost: 1}}, nil,
			"1 push accepted and never delivered"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			why := verdict(tc.faults, tc.crashed, tc.l, tc.settle)
			if tc.want == "" {
				if len(why) != 0 {
					t.Fatalf("not clean: %q", why)
				}
				return
			}
			if !strings.Contains(strings.Join(why, "\n"), tc.want) {
				t.Fatalf("reasons %q, want one with %q", why, tc.want)
			}
		})
	}
}
