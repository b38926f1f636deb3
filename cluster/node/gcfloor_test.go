package node

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestFloorPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		name        string
		base        int
		floor, live uint64
		want        int
	}{
		{"no floor", 200, 0, 35 * mib, 200},
		{"GC off stays off", -1, 512 * mib, 35 * mib, -1},
		{"small live heap: the goal is the floor", 200, 512 * mib, 32 * mib, 1500},
		{"rounded up", 200, 512 * mib, 35 * mib, 1363},
		{"live heap at the floor", 200, 512 * mib, 512 * mib, 200},
		{"live heap above the floor", 200, 512 * mib, 2048 * mib, 200},
		{"floor asks for less than the base", 400, 512 * mib, 200 * mib, 400},
		// Below 4 MiB live the runtime's goal is its minimum heap, 4 MiB ×
		// percent/100: the percentage puts that at the floor (it asked for
		// the cap, a goal near 4 GiB).
		{"empty heap (before the first cycle)", 200, 512 * mib, 0, 12800},
		{"tiny heap", 200, 512 * mib, 1024, 12800},
		{"a huge floor is capped", 200, 1 << 50, 1024, maxFloorPercent},
	} {
		if got := floorPercent(c.base, c.floor, c.live); got != c.want {
			t.Errorf("%s: floorPercent(%d, %d, %d) = %d, want %d", c.name, c.base, c.floor, c.live, got, c.want)
		}
	}
}

// TestGCFloorRaisesTheGoal starts a floor in this process: after a GC
// cycle the runtime's goal is at the floor, and after Stop the percentage
// is left to others.
func TestGCFloorRaisesTheGoal(t *testing.T) {
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	const floor = 256 << 20
	read := func() (goal, percent uint64) {
		s := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}, {Name: "/gc/gogc:percent"}}
		metrics.Read(s)
		return s[0].Value.Uint64(), s[1].Value.Uint64()
	}
	g := StartGCFloor(100, floor)
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		goal, percent := read()
		if goal >= floor && int(percent) == g.Percent() && percent > 100 {
			if goal > floor+floor/10 {
				t.Fatalf("the goal is %d bytes, far above the floor %d", goal, floor)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after GC cycles the goal is %d bytes at GOGC %d (floor %d, GCFloor set %d)", goal, percent, floor, g.Percent())
		}
		time.Sleep(10 * time.Millisecond)
	}
	g.Stop()
	debug.SetGCPercent(150)
	for range 3 {
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	if _, percent := read(); percent != 150 {
		t.Fatalf("GOGC is %d after Stop, want the 150 set after it", percent)
	}
}
