package chaos

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
