package node

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// GCFloor keeps the Go garbage collector's heap goal at or above a floor.
//
// The runtime starts a GC cycle when the heap has grown by percent% of
// what the last cycle found live. A node holding 10,000 devices has a
// live heap of about 35 MiB, so at the default gc-percent of 200 it
// collects after every 70 MiB allocated: about once a second at 25,000
// stored pushes a second. Each cycle's marking takes a quarter of the
// processors for 40-60 ms, and the pushes handled meanwhile wait longer
// for a CPU. On the 2-core benchmark machine a floor of 512 MiB took
// the p99 of stored pushes at that rate from 24 to 15 ms, at the same
// CPU per push (BENCHMARKS.md, round 6). A floor lets a small node
// collect as rarely as a large one: after every cycle GCFloor sets the
// GC percentage to the larger of the base one and the one that puts the
// next goal at the floor. The runtime's memory limit (GOMEMLIMIT) still
// applies above both.
//
// The memory it costs is garbage not yet collected, up to the floor; an
// idle node returns it (Config.IdleMemoryRelease).
type GCFloor struct {
	base    int
	floor   uint64
	stopped atomic.Bool
	mu      sync.Mutex
	percent int // what was set last
	sample  []metrics.Sample
}

// StartGCFloor sets the GC percentage to base and, if floor is above
// zero, keeps the heap goal at floor bytes or more until Stop.
func StartGCFloor(base int, floor uint64) *GCFloor {
	g := &GCFloor{base: base, floor: floor, percent: base,
		sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	debug.SetGCPercent(base)
	if floor > 0 {
		g.adjust()
		g.arm()
	}
	return g
}

// Stop leaves the GC percentage as it is and stops adjusting it: once it
// returns, no adjustment already under way sets it any more (whoever sets
// it next keeps it).
func (g *GCFloor) Stop() {
	g.mu.Lock()
	g.stopped.Store(true)
	g.mu.Unlock()
}

// Percent is the GC percentage set last.
func (g *GCFloor) Percent() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.percent
}

// gcSentinel is an object whose cleanup runs after the GC cycle that
// found it unreachable, that is after the next cycle. It is larger than
// the runtime's tiny allocations (which share a block and are freed
// together), so that each cycle frees it.
type gcSentinel struct {
	_ [32]byte
}

// arm makes adjust run after the next GC cycle, and again after each.
func (g *GCFloor) arm() {
	s := &gcSentinel{}
	runtime.AddCleanup(s, func(g *GCFloor) {
		if g.stopped.Load() {
			return
		}
		g.adjust()
		g.arm()
	}, g)
}

// adjust sets the GC percentage from the live heap of the last cycle.
func (g *GCFloor) adjust() {
	metrics.Read(g.sample)
	p := floorPercent(g.base, g.floor, g.sample[0].Value.Uint64())
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped.Load() {
		return // a cleanup that checked before Stop
	}
	if p != g.percent {
		g.percent = p
		debug.SetGCPercent(p)
	}
}

// maxFloorPercent bounds the percentage a floor asks for.
const maxFloorPercent = 100_000

// runtimeHeapMinimum is the Go runtime's minimum heap at a GC percentage
// of 100 (runtime.defaultHeapMinimum).
const runtimeHeapMinimum = 4 << 20

// floorPercent is the GC percentage that puts the goal after a cycle
// that found live bytes at floor or more, and never below base.
func floorPercent(base int, floor, live uint64) int {
	if base < 0 || floor == 0 {
		return base
	}
	// Below 4 MiB the runtime's goal is its minimum heap, 4 MiB times the
	// percentage over 100 (not the live heap's growth): with the live
	// heap taken as it was, a nearly empty one (0 before the first cycle)
	// asked for the cap, a first goal near 4 GiB whatever the floor.
	if live >= floor {
		return base
	}
	need := math.Ceil((float64(floor)/float64(live) - 1) * 100)
	if live < runtimeHeapMinimum {
		need = math.Ceil(float64(floor) / runtimeHeapMinimum * 100)
	}
	if need > maxFloorPercent {
		need = maxFloorPercent
	}
	return max(base, int(need))
}
