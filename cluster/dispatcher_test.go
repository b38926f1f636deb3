package cluster

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/courier-im/courier/messages/actorpb"
)

// TestPoolDispatcherNeverBlocksNorSpawns: with every worker blocked and
// the queue full, Schedule neither blocks the sender nor starts a
// goroutine per run (it used to, without bound); everything runs once the
// workers are free, and after stop.
func TestPoolDispatcherNeverBlocksNorSpawns(t *testing.T) {
	d := newPoolDispatcher(2, 4, 10)
	var ran atomic.Int64
	var wg sync.WaitGroup
	block := make(chan struct{})
	for range 2 {
		wg.Add(1)
		d.Schedule(func() { defer wg.Done(); <-block; ran.Add(1) })
	}
	time.Sleep(50 * time.Millisecond) // both workers are in their blocked runs
	before := runtime.NumGoroutine()
	const runs = 1000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range runs {
			wg.Add(1)
			d.Schedule(func() { defer wg.Done(); ran.Add(1) })
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Schedule blocked while every worker was busy")
	}
	if grown := runtime.NumGoroutine() - before; grown > 10 {
		t.Fatalf("%d goroutines started for %d runs waiting for a worker", grown, runs)
	}
	close(block)
	wg.Wait()
	if ran.Load() != runs+2 || d.Throughput() != 10 {
		t.Fatalf("ran %d, throughput %d", ran.Load(), d.Throughput())
	}
	d.stop()
	d.stop() // twice is fine
	wg.Add(1)
	d.Schedule(func() { wg.Done() }) // after stop: still runs
	wg.Wait()
}

// TestPoolDispatcherQueueIsNotStarved: with the queue full and runs
// arriving in the overflow as fast as the workers take them (saturation),
// a run waiting in the queue still gets its turn; the overflow used to
// be taken first, always.
func TestPoolDispatcherQueueIsNotStarved(t *testing.T) {
	d := newPoolDispatcher(1, 1, 10)
	defer d.stop()
	block := make(chan struct{})
	d.Schedule(func() { <-block })
	time.Sleep(20 * time.Millisecond) // the worker is in its blocked run
	var order atomic.Int64
	queued := make(chan int64, 1)
	d.Schedule(func() { queued <- order.Add(1) }) // the queue's one slot
	// Each overflow run schedules the next while the queue is full: the
	// overflow never runs dry until the chain ends.
	const chain = 200
	var next func(n int)
	done := make(chan struct{})
	next = func(n int) {
		order.Add(1)
		if n == chain {
			close(done)
			return
		}
		d.Schedule(func() { next(n + 1) })
	}
	d.Schedule(func() { next(1) })
	close(block)
	select {
	case at := <-queued:
		if at > 3 {
			t.Fatalf("the queued run ran %dth, behind %d runs of the overflow", at, at-1)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the queued run never ran")
	}
	<-done
}

func TestReplyRegistry(t *testing.T) {
	var r replyRegistry
	id, ch := r.register()
	id2, ch2 := r.register()
	if id == id2 {
		t.Fatal("ids repeat")
	}
	r.deliver(&actorpb.Reply{ReqId: id2})
	if got := <-ch2; got.ReqId != id2 {
		t.Fatalf("got reply %d", got.ReqId)
	}
	r.forget(id)
	r.deliver(&actorpb.Reply{ReqId: id}) // late: dropped, never blocks
	r.deliver(&actorpb.Reply{ReqId: id2})
	select {
	case <-ch:
		t.Fatal("a forgotten request got a reply")
	case <-ch2:
		t.Fatal("a request got two replies")
	default:
	}
}
