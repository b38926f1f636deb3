package actors

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/courier-im/courier/actors/store"
)

// BenchmarkActiveIdentityMemory measures the heap an active identity's
// actor holds: activeIdentities identities are activated (a presence query
// each, which loads an empty identity) and stay in memory, and the heap
// in use after a GC is compared with the heap before. It reports
// B/identity (the harness's routing map is in it too); b.N is not used,
// run it with -benchtime=1x:
//
//	go test -run '^$' -bench ActiveIdentityMemory -benchtime=1x ./actors/
func BenchmarkActiveIdentityMemory(b *testing.B) {
	const activeIdentities = 20_000
	h := newActorHarness(b, func(c *Config) { c.PassivateAfter = time.Hour })
	ids := make([]store.Identity, activeIdentities)
	for i := range ids {
		ids[i] = store.Identity{App: 1, UID: fmt.Sprintf("u%06d", i)}
	}
	h.presence(store.Identity{App: 1, UID: "warm-up"})
	before := heapInUse()
	b.ResetTimer()
	for _, id := range ids {
		h.presence(id)
	}
	b.StopTimer()
	after := heapInUse()
	b.ReportMetric(float64(after-before)/activeIdentities, "B/identity")
	runtime.KeepAlive(ids)
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
