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
