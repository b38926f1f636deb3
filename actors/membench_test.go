package actors

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/courier-im/courier/actors/store"
)

// activeIdentityBudget is the most heap an active identity may hold in
// activeIdentityHeap (bytes, the harness's routing map and fake store
// included): what it measured when set, plus about 8%. A change that
// makes an identity in memory bigger fails TestActiveIdentityMemoryBudget;
// one that makes it smaller should lower the budget.
//
// Measured 2026-11-30 (go1.26.8, 20,000 identities): 1,873 B before issue
// 13's third round of memory work, 1,488 B after it (1,500 B with the race
// detector).
const activeIdentityBudget = 1610

// activeIdentityHeap activates n identities (a presence query each, which
// loads an empty identity) that stay in memory, and returns the heap in
// use after a GC per identity, against the heap before.
func activeIdentityHeap(tb testing.TB, n int) float64 {
	h := newActorHarness(tb, func(c *Config) { c.PassivateAfter = time.Hour })
	ids := make([]store.Identity, n)
	for i := range ids {
		ids[i] = store.Identity{App: 1, UID: fmt.Sprintf("u%06d", i)}
	}
	h.presence(store.Identity{App: 1, UID: "warm-up"})
	before := heapInUse()
	for _, id := range ids {
		h.presence(id)
	}
	after := heapInUse()
	runtime.KeepAlive(ids)
	return float64(after-before) / float64(n)
}

// TestActiveIdentityMemoryBudget fails if an active identity holds more
// heap than activeIdentityBudget.
func TestActiveIdentityMemoryBudget(t *testing.T) {
	got := activeIdentityHeap(t, 20_000)
	t.Logf("%.0f B of heap per active identity (budget %d)", got, activeIdentityBudget)
	if got > activeIdentityBudget {
		t.Fatalf("an active identity holds %.0f B of heap, over its budget of %d B", got, activeIdentityBudget)
	}
}

// BenchmarkActiveIdentityMemory measures the heap an active identity's
// actor holds (activeIdentityHeap with 20,000 identities). It reports
// B/identity (the harness's routing map is in it too); b.N is not used,
// run it with -benchtime=1x:
//
//	go test -run '^$' -bench ActiveIdentityMemory -benchtime=1x ./actors/
func BenchmarkActiveIdentityMemory(b *testing.B) {
	b.ReportMetric(activeIdentityHeap(b, 20_000), "B/identity")
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
