package bucket

// Bucket holds tokens that refill at a rate up to a burst. The zero Bucket
// is full on first use.
type Bucket struct {
	tokens int64
	last   int64 // clock at which tokens were last exact; 0: never used
}

const second = int64(1e9)

// Take refills the bucket to now at perSecond tokens per second (capped at
// burst) and takes n tokens if that many are there. now must be positive
// and never decrease. perSecond and burst must be positive.
func (b *Bucket) Take(now, n, perSecond, burst int64) bool {
	if b.last == 0 {
		b.tokens, b.last = burst, now
	}
	if elapsed := now - b.last; elapsed > 0 {
		if elapsed >= (burst-b.tokens)*second/perSecond+second/perSecond+1 {
			// Long enough to fill up; also keeps the product below from
			// overflowing after hours of silence.
			b.tokens, b.last = burst, now
		} else if add := elapsed * perSecond / second; add > 0 {
			b.tokens += add
			// Advance only by the time those whole tokens took, so that
			// frequent callers do not lose the fractions.
			b.last += add * second / perSecond
			if b.tokens >= burst {
				b.tokens, b.last = burst, now
			}
		}
	}
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

// Wait returns how long after now, at perSecond, the bucket has n tokens
// (0 if it has them now). Call it after a Take at now that failed.
func (b *Bucket) Wait(now, n, perSecond int64) int64 {
	if b.tokens >= n {
		return 0
	}
	return max((n-b.tokens)*second/perSecond-(now-b.last), 1)
}

// Last returns the clock at which the bucket's tokens were last exact (0:
// never used): a bucket left alone for its refill time since is full.
func (b *Bucket) Last() int64 { return b.last }

// Give returns n tokens taken by a Take whose use was called off.
func (b *Bucket) Give(n int64) { b.tokens += n }

// Owe takes n tokens at now whether or not the bucket holds them: what it
// lacks is a debt that the refill pays back before a later Take succeeds.
// It reports whether the bucket is in debt.
func (b *Bucket) Owe(now, n, perSecond, burst int64) bool {
	b.Take(now, 0, perSecond, burst) // refill to now
	b.tokens -= n
	return b.tokens < 0
}
