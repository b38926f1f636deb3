package stats

import (
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	for _, us := range []uint64{0, 1, 7, 8, 15, 16, 17, 100, 999, 1000, 123456, 1 << 39} {
		b := bucketOf(us)
		if up := upper(b); up < us || (b > 0 && upper(b-1) >= us) {
			t.Fatalf("%d µs: bucket %d covers (%d, %d]", us, b, upper(b-1), up)
		}
		if us >= 8 && float64(upper(b)) > float64(us)*1.125+1 {
			t.Fatalf("%d µs: bucket upper %d is more than 12.5%% above", us, upper(b))
		}
	}
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Millisecond)
	}
	check := func(name string, got, want uint64) {
		if float64(got) < float64(want) || float64(got) > float64(want)*1.13 {
			t.Errorf("%s = %d µs, want about %d", name, got, want)
		}
	}
	check("p50", h.percentile(50), 500_000)
	check("p99", h.percentile(99), 990_000)
	if h.percentile(100) != 1_000_000 || h.max != 1_000_000 {
		t.Errorf("max %d", h.max)
	}
}

func TestRecorderTotalsAndWindow(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	r := New()
	r.now = func() time.Time { return now }
	for range 10 {
		r.Accepted(1, 7, true)
	}
	r.Accepted(1, 7, false)
	r.Delivered(1, 7)
	r.Acked(1, 7, 20*time.Millisecond)
	r.Expired(1, 7)
	r.Accepted(1, 8, true)
	r.Accepted(2, 7, true) // another app: not in app 1's snapshot

	now = now.Add(30 * time.Minute)
	for range 4 {
		r.Accepted(1, 7, true)
		r.Acked(1, 7, 2*time.Millisecond)
	}
	r.Dropped(1, 7)
	r.UpstreamReceived(1, 7)
	r.UpstreamAcked(1, 7)

	per, all := r.Snapshot(1, nil, time.Minute)
	if len(per) != 2 || per[0].Msgtype != 7 || per[1].Msgtype != 8 {
		t.Fatalf("keys %+v", per)
	}
	s := per[0]
	if s.Total.Accepted != 15 || s.Total.AcceptedStored != 14 || s.Total.Acked != 5 || s.Total.Expired != 1 || s.Total.Dropped != 1 {
		t.Fatalf("totals %+v", s.Total)
	}
	if s.Window.Accepted != 4 || s.Window.Acked != 4 || s.Window.UpstreamReceived != 1 || s.Window.Expired != 0 {
		t.Fatalf("window %+v", s.Window)
	}
	if got := s.Window.ArrivalRate(); got != 1 {
		t.Fatalf("window arrival rate %v", got)
	}
	if got := s.Total.ArrivalRate(); got != 5.0/14 {
		t.Fatalf("total arrival rate %v", got)
	}
	if s.WindowLatency.Count != 4 || s.WindowLatency.Max != 2000 || s.TotalLatency.Max != 20000 {
		t.Fatalf("latency window %+v total %+v", s.WindowLatency, s.TotalLatency)
	}
	if all.Total.Accepted != 16 || all.Window.Accepted != 4 {
		t.Fatalf("sum %+v", all.Total)
	}
	only, _ := r.Snapshot(1, []uint32{8}, time.Hour)
	if len(only) != 1 || only[0].Total.Accepted != 1 {
		t.Fatalf("filtered %+v", only)
	}
	// An hour later the old slots no longer count.
	now = now.Add(2 * time.Hour)
	per, _ = r.Snapshot(1, []uint32{7}, time.Hour)
	if per[0].Window.Accepted != 0 || per[0].Total.Accepted != 15 {
		t.Fatalf("stale window %+v", per[0].Window)
	}
}

// TestPercentilesUseNearestRank: the q-th percentile of n samples is the
// ceil(q/100 × n)-th smallest, so with few samples the high percentiles
// report the worst rather than drop it.
func TestPercentilesUseNearestRank(t *testing.T) {
	// n-1 samples of 10 ms and one of 130 ms.
	oneSlow := func(n int) *histogram {
		h := &histogram{}
		for range n - 1 {
			h.record(10 * time.Millisecond)
		}
		h.record(130 * time.Millisecond)
		return h
	}
	ten := oneSlow(10)
	if got := ten.percentile(99); got != 130_000 {
		t.Errorf("p99 of 10 samples = %d µs, want the worst, 130000", got)
	}
	if got := ten.percentile(90); got < 10_000 || got > 11_250 {
		t.Errorf("p90 of 10 samples = %d µs, want the 9th, about 10000", got)
	}
	hundred := oneSlow(100)
	if got := hundred.percentile(99.9); got != 130_000 {
		t.Errorf("p99.9 of 100 samples = %d µs, want the worst, 130000", got)
	}
	if got := hundred.percentile(99); got > 11_250 {
		t.Errorf("p99 of 100 samples = %d µs, want the 99th, about 10000", got)
	}
	var two histogram
	two.record(time.Millisecond)
	two.record(100 * time.Millisecond)
	if got := two.percentile(50); got > 1_125 {
		t.Errorf("p50 of 2 samples = %d µs, want the 1st, about 1000", got)
	}
	s := ten.summary()
	if s.P99 != 130_000 || s.P999 != 130_000 || s.Max != 130_000 {
		t.Errorf("summary %+v", s)
	}
}

// TestStatsKeyBudgetIsPerApp: one app's devices using more msgtypes than
// the budget push only that app's new msgtypes into "other"; another
// app's new msgtypes keep their own series.
func TestStatsKeyBudgetIsPerApp(t *testing.T) {
	r := New()
	for m := range uint32(maxKeysPerApp + 10) {
		r.Accepted(1, m, true)
	}
	r.Accepted(2, 7, true)
	per, all := r.Snapshot(2, nil, time.Minute)
	if len(per) != 1 || per[0].Msgtype != 7 || per[0].Total.Accepted != 1 {
		t.Fatalf("app 2's msgtype 7 went elsewhere: %+v", per)
	}
	if all.Total.Accepted != 1 {
		t.Fatalf("app 2 sum %+v", all.Total)
	}
	per, all = r.Snapshot(1, nil, time.Minute)
	if len(per) != maxKeysPerApp+1 {
		t.Fatalf("app 1 has %d series, want its budget %d and other", len(per), maxKeysPerApp)
	}
	if last := per[len(per)-1]; last.Msgtype != OtherMsgtype || last.Total.Accepted != 10 {
		t.Fatalf("app 1's overflow: %+v", last)
	}
	if all.Total.Accepted != maxKeysPerApp+10 {
		t.Fatalf("app 1 sum %d", all.Total.Accepted)
	}
}

// TestStatsSeriesAreBoundedAcrossApps: an operator key may push to any
// appcode, and a device chooses its C2C msgtypes. However many apps and
// msgtypes, the node holds at most maxSeries series (and the apps'
// overflow); nothing is left uncounted.
func TestStatsSeriesAreBoundedAcrossApps(t *testing.T) {
	r := New()
	apps := maxSeries/maxKeysPerApp + 8
	for a := 1; a <= apps; a++ {
		for m := range uint32(maxKeysPerApp + 1) {
			r.Accepted(uint16(a), m, true)
		}
	}
	r.mu.RLock()
	n := len(r.series)
	r.mu.RUnlock()
	if n > maxSeries+1 {
		t.Fatalf("%d series for %d apps", n, apps)
	}
	var total uint64
	for a := 0; a <= apps; a++ {
		_, all := r.Snapshot(uint16(a), nil, time.Minute)
		total += all.Total.Accepted
	}
	if want := uint64(apps * (maxKeysPerApp + 1)); total != want {
		t.Fatalf("%d events counted, want %d", total, want)
	}
	if _, other := r.Snapshot(OtherApp, nil, time.Minute); other.Total.Accepted == 0 {
		t.Fatal("nothing counted under the other apps")
	}
}

// BenchmarkRecorderParallel is the hot path of a node's statistics: every
// pushed message is counted two or three times, from every core, mostly
// under one app and msgtype.
func BenchmarkRecorderParallel(b *testing.B) {
	b.Run("one key", func(b *testing.B) {
		r := New()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				r.Delivered(1, 7)
			}
		})
	})
	b.Run("four keys", func(b *testing.B) {
		r := New()
		b.RunParallel(func(pb *testing.PB) {
			for m := uint32(0); pb.Next(); m++ {
				r.Delivered(1, m%4)
			}
		})
	})
}

// TestRoundWindow: a window is what the 10-second slots cover.
func TestRoundWindow(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{
		0: 10 * time.Second, 5 * time.Second: 10 * time.Second, 10 * time.Second: 10 * time.Second,
		11 * time.Second: 20 * time.Second, time.Minute: time.Minute, 2 * time.Hour: MaxWindow,
	} {
		if got := RoundWindow(in); got != want {
			t.Errorf("RoundWindow(%v) = %v, want %v", in, got, want)
		}
	}
}

// TestWindowCoversWhatItSays: one event a second; a 10-second window
// asked for 1 s into a slot counts the whole slot before and the second
// elapsed, and Covered says 11 s: a rate from the two is right (the
// window used to count the current second alone and say 10 s).
func TestWindowCoversWhatItSays(t *testing.T) {
	r := New()
	start := time.Unix(1_800_000_000, 0) // a slot boundary
	var now time.Time
	r.now = func() time.Time { return now }
	for i := range 121 {
		now = start.Add(time.Duration(i) * time.Second)
		r.Accepted(1, 1, true)
	}
	now = now.Add(999 * time.Millisecond) // 120.999 s: 0.999 s into a slot
	_, all := r.Snapshot(1, nil, 10*time.Second)
	covered := Covered(10*time.Second, now)
	if covered < 10*time.Second || covered > 11*time.Second {
		t.Fatalf("covered %v", covered)
	}
	if got := all.Window.Accepted; got != 11 {
		t.Fatalf("%d events in the window, want 11 (10 s before the current slot and its 1 s)", got)
	}
	if rate := float64(all.Window.Accepted) / covered.Seconds(); rate < 0.95 || rate > 1.1 {
		t.Fatalf("a rate of %.2f/s from a window of 1/s", rate)
	}
	// A window of the whole hour counts one slot less than the ring.
	if c := Covered(time.Hour, now); c > time.Hour || c < time.Hour-slotSize {
		t.Fatalf("an hour's window covers %v", c)
	}
}
