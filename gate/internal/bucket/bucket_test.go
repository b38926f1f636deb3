package bucket

import "testing"

const ms = int64(1e6)

func TestBurstThenRate(t *testing.T) {
	var b Bucket
	now := int64(1)
	for i := range 10 {
		if !b.Take(now, 1, 100, 10) {
			t.Fatalf("burst token %d refused", i)
		}
	}
	if b.Take(now, 1, 100, 10) {
		t.Fatal("11th token in the same instant allowed")
	}
	// 100/s: one token every 10 ms; 1 ms steps must not lose fractions.
	got := 0
	for range 1000 {
		now += ms
		if b.Take(now, 1, 100, 10) {
			got++
		}
	}
	if got < 99 || got > 101 {
		t.Fatalf("1 s at 100/s in 1 ms steps gave %d tokens", got)
	}
}

func TestRefillCapsAtBurstAndBigTakes(t *testing.T) {
	var b Bucket
	now := int64(1)
	if !b.Take(now, 1000, 10, 1000) {
		t.Fatal("full burst refused")
	}
	if b.Take(now+ms, 1, 10, 1000) {
		t.Fatal("token after 1 ms at 10/s")
	}
	// Hours later: full again, not more.
	now += 5 * 3600 * second
	if !b.Take(now, 1000, 10, 1000) || b.Take(now, 1, 10, 1000) {
		t.Fatal("bucket did not refill exactly to its burst")
	}
	// A take larger than the burst is never allowed.
	now += 3600 * second
	if b.Take(now, 1001, 10, 1000) {
		t.Fatal("take above burst allowed")
	}
}

func TestWait(t *testing.T) {
	var b Bucket
	now := int64(1)
	for b.Take(now, 1, 100, 10) {
	}
	if w := b.Wait(now, 1, 100); w != 10*ms {
		t.Fatalf("dry at 100/s: a token in %v ns, want 10 ms", w)
	}
	now += 4 * ms
	if b.Take(now, 1, 100, 10) {
		t.Fatal("a token after 4 ms")
	}
	if w := b.Wait(now, 1, 100); w != 6*ms {
		t.Fatalf("4 ms later: a token in %v ns, want 6 ms", w)
	}
	now += 6 * ms
	if w := b.Wait(now, 3, 100); w <= 0 || !b.Take(now, 1, 100, 10) {
		t.Fatalf("after the wait: %v, no token", w)
	}
}
