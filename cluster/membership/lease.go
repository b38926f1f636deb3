package membership

import (
	"context"
	"sync/atomic"
	"time"
)

// The lease. A member instance may act for the identities it owns only
// while it holds a lease: until TTL after it sent its last refresh that
// the provider took. The provider takes it for gone only TTL after it
// received that refresh, so a node whose lease lapsed (paused, cut off)
// has stopped before any other takes over its identities.
//
// When the provider cannot be reached at all (Consul restarting), every
// node would lose its lease at once and serve nothing, and every node
// would come back as a new instance whose devices reconnect: a storm for
// an outage that moved nothing. So a node that cannot refresh asks every
// other member of its view to vouch for it (SetConfirm): a member vouches
// only if it still sees the asker live and cannot trust the provider
// itself (it cannot reach it either, or it is within its grace after an
// outage, below), and then promises not to take the asker for gone for a
// TTL (even if the provider comes back meanwhile). With every member
// vouching, no node can have seen the asker leave, and the lease runs on
// for a TTL.
// One member that does not answer (dead, or on the other side of a
// partition) is enough to let the lease lapse: a node cannot tell a
// partition from a crash without the provider.
//
// After its own outage, a node gives every member that was live before a
// grace of two TTLs to refresh (the provider restores TTL checks as
// critical when it restarts) before taking any for gone.

// settleTTLs is the grace, in TTLs, members get to refresh after this
// node's provider outage.
const settleTTLs = 2

// SetConfirm installs how this node asks the other members to vouch for
// it while the provider cannot be reached: fn returns true only if every
// other live member of the view vouched (see Vouch) before ctx ended.
// Call it before Join.
func (m *Membership) SetConfirm(fn func(ctx context.Context, v *View) bool) {
	m.mu.Lock()
	m.confirm = fn
	m.mu.Unlock()
}

// OnLease has fn called, on the membership's refresher goroutine, when
// this node loses its lease (false: it must stop acting for identities,
// its gate's sessions are taken for ended) and when it holds one again
// after rejoining (true). fn must not block. Call it before Join.
func (m *Membership) OnLease(fn func(valid bool)) {
	m.mu.Lock()
	m.leaseHooks = append(m.leaseHooks, fn)
	m.mu.Unlock()
}

// LeaseValid reports whether this node holds a lease now: it may act as
// the member it is. A provider whose members never expire (memory) always
// grants one after Join.
func (m *Membership) LeaseValid() bool {
	if !m.be.canExpire() {
		return m.lease.Load() != 0
	}
	now := time.Now()
	return m.mono(now) < m.lease.Load() && now.UnixNano() < m.leaseWall.Load()
}

// mono is t on the lease's clock: ns since clock0 by the monotonic clock
// (t must come from time.Now), at least 1 so that 0 stays "no lease".
func (m *Membership) mono(t time.Time) int64 { return max(int64(t.Sub(m.clock0)), 1) }

// renew extends the lease to TTL after sent, when a refresh sent then
// succeeded (or every member vouched), by both clocks: the lease holds
// while neither says it ran out. The monotonic clock is immune to the
// wall clock's steps (NTP setting it back would lengthen a lapsed
// lease), the wall clock counts a suspended machine's sleep (the
// monotonic clock stops with it); either running out first is the safe
// way to be wrong.
func (m *Membership) renew(sent time.Time) {
	if m.selfBlocked() {
		// Seen out (SeenOut, or this node's own watch) while the refresh
		// was in flight: the instance is done; a rejoin follows.
		return
	}
	extend(&m.lease, m.mono(sent.Add(m.cfg.TTL)))
	extend(&m.leaseWall, sent.Add(m.cfg.TTL).UnixNano())
	if m.selfBlocked() {
		m.lease.Store(0) // blocked meanwhile: undo
		m.leaseWall.Store(0)
	}
}

// extend raises v to until unless it is already later.
func extend(v *atomic.Int64, until int64) {
	for {
		cur := v.Load()
		if cur >= until || v.CompareAndSwap(cur, until) {
			return
		}
	}
}

// setLease tells the hooks, once per change, whether this node holds a
// lease. It runs on the refresher goroutine.
func (m *Membership) setLease(valid bool, why string) {
	if m.leaseLost == !valid {
		return
	}
	m.leaseLost = !valid
	if !valid {
		m.lease.Store(0)
		m.leaseWall.Store(0)
		m.metrics.leaseLost.Inc()
		m.log.Warn("membership: this node lost its lease; it stops serving identities and its gate's devices until it rejoins",
			"member", m.selfID(), "why", why)
	} else {
		m.log.Info("membership: this node holds a lease again", "member", m.selfID())
	}
	m.mu.Lock()
	hooks := m.leaseHooks
	m.mu.Unlock()
	for _, fn := range hooks {
		fn(valid)
	}
}

func (m *Membership) selfID() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.self.ID
}

// askPeers asks the others to vouch for this node; on success the lease
// runs on for a TTL from when it asked.
func (m *Membership) askPeers(ctx context.Context) bool {
	m.mu.Lock()
	confirm := m.confirm
	m.mu.Unlock()
	if confirm == nil {
		return false
	}
	sent, valid := time.Now(), m.LeaseValid()
	// The answers help only while the lease runs: wait that long (a
	// member slow to answer, on a busy machine, is not a missing one).
	budget := max(time.Duration(m.lease.Load()-m.mono(time.Now())), m.cfg.TTL/4)
	cctx, cancel := context.WithTimeout(ctx, min(budget, m.cfg.TTL/2))
	ok := confirm(cctx, m.View())
	cancel()
	// A lease that lapsed before the round began is lost for good; one
	// that lapsed during it was kept by every member's promise.
	if ok && valid {
		m.renew(sent)
		m.metrics.vouched.Inc()
		m.log.Debug("membership: the provider cannot be reached; every member vouched for this node", "member", m.selfID())
	}
	return ok
}

// providerContact records the outcome of a call to the provider. The
// first success after failures starts the grace (settleTTLs) in which no
// member is taken for gone for not refreshing.
func (m *Membership) providerContact(ok bool) {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if !ok {
		if m.blindSince.IsZero() {
			m.blindSince = now
		}
		return
	}
	m.providerOK.Store(now.UnixNano())
	if !m.blindSince.IsZero() {
		m.settleUntil = now.Add(settleTTLs * m.cfg.TTL)
		m.log.Info("membership: the provider can be reached again; members that were live have a grace to refresh",
			"out_for", now.Sub(m.blindSince).Round(time.Millisecond), "grace", settleTTLs*m.cfg.TTL)
		m.blindSince = time.Time{}
	}
}

// ProviderDown reports whether this node cannot reach the provider now:
// its last call failed, or none succeeded for half a TTL.
func (m *Membership) ProviderDown() bool {
	m.mu.Lock()
	blind := !m.blindSince.IsZero()
	m.mu.Unlock()
	return blind || time.Since(time.Unix(0, m.providerOK.Load())) > m.cfg.TTL/2
}

// VouchAnswer is a node's answer to another member's request to vouch.
type VouchAnswer struct {
	// Vouch: this node sees the asker live and cannot trust the provider
	// to say otherwise (it cannot reach it, or it is within its grace
	// after an outage); it will not take the asker for gone for a TTL.
	Vouch bool
	// Why: the asker is Live in this node's view; the provider is down
	// here (ProviderDown); this node is Settling after an outage.
	Live, ProviderDown, Settling bool
}

// Vouch answers another member's request to vouch for its instance id.
func (m *Membership) Vouch(id string) VouchAnswer {
	a := VouchAnswer{ProviderDown: m.ProviderDown()}
	if f := m.View().Find(id); f != nil && f.Live() {
		a.Live = true
	}
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	a.Settling = now.Before(m.settleUntil)
	if a.Live && (a.ProviderDown || a.Settling) {
		a.Vouch = true
		m.vouched[id] = now.Add(m.cfg.TTL)
	}
	return a
}

// graceUntil returns until when the live member id may not be taken for
// gone (m.mu held).
func (m *Membership) graceUntil(id string) time.Time {
	g := m.settleUntil
	if v := m.vouched[id]; v.After(g) {
		g = v
	}
	return g
}

// watchWait is how long the next blocking query may wait: short while a
// grace runs, so that members still not live when it ends are seen gone
// at once.
func (m *Membership) watchWait(longest time.Duration) time.Duration {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	end := m.settleUntil
	for id, v := range m.vouched {
		if v.After(end) {
			end = v
		}
		if v.Before(now) {
			delete(m.vouched, id)
		}
	}
	if d := end.Sub(now); d > 0 {
		return min(longest, d+50*time.Millisecond)
	}
	return longest
}

// isOldSelf reports whether id is an earlier instance of this node, which
// it left when it rejoined (m.mu held).
func (m *Membership) isOldSelf(id string) bool {
	if m.prevView == nil {
		return false
	}
	p := m.prevView.Find(id)
	return p != nil && p.Address == m.self.Address && p.Name == m.self.Name
}
