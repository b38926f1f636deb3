package membership

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Providers.
const (
	// ProviderMemory: the node is its own single-member cluster.
	ProviderMemory = "memory"
	// ProviderConsul: members register in a Consul agent.
	ProviderConsul = "consul"
)

// Config configures a node's membership.
type Config struct {
	// Provider is "memory" (default) or "consul".
	Provider string
	// Cluster is the cluster's name, the Consul service members register
	// as (default "courier").
	Cluster string
	// Consul is the HTTP address of the Consul agent (default
	// "127.0.0.1:8500").
	Consul string
	// ConsulToken is the ACL token, if the agent needs one.
	ConsulToken string
	// TTL is how long a member stays live without refreshing its check
	// (default 3 s). A node that could not refresh for this long rejoins
	// as a new instance. Sessions on a departed gate end within TTL + 1 s.
	TTL time.Duration
	// DeregisterAfter removes the registration of a member whose check
	// stayed critical this long (default 1 m, Consul's minimum).
	DeregisterAfter time.Duration
	// LoadInterval is the most often a member publishes its load
	// (default 1 s).
	LoadInterval time.Duration
	// JoinTimeout bounds Join (default 30 s).
	JoinTimeout time.Duration
}

// DefaultConfig returns the defaults documented on Config's fields.
func DefaultConfig() Config {
	return Config{
		Provider:        ProviderMemory,
		Cluster:         "courier",
		Consul:          "127.0.0.1:8500",
		TTL:             3 * time.Second,
		DeregisterAfter: time.Minute,
		LoadInterval:    time.Second,
		JoinTimeout:     30 * time.Second,
	}
}

// Validate checks the configuration; errors name the node's settings.
func (c *Config) Validate() error {
	switch c.Provider {
	case ProviderMemory:
	case ProviderConsul:
		if _, _, err := net.SplitHostPort(c.Consul); err != nil {
			return fmt.Errorf("cluster.consul %q: want host:port of the Consul agent's HTTP API: %v", c.Consul, err)
		}
	default:
		return fmt.Errorf("cluster.provider %q: must be %q or %q", c.Provider, ProviderMemory, ProviderConsul)
	}
	switch {
	case c.Cluster == "":
		return fmt.Errorf("cluster.name: must not be empty")
	case c.TTL < time.Second:
		return fmt.Errorf("cluster.ttl %v: must be at least 1s", c.TTL)
	case c.DeregisterAfter < time.Minute:
		return fmt.Errorf("cluster.deregister-after %v: must be at least 1m (Consul's minimum)", c.DeregisterAfter)
	case c.LoadInterval < 100*time.Millisecond:
		return fmt.Errorf("cluster.load-interval %v: must be at least 100ms", c.LoadInterval)
	case c.JoinTimeout <= 0:
		return fmt.Errorf("cluster.join-timeout %v: must be positive", c.JoinTimeout)
	}
	return nil
}

// backend is a provider's storage of registrations.
type backend interface {
	// register publishes self (again) as live.
	register(ctx context.Context, self *Member) error
	// pass refreshes the liveness of instance id.
	pass(ctx context.Context, id string) error
	// reach checks that the provider's servers answer: pass and register
	// may be answered by an agent on this machine that is cut off from
	// them, and then the other members see this node's registration
	// expire although its refreshes succeed.
	reach(ctx context.Context) error
	// deregister removes instance id.
	deregister(ctx context.Context, id string) error
	// watch returns every registration, with its Health, once they may
	// differ from index (or after at most wait), and the new index.
	watch(ctx context.Context, index uint64, wait time.Duration) ([]Member, uint64, error)
	// canExpire reports whether other nodes can see this node's
	// registration expire (false for the in-memory provider).
	canExpire() bool
}

// Membership is one node's membership. Its methods are safe for
// concurrent use.
type Membership struct {
	cfg     Config
	log     *slog.Logger
	be      backend
	metrics *metrics

	mu        sync.Mutex
	self      Member               // current instance; its ID changes at rejoin
	published Load                 // load in the last registration
	load      Load                 // latest load
	subs      []func(*View)        // called in order on the watcher goroutine
	blocked   map[string]time.Time // instance id -> when it stopped being live
	// registered are the instance ids this node registered and has not
	// removed (Leave removes them all).
	registered map[string]bool
	wasLive    map[string]bool // instances live in the last view
	joined     bool
	closed     bool

	// The lease (lease.go). lease is until when this instance may act,
	// in ns of the monotonic clock since clock0 (0: none), so that a step
	// of the wall clock (NTP) cannot lengthen it; providerOK the last
	// successful call to the provider (Unix ns); leaseLost is owned by the
	// refresher.
	clock0      time.Time
	lease       atomic.Int64
	leaseWall   atomic.Int64 // the same end by the wall clock (Unix ns)
	providerOK  atomic.Int64
	leaseLost   bool
	confirm     func(ctx context.Context, v *View) bool
	leaseHooks  []func(valid bool)
	blindSince  time.Time            // first failed provider call since the last success (under mu)
	settleUntil time.Time            // members that were live are not taken for gone before (under mu)
	vouched     map[string]time.Time // instance -> not taken for gone before (under mu)
	prevView    *View                // the last view published, for members the provider lost (watcher)

	view   atomic.Pointer[View]
	seq    uint64        // views published, owned by the watcher
	rejoin chan struct{} // the watcher saw this node's current instance out
	// wakeWatch cuts the watcher's wait after a failure short (a rejoin
	// waits for a view with its new instance).
	wakeWatch chan struct{}
	quit      chan struct{}
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// New makes a node's membership; Join registers it. reg may be nil.
func New(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Membership, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	m := &Membership{cfg: cfg, log: log, metrics: newMetrics(reg), blocked: map[string]time.Time{}, registered: map[string]bool{}, clock0: time.Now(),
		wasLive: map[string]bool{}, vouched: map[string]time.Time{}, rejoin: make(chan struct{}, 1), wakeWatch: make(chan struct{}, 1), quit: make(chan struct{})}
	switch cfg.Provider {
	case ProviderConsul:
		be, err := newConsulBackend(&cfg, log)
		if err != nil {
			return nil, err
		}
		m.be = be
	default:
		m.be = newMemoryBackend()
	}
	m.view.Store(&View{})
	return m, nil
}

// Subscribe has fn called with every new View, in order, on the
// membership's watcher goroutine (fn must not block). Call it before Join.
func (m *Membership) Subscribe(fn func(*View)) {
	m.mu.Lock()
	m.subs = append(m.subs, fn)
	m.mu.Unlock()
}

// View returns the latest view (empty before Join).
func (m *Membership) View() *View { return m.view.Load() }

// Join registers self (its ID and StartedAt are set here) and returns
// once this node sees itself live, or fails after the join timeout.
func (m *Membership) Join(ctx context.Context, self Member) error {
	self.ID = newInstanceID(self.Name)
	self.StartedAt = time.Now()
	if err := self.validate(); err != nil {
		return fmt.Errorf("membership: %w", err)
	}
	m.mu.Lock()
	if m.closed || m.joined {
		m.mu.Unlock()
		return fmt.Errorf("membership: Join called twice or after Leave")
	}
	m.joined = true
	m.self = self
	m.load, m.published = self.Load, self.Load
	m.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, m.cfg.JoinTimeout)
	defer cancel()
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		sent := time.Now()
		err := m.register(ctx, &self)
		if err == nil {
			m.providerContact(true)
			m.renew(sent)
			break
		}
		m.metrics.errors.Inc()
		m.log.Warn("membership: registration failed; retrying", "provider", m.cfg.Provider, "consul", m.cfg.Consul, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("membership: register with %s at %s: %w", m.cfg.Provider, m.cfg.Consul, err)
		case <-time.After(wait):
		}
	}
	seen := make(chan struct{})
	var once sync.Once
	m.Subscribe(func(v *View) {
		if v.Self.Live() {
			once.Do(func() { close(seen) })
		}
	})
	wctx, wcancel := context.WithCancel(context.Background())
	m.cancel = wcancel
	m.wg.Add(2)
	go m.watchLoop(wctx)
	go m.refreshLoop(wctx)
	select {
	case <-seen:
		m.log.Info("membership: joined", "member", self.ID, "roles", self.Roles.String(), "address", self.Address,
			"provider", m.cfg.Provider)
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w within %v (provider %s)", ErrJoinTimeout, m.cfg.JoinTimeout, m.cfg.Provider)
	}
}

// SetDraining publishes that this node is draining (Member.Draining) at
// once, and keeps it so until the node leaves.
func (m *Membership) SetDraining(ctx context.Context) error {
	m.mu.Lock()
	m.self.Draining = true
	self := m.self
	self.Load = m.load
	m.mu.Unlock()
	if err := m.register(ctx, &self); err != nil {
		return fmt.Errorf("membership: publish draining: %w", err)
	}
	m.mu.Lock()
	replaced := m.self.ID != self.ID
	m.mu.Unlock()
	if replaced {
		// A rejoin replaced the instance meanwhile (it carries the flag
		// on) and may have removed the old one before this registration
		// brought it back, passing, until its TTL: remove it again.
		if err := m.deregister(ctx, self.ID); err != nil && !isGone(err) {
			m.log.Debug("membership: removing the old instance a drain registered again failed (it expires)", "member", self.ID, "err", err)
		}
	}
	m.log.Info("membership: this node is draining", "member", self.ID)
	return nil
}

// SetLoad records the node's load; it is published within the load
// interval when it changed.
func (m *Membership) SetLoad(l Load) {
	m.mu.Lock()
	m.load = l
	m.mu.Unlock()
}

// Leave stops the membership's goroutines and removes this node's
// registration (others see it leave at once, not after the TTL). It is
// safe to call more than once, and without Join.
func (m *Membership) Leave(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	joined := m.joined
	m.mu.Unlock()
	close(m.quit)
	if m.cancel != nil {
		m.cancel()
	}
	m.wg.Wait()
	if !joined {
		return nil
	}
	// Read after the goroutines stopped: a rejoin that completed
	// meanwhile registered another instance. Every instance this node
	// may have registered and not removed goes, the current one first:
	// a rejoin's registration cut off by the stop (applied, its answer
	// lost) or an old instance whose removal failed would otherwise stay
	// live at this node's address until its TTL. With a context of their
	// own: the caller's may be short or done.
	m.mu.Lock()
	id := m.self.ID
	others := make([]string, 0, len(m.registered))
	for r := range m.registered {
		if r != id {
			others = append(others, r)
		}
	}
	m.mu.Unlock()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.TTL)
	defer cancel()
	err := m.deregister(dctx, id)
	for _, r := range others {
		if err := m.deregister(dctx, r); err != nil && !isGone(err) {
			m.log.Debug("membership: removing an earlier instance at leave failed (it expires)", "member", r, "err", err)
		}
	}
	if err != nil && !isGone(err) {
		return fmt.Errorf("membership: leave: %w", err)
	}
	m.log.Info("membership: left", "member", id)
	return nil
}

// register registers self with the provider, noting its id as one to
// remove at Leave first: a registration whose answer is lost may have
// been applied.
func (m *Membership) register(ctx context.Context, self *Member) error {
	m.mu.Lock()
	m.registered[self.ID] = true
	m.mu.Unlock()
	return m.be.register(ctx, self)
}

// deregister removes instance id from the provider, and from those to
// remove at Leave once it is gone.
func (m *Membership) deregister(ctx context.Context, id string) error {
	err := m.be.deregister(ctx, id)
	if err == nil || isGone(err) {
		m.mu.Lock()
		delete(m.registered, id)
		m.mu.Unlock()
	}
	return err
}

// refreshLoop keeps this instance's registration live and its lease
// (lease.go) running, publishes its load, and rejoins as a new instance
// when it lost its lease or was seen out.
func (m *Membership) refreshLoop(ctx context.Context) {
	defer m.wg.Done()
	every := m.cfg.TTL / 3
	t := time.NewTicker(every)
	defer t.Stop()
	lastLoad := time.Now()
	for {
		select {
		case <-m.quit:
			return
		case <-m.rejoin:
			if m.selfBlocked() {
				m.rejoinAs(ctx, "this instance was seen out of the cluster")
				lastLoad = time.Now()
			}
			continue
		case <-t.C:
		}
		if m.selfBlocked() {
			// Seen out while it was being registered (or before this node
			// knew it as its own): the others block it for good.
			m.rejoinAs(ctx, "this instance was seen out of the cluster")
			lastLoad = time.Now()
			continue
		}
		if m.be.canExpire() && !m.LeaseValid() {
			// Others may have seen this instance expire and taken over its
			// identities: come back as a new one.
			m.rejoinAs(ctx, "its lease lapsed: it could neither refresh its registration nor have every member vouch for it")
			lastLoad = time.Now()
			continue
		}
		m.mu.Lock()
		self, load, changed := m.self, m.load, m.load != m.published
		m.mu.Unlock()
		// A call may take half the TTL: a busy agent is not yet a missed
		// refresh. One that fails leaves time to ask the other members
		// to vouch (lease.go) before the lease lapses.
		rctx, cancel := context.WithTimeout(ctx, m.cfg.TTL/2)
		sent := time.Now()
		var err error
		if changed && time.Since(lastLoad) >= m.cfg.LoadInterval {
			self.Load = load
			if err = m.register(rctx, &self); err == nil {
				lastLoad = time.Now()
				m.mu.Lock()
				if m.self.ID == self.ID {
					m.published = load
				}
				// SetDraining may have registered the flag after the copy
				// above was taken, and this registration, without it,
				// landed after its: publish it again.
				lost := m.self.ID == self.ID && m.self.Draining && !self.Draining
				self.Draining = m.self.Draining
				m.mu.Unlock()
				if lost {
					err = m.register(rctx, &self)
				}
			}
		} else {
			err = m.be.pass(rctx, self.ID)
		}
		if err == nil {
			if err = m.be.reach(rctx); err != nil {
				err = fmt.Errorf("the agent took the refresh, but its servers do not answer: %w", err)
			}
		}
		cancel()
		if err == nil {
			m.providerContact(true)
			if m.be.canExpire() && !m.LeaseValid() {
				// Answered after the lease ran out: the agent may have
				// marked the check critical before this refresh reached
				// it, and the others taken the instance for gone; the
				// refresh made it passing again, but the instance is done.
				m.rejoinAs(ctx, "its refresh was answered only after its lease had run out")
				lastLoad = time.Now()
				continue
			}
			m.renew(sent)
			continue
		}
		m.metrics.errors.Inc()
		if ctx.Err() != nil {
			continue
		}
		if isGone(err) {
			m.providerContact(true)
			if m.LeaseValid() {
				// The agent lost the registration (it restarted without its
				// data) but nobody can have seen this instance leave: the
				// lease still runs. Register the same instance again; the
				// others give it a grace after their own outage.
				self.Load = load
				m.mu.Lock()
				self.Draining = self.Draining || m.self.Draining // a drain begun since the copy
				m.mu.Unlock()
				rctx, cancel := context.WithTimeout(ctx, m.cfg.TTL/2)
				err := m.register(rctx, &self)
				cancel()
				if err == nil && m.LeaseValid() {
					m.log.Info("membership: the provider had lost this instance's registration; registered it again", "member", self.ID)
					m.renew(sent)
					continue
				}
			}
			// The agent no longer has this instance (it expired): others
			// saw it leave.
			m.rejoinAs(ctx, "the agent lost this instance's registration")
			lastLoad = time.Now()
			continue
		}
		m.providerContact(false)
		m.log.Warn("membership: refreshing the registration failed; asking the other members to vouch", "member", self.ID, "err", err)
		m.askPeers(ctx)
	}
}

// rejoinAs registers this node again under a new instance id, retrying
// until it succeeds or the membership closes, then removes the old one.
func (m *Membership) rejoinAs(ctx context.Context, why string) {
	// Whatever this instance held is another's now: stop at once.
	m.setLease(false, why)
	m.mu.Lock()
	old := m.self
	self := old
	self.ID = newInstanceID(old.Name)
	self.StartedAt = time.Now()
	self.Load = m.load
	m.mu.Unlock()
	m.log.Warn("membership: rejoining as a new instance", "old", old.ID, "new", self.ID, "why", why)
	var registered time.Time
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		rctx, cancel := context.WithTimeout(ctx, m.cfg.TTL)
		sent := time.Now()
		// Registered with an agent whose servers do not answer, the new
		// instance would be no more seen than the old one was; worse, its
		// check would lapse between attempts and the others would block
		// it for good. So register only once the servers answer, and
		// check they still did afterwards; an instance registered without
		// that is removed and the next attempt takes a new id.
		err := m.be.reach(rctx)
		if err == nil {
			if err = m.register(rctx, &self); err == nil {
				if err = m.be.reach(rctx); err != nil {
					_ = m.deregister(rctx, self.ID)
					self.ID = newInstanceID(old.Name)
				}
			}
		}
		cancel()
		if err == nil {
			m.providerContact(true)
			registered = sent
			break
		}
		m.providerContact(false)
		m.metrics.errors.Inc()
		select {
		case <-m.quit:
			return
		case <-time.After(wait):
		}
	}
	m.mu.Lock()
	// A drain begun meanwhile (SetDraining set it on the old instance)
	// holds for the new one.
	lost := m.self.Draining && !self.Draining
	self.Draining = self.Draining || m.self.Draining
	m.self = self
	m.published = self.Load
	m.mu.Unlock()
	if lost {
		rctx, cancel := context.WithTimeout(ctx, m.cfg.TTL)
		if err := m.register(rctx, &self); err != nil {
			m.log.Warn("membership: publishing that the new instance drains failed; the next load change publishes it", "member", self.ID, "err", err)
		}
		cancel()
	}
	// The old instance goes first: the members that did not block it
	// must not route to it, and a Leave during the wait below would only
	// remove the new one.
	dctx, cancel := context.WithTimeout(ctx, m.cfg.TTL/2)
	if err := m.deregister(dctx, old.ID); err != nil && !isGone(err) {
		m.log.Debug("membership: removing the old instance failed (it expires)", "member", old.ID, "err", err)
	}
	cancel()
	// Serve only once this node's view holds the new instance: the view
	// it has may be from before (its watch failed while the provider
	// could not be reached, and waits out a backoff), placing on this
	// node identities the others have placed elsewhere since. Bounded:
	// the new instance's check must be refreshed within the TTL of its
	// registration.
	select {
	case m.wakeWatch <- struct{}{}:
	default:
	}
	for end := registered.Add(m.cfg.TTL / 2); !m.viewHas(self.ID) && time.Now().Before(end); {
		select {
		case <-m.quit:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	if !m.viewHas(self.ID) {
		m.log.Warn("membership: serving as the new instance before this node's view shows it (the provider's member list did not answer)", "member", self.ID)
	}
	// The lease runs from a refresh of the new instance sent now, not
	// from its registration: the calls and the wait above may have taken
	// most of a TTL.
	rctx, cancel := context.WithTimeout(ctx, m.cfg.TTL/2)
	sent := time.Now()
	err := m.be.pass(rctx, self.ID)
	if err == nil {
		err = m.be.reach(rctx)
	}
	cancel()
	if err != nil {
		sent = registered
	}
	// Renewed right before the hooks hear of it (no call in between).
	m.renew(sent)
	m.metrics.rejoins.Inc()
	if !m.LeaseValid() {
		// Its registration's lease ran out meanwhile: the next tick
		// rejoins again (the lease stays lost).
		m.log.Warn("membership: the new instance's lease ran out before it could serve", "member", self.ID, "err", err)
		return
	}
	m.setLease(true, "")
}

// viewHas reports whether the published view's own instance is id, live.
func (m *Membership) viewHas(id string) bool {
	v := m.View()
	return v.Self.ID == id && v.Self.Live()
}

// SeenOut is told by another member that its view blocks instance id:
// it took it for gone (live, then not) and never takes it back. If id is
// this node's current instance, this node rejoins as a new one, as when
// it sees itself out: a provider's member list can be seen differently by
// two nodes (one's blocking query saw the instance critical for a moment,
// the other's did not; a local agent restarted and lost the registration
// while this node's own watch was failing), and without this the two
// would act for the same identities until this node restarted.
func (m *Membership) SeenOut(id string) {
	m.mu.Lock()
	if m.closed || id == "" || id != m.self.ID {
		m.mu.Unlock()
		return
	}
	if _, ok := m.blocked[id]; !ok {
		m.blocked[id] = time.Now()
	}
	m.mu.Unlock()
	// Serve nothing more at once; the refresher drops what the instance
	// held (setLease) and rejoins when it gets to it.
	m.lease.Store(0)
	m.leaseWall.Store(0)
	m.log.Warn("membership: another member has taken this instance for gone; rejoining", "member", id)
	select {
	case m.rejoin <- struct{}{}:
	default:
	}
}

// selfBlocked reports whether this node's current instance is blocked in
// its own view: it was live and then was not, so the others take it for
// gone.
func (m *Membership) selfBlocked() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.blocked[m.self.ID]
	return ok
}

// maxWatchWait is the longest a blocking query of the registrations
// waits for a change.
const maxWatchWait = 10 * time.Second

// watchLoop follows the registrations and publishes views.
func (m *Membership) watchLoop(ctx context.Context) {
	defer m.wg.Done()
	var index uint64
	wait := 100 * time.Millisecond
	for {
		regs, next, err := m.be.watch(ctx, index, m.watchWait(maxWatchWait))
		select {
		case <-m.quit:
			return
		default:
		}
		m.providerContact(err == nil)
		if err != nil {
			// The next query starts over: the provider may have lost its
			// state (a new Consul) and would hold a query at an index it
			// has not reached for its whole wait.
			index = 0
			m.metrics.errors.Inc()
			m.log.Warn("membership: watching the members failed; keeping the last view", "err", err, "retry_in", wait)
			select {
			case <-m.quit:
				return
			case <-time.After(wait):
				wait = min(2*wait, 5*time.Second)
			case <-m.wakeWatch: // a rejoin waits for a view
				wait = 100 * time.Millisecond
			}
			continue
		}
		wait = 100 * time.Millisecond
		if next < index {
			next = 0 // the index went backwards (a new Consul): start over
		}
		index = next
		m.publish(regs)
	}
}

// publish derives a view from the registrations and hands it to the
// subscribers.
func (m *Membership) publish(regs []Member) {
	now := time.Now()
	m.mu.Lock()
	selfID := m.self.ID
	sort.Slice(regs, func(i, j int) bool { return regs[i].ID < regs[j].ID })
	present := make(map[string]bool, len(regs))
	for i := range regs {
		r := &regs[i]
		present[r.ID] = true
		if _, ok := m.blocked[r.ID]; ok {
			r.Blocked = true
		}
	}
	live := map[string]bool{}
	for i := range regs {
		if regs[i].Live() {
			live[regs[i].ID] = true
		}
	}
	// Members that were live and are not now, within their grace (after
	// this node's provider outage, or vouched for): taken as live still.
	for id := range m.wasLive {
		if live[id] || id != selfID && m.isOldSelf(id) || !now.Before(m.graceUntil(id)) {
			continue
		}
		found := false
		for i := range regs {
			if regs[i].ID == id {
				regs[i].Grace, found = true, true
			}
		}
		if !found && m.prevView != nil {
			if p := m.prevView.Find(id); p != nil {
				g := *p
				g.Grace = true
				regs = append(regs, g)
				found = true
			}
		}
		if found {
			live[id] = true
		}
	}
	sort.Slice(regs, func(i, j int) bool { return regs[i].ID < regs[j].ID })
	// An instance that was live and no longer is never comes back.
	for id := range m.wasLive {
		if !live[id] {
			m.blocked[id] = now
			for i := range regs {
				if regs[i].ID == id {
					regs[i].Blocked = true
				}
			}
		}
	}
	_, selfOut := m.blocked[selfID]
	m.wasLive = live
	for id, since := range m.blocked {
		if !present[id] && now.Sub(since) > 10*m.cfg.DeregisterAfter {
			delete(m.blocked, id)
		}
	}
	view := &View{Members: regs}
	if s := view.Find(selfID); s != nil {
		view.Self = *s
	} else {
		view.Self = m.self
		view.Self.Health = HealthCritical
	}
	subs := m.subs
	blocked := len(m.blocked)
	m.mu.Unlock()

	if selfOut {
		// Every node that sees what this one sees takes this instance
		// for gone: serve nothing more at once, as SeenOut, not when
		// the refresher gets to the rejoin (it may be in a call of up
		// to half a TTL).
		m.lease.Store(0)
		m.leaseWall.Store(0)
		select {
		case m.rejoin <- struct{}{}:
		default:
		}
	}
	m.seq++
	view.Seq = m.seq
	m.prevView = view
	prev := m.view.Swap(view)
	if !view.SameShape(prev) {
		m.metrics.changes.Inc()
		m.log.Info("membership: members changed", "live", len(view.Live(0)), "registered", len(regs), "blocked", blocked)
	}
	m.metrics.set(view, blocked)
	for _, fn := range subs {
		fn(view)
	}
}

// newInstanceID names a new instance of the node called name.
func newInstanceID(name string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return name + "-" + hex.EncodeToString(b[:])
}
