package node

import (
	"log/slog"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/courier-im/courier/testkit"
)

// TestIdleMemoryIsReturned: after a burst of allocation, an idle node
// returns what its heap holds free to the operating system, once; while
// it keeps allocating, it does not.
func TestIdleMemoryIsReturned(t *testing.T) {
	n := &Node{quit: make(chan struct{}), log: slog.Default(),
		memReleases: prometheus.NewCounter(prometheus.CounterOpts{Name: "releases"})}
	busy := make(chan struct{})
	go func() { // allocates 40 MiB per 100 ms until told to stop
		for {
			select {
			case <-busy:
				return
			default:
			}
			var keep [][]byte
			for range 40 {
				keep = append(keep, make([]byte, 1<<20))
			}
			runtime.KeepAlive(keep)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	n.wg.Add(1)
	go n.releaseIdleMemory(200 * time.Millisecond)
	t.Cleanup(func() { close(n.quit); n.wg.Wait() })
	time.Sleep(time.Second)
	if got := testutil.ToFloat64(n.memReleases); got != 0 {
		t.Fatalf("released %v times while busy", got)
	}
	close(busy)
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(s)
	t.Logf("%d bytes free when the allocations stopped", s[0].Value.Uint64())
	testkit.Eventually(t, 10*time.Second, func() bool { return testutil.ToFloat64(n.memReleases) == 1 },
		"no release once idle")
	metrics.Read(s)
	if free := s[0].Value.Uint64(); free >= minFreeToRelease {
		t.Fatalf("%d bytes free after the release", free)
	}
	time.Sleep(time.Second)
	if got := testutil.ToFloat64(n.memReleases); got != 1 {
		t.Fatalf("released %v times in one idle spell", got)
	}
}
