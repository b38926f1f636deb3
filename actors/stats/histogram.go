package stats

import (
	"math"
	"math/bits"
	"time"
)

// histogram counts latencies in logarithmic buckets: 8 per power of two
// of microseconds, from 1 µs to 2^40 µs (12 days). A percentile is read as
// the upper bound of its bucket, so it overstates by at most 1/8 (12.5%).
// With 32-bit counts it is 1.3 KiB, small enough to keep one per time
// slot and key (a slot never holds 2^32 samples in a bucket); lifetimes'
// and the sums of several nodes take 64-bit counts (wideHistogram),
// which 2^32 acknowledgements in one bucket (12 hours at 100,000/s)
// would wrap.
type hist[C uint32 | uint64] struct {
	counts [subBuckets * 41]C
	n      uint64
	max    uint64 // µs
}

type (
	histogram     = hist[uint32]
	wideHistogram = hist[uint64]
)

const (
	subBits    = 3
	subBuckets = 1 << subBits
)

func bucketOf(us uint64) int {
	if us < subBuckets {
		return int(us)
	}
	exp := bits.Len64(us) - 1 // us in [2^exp, 2^(exp+1))
	sub := int(us>>(exp-subBits)) & (subBuckets - 1)
	return (exp-subBits+1)*subBuckets + sub
}

// upper returns the largest value of bucket b.
func upper(b int) uint64 {
	if b < subBuckets {
		return uint64(b)
	}
	exp := b/subBuckets + subBits - 1
	sub := uint64(b % subBuckets)
	return (subBuckets+sub+1)<<(exp-subBits) - 1
}

func (h *hist[C]) record(d time.Duration) {
	us := uint64(max(d.Microseconds(), 0))
	b := min(bucketOf(us), len(h.counts)-1)
	h.counts[b]++
	h.n++
	h.max = max(h.max, us)
}

func (h *hist[C]) merge(o *hist[C]) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// percentile returns the q-th percentile (0 < q ≤ 100) in µs, by the
// nearest-rank definition: the ceil(q/100 × n)-th smallest sample, so
// that with few samples a high percentile reports the worst instead of
// dropping it. q is taken to a thousandth of a percent.
func (h *hist[C]) percentile(q float64) uint64 {
	if h.n == 0 {
		return 0
	}
	q1000 := uint64(math.Round(q * 1000)) // in 1/1000 %
	rank := max((q1000*h.n+100_000-1)/100_000, 1)
	var seen uint64
	for b, c := range h.counts {
		seen += uint64(c)
		if seen >= rank {
			return min(upper(b), h.max)
		}
	}
	return h.max
}
