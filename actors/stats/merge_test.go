package stats

import (
	"reflect"
	"testing"
	"time"
)

// Two nodes' statistics merged equal one node that saw every event.
func TestMergeEqualsOneRecorder(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	a, b, one := New(), New(), New()
	a.now, b.now, one.now = clock, clock, clock
	events := func(r *Recorder, mt uint32, n int, lat time.Duration) {
		for range n {
			r.Accepted(1, mt, true)
			r.Delivered(1, mt)
			r.Acked(1, mt, lat)
		}
		r.Dropped(1, mt)
		r.UpstreamReceived(1, mt)
	}
	events(a, 7, 10, 3*time.Millisecond)
	events(one, 7, 10, 3*time.Millisecond)
	events(b, 7, 30, 90*time.Millisecond)
	events(one, 7, 30, 90*time.Millisecond)
	events(b, 9, 5, time.Second)
	events(one, 9, 5, time.Second)
	a.Accepted(2, 7, true) // another app: not in app 1's answer
	per, all := Merge(1, a.Raw(1, nil, time.Minute), b.Raw(1, nil, time.Minute))
	wantPer, wantAll := one.Snapshot(1, nil, time.Minute)
	if !reflect.DeepEqual(per, wantPer) || !reflect.DeepEqual(all, wantAll) {
		t.Fatalf("merged\n%+v\n%+v\nwant\n%+v\n%+v", per, all, wantPer, wantAll)
	}
	if all.Total.Accepted != 45 || all.TotalLatency.Count != 45 || all.TotalLatency.Max != 1_000_000 || per[0].TotalLatency.P50 < 80_000 {
		t.Fatalf("sums %+v", all)
	}
	if p, _ := Merge(1, b.Raw(1, []uint32{9}, time.Minute)); len(p) != 1 || p[0].Msgtype != 9 {
		t.Fatalf("msgtype filter %+v", p)
	}
}

// TestMergeCountsPastThirtyTwoBits: lifetime histograms of a hot msgtype
// hold billions of acknowledgements in one bucket; summed over nodes
// they pass 2^32, and 32-bit buckets wrapped (the median read as the
// maximum).
func TestMergeCountsPastThirtyTwoBits(t *testing.T) {
	const big = 3_000_000_000
	part := func() []RawStat {
		return []RawStat{{Msgtype: 1, TotalH: Hist{Index: []uint32{10}, Count: []uint64{big}, N: big, Max: upper(200)}}}
	}
	slow := []RawStat{{Msgtype: 1, TotalH: Hist{Index: []uint32{200}, Count: []uint64{1}, N: 1, Max: upper(200)}}}
	per, all := Merge(1, part(), part(), slow)
	if len(per) != 1 {
		t.Fatalf("%d msgtypes", len(per))
	}
	for _, l := range []Latency{per[0].TotalLatency, all.TotalLatency} {
		if l.P50 != upper(10) || l.Count != 2*big+1 {
			t.Fatalf("p50 %d (want %d), count %d", l.P50, upper(10), l.Count)
		}
	}
	// A node's own lifetime histogram counts past 2^32 too.
	var h wideHistogram
	h.counts[10] = 1<<32 - 1
	h.n = 1<<32 - 1
	h.record(10 * time.Microsecond) // bucket 10
	if e := h.export(); e.Count[0] != 1<<32 {
		t.Fatalf("exported %v", e.Count)
	}
}
