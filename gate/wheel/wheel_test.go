package wheel

import (
	"math/rand/v2"
	"testing"
)

type item struct {
	node     Node[item]
	deadline int64
	fired    int64 // tick it expired at, 0 if not
	visits   int
}

func newItem(deadline int64) *item {
	it := &item{deadline: deadline}
	it.node.Value = it
	return it
}

// TestLazyExpiry checks the way the gate uses the wheel: every node fires
// exactly at its deadline tick, after however many early visits its
// distance from the wheel's span requires.
func TestLazyExpiry(t *testing.T) {
	for _, size := range []int{2, 8, 512} {
		w := New[item](size, 0)
		rng := rand.New(rand.NewPCG(1, uint64(size)))
		items := make([]*item, 1000)
		for i := range items {
			items[i] = newItem(1 + rng.Int64N(3000))
			w.Schedule(&items[i].node, items[i].deadline)
		}
		var now int64
		fire := func(it *item) {
			it.visits++
			if it.deadline <= now {
				it.fired = now
				return
			}
			w.Schedule(&it.node, it.deadline)
		}
		for now = 1; now <= 3100; now++ {
			w.Advance(now, fire)
		}
		if w.Len() != 0 {
			t.Fatalf("size %d: %d nodes left", size, w.Len())
		}
		for _, it := range items {
			if it.fired != it.deadline {
				t.Fatalf("size %d: deadline %d fired at %d", size, it.deadline, it.fired)
			}
			// A node is visited once per span it waits, plus once.
			if max := it.deadline/int64(size-1) + 2; int64(it.visits) > max {
				t.Fatalf("size %d: deadline %d visited %d times (> %d)", size, it.deadline, it.visits, max)
			}
		}
	}
}

func TestRemoveAndJump(t *testing.T) {
	w := New[item](16, 100)
	a, b, c := newItem(105), newItem(105), newItem(110)
	for _, it := range []*item{a, b, c} {
		w.Schedule(&it.node, it.deadline)
	}
	w.Remove(&b.node)
	w.Remove(&b.node) // idempotent
	if b.node.Linked() || w.Len() != 2 {
		t.Fatalf("remove: linked=%v len=%d", b.node.Linked(), w.Len())
	}
	var got []*item
	// A jump far past the span visits every slot once.
	w.Advance(10_000, func(it *item) { got = append(got, it) })
	if len(got) != 2 || w.Len() != 0 || w.Now() != 10_000 {
		t.Fatalf("jump fired %d, len %d, now %d", len(got), w.Len(), w.Now())
	}
	// A deadline in the past fires at the next tick.
	w.Schedule(&a.node, 5)
	n := 0
	w.Advance(10_001, func(*item) { n++ })
	if n != 1 {
		t.Fatalf("past deadline fired %d times", n)
	}
	var each int
	w.Schedule(&a.node, 10_002)
	w.Schedule(&c.node, 10_009)
	w.Each(func(*item) { each++ })
	if each != 2 {
		t.Fatalf("Each visited %d", each)
	}
}
