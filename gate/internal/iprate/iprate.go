package iprate

import (
	"container/list"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter allows perSecond events per address with bursts of burst.
type Limiter struct {
	limit rate.Limit
	burst int
	max   int

	mu  sync.Mutex
	m   map[netip.Addr]*list.Element
	lru list.List // front: most recently used; values are *entry
}

type entry struct {
	addr netip.Addr
	lim  *rate.Limiter
}

// New returns a limiter that remembers at most maxAddrs addresses. When it
// is full, the address least recently seen is forgotten (and starts again
// with a full burst if it comes back).
func New(perSecond float64, burst, maxAddrs int) *Limiter {
	if maxAddrs < 1 {
		maxAddrs = 1
	}
	return &Limiter{limit: rate.Limit(perSecond), burst: burst, max: maxAddrs,
		m: make(map[netip.Addr]*list.Element)}
}

// Allow reports whether one more event from a is allowed at now. IPv6
// addresses count by their /64: one host (a home line, a cloud VM) has a
// whole /64 to pick source addresses from.
func (l *Limiter) Allow(a netip.Addr, now time.Time) bool {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			a = p.Addr()
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if el, ok := l.m[a]; ok {
		l.lru.MoveToFront(el)
		return el.Value.(*entry).lim.AllowN(now, 1)
	}
	var e *entry
	if l.lru.Len() >= l.max {
		el := l.lru.Back()
		e = el.Value.(*entry)
		delete(l.m, e.addr)
		l.lru.Remove(el)
		e.addr, e.lim = a, rate.NewLimiter(l.limit, l.burst)
	} else {
		e = &entry{addr: a, lim: rate.NewLimiter(l.limit, l.burst)}
	}
	l.m[a] = l.lru.PushFront(e)
	return e.lim.AllowN(now, 1)
}

// Len returns how many addresses are remembered.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}
