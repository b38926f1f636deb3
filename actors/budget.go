package actors

import "sync"

// WriteBudget bounds the store writes that a node's actors have submitted
// and not yet seen complete (Config.MaxPendingWrites). It is how store
// pressure reaches the callers instead of stalling the actors: an actor
// takes a slot before it submits a write and the slot is freed when the
// write completes; while the budget is Full, actors refuse new work that
// needs a write, and an actor that must still write (a session's end, a
// deletion) waits for a slot without blocking: it is woken when one frees.
// Since the store's queue holds at least the whole budget, Store.Submit
// never has to wait either.
//
// It is safe for concurrent use.
type WriteBudget struct {
	mu      sync.Mutex
	max     int
	used    int
	waiters []waiter
}

type waiter struct {
	key  any
	wake func()
}

// NewWriteBudget returns a budget of max slots.
func NewWriteBudget(max int) *WriteBudget { return &WriteBudget{max: max} }

// Full reports whether every slot is taken.
func (b *WriteBudget) Full() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used >= b.max
}

// InUse returns the number of slots taken.
func (b *WriteBudget) InUse() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// TryAcquire takes a slot and returns true, or returns false if none is
// free (and registers nothing).
func (b *WriteBudget) TryAcquire() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used < b.max {
		b.used++
		return true
	}
	return false
}

// Acquire takes a slot and returns true, or, if none is free, registers
// wake under key (once per key) and returns false: wake is called, from
// whichever goroutine frees a slot, when the caller should try again. It
// must not block. A caller that goes away while registered calls Forget.
func (b *WriteBudget) Acquire(key any, wake func()) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used < b.max {
		b.used++
		return true
	}
	for _, w := range b.waiters {
		if w.key == key {
			return false
		}
	}
	b.waiters = append(b.waiters, waiter{key, wake})
	return false
}

// Release frees a slot and wakes the oldest waiter.
func (b *WriteBudget) Release() {
	b.mu.Lock()
	b.used--
	wake := b.pop()
	b.mu.Unlock()
	if wake != nil {
		wake()
	}
}

// Forget removes the registration of a caller that goes away. If key was
// woken already (it is no longer registered) but will not try again, the
// next waiter is woken in its place, so that a freed slot is never left
// unclaimed.
func (b *WriteBudget) Forget(key any) {
	b.mu.Lock()
	for i, w := range b.waiters {
		if w.key == key {
			b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
			b.mu.Unlock()
			return
		}
	}
	var wake func()
	if b.used < b.max {
		wake = b.pop()
	}
	b.mu.Unlock()
	if wake != nil {
		wake()
	}
}

func (b *WriteBudget) pop() func() {
	if len(b.waiters) == 0 {
		return nil
	}
	w := b.waiters[0]
	b.waiters[0] = waiter{}
	b.waiters = b.waiters[1:]
	return w.wake
}
