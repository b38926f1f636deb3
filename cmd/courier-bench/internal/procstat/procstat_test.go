package procstat

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestSelf(t *testing.T) {
	// Busy until this process has used 60 ms of CPU (rusage), not for a
	// span of wall time: on a loaded machine 50 ms of wall time got less
	// than /proc's 10 ms tick, and /proc said 0.
	start := time.Now()
	for SelfCPU() < 60*time.Millisecond {
		if time.Since(start) > 30*time.Second {
			t.Fatalf("only %v of CPU in 30 s", SelfCPU())
		}
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
	// A child busy long enough to be measured (a fast machine finishes
	// the loop in less: it runs again, longer).
	var child time.Duration
	for n := 200000; child < 50*time.Millisecond; n *= 2 {
		if n > 200000<<6 {
			t.Fatalf("a child looping %d times used only %v of CPU", n/2, child)
		}
		cmd := exec.Command("sh", "-c", fmt.Sprintf("i=0; while [ $i -lt %d ]; do i=$((i+1)); done", n))
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
		child += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	after, err := TreeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after-before < child-20*time.Millisecond {
		t.Fatalf("tree CPU grew %v, the reaped child used %v", after-before, child)
	}
}
