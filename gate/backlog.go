package gate

import (
	"sync"
	"time"
)

// DelayWindow tells whether work has been queueing for longer than it
// should, in the way CoDel does: what counts is not the worst delay seen
// but the smallest one over a window (100 ms). A burst that is worked off
// within the window leaves some short delays in it; a standing queue,
// which every piece of work waits behind, does not. A window with fewer
// than DelayWindowMinWork pieces of work says nothing is behind: sparse
// work that waited (a descheduled loop, a garbage collection) is not a
// queue, and one slow sample must not refuse an idle node's pushes. A
// sample may stand for many pieces of work (ObserveN): one drain of a
// loop writes every connection that queued frames while it waited, and a
// loop that is far behind drains seldom, each time a great many
// connections; counting its drains instead would hide the worst backlog.
// The gate feeds one
// with its drain delays (Gate.Backlog); the API feeds its own with the
// time push calls take, and refuses new pushes while either says the
// node is behind; the cluster one per gate node it writes to, with the
// delays its probes measure on the way there.
//
// It is safe for concurrent use; Length must be set before it is used.
type DelayWindow struct {
	// Length is the window over which the smallest delay counts (0:
	// 100 ms).
	Length time.Duration

	mu     sync.Mutex
	start  time.Time     // of the window being measured
	min    time.Duration // smallest delay in it (-1: none yet)
	n      int           // pieces of work seen in it
	last   time.Duration // smallest delay of the last window that had any
	lastAt time.Time     // end of that window
}

// delayWindowLength is the default window over which the smallest delay
// counts.
const delayWindowLength = 100 * time.Millisecond

func (w *DelayWindow) length() time.Duration {
	if w.Length > 0 {
		return w.Length
	}
	return delayWindowLength
}

// DelayWindowMinWork is the least work a window must see for its delay to
// count as a standing queue.
const DelayWindowMinWork = 8

// Observe records one piece of work's delay, measured at now.
func (w *DelayWindow) Observe(d time.Duration, now time.Time) { w.ObserveN(d, 1, now) }

// ObserveN records a delay that n pieces of work waited at the least or
// the most (such as a drain's connections: the first queued waited d, the
// last less), measured at now. n counts towards DelayWindowMinWork; the
// delay is one sample.
func (w *DelayWindow) ObserveN(d time.Duration, n int, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.start.IsZero() {
		w.start, w.min = now, -1
	}
	if now.Sub(w.start) >= w.length() {
		if w.min >= 0 {
			w.last, w.lastAt = w.min, now
			if w.n < DelayWindowMinWork {
				w.last = 0
			}
		}
		w.start, w.min, w.n = now, -1, 0
	}
	w.n += max(n, 1)
	if w.min < 0 || d < w.min {
		w.min = d
	}
}

// Standing returns the smallest delay of the last whole window, or 0 if
// no work was seen in the last two windows (an idle queue is not behind).
func (w *DelayWindow) Standing(now time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lastAt.IsZero() || now.Sub(w.lastAt) > 2*w.length() {
		return 0
	}
	return w.last
}
