package gate

import (
	"testing"
	"time"
)

// TestDelayWindow: a standing queue (every delay of a window long) is
// reported; a burst with short delays among long ones is not; an idle
// queue is reported as 0.
func TestDelayWindow(t *testing.T) {
	var w DelayWindow
	t0 := time.Unix(1_800_000_000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	if d := w.Standing(at(0)); d != 0 {
		t.Fatalf("nothing observed: %v", d)
	}
	// A standing queue: 40-60 ms for 300 ms.
	for ms := 0; ms <= 300; ms += 10 {
		w.Observe(time.Duration(40+ms%20)*time.Millisecond, at(ms))
	}
	if d := w.Standing(at(300)); d != 40*time.Millisecond {
		t.Fatalf("standing queue: %v, want 40ms", d)
	}
	// A burst: mostly 80 ms, but some work went through at once.
	for ms := 310; ms <= 600; ms += 10 {
		d := 80 * time.Millisecond
		if ms%50 == 0 {
			d = time.Millisecond
		}
		w.Observe(d, at(ms))
	}
	if d := w.Standing(at(600)); d != time.Millisecond {
		t.Fatalf("burst: %v, want 1ms", d)
	}
	// Idle: no work for longer than two windows.
	if d := w.Standing(at(900)); d != 0 {
		t.Fatalf("idle: %v, want 0", d)
	}
	// Sparse work that waited (one slow piece per window) is not a queue.
	for ms := 1000; ms <= 1500; ms += 60 {
		w.Observe(60*time.Millisecond, at(ms))
	}
	if d := w.Standing(at(1500)); d != 0 {
		t.Fatalf("sparse slow work: %v, want 0", d)
	}
}

// TestDelayWindowFewLargeDrains: a loop so far behind that it drains only
// a few times a window, each time hundreds of connections that all waited
// long, is a standing queue (counting drains, not connections, hid it:
// seen at the maximum fire-and-forget rate, 4 drains per window of 40-60
// ms each and not one refusal); a few slow drains of one connection each
// are still not.
func TestDelayWindowFewLargeDrains(t *testing.T) {
	var w DelayWindow
	t0 := time.Unix(1_800_000_000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	for ms := 0; ms <= 300; ms += 45 {
		w.ObserveN(45*time.Millisecond, 900, at(ms))
	}
	if d := w.Standing(at(300)); d != 45*time.Millisecond {
		t.Fatalf("few large drains: %v, want 45ms", d)
	}
	var sparse DelayWindow
	for ms := 0; ms <= 300; ms += 45 {
		sparse.ObserveN(45*time.Millisecond, 1, at(ms))
	}
	if d := sparse.Standing(at(300)); d != 0 {
		t.Fatalf("few drains of one connection: %v, want 0", d)
	}
}

// TestGateBacklogEndsWhenCaughtUp: a gate whose loops drained late is
// behind only while frames still wait for a loop; once nothing waits, it
// is not (refusing an idle gate's pushes for two more windows cost half
// of a saturated node's throughput), and it is again as soon as frames
// have waited long.
func TestGateBacklogEndsWhenCaughtUp(t *testing.T) {
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	g := &Gate{metrics: m, start: time.Now()}
	l := &loop{g: g}
	g.loops.Store(&[]*loop{l, {g: g}})
	for range 4 {
		g.noteDrainDelay(45*time.Millisecond, 900)
	}
	time.Sleep(delayWindowLength + 5*time.Millisecond)
	g.noteDrainDelay(45*time.Millisecond, 900) // closes the window
	if d := g.Backlog(); d != 0 {
		t.Fatalf("nothing waiting: backlog %v, want 0", d)
	}
	l.drains.waiting.Store(g.nanos() - int64(30*time.Millisecond))
	if d := g.Backlog(); d < 30*time.Millisecond || d > 45*time.Millisecond {
		t.Fatalf("frames waiting 30ms behind a 45ms standing queue: backlog %v, want 30-45ms", d)
	}
	l.drains.waiting.Store(g.nanos() - int64(time.Second))
	if d := g.Backlog(); d != 45*time.Millisecond {
		t.Fatalf("frames waiting 1s behind a 45ms standing queue: backlog %v, want 45ms", d)
	}
	l.drains.waiting.Store(0)
	if d := g.Backlog(); d != 0 {
		t.Fatalf("caught up: backlog %v, want 0", d)
	}
}
