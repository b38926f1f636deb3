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
