package gate

import (
	"sync"

	"github.com/courier-im/courier/gate/internal/bucket"
)

// c2cRate is the gate's C2C rate per identity (Config.C2CPerSecond):
// keyed by appcode and uid, not by connection, so that a device does not
// get a fresh burst by reconnecting. An identity's bucket is kept only
// while it is not full again: a full bucket is what a new one starts as,
// so the map holds the identities that sent C2C in the last few seconds.
type c2cRate struct {
	perSecond, burst int64
	// refill is how long an empty bucket takes to fill up, in nanos.
	refill int64

	mu      sync.Mutex
	buckets map[c2cKey]bucket.Bucket
	swept   int64 // nanos of the last sweep
}

type c2cKey struct {
	app uint16
	uid string
}

func newC2CRate(perSecond, burst int) *c2cRate {
	return &c2cRate{perSecond: int64(perSecond), burst: int64(burst),
		refill: (int64(burst)*1e9)/int64(perSecond) + 1e9/int64(perSecond) + 1, buckets: map[c2cKey]bucket.Bucket{}}
}

// take takes a C2C of the identity at now (gate nanos); false: over its
// rate.
func (r *c2cRate) take(now int64, app uint16, uid string) bool {
	k := c2cKey{app, uid}
	r.mu.Lock()
	defer r.mu.Unlock()
	if now-r.swept >= r.refill && len(r.buckets) > 0 {
		// Every bucket last used a refill ago is full again: forget it.
		for k, b := range r.buckets {
			if now-b.Last() >= r.refill {
				delete(r.buckets, k)
			}
		}
		r.swept = now
	}
	b := r.buckets[k]
	ok := b.Take(now, 1, r.perSecond, r.burst)
	r.buckets[k] = b
	return ok
}
