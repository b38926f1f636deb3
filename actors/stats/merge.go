package stats

import (
	"sort"
	"time"
)

// Hist is a latency histogram in a form that crosses nodes: its non-empty
// buckets (index, count), sample count and maximum (µs). Histograms of
// different nodes merge exactly: every node uses the same buckets.
type Hist struct {
	Index []uint32
	Count []uint64
	N     uint64
	Max   uint64
}

func (h *hist[C]) export() Hist {
	out := Hist{N: h.n, Max: h.max}
	for i, c := range h.counts {
		if c != 0 {
			out.Index = append(out.Index, uint32(i))
			out.Count = append(out.Count, uint64(c))
		}
	}
	return out
}

// add merges o into h, ignoring bucket indexes out of range (from a node
// of another version). Merges sum into wide histograms: a 32-bit one
// would wrap.
func (h *hist[C]) add(o *Hist) {
	for i, b := range o.Index {
		if int(b) < len(h.counts) && i < len(o.Count) {
			h.counts[b] += C(o.Count[i])
		}
	}
	h.n += o.N
	h.max = max(h.max, o.Max)
}

// RawStat is one msgtype's statistics on one node, before percentiles are
// read: what Merge sums across nodes.
type RawStat struct {
	Msgtype         uint32
	Total, Window   Counts
	TotalH, WindowH Hist
}

// RoundWindow returns d rounded up to the 10-second slots counters are
// kept in, at least one slot and at most MaxWindow.
func RoundWindow(d time.Duration) time.Duration {
	d = min(max(d, slotSize), MaxWindow)
	return (d + slotSize - 1) / slotSize * slotSize
}

// windowSlots returns the first slot (of size) a recent window of d
// counts at now, cur being now's slot, which is partly elapsed: the
// window's whole slots before it too, so that the counts cover at least
// d rounded up to the slots (a window of the whole ring, n slots, counts
// one fewer).
func windowSlots(d, size time.Duration, n int64, now time.Time) (first, cur int64) {
	cur = now.UnixNano() / int64(size)
	back := int64((d + size - 1) / size)
	if back >= n {
		back = n - 1
	}
	return cur - back, cur
}

// Covered returns how long the counters of a recent window of d cover at
// now: the whole 10-second slots of RoundWindow(d) and the elapsed part
// of the current slot (an hour's window: one slot less).
func Covered(d time.Duration, now time.Time) time.Duration {
	first, cur := windowSlots(RoundWindow(d), slotSize, numSlots, now)
	return time.Duration(cur-first)*slotSize + time.Duration(now.UnixNano()%int64(slotSize))
}

// Raw returns the node's statistics of app's msgtypes (all if msgtypes is
// empty) with the recent window of length window (rounded up to 10 s for
// counters and to a minute for latencies), sorted by msgtype.
func (r *Recorder) Raw(app uint16, msgtypes []uint32, window time.Duration) []RawStat {
	window = min(max(window, slotSize), MaxWindow)
	want := map[uint32]bool{}
	for _, m := range msgtypes {
		want[m] = true
	}
	r.mu.RLock()
	var keys []Key
	idx := map[Key]*series{}
	for k, s := range r.series {
		if k.App == app && (len(want) == 0 || want[k.Msgtype]) {
			keys = append(keys, k)
			idx[k] = s
		}
	}
	r.mu.RUnlock()
	sort.Slice(keys, func(i, j int) bool { return keys[i].Msgtype < keys[j].Msgtype })

	now := r.now()
	first, cur := windowSlots(window, slotSize, numSlots, now)
	lfirst, lcur := windowSlots(window, latSlotSize, numLatSlots, now)

	out := make([]RawStat, 0, len(keys))
	for _, k := range keys {
		s := idx[k]
		st := RawStat{Msgtype: k.Msgtype}
		var wh histogram
		s.mu.Lock()
		st.Total = s.total
		for i := range s.slots {
			if sl := &s.slots[i]; sl.epoch >= first && sl.epoch <= cur {
				st.Window.add(&sl.c)
			}
		}
		for _, ls := range s.latency {
			if ls != nil && ls.epoch >= lfirst && ls.epoch <= lcur {
				wh.merge(&ls.h)
			}
		}
		st.TotalH = s.totalH.export()
		s.mu.Unlock()
		st.WindowH = wh.export()
		out = append(out, st)
	}
	return out
}

// Merge sums the raw statistics of several nodes into one answer per
// msgtype, sorted by msgtype, and their sum.
func Merge(app uint16, parts ...[]RawStat) (per []Stat, all Stat) {
	type acc struct {
		st     Stat
		th, wh wideHistogram
	}
	by := map[uint32]*acc{}
	for _, part := range parts {
		for i := range part {
			r := &part[i]
			a := by[r.Msgtype]
			if a == nil {
				a = &acc{st: Stat{Key: Key{App: app, Msgtype: r.Msgtype}}}
				by[r.Msgtype] = a
			}
			a.st.Total.add(&r.Total)
			a.st.Window.add(&r.Window)
			a.th.add(&r.TotalH)
			a.wh.add(&r.WindowH)
		}
	}
	msgtypes := make([]uint32, 0, len(by))
	for m := range by {
		msgtypes = append(msgtypes, m)
	}
	sort.Slice(msgtypes, func(i, j int) bool { return msgtypes[i] < msgtypes[j] })
	all = Stat{Key: Key{App: app}}
	var allH, allWH wideHistogram
	for _, m := range msgtypes {
		a := by[m]
		a.st.TotalLatency, a.st.WindowLatency = a.th.summary(), a.wh.summary()
		allH.merge(&a.th)
		allWH.merge(&a.wh)
		all.Total.add(&a.st.Total)
		all.Window.add(&a.st.Window)
		per = append(per, a.st)
	}
	all.TotalLatency, all.WindowLatency = allH.summary(), allWH.summary()
	return per, all
}
