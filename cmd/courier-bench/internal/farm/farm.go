package farm

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/courier-im/courier/gate"
)

// Farm is a set of simulated devices on a few event loops.
type Farm struct {
	cfg   Config
	loops []*loop
	wg    sync.WaitGroup
	once  sync.Once
}

// New creates the farm's devices (minting their tokens) and starts its
// loops. No device connects before Login.
func New(cfg Config) (*Farm, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	f := &Farm{cfg: cfg}
	for i := range cfg.Loops {
		l, err := newLoop(f, i)
		if err != nil {
			f.closeLoops()
			return nil, err
		}
		f.loops = append(f.loops, l)
	}
	for i := range cfg.Count {
		g := cfg.First + i
		uid := UID(cfg.UIDPrefix, g)
		tok, err := gate.MintToken(cfg.Secret, cfg.AppCode, uid, 48*time.Hour)
		if err != nil {
			f.closeLoops()
			return nil, fmt.Errorf("farm: %w", err)
		}
		l := f.loops[i%cfg.Loops]
		l.devs = append(l.devs, &device{g: g, uid: uid, token: tok, fd: -1})
	}
	for _, l := range f.loops {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			l.run()
		}()
	}
	return f, nil
}

func (f *Farm) closeLoops() {
	for _, l := range f.loops {
		l.shutdown()
	}
}

// Config returns the farm's configuration with defaults applied.
func (f *Farm) Config() Config { return f.cfg }

// devices returns, per loop, the devices with global index in [from, to).
func (f *Farm) devices(from, to int) [][]*device {
	out := make([][]*device, len(f.loops))
	for i, l := range f.loops {
		for _, d := range l.devs {
			if d.g >= from && d.g < to {
				out[i] = append(out[i], d)
			}
		}
	}
	return out
}

// each runs fn(loop, its devices in [from, to), done) on every loop and
// waits until all have called done or ctx ends. After ctx ends, the
// waiting goroutine lingers until the loops call done or the process
// exits (workers exit right after a cancelled run).
func (f *Farm) each(ctx context.Context, from, to int, fn func(l *loop, devs []*device, done func())) error {
	per := f.devices(from, to)
	var wg sync.WaitGroup
	for i, l := range f.loops {
		wg.Add(1)
		devs := per[i]
		l.post(func() { fn(l, devs, wg.Done) })
	}
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Login logs in the devices with global index in [from, to) at rate per
// second over the whole farm (0: as fast as possible) with at most
// inflight logins in progress, and returns when every one has a result
// (a LoginDone record each).
func (f *Farm) Login(ctx context.Context, from, to int, rate float64, inflight int) error {
	n := len(f.loops)
	return f.each(ctx, from, to, func(l *loop, devs []*device, done func()) {
		l.startLogin(devs, rate/float64(n), max(inflight/n, 1), done)
	})
}

// Reconnect drops the connections of the devices in [from, to) at once
// and logs them in again as fast as inflight allows.
func (f *Farm) Reconnect(ctx context.Context, from, to int, inflight int) error {
	n := len(f.loops)
	return f.each(ctx, from, to, func(l *loop, devs []*device, done func()) {
		l.drop(devs)
		l.startLogin(devs, 0, max(inflight/n, 1), done)
	})
}

// Traffic makes the online devices send C2C (kind SentC2C, each to its
// partner g xor 1) or C2S (SentC2S) frames at rate per second over the
// farm, for d or until count frames, and returns how many were sent.
func (f *Farm) Traffic(ctx context.Context, kind Kind, rate float64, d time.Duration, count int64) (int64, error) {
	if kind != SentC2C && kind != SentC2S {
		return 0, fmt.Errorf("farm: traffic kind %d", kind)
	}
	n := int64(len(f.loops))
	var mu sync.Mutex
	var sent int64
	err := f.each(ctx, f.cfg.First, f.cfg.First+f.cfg.Count, func(l *loop, _ []*device, done func()) {
		t := now()
		per := count / n
		if count > 0 && int64(l.id) < count%n {
			per++
		}
		if count > 0 && per == 0 {
			done()
			return
		}
		l.tr = &traffic{kind: kind, rate: rate / float64(n), t0: t, end: t + int64(d), count: per, done: func(s int64) {
			mu.Lock()
			sent += s
			mu.Unlock()
			done()
		}}
	})
	if err != nil {
		for _, l := range f.loops {
			l.post(func() { l.tr = nil })
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return sent, err
}

// Stats sums the loops' counters.
func (f *Farm) Stats() Stats {
	var s Stats
	for _, l := range f.loops {
		s.add(&l.st)
		l.mu.Lock()
		if l.lastErr != "" {
			s.LastError = l.lastErr
		}
		l.mu.Unlock()
	}
	return s
}

// Drain appends the records made since the last Drain to dst.
func (f *Farm) Drain(dst []Record) []Record {
	for _, l := range f.loops {
		l.mu.Lock()
		dst = append(dst, l.recs...)
		l.recs = l.recs[:0]
		l.mu.Unlock()
	}
	return dst
}

// Close closes every connection and stops the loops. Records made
// before are still returned by Drain. It is safe to call twice.
func (f *Farm) Close() {
	f.once.Do(func() {
		for _, l := range f.loops {
			l.post(func() { l.stopped = true })
		}
		f.wg.Wait()
	})
}
