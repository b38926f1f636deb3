package node

import (
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Thresholds of releaseIdleMemory.
const (
	// idleAllocBytes: a node that allocated less than this since the last
	// check is idle (a node holding devices and serving their keepalives
	// allocates far less; one under load, megabytes per second).
	idleAllocBytes = 1 << 20
	// minFreeToRelease: what the heap holds free must be worth a GC cycle.
	minFreeToRelease = 8 << 20
)

// releaseIdleMemory returns the heap's free memory to the operating
// system once the node has gone idle. At the default gc-percent of 200
// the Go runtime keeps up to three times the live heap resident after a
// burst (its scavenger only returns what is above the GC target), so a
// node whose devices are idle would go on holding what the burst used.
// debug.FreeOSMemory costs one GC cycle, run at most once per idle
// spell: after it nothing is free to return until the node allocates
// again.
func (n *Node) releaseIdleMemory(every time.Duration) {
	defer n.wg.Done()
	samples := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/memory/classes/heap/free:bytes"}}
	read := func() (allocs, free uint64) {
		metrics.Read(samples)
		return samples[0].Value.Uint64(), samples[1].Value.Uint64()
	}
	last, _ := read()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-n.quit:
			return
		case <-t.C:
		}
		allocs, free := read()
		idle := allocs-last < idleAllocBytes
		last = allocs
		if idle && free >= minFreeToRelease {
			start := time.Now()
			debug.FreeOSMemory()
			n.memReleases.Inc()
			last, _ = read()
			n.log.Debug("node: idle: returned free memory to the OS", "bytes", free, "took", time.Since(start))
		}
	}
}
