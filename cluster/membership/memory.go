package membership

import (
	"context"
	"errors"
	"sync"
	"time"
)

// errUnknownInstance: the in-memory provider has no such instance.
var errUnknownInstance = errors.New("membership: unknown instance")

// memoryBackend keeps the registrations of one process: a node that is
// its own cluster. Its members never expire.
type memoryBackend struct {
	mu      sync.Mutex
	regs    map[string]Member
	index   uint64
	changed chan struct{} // closed and replaced on every change
}

func newMemoryBackend() *memoryBackend {
	return &memoryBackend{regs: map[string]Member{}, index: 1, changed: make(chan struct{})}
}

func (b *memoryBackend) bump() {
	b.index++
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *memoryBackend) register(_ context.Context, self *Member) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := *self
	m.Health = HealthPassing
	b.regs[m.ID] = m
	b.bump()
	return nil
}

func (b *memoryBackend) pass(_ context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.regs[id]; !ok {
		return errUnknownInstance
	}
	return nil
}

func (b *memoryBackend) deregister(_ context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.regs, id)
	b.bump()
	return nil
}

func (b *memoryBackend) watch(ctx context.Context, index uint64, _ time.Duration) ([]Member, uint64, error) {
	b.mu.Lock()
	for b.index == index {
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
		b.mu.Lock()
	}
	defer b.mu.Unlock()
	out := make([]Member, 0, len(b.regs))
	for _, m := range b.regs {
		out = append(out, m)
	}
	return out, b.index, nil
}

func (b *memoryBackend) canExpire() bool { return false }

func (b *memoryBackend) reach(context.Context) error { return nil }
