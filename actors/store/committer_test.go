package store

import (
	"fmt"
	"sync"
	"testing"

	"github.com/courier-im/courier/messages/actorpb"
)

// TestCommitterBoundsBatchBytes: a batch was bounded by its writes
// only; 1,024 writes of large messages made one of gigabytes (past
// PostgreSQL's 1 GB per value). Batches stop at maxBatchBytes; a write
// larger goes alone; every write is committed once, in order.
func TestCommitterBoundsBatchBytes(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var sizes, lens []int
	var got []string
	var first sync.Once
	c := newCommitter(1, 64, 1024, func(_ int, batch []pending) error {
		first.Do(func() { <-release }) // the first batch waits: the others queue up meanwhile
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for i := range batch {
			n += pendingBytes(&batch[i])
			got = append(got, batch[i].w.Put[0].MsgId)
		}
		sizes, lens = append(sizes, n), append(lens, len(batch))
		return nil
	})
	defer c.close()
	id := Identity{App: 1, UID: "u"}
	var wg sync.WaitGroup
	submit := func(i, payload int) {
		wg.Add(1)
		c.submit(pending{w: &Write{ID: id, Put: []*actorpb.InboxEntry{{MsgId: fmt.Sprint(i), Payload: make([]byte, payload)}}},
			done: func(error) { wg.Done() }})
	}
	submit(0, 1)
	for i := 1; i <= 8; i++ {
		submit(i, 10<<20)
	}
	submit(9, maxBatchBytes+1) // larger than a batch
	submit(10, 1)
	close(release)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	for i, n := range sizes {
		if n > maxBatchBytes && lens[i] > 1 {
			t.Fatalf("batch %d holds %d writes, %d bytes (bound %d): %v", i, lens[i], n, maxBatchBytes, sizes)
		}
	}
	if len(sizes) < 4 {
		t.Fatalf("%d batches for 80 MiB of writes and one of 32 MiB: %v", len(sizes), sizes)
	}
	for i, m := range got {
		if m != fmt.Sprint(i) {
			t.Fatalf("writes committed in the order %v", got)
		}
	}
}
