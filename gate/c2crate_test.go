package gate

import (
	"fmt"
	"testing"
)

// TestC2CRateForgetsFullBuckets: the per-identity C2C buckets are kept
// only while they are not full again, so the map holds the identities
// that sent C2C lately, not every one that ever did.
func TestC2CRateForgetsFullBuckets(t *testing.T) {
	r := newC2CRate(5, 20)
	now := int64(1)
	for i := range 1000 {
		if !r.take(now, 1, fmt.Sprint("u", i)) {
			t.Fatalf("u%d's first C2C refused", i)
		}
	}
	if len(r.buckets) != 1000 {
		t.Fatalf("%d buckets, want 1000", len(r.buckets))
	}
	// One identity uses its burst up; later, only it may still be short.
	for range 19 {
		r.take(now, 1, "u0")
	}
	if r.take(now, 1, "u0") {
		t.Fatal("u0 over its burst was let through")
	}
	now += r.refill
	if !r.take(now, 2, "other") || len(r.buckets) != 1 {
		t.Fatalf("after a refill time, %d buckets are kept, want only the new one", len(r.buckets))
	}
	if !r.take(now, 1, "u0") {
		t.Fatal("u0 after a refill time was refused")
	}
}
