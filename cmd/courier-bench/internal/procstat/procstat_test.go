package procstat

import (
	"os"
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
