package procstat

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestSelf(t *testing.T) {
	start := time.Now()
	for time.Since(start) < 50*time.Millisecond {
	}
	c, err := CPU(os.Getpid())
	if err != nil || c <= 0 {
		t.Fatalf("CPU = %v, %v", c, err)
	}
	if SelfCPU() < c-20*time.Millisecond {
		t.Fatalf("SelfCPU %v < /proc %v", SelfCPU(), c)
	}
	r, err := RSS(os.Getpid())
	if err != nil || r < 1<<20 {
		t.Fatalf("RSS = %d, %v", r, err)
	}
}

// TestTreeCPU: the CPU of a process tree includes children that ran and
// were reaped.
func TestTreeCPU(t *testing.T) {
	before, err := TreeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	after, err := TreeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	child := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if child < 50*time.Millisecond {
		t.Skipf("the child used only %v", child)
	}
	if after-before < child-20*time.Millisecond {
		t.Fatalf("tree CPU grew %v, the reaped child used %v", after-before, child)
	}
}
