package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
)

func TestSweepTempDirsRemovesOnlyDeadProcessesDirs(t *testing.T) {
	parent := t.TempDir()
	mk := func(name string) {
		if err := os.MkdirAll(filepath.Join(parent, name, "data"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk("courier-pg-100-aaa")      // dead process: removed
	mk("courier-pg-200-bbb")      // live process: kept
	mk("courier-pg-300-ccc")      // dead process, live postmaster: kept
	mk("courier-pg-400-ddd")      // dead process, dead postmaster: removed
	mk("courier-pg-xyz")          // no pid: kept
	mk("courier-testkit-100-eee") // another prefix: kept
	if err := os.WriteFile(filepath.Join(parent, "courier-pg-300-ccc", "data", "postmaster.pid"), []byte("900\n/some/dir\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(parent, "courier-pg-400-ddd", "data", "postmaster.pid"), []byte("901\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	alive := func(pid int) bool { return pid == 200 || pid == 900 }
	sweepTempDirs(parent, "courier-pg-", alive)

	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	sort.Strings(left)
	want := []string{"courier-pg-200-bbb", "courier-pg-300-ccc", "courier-pg-xyz", "courier-testkit-100-eee"}
	if len(left) != len(want) {
		t.Fatalf("left %v, want %v", left, want)
	}
	for i := range want {
		if left[i] != want[i] {
			t.Fatalf("left %v, want %v", left, want)
		}
	}
}

func TestProcessAlive(t *testing.T) {
	if !processAlive(os.Getpid()) {
		t.Fatal("this process reported gone")
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if processAlive(cmd.Process.Pid) {
		t.Fatalf("exited process %d reported alive", cmd.Process.Pid)
	}
}

func TestProcessTempDirCarriesThePID(t *testing.T) {
	dir, err := processTempDir("courier-tempdir-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	pid, ok := tempDirPID(filepath.Base(dir), "courier-tempdir-test-")
	if !ok || pid != os.Getpid() {
		t.Fatalf("dir %s: pid %d, %v; want %d", dir, pid, ok, os.Getpid())
	}
}
