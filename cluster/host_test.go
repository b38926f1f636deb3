package cluster

import (
	"strconv"
	"testing"
)

// TestShardShrinksAfterPassivations: a shard's map is rebuilt once it
// holds a quarter of its peak, keeping every child still in it.
func TestShardShrinksAfterPassivations(t *testing.T) {
	sh := &localShard{children: map[childKey]*child{}}
	add := func(i int) {
		sh.children[childKey{1, strconv.Itoa(i)}] = &child{forwarded: uint64(i)}
		sh.peak = max(sh.peak, len(sh.children))
	}
	for i := range 1000 {
		add(i)
	}
	before := sh.children
	for i := range 749 { // 251 left: above a quarter of the peak
		delete(sh.children, childKey{1, strconv.Itoa(i)})
		sh.shrink()
	}
	if sh.peak != 1000 {
		t.Fatalf("rebuilt at %d children (peak %d), want no rebuild above a quarter of 1000", len(sh.children), sh.peak)
	}
	delete(sh.children, childKey{1, "749"})
	sh.shrink()
	if sh.peak != 250 || len(sh.children) != 250 {
		t.Fatalf("after 750 of 1000 left: peak %d, %d children; want a rebuild to 250", sh.peak, len(sh.children))
	}
	before[childKey{1, "x"}] = &child{} // the old map is no longer the shard's
	if _, ok := sh.children[childKey{1, "x"}]; ok {
		t.Fatal("the shard still uses the old map")
	}
	for i := 750; i < 1000; i++ {
		if c := sh.children[childKey{1, strconv.Itoa(i)}]; c == nil || c.forwarded != uint64(i) {
			t.Fatalf("child %d lost or changed in the rebuild: %+v", i, c)
		}
	}
	small := &localShard{children: map[childKey]*child{}}
	for i := range shardShrinkMin - 1 {
		small.children[childKey{1, strconv.Itoa(i)}] = &child{}
		small.peak = len(small.children)
	}
	m := small.children
	for i := range shardShrinkMin - 2 {
		delete(small.children, childKey{1, strconv.Itoa(i)})
		small.shrink()
	}
	m[childKey{1, "y"}] = &child{}
	if _, ok := small.children[childKey{1, "y"}]; !ok {
		t.Fatal("a shard that never held shardShrinkMin children was rebuilt")
	}
}
