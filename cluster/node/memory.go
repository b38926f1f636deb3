package node

import (
	"runtime/debug"
	"runtime/metrics"
	"syscall"
	"time"
)

// Thresholds of releaseIdleMemory.
const (
	// idleCPUShare: a node that used less than this share of one core
	// since the last check is idle (one holding devices and serving
	// their keepalives uses far less; one under load, most of a core).
	idleCPUShare = 0.05
	// idleAllocPerSecond: nor may it have allocated more than this per
	// second since the last check (memory freed now would soon be taken
	// again).
	idleAllocPerSecond = 1 << 20
	// minFreeToRelease: within an idle spell, what the heap holds free
	// must be worth a GC cycle.
	minFreeToRelease = 8 << 20
	// releaseSpacing: after a release that took d, the next one waits at
	// least releaseSpacing*d, so that releases never take more than about
	// 5% of a core, however the node's bursts and pauses alternate.
	releaseSpacing = 20
)

// releaseIdleMemory returns the heap's free memory to the operating
// system once the node has gone idle. At the default gc-percent of 200
// the Go runtime keeps up to three times the live heap (and up to the
// GC floor, GCFloor) resident after a burst (its scavenger only returns
// what is above the GC target), so a
// node whose devices are idle would go on holding what the burst used
// (a login burst's garbage, or the actors that passivated: no GC runs
// while a node is idle, so what they held would not even be known to be
// free). Checks are cheap (a getrusage and a read of runtime/metrics), so
// they come often and the memory is back within a check or two of the
// burst's end. debug.FreeOSMemory costs one GC cycle, run when an idle
// spell begins, and again during it only if 8 MiB or more became free
// (another GC found garbage).
func (n *Node) releaseIdleMemory(every time.Duration) {
	defer n.wg.Done()
	samples := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/memory/classes/heap/free:bytes"}}
	read := func() (allocs, free uint64) {
		metrics.Read(samples)
		return samples[0].Value.Uint64(), samples[1].Value.Uint64()
	}
	lastAllocs, _ := read()
	lastCPU, lastAt := processCPU(), time.Now()
	var notBefore time.Time
	owed := true // a busy spell ended without a release since (the node's start is one)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-n.quit:
			return
		case <-t.C:
		}
		allocs, free := read()
		cpu, now := processCPU(), time.Now()
		span := now.Sub(lastAt)
		idle := float64(cpu-lastCPU) < idleCPUShare*float64(span) &&
			float64(allocs-lastAllocs) < idleAllocPerSecond*span.Seconds()
		lastAllocs, lastCPU, lastAt = allocs, cpu, now
		if !idle {
			owed = true
			continue
		}
		if (owed || free >= minFreeToRelease) && !now.Before(notBefore) {
			owed = false
			debug.FreeOSMemory()
			n.memReleases.Inc()
			took := time.Since(now)
			notBefore = now.Add(releaseSpacing * took)
			// The release's own work is not activity.
			lastAllocs, _ = read()
			lastCPU, lastAt = processCPU(), time.Now()
			n.log.Debug("node: idle: returned free memory to the OS", "bytes", free, "took", took)
		}
	}
}

// processCPU returns the CPU time (user and system) the process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
