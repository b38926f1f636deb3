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

func TestParseMachine(t *testing.T) {
	m, err := parseMachine("cpu  4705 150 1120 16250 520 30 40 60 0 0\n")
	if err != nil {
		t.Fatal(err)
	}
	tick := func(n int64) time.Duration { return time.Duration(n) * 10 * time.Millisecond }
	want := Machine{Busy: tick(4705 + 150 + 1120 + 30 + 40 + 60), Kernel: tick(1120 + 30 + 40), Steal: tick(60),
		Total: tick(4705 + 150 + 1120 + 30 + 40 + 60 + 16250 + 520)}
	if m != want {
		t.Fatalf("parseMachine = %+v, want %+v", m, want)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5 6 7 8", "cpu 1 2 3", "cpu 1 2 x 4 5 6 7 8"} {
		if _, err := parseMachine(bad); err == nil {
			t.Errorf("parseMachine(%q) did not fail", bad)
		}
	}
	// This machine's own reading grows with time.
	a, err := MachineCPU()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	b, err := MachineCPU()
	if err != nil {
		t.Fatal(err)
	}
	if b.Total <= a.Total || b.Busy < a.Busy || b.Busy > b.Total {
		t.Fatalf("readings %+v then %+v", a, b)
	}
}
