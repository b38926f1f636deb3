package client

import (
	"math/rand/v2"
	"time"
)

// backoff is jittered exponential backoff ("full jitter"): each wait is a
// random time in [0, b); b starts at initial and doubles after each wait
// up to max. It belongs to the client's goroutine.
type backoff struct {
	initial, max time.Duration
	b            time.Duration
	rand         func() float64 // in [0, 1); tests replace it
}

func newBackoff(initial, max time.Duration) *backoff {
	return &backoff{initial: initial, max: max, b: initial, rand: rand.Float64}
}

// next returns the wait before the next attempt and grows the bound.
func (b *backoff) next() time.Duration {
	d := time.Duration(b.rand() * float64(b.b))
	b.b = min(2*b.b, b.max)
	return d
}

// soon returns a wait in [0, within) without growing the bound (after
// KICKOUT SERVER_SHUTDOWN).
func (b *backoff) soon(within time.Duration) time.Duration {
	return time.Duration(b.rand() * float64(within))
}

// reset starts the bound at initial again (after a session that lasted).
func (b *backoff) reset() { b.b = b.initial }

// bound returns the current bound (for tests and logs).
func (b *backoff) bound() time.Duration { return b.b }
