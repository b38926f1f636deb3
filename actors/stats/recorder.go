package stats

import (
	"sync"
	"sync/atomic"
	"time"
)

// Events counted.
const (
	evAccepted = iota
	evDelivered
	evAcked
	evRetried
	evExpired
	evDropped
	evUpReceived
	evUpAcked
)

const (
	slotSize    = 10 * time.Second
	numSlots    = 360 // one hour of 10 s slots
	latSlotSize = time.Minute
	numLatSlots = 60
	// MaxWindow is the longest window Snapshot can answer.
	MaxWindow = time.Hour
	// maxKeysPerApp bounds the msgtypes tracked per appcode; beyond it
	// events of the app's new msgtypes are counted under its
	// OtherMsgtype. The budget is per app so that one app's devices
	// cannot push another app's msgtypes into "other". A series holds
	// about 32 KiB (up to about 110 KiB once acks fill its latency
	// slots), and a device chooses its C2C msgtypes: 256 bound one app to
	// 8 MiB (28 MiB).
	maxKeysPerApp = 256
	// MaxQueryMsgtypes is the most msgtypes one query names: an app has
	// no more series than maxKeysPerApp (its OtherMsgtype included).
	MaxQueryMsgtypes = maxKeysPerApp + 1
	// maxSeries bounds the series of all apps together (an operator key
	// may push to any appcode): beyond it, a new (app, msgtype) is
	// counted under the app's OtherMsgtype if the app has that series,
	// else under (OtherApp, OtherMsgtype). A series is about 32 KiB, up
	// to about 110 KiB with its latency slots full: 0.9 GiB at most.
	maxSeries = 8192
)

// OtherMsgtype collects the msgtypes beyond the tracking limit.
const OtherMsgtype = uint32(1 << 31)

// OtherApp, with OtherMsgtype, collects the events of apps the node
// started tracking after it held maxSeries series (appcode 0 is no app's).
const OtherApp = uint16(0)

// Counts are event counts.
type Counts struct {
	Accepted, Delivered, Acked, Retried, Expired, Dropped uint64
	UpstreamReceived, UpstreamAcked                       uint64
	// AcceptedStored counts the accepted messages that were stored (the
	// arrival rate's denominator).
	AcceptedStored uint64
}

func (c *Counts) add(o *Counts) {
	c.Accepted += o.Accepted
	c.Delivered += o.Delivered
	c.Acked += o.Acked
	c.Retried += o.Retried
	c.Expired += o.Expired
	c.Dropped += o.Dropped
	c.UpstreamReceived += o.UpstreamReceived
	c.UpstreamAcked += o.UpstreamAcked
	c.AcceptedStored += o.AcceptedStored
}

// ArrivalRate is acknowledged / accepted-stored, or 0 when nothing was
// accepted.
func (c *Counts) ArrivalRate() float64 {
	if c.AcceptedStored == 0 {
		return 0
	}
	return float64(c.Acked) / float64(c.AcceptedStored)
}

func (c *Counts) inc(ev int) {
	switch ev {
	case evAccepted:
		c.Accepted++
	case evDelivered:
		c.Delivered++
	case evAcked:
		c.Acked++
	case evRetried:
		c.Retried++
	case evExpired:
		c.Expired++
	case evDropped:
		c.Dropped++
	case evUpReceived:
		c.UpstreamReceived++
	case evUpAcked:
		c.UpstreamAcked++
	}
}

// Latency summarises acknowledgement latencies, in microseconds.
type Latency struct {
	P50, P90, P99, P999, Max, Count uint64
}

func (h *hist[C]) summary() Latency {
	return Latency{P50: h.percentile(50), P90: h.percentile(90), P99: h.percentile(99), P999: h.percentile(99.9), Max: h.max, Count: h.n}
}

// Key is an appcode and a msgtype.
type Key struct {
	App     uint16
	Msgtype uint32
}

type slot struct {
	epoch int64 // slot number since the Unix epoch
	c     Counts
}

type latSlot struct {
	epoch int64
	h     histogram
}

type series struct {
	key     Key
	mu      sync.Mutex
	total   Counts
	totalH  wideHistogram
	slots   [numSlots]slot
	latency [numLatSlots]*latSlot
}

// Recorder is a node's delivery statistics.
type Recorder struct {
	now func() time.Time

	mu     sync.RWMutex
	series map[Key]*series
	keys   map[uint16]int // msgtypes tracked per app, OtherMsgtype excluded
	// recent holds series found before, one per slot of a small
	// direct-mapped cache: most events of a node are of a few keys, and
	// it spares them the map and its read lock (whose reader count every
	// core would otherwise write). Several hot keys mostly get slots of
	// their own instead of evicting one another.
	recent [recentSlots]atomic.Pointer[series]
}

const recentSlots = 64

func recentSlot(k Key) int { return int((k.Msgtype ^ uint32(k.App)*0x9e3779b1) % recentSlots) }

// New returns an empty recorder.
func New() *Recorder {
	return &Recorder{now: time.Now, series: map[Key]*series{}, keys: map[uint16]int{}}
}

func (r *Recorder) get(app uint16, msgtype uint32) *series {
	k := Key{app, msgtype}
	slot := &r.recent[recentSlot(k)]
	if s := slot.Load(); s != nil && s.key == k {
		return s
	}
	r.mu.RLock()
	s := r.series[k]
	if s == nil && k.Msgtype != OtherMsgtype && (r.keys[app] >= maxKeysPerApp || len(r.series) >= maxSeries) {
		// An untracked msgtype of an app at its budget: counted as the
		// app's other msgtypes, without the write lock.
		s = r.series[Key{app, OtherMsgtype}]
	}
	if s == nil && len(r.series) >= maxSeries {
		s = r.series[Key{OtherApp, OtherMsgtype}]
	}
	r.mu.RUnlock()
	if s != nil {
		if s.key == k { // not the app's "other" series standing in for k
			slot.Store(s)
		}
		return s
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s = r.series[k]; s != nil {
		return s
	}
	if k.Msgtype != OtherMsgtype && (r.keys[app] >= maxKeysPerApp || len(r.series) >= maxSeries) {
		k.Msgtype = OtherMsgtype
		if s = r.series[k]; s != nil {
			return s
		}
	}
	if len(r.series) >= maxSeries {
		k = Key{OtherApp, OtherMsgtype}
		if s = r.series[k]; s != nil {
			return s
		}
	}
	if k.Msgtype != OtherMsgtype {
		r.keys[app]++
	}
	s = &series{key: k}
	r.series[k] = s
	return s
}

func (r *Recorder) record(app uint16, msgtype uint32, ev int, stored bool, lat time.Duration) {
	s := r.get(app, msgtype)
	now := r.now()
	n := now.UnixNano() / int64(slotSize)
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := &s.slots[n%numSlots]
	if sl.epoch != n {
		*sl = slot{epoch: n}
	}
	sl.c.inc(ev)
	s.total.inc(ev)
	if ev == evAccepted && stored {
		sl.c.AcceptedStored++
		s.total.AcceptedStored++
	}
	if ev == evAcked {
		s.totalH.record(lat)
		ln := now.UnixNano() / int64(latSlotSize)
		ls := s.latency[ln%numLatSlots]
		if ls == nil {
			ls = &latSlot{}
			s.latency[ln%numLatSlots] = ls
		}
		if ls.epoch != ln {
			*ls = latSlot{epoch: ln}
		}
		ls.h.record(lat)
	}
}

// Accepted implements actors.Stats.
func (r *Recorder) Accepted(app uint16, msgtype uint32, stored bool) {
	r.record(app, msgtype, evAccepted, stored, 0)
}

// Delivered implements actors.Stats.
func (r *Recorder) Delivered(app uint16, msgtype uint32) {
	r.record(app, msgtype, evDelivered, false, 0)
}

// Acked implements actors.Stats.
func (r *Recorder) Acked(app uint16, msgtype uint32, latency time.Duration) {
	r.record(app, msgtype, evAcked, false, latency)
}

// Retried implements actors.Stats.
func (r *Recorder) Retried(app uint16, msgtype uint32) { r.record(app, msgtype, evRetried, false, 0) }

// Expired implements actors.Stats.
func (r *Recorder) Expired(app uint16, msgtype uint32) { r.record(app, msgtype, evExpired, false, 0) }

// Dropped implements actors.Stats and upstream.Stats.
func (r *Recorder) Dropped(app uint16, msgtype uint32) { r.record(app, msgtype, evDropped, false, 0) }

// UpstreamReceived implements upstream.Stats.
func (r *Recorder) UpstreamReceived(app uint16, msgtype uint32) {
	r.record(app, msgtype, evUpReceived, false, 0)
}

// UpstreamAcked implements upstream.Stats.
func (r *Recorder) UpstreamAcked(app uint16, msgtype uint32) {
	r.record(app, msgtype, evUpAcked, false, 0)
}

// UpstreamDropped implements upstream.Stats.
func (r *Recorder) UpstreamDropped(app uint16, msgtype uint32) { r.Dropped(app, msgtype) }

// Stat is the statistics of one key.
type Stat struct {
	Key
	Total, Window               Counts
	TotalLatency, WindowLatency Latency
}

// Snapshot returns the statistics of app's msgtypes (all if msgtypes is
// empty), sorted by msgtype, with the recent window of length window
// (rounded up to 10 s for counters and to a minute for latencies), and
// their sum: this node's alone (Merge sums several nodes').
func (r *Recorder) Snapshot(app uint16, msgtypes []uint32, window time.Duration) (per []Stat, all Stat) {
	return Merge(app, r.Raw(app, msgtypes, window))
}
