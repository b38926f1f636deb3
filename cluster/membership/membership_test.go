package membership

import (
	"context"
	"errors"
	"fmt"
	"github.com/hashicorp/consul/api"
	"maps"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/courier-im/courier/testkit"
)

func TestParseRoles(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Roles
		err  bool
	}{
		{"gate,actors,api", AllRoles, false},
		{"api, gate", RoleGate | RoleAPI, false},
		{"actors", RoleActors, false},
		{"", 0, true},
		{"gate,bogus", 0, true},
		{" , ", 0, true},
	} {
		got, err := ParseRoles(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseRoles(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
	if s := (RoleAPI | RoleGate).String(); s != "gate,api" {
		t.Errorf("String %q", s)
	}
}

func TestMetaRoundTrip(t *testing.T) {
	m := Member{ID: "n1-abc", Name: "n1", Address: "10.0.0.1:7100", Roles: RoleGate | RoleActors, Version: "v1.2",
		GateID: "g1", GateAddr: "203.0.113.1:7000", Apps: []uint16{1, 65535}, APIAddr: "10.0.0.1:7001", HTTPAddr: "10.0.0.1:7002",
		Load: Load{Conns: 5, MaxConns: 100, Actors: 7}, StartedAt: time.UnixMilli(1700000000123), Draining: true, Shards: 16}
	got, err := decodeMeta(encodeMeta(&m), m.Address)
	if err != nil {
		t.Fatal(err)
	}
	got.StartedAt = got.StartedAt.UTC()
	m.StartedAt = m.StartedAt.UTC()
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip\n got %+v\nwant %+v", got, m)
	}
	if _, err := decodeMeta(map[string]string{"id": "x"}, "h:1"); err == nil {
		t.Fatal("a registration without roles decoded")
	}
	if _, err := decodeMeta(map[string]string{"roles": "gate"}, "h:1"); err == nil {
		t.Fatal("a registration without an id decoded")
	}
}

func TestValidateMember(t *testing.T) {
	ok := Member{Name: "n", Address: "h:1", Roles: RoleActors}
	if err := ok.validate(); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]Member{
		"gate without gate id": {Name: "n", Address: "h:1", Roles: RoleGate, GateAddr: "h:2"},
		"api without address":  {Name: "n", Address: "h:1", Roles: RoleAPI},
		"no roles":             {Name: "n", Address: "h:1"},
		"no address":           {Name: "n", Roles: RoleActors},
	} {
		if err := m.validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A member instance that stops being live is blocked, and stays blocked
// when its registration passes again.
func TestPublishBlocksDepartedInstances(t *testing.T) {
	m, err := New(DefaultConfig(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.self = Member{ID: "self", Name: "self", Address: "h:1", Roles: AllRoles}
	var views []*View
	m.Subscribe(func(v *View) { views = append(views, v) })
	a := Member{ID: "a", Address: "h:2", Roles: RoleActors, Health: HealthPassing}
	self := m.self
	self.Health = HealthPassing
	m.publish([]Member{self, a})
	if got := views[0].Live(RoleActors); len(got) != 2 {
		t.Fatalf("live actors %v", got)
	}
	a.Health = HealthCritical
	m.publish([]Member{self, a})
	if got := views[1].Live(RoleActors); len(got) != 1 || got[0].ID != "self" {
		t.Fatalf("after a went critical: %v", got)
	}
	a.Health = HealthPassing // a zombie that refreshed again
	b := Member{ID: "b", Address: "h:3", Roles: RoleGate, Health: HealthPassing}
	m.publish([]Member{self, a, b})
	v := views[2]
	if got := v.Live(0); len(got) != 2 || got[0].ID != "b" || got[1].ID != "self" {
		t.Fatalf("after a came back and b joined: live %v", got)
	}
	if f := v.Find("a"); f == nil || !f.Blocked || f.Live() {
		t.Fatalf("a not listed as blocked: %+v", f)
	}
	if v.SameShape(views[1]) {
		t.Fatal("a join kept the shape")
	}
	b.Load.Conns = 9
	m.publish([]Member{self, a, b})
	if !views[3].SameShape(v) || views[3].Seq != 4 {
		t.Fatalf("a load change changed the shape (seq %d)", views[3].Seq)
	}
	// This node seen out: it asks to rejoin.
	self.Health = HealthCritical
	m.publish([]Member{self, a, b})
	select {
	case <-m.rejoin:
	default:
		t.Fatal("no rejoin after this instance was seen out")
	}
}

func join(t *testing.T, cfg Config, name string, roles Roles) *Membership {
	t.Helper()
	m, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	self := Member{Name: name, Address: "127.0.0.1:1", Roles: roles, Version: "test", HTTPAddr: "127.0.0.1:2"}
	if roles.Has(RoleGate) {
		self.GateID, self.GateAddr = "gate-of-"+name, "127.0.0.1:3"
	}
	if roles.Has(RoleAPI) {
		self.APIAddr = "127.0.0.1:4"
	}
	if err := m.Join(context.Background(), self); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Leave(context.Background()) })
	return m
}

func consulConfig(c *testkit.Consul) Config {
	cfg := DefaultConfig()
	cfg.Provider = ProviderConsul
	cfg.Consul = c.Addr
	cfg.TTL = time.Second
	cfg.LoadInterval = 100 * time.Millisecond
	return cfg
}

func liveIDs(m *Membership) map[string]bool {
	out := map[string]bool{}
	for _, x := range m.View().Live(0) {
		out[x.ID] = true
	}
	return out
}

func TestConsulJoinLoadLeave(t *testing.T) {
	c := testkit.StartConsul(t)
	cfg := consulConfig(c)
	a := join(t, cfg, "a", RoleGate|RoleAPI)
	b := join(t, cfg, "b", RoleActors)
	aID, bID := a.View().Self.ID, b.View().Self.ID
	for _, m := range []*Membership{a, b} {
		testkit.Eventually(t, 10*time.Second, func() bool {
			ids := liveIDs(m)
			return ids[aID] && ids[bID] && len(ids) == 2
		}, "both members live")
	}
	if got := a.View().Live(RoleActors); len(got) != 1 || got[0].ID != bID {
		t.Fatalf("actor members seen by a: %v", got)
	}
	g := b.View().Find(aID)
	if g.GateID != "gate-of-a" || g.APIAddr != "127.0.0.1:4" || g.Roles != RoleGate|RoleAPI || g.Version != "test" {
		t.Fatalf("a as b sees it: %+v", g)
	}
	a.SetLoad(Load{Conns: 42, MaxConns: 1000})
	testkit.Eventually(t, 5*time.Second, func() bool {
		m := b.View().Find(aID)
		return m != nil && m.Load.Conns == 42 && m.Live()
	}, "a's load published")
	if err := a.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return !liveIDs(b)[aID] }, "a gone after Leave")
	if got := b.View().Live(0); len(got) != 1 {
		t.Fatalf("live after leave: %v", got)
	}
}

// flaky fails its calls to the provider while fail is set, as a node cut
// off from Consul (or paused) does.
type flaky struct {
	backend
	fail atomic.Bool
	// serversCut: the agent on the node's machine answers (pass and
	// register succeed) but its servers cannot be reached (reach and
	// watch fail), as for a node with its own client agent on the wrong
	// side of a partition.
	serversCut atomic.Bool
}

var errCut = errors.New("cut off")

func (f *flaky) register(ctx context.Context, self *Member) error {
	if f.fail.Load() {
		return errCut
	}
	return f.backend.register(ctx, self)
}

func (f *flaky) pass(ctx context.Context, id string) error {
	if f.fail.Load() {
		return errCut
	}
	return f.backend.pass(ctx, id)
}

// A node that cannot refresh its registration for longer than the TTL is
// seen out by the others, blocked, and comes back as a new instance.
func TestConsulExpiredMemberRejoins(t *testing.T) {
	c := testkit.StartConsul(t)
	cfg := consulConfig(c)
	a := join(t, cfg, "a", AllRoles)
	b, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	fb := &flaky{backend: b.be}
	b.be = fb
	var mu sync.Mutex
	var selves []string
	b.Subscribe(func(v *View) {
		mu.Lock()
		if len(selves) == 0 || selves[len(selves)-1] != v.Self.ID {
			selves = append(selves, v.Self.ID)
		}
		mu.Unlock()
	})
	old := joinSeenBy(t, b, a)

	fb.fail.Store(true)
	start := time.Now()
	testkit.Eventually(t, 10*time.Second, func() bool { return !liveIDs(a)[old] }, "b seen out")
	t.Logf("b seen out %v after it stopped refreshing (TTL %v)", time.Since(start).Round(time.Millisecond), cfg.TTL)
	if f := a.View().Find(old); f != nil && !f.Blocked {
		t.Fatalf("b's old instance not blocked: %+v", f)
	}
	fb.fail.Store(false)
	testkit.Eventually(t, 10*time.Second, func() bool {
		id := b.View().Self.ID
		mu.Lock()
		last := selves[len(selves)-1]
		mu.Unlock()
		return id != old && last == id && liveIDs(a)[id] && !liveIDs(a)[old]
	}, "b back as a new instance")
	// The subscribers hear of the new instance too (after View shows it).
	testkit.Eventually(t, 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return selves[0] == old && selves[len(selves)-1] != old
	}, "b's subscribers never saw its new instance")
}

func (f *flaky) reach(ctx context.Context) error {
	if f.fail.Load() || f.serversCut.Load() {
		return errCut
	}
	return f.backend.reach(ctx)
}

func (f *flaky) watch(ctx context.Context, index uint64, wait time.Duration) ([]Member, uint64, error) {
	if f.fail.Load() || f.serversCut.Load() {
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
		return nil, 0, errCut
	}
	return f.backend.watch(ctx, index, wait)
}

// After this node's outage of the provider, members that were live and
// are not passing (the provider restored their checks as critical, or
// lost them) are taken as live for a grace; after it, they are blocked.
// A member this node vouched for has the same grace.
func TestPublishGrace(t *testing.T) {
	cfg := DefaultConfig()
	m, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.self = Member{ID: "self", Name: "self", Address: "h:1", Roles: AllRoles}
	var views []*View
	m.Subscribe(func(v *View) { views = append(views, v) })
	self := m.self
	self.Health = HealthPassing
	a := Member{ID: "a", Address: "h:2", Roles: RoleActors, Health: HealthPassing}
	b := Member{ID: "b", Address: "h:3", Roles: RoleGate, Health: HealthPassing}
	m.publish([]Member{self, a, b})

	// The provider was out and is back: every check restored critical,
	// and b's registration lost.
	m.providerContact(false)
	m.providerContact(true)
	self.Health, a.Health = HealthCritical, HealthCritical
	m.publish([]Member{self, a})
	v := views[1]
	if got := v.Live(0); len(got) != 3 || !v.SameShape(views[0]) {
		t.Fatalf("within the grace: live %v", got)
	}
	if f := v.Find("a"); !f.Grace || f.Blocked {
		t.Fatalf("a within the grace: %+v", f)
	}
	select {
	case <-m.rejoin:
		t.Fatal("this node asked to rejoin within its grace")
	default:
	}
	// a refreshes in time; b does not come back: after the grace it is
	// gone for good.
	a.Health, self.Health = HealthPassing, HealthPassing
	m.mu.Lock()
	m.settleUntil = time.Now().Add(-time.Millisecond)
	m.mu.Unlock()
	m.publish([]Member{self, a})
	if got := views[2].Live(0); len(got) != 2 || got[0].ID != "a" || got[1].ID != "self" {
		t.Fatalf("after the grace: live %v", got)
	}
	if m.blocked["b"].IsZero() {
		t.Fatal("b not blocked after the grace")
	}

	// A vouch: a promised grace to a, without any outage here.
	if ans := m.Vouch("a"); ans.Vouch {
		t.Fatalf("vouched with the provider reachable and no grace running: %+v", ans)
	}
	m.providerContact(false)
	if ans := m.Vouch("a"); !ans.Vouch || !ans.Live || !ans.ProviderDown {
		t.Fatalf("did not vouch with the provider down: %+v", ans)
	}
	if ans := m.Vouch("b"); ans.Vouch {
		t.Fatalf("vouched for a blocked member: %+v", ans)
	}
	m.mu.Lock()
	m.blindSince = time.Time{} // the provider is back, without a grace
	m.settleUntil = time.Time{}
	m.mu.Unlock()
	a.Health = HealthCritical
	m.publish([]Member{self, a})
	if f := views[3].Find("a"); !f.Live() || !f.Grace {
		t.Fatalf("a vouched for, then critical: %+v", f)
	}
}

// Consul cannot be reached by anyone (it restarts): the members vouch
// for each other, keep their leases and their instances, and nobody is
// taken for gone when it is back. Then one member alone is cut off: the
// other does not vouch for it, its lease lapses (the hooks hear it) and
// it comes back as a new instance.
func TestConsulOutageLeaseVouched(t *testing.T) {
	c := testkit.StartConsul(t)
	cfg := consulConfig(c)
	var ms [2]*Membership
	var fl [2]*flaky
	var leases [2][]bool
	var mu sync.Mutex
	for i, name := range []string{"a", "b"} {
		m, err := New(cfg, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		fl[i] = &flaky{backend: m.be}
		m.be = fl[i]
		other := 1 - i
		m.SetConfirm(func(ctx context.Context, v *View) bool { return ms[other].Vouch(v.Self.ID).Vouch })
		m.OnLease(func(valid bool) {
			mu.Lock()
			leases[i] = append(leases[i], valid)
			mu.Unlock()
		})
		if err := m.Join(context.Background(), Member{Name: name, Address: "127.0.0.1:" + string(rune('5'+i)), Roles: RoleActors}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Leave(context.Background()) })
		ms[i] = m
	}
	ids := [2]string{ms[0].View().Self.ID, ms[1].View().Self.ID}
	for _, m := range ms {
		testkit.Eventually(t, 10*time.Second, func() bool { l := liveIDs(m); return l[ids[0]] && l[ids[1]] }, "both live")
	}

	fl[0].fail.Store(true)
	fl[1].fail.Store(true)
	end := time.Now().Add(4 * cfg.TTL)
	for time.Now().Before(end) {
		for i, m := range ms {
			if !m.LeaseValid() {
				t.Fatalf("%d lost its lease in a provider outage both see", i)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	fl[0].fail.Store(false)
	fl[1].fail.Store(false)
	time.Sleep(3 * cfg.TTL)
	for i, m := range ms {
		if m.View().Self.ID != ids[i] || !liveIDs(m)[ids[0]] || !liveIDs(m)[ids[1]] || !m.LeaseValid() {
			t.Fatalf("%d after the outage: self %s, live %v", i, m.View().Self.ID, liveIDs(m))
		}
	}

	// Only b cut off: a has the provider and does not vouch.
	fl[1].fail.Store(true)
	testkit.Eventually(t, 5*time.Second, func() bool { return !ms[1].LeaseValid() }, "b's lease lapsed")
	testkit.Eventually(t, 5*time.Second, func() bool { return !liveIDs(ms[0])[ids[1]] }, "a sees b gone")
	fl[1].fail.Store(false)
	testkit.Eventually(t, 10*time.Second, func() bool {
		id := ms[1].View().Self.ID
		return id != ids[1] && liveIDs(ms[0])[id] && ms[1].LeaseValid()
	}, "b back as a new instance")
	mu.Lock()
	defer mu.Unlock()
	if len(leases[0]) != 0 || !reflect.DeepEqual(leases[1], []bool{false, true}) {
		t.Fatalf("lease hooks: a %v, b %v", leases[0], leases[1])
	}
}

// TestLeaseNeedsTheServers: a node whose own Consul agent still takes its
// refreshes, but cannot reach the servers, is seen out by the others
// (they see its agent's node fail): its lease must lapse although every
// refresh succeeds, so that it stops acting for identities others now
// own. It comes back as a new instance once the servers answer again.
func TestLeaseNeedsTheServers(t *testing.T) {
	c := testkit.StartConsul(t)
	cfg := consulConfig(c)
	a := join(t, cfg, "a", AllRoles)
	b, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	fb := &flaky{backend: b.be}
	b.be = fb
	b.SetConfirm(func(ctx context.Context, v *View) bool { return a.Vouch(v.Self.ID).Vouch })
	leases := recordLeases(b)
	old := joinSeenBy(t, b, a)

	fb.serversCut.Store(true)
	start := time.Now()
	testkit.Eventually(t, 4*cfg.TTL, func() bool { return !b.LeaseValid() }, "b's lease lapsed while its agent took its refreshes")
	t.Logf("b's lease lapsed %v after its servers were cut off (TTL %v)", time.Since(start).Round(time.Millisecond), cfg.TTL)
	// Registering again with the same agent gives it no lease either.
	time.Sleep(2 * cfg.TTL)
	if b.LeaseValid() {
		t.Fatal("b holds a lease again while its servers are cut off")
	}
	fb.serversCut.Store(false)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		id := b.View().Self.ID
		if id != old && liveIDs(a)[id] && b.LeaseValid() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b not back as a new instance: b's view: self %+v, live %v; a sees %v; lease %v", b.View().Self, liveIDs(b), liveIDs(a), b.LeaseValid())
		}
	}
	// The hooks hear of the lease right after it is valid (on the
	// refresher's goroutine).
	testkit.Eventually(t, 5*time.Second, func() bool {
		l := leases()
		return len(l) >= 2 && !l[0] && l[len(l)-1]
	}, "lease hooks not told of the lease lost and then held")
}

// joinSeenBy joins b (an actors member named "b") and waits until a sees
// it live; it returns b's instance id.
func joinSeenBy(t *testing.T, b, a *Membership) string {
	t.Helper()
	if err := b.Join(context.Background(), Member{Name: "b", Address: "127.0.0.1:5", Roles: RoleActors}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Leave(context.Background()) })
	id := b.View().Self.ID
	testkit.Eventually(t, 10*time.Second, func() bool { return liveIDs(a)[id] }, "b live")
	return id
}

// TestSeenOutRejoins: a member telling this node that its view blocks
// this node's current instance makes it rejoin as a new instance; a
// notice about another instance (an old one of this node's, a stale
// notice) changes nothing.
func TestSeenOutRejoins(t *testing.T) {
	m := join(t, DefaultConfig(), "a", AllRoles)
	first := m.View().Self.ID
	m.SeenOut("a-000000000000")
	m.SeenOut("")
	time.Sleep(200 * time.Millisecond)
	if id := m.View().Self.ID; id != first || testutil.ToFloat64(m.metrics.rejoins) != 0 {
		t.Fatalf("a notice about another instance changed this one: %s -> %s", first, id)
	}
	m.SeenOut(first)
	testkit.Eventually(t, 5*time.Second, func() bool {
		v := m.View()
		return v.Self.ID != first && v.Self.Live()
	}, "the node did not rejoin as a new instance after it was told it is out")
	if f := m.View().Find(first); f != nil && f.Live() {
		t.Fatalf("the old instance is still live: %+v", f)
	}
}

// holdRegs holds the registrations without the draining flag while hold
// is set, and records the last one that completed.
type holdRegs struct {
	backend
	hold    atomic.Bool
	entered chan struct{}
	release chan struct{}
	mu      sync.Mutex
	last    Member
}

func (h *holdRegs) register(ctx context.Context, self *Member) error {
	if h.hold.Load() && !self.Draining {
		h.hold.Store(false)
		close(h.entered)
		<-h.release
	}
	err := h.backend.register(ctx, self)
	if err == nil {
		h.mu.Lock()
		h.last = *self
		h.mu.Unlock()
	}
	return err
}

func (h *holdRegs) lastDraining() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last.Draining
}

// TestDrainingSurvivesALoadRegistration: a drain published while the
// refresher's registration of a load change (taken before it, without
// the flag) is in flight, and landing before it, is published again.
func TestDrainingSurvivesALoadRegistration(t *testing.T) {
	cfg := DefaultConfig()
	cfg.LoadInterval = 100 * time.Millisecond
	m, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &holdRegs{backend: m.be, entered: make(chan struct{}), release: make(chan struct{})}
	m.be = h
	if err := m.Join(context.Background(), Member{Name: "a", Address: "127.0.0.1:1", Roles: RoleActors, Version: "test"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Leave(context.Background()) })
	h.hold.Store(true)
	m.SetLoad(Load{Conns: 5, MaxConns: 10})
	select {
	case <-h.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the refresher never registered the load change")
	}
	if err := m.SetDraining(context.Background()); err != nil {
		t.Fatal(err)
	}
	close(h.release)
	testkit.Eventually(t, 5*time.Second, func() bool { return h.lastDraining() && m.View().Self.Draining },
		"the drain was overwritten by the load registration taken before it")
}

// cutWatch fails the watch while cut is set (the provider's member list
// does not answer; registrations still go through).
type cutWatch struct {
	backend
	cut    atomic.Bool
	passed atomic.Int32 // calls made while not cut
}

func (c *cutWatch) watch(ctx context.Context, index uint64, wait time.Duration) ([]Member, uint64, error) {
	if c.cut.Load() {
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
		}
		return nil, 0, errCut
	}
	c.passed.Add(1)
	return c.backend.watch(ctx, index, wait)
}

// TestRejoinServesOnceTheViewHasIt: a node that rejoined as a new
// instance takes no lease until its view holds that instance (with the
// view from before, it would act for identities placed elsewhere since).
func TestRejoinServesOnceTheViewHasIt(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TTL = 20 * time.Second // the wait for the view is bounded by half of it
	m, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cw := &cutWatch{backend: m.be}
	m.be = cw
	// What the view says when the lease comes back.
	regained := make(chan View, 1)
	m.OnLease(func(valid bool) {
		if valid {
			regained <- *m.View()
		}
	})
	if err := m.Join(context.Background(), Member{Name: "a", Address: "127.0.0.1:1", Roles: RoleActors, Version: "test"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Leave(context.Background()) })
	first := m.View().Self.ID
	// The watcher's blocking query is on its way (past the cut) before
	// the cut: on a loaded machine it may not have started yet.
	testkit.Eventually(t, 5*time.Second, func() bool { return cw.passed.Load() >= 2 }, "the watcher made no blocking query")
	time.Sleep(50 * time.Millisecond)
	cw.cut.Store(true)
	// A change ends the watcher's query in flight; its next fails, and
	// it waits.
	other := Member{ID: "b-1", Name: "b", Address: "127.0.0.1:5", Roles: RoleActors, Version: "test"}
	if err := cw.backend.register(context.Background(), &other); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return m.View().Find("b-1") != nil }, "the change was not seen")
	time.Sleep(50 * time.Millisecond)
	m.SeenOut(first)
	if m.LeaseValid() {
		t.Fatal("still a lease right after being told the instance is out")
	}
	select {
	case v := <-regained:
		t.Fatalf("a lease again while the watch fails, the view's own instance %s (first %s)", v.Self.ID, first)
	case <-time.After(500 * time.Millisecond):
	}
	cw.cut.Store(false)
	select {
	case v := <-regained:
		if v.Self.ID == first || !v.Self.Live() {
			t.Fatalf("the lease came back with the view's own instance %s (first %s, live %v)", v.Self.ID, first, v.Self.Live())
		}
	case <-time.After(8 * time.Second):
		t.Fatal("no lease once the watch answered")
	}
	if !m.LeaseValid() {
		t.Fatal("the lease the hooks were told of is not valid")
	}
}

// latePass answers one refresh only after the lease it would extend has
// run out (a slow agent, a stalled node): meanwhile the agent may have
// marked the check critical and the others taken the instance for gone.
type latePass struct {
	backend
	m    *Membership
	slow atomic.Bool
	late atomic.Int32
}

func (f *latePass) pass(ctx context.Context, id string) error {
	if !f.slow.Load() {
		return f.backend.pass(ctx, id)
	}
	for f.m.LeaseValid() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := f.backend.pass(ctx, id); err != nil {
		return err
	}
	f.slow.Store(false)
	f.late.Add(1)
	return nil
}

// TestRefreshAfterTheLeaseEndedRejoins: a refresh answered after the
// lease ran out renewed it, as if it had never lapsed: the node kept
// serving the identities the others had placed elsewhere. It rejoins as
// a new instance instead.
func TestRefreshAfterTheLeaseEndedRejoins(t *testing.T) {
	c := testkit.StartConsul(t)
	cfg := consulConfig(c)
	a := join(t, cfg, "a", AllRoles)
	b, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	fb := &latePass{backend: b.be, m: b}
	b.be = fb
	leases := recordLeases(b)
	old := joinSeenBy(t, b, a)
	fb.slow.Store(true)
	testkit.Eventually(t, 10*time.Second, func() bool { return fb.late.Load() > 0 }, "no refresh answered after the lease ran out")
	testkit.Eventually(t, 10*time.Second, func() bool {
		l := leases()
		return len(l) > 0 && !l[0] && b.View().Self.ID != old
	}, "a refresh answered after the lease ran out renewed it: no lease lost, the same instance")
}

// TestOtherNodeChecksDoNotTakeMembersForGone: an operator's node check
// (a disk check) going warning made the aggregate of the node's checks
// warning, and every member on the machine was taken for gone (blocked
// for good; a new one could not even join). Only the member's own check,
// the agent's liveness and maintenance count.
func TestOtherNodeChecksDoNotTakeMembersForGone(t *testing.T) {
	c := testkit.StartConsul(t)
	client, err := api.NewClient(&api.Config{Address: c.Addr})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Agent().CheckRegister(&api.AgentCheckRegistration{ID: "disk", Name: "disk",
		AgentServiceCheck: api.AgentServiceCheck{TTL: "1h", Status: api.HealthWarning}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Agent().CheckDeregister("disk") })
	cfg := consulConfig(c)
	a := join(t, cfg, "a", AllRoles)
	b := join(t, cfg, "b", RoleActors)
	bID := b.View().Self.ID
	testkit.Eventually(t, 10*time.Second, func() bool { return liveIDs(a)[bID] }, "b live to a beside a warning node check")
}

// stuckRegister applies a registration and then gives no answer until
// its context ends (an agent whose reply is lost).
type stuckRegister struct {
	backend
	armed   atomic.Bool
	applied atomic.Int32
}

func (f *stuckRegister) register(ctx context.Context, self *Member) error {
	if !f.armed.Load() {
		return f.backend.register(ctx, self)
	}
	if err := f.backend.register(context.Background(), self); err != nil {
		return err
	}
	f.applied.Add(1)
	<-ctx.Done()
	return ctx.Err()
}

// TestLeaveRemovesEveryInstance: a rejoin's registration cut off by
// Leave (applied, its answer lost) stayed registered and passing at the
// node's address until its TTL after the node had left; Leave removed
// only the instance it knew as its own.
func TestLeaveRemovesEveryInstance(t *testing.T) {
	c := testkit.StartConsul(t)
	cfg := consulConfig(c)
	cfg.TTL = 5 * time.Second // the new instance would pass that long
	b, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	fb := &stuckRegister{backend: b.be}
	b.be = fb
	if err := b.Join(context.Background(), Member{Name: "b", Address: "127.0.0.1:5", Roles: RoleActors}); err != nil {
		t.Fatal(err)
	}
	fb.armed.Store(true)
	b.SeenOut(b.View().Self.ID)
	testkit.Eventually(t, 10*time.Second, func() bool { return fb.applied.Load() > 0 }, "the rejoin never registered")
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a caller whose context is already done
	if err := b.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	client, err := api.NewClient(&api.Config{Address: c.Addr})
	if err != nil {
		t.Fatal(err)
	}
	svcs, err := client.Agent().ServicesWithFilter(fmt.Sprintf("Service == %q", cfg.Cluster))
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 0 {
		t.Fatalf("registrations left after Leave: %v", slices.Collect(maps.Keys(svcs)))
	}
}

// recordLeases records what m's lease hooks are told; the returned
// function gives a copy so far.
func recordLeases(m *Membership) func() []bool {
	var mu sync.Mutex
	var leases []bool
	m.OnLease(func(valid bool) {
		mu.Lock()
		leases = append(leases, valid)
		mu.Unlock()
	})
	return func() []bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(leases)
	}
}
