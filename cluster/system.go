package cluster

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/messages/actorpb"
)

// Well-known actor names on every node.
const (
	gateSinkName = "courier-gate"
	repliesName  = "courier-replies"
)

// ChildFactory makes the actor of an identity. The actor learns its
// identity from the first *actorpb.Envelope it receives, counts the
// envelopes, and calls System.Passivate when idle. One factory (and one
// Props) serves every identity, so an actor costs no Props of its own.
type ChildFactory actor.Producer

// GateSink is the local gate as the cluster sees it.
type GateSink interface {
	// GateID is the gate's instance id, new on every start.
	GateID() string
	// Deliver acts on one of the gate's connections. It returns
	// ErrConnGone if the connection is not (or no longer) there.
	Deliver(m *actorpb.ToConn) error
	// Backlog is how far the gate's event loops are behind what it was
	// asked to write (gate.Gate.Backlog).
	Backlog() time.Duration
}

// System is a node's membership in the cluster and the way the rest of
// Courier talks to identities and to gates anywhere in it. Its methods are
// safe for concurrent use.
type System struct {
	cfg     Config
	log     *slog.Logger
	actors  *actor.ActorSystem
	remote  *remote.Remote
	members *membership.Membership
	// appliedView is the Seq of the last view onView finished applying
	// (placement swapped, the actors it moves registered as handoffs).
	appliedView atomic.Uint64
	address     string
	newChild    ChildFactory
	childProps  *actor.Props

	placement atomic.Pointer[placement]
	view      atomic.Pointer[membership.View]
	selfID    atomic.Pointer[string] // this node's member instance
	gate      atomic.Pointer[gateHolder]
	// gates are the ids of the gate instances known to be alive: the
	// local gate's, and (fed by membership) other members'.
	gatesMu  sync.RWMutex
	gates    map[string]struct{}
	replies  replyRegistry
	metrics  *metrics
	onRejoin func()

	// handingOff holds the identities (childKey) of actors handing off,
	// by PID id.
	handingOff sync.Map
	// prior, asks and rel make planned moves wait for the previous
	// owner's handoff (release.go).
	prior atomic.Pointer[prior]
	asks  releaseAsks
	rel   releaser
	// askNodeForTest, if set, takes the place of AskNode for Release
	// asks (tests: a member that never answers, without remoting to it).
	askNodeForTest func(context.Context, string, *actorpb.NodeRequest) (*actorpb.Reply, error)
	handingOffN    atomic.Int64 // its entries
	// beforeHandoff, if set, is called with the actors about to be told
	// to hand off (tests: what happens between dropMoved's lock and it).
	beforeHandoff func([]*actor.PID)
	// leaseLapsedForTest makes routing see this node's lease lapsed.
	leaseLapsedForTest atomic.Bool
	left               atomic.Bool // Shutdown has begun

	// memberGates are the gate instances of live members as of the last
	// view (owned by the membership's watcher goroutine).
	memberGates map[string]bool

	nodeHandler   atomic.Pointer[NodeHandler]
	undeliverable atomic.Pointer[func(env *actorpb.Envelope, why string)]
	leaseless     atomic.Pointer[func(*actorpb.ToConn) *actorpb.ToConn]
	viewMu        sync.Mutex
	viewHooks     []func(*membership.View)
	leaseHooks    []func(valid bool) // under viewMu

	dispatcher *poolDispatcher
	local      []localShard

	// paths are the ways to the gates this node writes to, by node
	// address, and guard what is too far behind on them (gatebacklog.go).
	paths      sync.Map                        // address -> *gatePath
	localPath  *gatePath                       // this node's own, also in paths (never forgotten)
	probes     atomic.Pointer[map[string]bool] // addresses of live gate nodes that answer probes
	wake       chan struct{}                   // wakes the prober when it sleeps (buffer of 1)
	probeTicks atomic.Int64                    // the prober's wakeups (tests)
	guard      atomic.Pointer[gateGuard]
	started    time.Time
	quit       chan struct{} // closed when Shutdown begins

	replyPIDs sync.Map // address -> *actor.PID of its replies actor

	// nodeWork is the node's work actor (receiveNodeRequest);
	// seenOutSent, when this node last told each member it is out
	// (tellSeenOut).
	nodeWork    *actor.PID
	seenOutMu   sync.Mutex
	seenOutSent map[string]time.Time

	shutdownOnce sync.Once
}

type gateHolder struct{ g GateSink }

// Start starts the node's actor system and remoting. newChild may be nil
// for a node that hosts no identities (no actors role). The node takes no
// part in the cluster until Join.
func Start(cfg Config, newChild ChildFactory, reg prometheus.Registerer, log *slog.Logger) (*System, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	s := &System{cfg: cfg, log: log, newChild: newChild, metrics: newMetrics(reg), gates: map[string]struct{}{},
		started: time.Now(), quit: make(chan struct{}), wake: make(chan struct{}, 1),
		dispatcher: newPoolDispatcher(4*runtime.GOMAXPROCS(0), 1<<16, 300)}
	s.replies.init()
	s.placement.Store(newPlacement(nil, cfg.Shards, 0))
	s.view.Store(&membership.View{})
	if newChild != nil {
		s.childProps = actor.PropsFromProducer(actor.Producer(newChild), actor.WithDispatcher(s.dispatcher))
	}
	s.local = make([]localShard, 64)
	for i := range s.local {
		s.local[i].children = map[childKey]*child{}
	}
	var err error
	if s.members, err = membership.New(cfg.membership(), reg, log); err != nil {
		s.dispatcher.stop()
		return nil, err
	}
	s.members.Subscribe(s.onView)
	s.members.SetConfirm(s.confirmLease)
	s.members.OnLease(s.onLease)

	host, portStr, _ := net.SplitHostPort(cfg.Bind)
	port, _ := strconv.Atoi(portStr)
	// Remote.Start panics when it cannot listen: find out first.
	if port != 0 {
		l, err := net.Listen("tcp", cfg.Bind)
		if err != nil {
			s.dispatcher.stop()
			return nil, fmt.Errorf("cluster: bind %s: %w", cfg.Bind, err)
		}
		l.Close()
	}
	ropts, err := remotingOptions(&cfg)
	if err != nil {
		s.dispatcher.stop()
		return nil, err
	}
	libLog := slog.New(libHandler{log.Handler()}).With("component", "protoactor")
	s.actors = actor.NewActorSystem(
		actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return libLog }),
		actor.WithDeadLetterThrottleCount(3),
		actor.WithDeadLetterThrottleInterval(10*time.Second),
	)
	s.remote = remote.NewRemote(s.actors, remote.Configure(host, port, ropts...))
	if err := s.startRemote(); err != nil {
		s.dispatcher.stop()
		return nil, err
	}
	// After the remoting's own subscription (the event stream calls its
	// handlers in the order they subscribed): when a member's endpoint
	// fails, the library first forgets it (later sends start a new one)
	// and tells its writer to stop, and only then does deadLetter fail
	// the requests sent to that member. A request is recorded (sentTo)
	// before it is sent, so one that still reached the old writer is
	// among them. In the other order a request recorded just after the
	// failing could still find the old endpoint, land behind the stop in
	// its writer's mailbox and be dropped without a word: its caller
	// waited for its deadline (a rare 10 s in
	// TestRequestToUnreachableOwnerFailsFast).
	s.actors.EventStream.Subscribe(s.deadLetter)
	s.address = s.actors.Address()
	s.localPath = &gatePath{}
	s.paths.Store(s.address, s.localPath)

	for i := range cfg.Shards {
		props := actor.PropsFromProducer(func() actor.Actor { return newHost(s) }, actor.WithDispatcher(s.dispatcher))
		if _, err := s.actors.Root.SpawnNamed(props, hostName(i)); err != nil {
			s.Shutdown()
			return nil, fmt.Errorf("cluster: spawn host %d: %w", i, err)
		}
	}
	if _, err := s.actors.Root.SpawnNamed(actor.PropsFromFunc(s.receiveReply), repliesName); err != nil {
		s.Shutdown()
		return nil, fmt.Errorf("cluster: spawn replies actor: %w", err)
	}
	if _, err := s.actors.Root.SpawnNamed(actor.PropsFromFunc(s.receiveToConn), gateSinkName); err != nil {
		s.Shutdown()
		return nil, fmt.Errorf("cluster: spawn gate sink: %w", err)
	}
	if s.nodeWork, err = s.actors.Root.SpawnNamed(actor.PropsFromFunc(s.receiveNodeWork), nodeName+"-work"); err != nil {
		s.Shutdown()
		return nil, fmt.Errorf("cluster: spawn node work actor: %w", err)
	}
	if _, err := s.actors.Root.SpawnNamed(actor.PropsFromFunc(s.receiveNodeRequest), nodeName); err != nil {
		s.Shutdown()
		return nil, fmt.Errorf("cluster: spawn node actor: %w", err)
	}
	log.Info("cluster: remoting started", "address", s.address, "cluster", cfg.Name, "tls", cfg.TLS.Enabled())
	return s, nil
}

func (s *System) startRemote() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cluster: start remoting on %s: %v", s.cfg.Bind, r)
		}
	}()
	s.remote.Start()
	return nil
}

// Join makes the node a member of the cluster: it publishes self (whose
// Address is set here to the remoting address) and returns once it sees
// itself live, with placement computed. onRejoin, if not nil, is called
// (on the membership's goroutine) when the node had to rejoin as a new
// instance: other members took it for gone, ended its gate's sessions and
// took over its identities; the System has dropped its actors, and the
// node's gate must drop its connections.
func (s *System) Join(ctx context.Context, self membership.Member, onRejoin func()) error {
	if self.Roles.Has(membership.RoleActors) != (s.newChild != nil) {
		return fmt.Errorf("cluster: the actors role needs an actor factory, and only it does")
	}
	self.Address = s.address
	self.Shards = s.cfg.Shards
	s.onRejoin = onRejoin
	if err := s.members.Join(ctx, self); err != nil {
		return err
	}
	go s.seenOutLoop()
	s.log.Info("cluster: joined", "member", s.members.View().Self.ID, "address", s.address, "provider", s.cfg.Provider,
		"roles", self.Roles.String())
	return nil
}

// SetLoad publishes the node's load to the other members (within the
// load interval).
func (s *System) SetLoad(l membership.Load) { s.members.SetLoad(l) }

// View returns the cluster as this node sees it now.
func (s *System) View() *membership.View { return s.view.Load() }

// Active returns the number of identity actors in this node's memory.
func (s *System) Active() int {
	n := 0
	for i := range s.local {
		sh := &s.local[i]
		sh.mu.Lock()
		n += len(sh.children)
		sh.mu.Unlock()
	}
	return n
}

// onView takes a new view of the membership: placement over the live
// members with the actors role, and, when this node had to rejoin as a
// new instance, a clean slate. It runs on the membership's watcher
// goroutine, one view at a time.
func (s *System) onView(v *membership.View) {
	prev := s.view.Swap(v)
	rejoined := false
	if prevSelf := s.selfID.Load(); prevSelf != nil && *prevSelf != v.Self.ID && v.Self.ID != "" {
		rejoined = true
		s.log.Warn("cluster: this node rejoined as a new instance; dropping its actors", "old", *prevSelf, "new", v.Self.ID)
		s.dropAll()
		if s.onRejoin != nil {
			s.onRejoin()
		}
	}
	id := v.Self.ID
	s.selfID.Store(&id)
	s.tellSeenOut(v)
	if v.SameShape(prev) {
		s.appliedView.Store(v.Seq)
		return
	}
	seen := map[string]bool{}
	var addrs []string
	for _, m := range hosts(v) {
		if !seen[m.Address] {
			seen[m.Address] = true
			addrs = append(addrs, m.Address)
		}
	}
	p := newPlacement(addrs, s.cfg.Shards, v.Seq, shardsIn(v))
	s.notePrior(s.placement.Load(), addrs, v, rejoined)
	s.placement.Store(p)
	s.syncGates(v)
	s.forgetDeparted(v)
	s.metrics.members.Set(float64(len(addrs)))
	s.log.Info("cluster: placement", "live_members", len(v.Live(0)), "actor_members", len(addrs), "view", v.Seq)
	if s.newChild != nil {
		s.dropMoved(p)
	}
	// Its handoffs are registered: Drain may count them.
	s.appliedView.Store(v.Seq)
	// Identities this node no longer owns are released once handed off.
	s.recheckRelease(nil)
	s.viewMu.Lock()
	hooks := s.viewHooks
	s.viewMu.Unlock()
	for _, fn := range hooks {
		fn(v)
	}
}

// shardsIn returns how many host actors the member at an address of v
// runs (0 when it does not say).
func shardsIn(v *membership.View) func(string) int {
	return func(addr string) int {
		// The fewest of the live instances there (a restarted node's old
		// instance may still be listed): any host of a member routes to
		// its identities, so a count below its own is safe, one above is
		// not.
		n := 0
		for _, m := range v.Members {
			if m.Address == addr && m.Live() && m.Shards > 0 && (n == 0 || m.Shards < n) {
				n = m.Shards
			}
		}
		return min(n, maxShards)
	}
}

// Address is this node's address in the cluster.
func (s *System) Address() string { return s.address }

// forgetDeparted drops what this node keeps per member address (the way
// to its gate, the PID of its replies actor) for the addresses no member
// of v has any more: members coming back at new addresses (pod IPs) grew
// them for the life of the process.
func (s *System) forgetDeparted(v *membership.View) {
	addrs := map[string]bool{s.address: true}
	for _, m := range v.Members {
		addrs[m.Address] = true
	}
	s.replyPIDs.Range(func(k, _ any) bool {
		if !addrs[k.(string)] {
			s.replyPIDs.Delete(k)
		}
		return true
	})
	s.paths.Range(func(k, p any) bool {
		if !addrs[k.(string)] && p != s.localPath {
			s.paths.Delete(k)
		}
		return true
	})
}

// Members returns the addresses of the members that host identities.
func (s *System) Members() []string {
	p := s.placement.Load()
	out := make([]string, len(p.members))
	for i, m := range p.members {
		out[i] = m.address
	}
	return out
}

// lingerAfterLeave is how long a leaving node keeps its remoting up after
// it left the membership: members that have not yet seen it leave may
// still send it envelopes, which it forwards to their new owners.
const lingerAfterLeave = time.Second

// drainRemoting waits until what this node sent (replies, deliveries,
// forwarded envelopes, handed-off closes) has reached the other members
// (a ping answered by each: remoting keeps order per peer), and until
// lingerAfterLeave has passed since it left, before remoting stops.
func (s *System) drainRemoting(left time.Time) {
	others := false
	for _, m := range s.View().Live(0) {
		others = others || m.Address != s.address
	}
	if !others {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
	defer cancel()
	if _, missing := s.Gather(ctx, 0, &actorpb.NodeRequest{Body: &actorpb.NodeRequest_Ping{Ping: &actorpb.Ping{}}}); len(missing) > 0 {
		s.log.Debug("cluster: members that did not answer the leaving node's ping", "members", missing)
	}
	if rest := lingerAfterLeave - time.Since(left); rest > 0 {
		time.Sleep(rest)
	}
}

// hosts are the members the view places identities on: those that serve
// with the actors role; if every one of them is draining (the last one
// is drained, or all at once), the draining ones, which keep what they
// host until they stop rather than leave it to nobody.
func hosts(v *membership.View) []membership.Member {
	if m := v.Serving(membership.RoleActors); len(m) > 0 {
		return m
	}
	return v.Live(membership.RoleActors)
}

// leavePlacement routes every identity as if this node were gone (it has
// left the membership, so no new view comes) and hands its actors off.
func (s *System) leavePlacement() {
	v := s.view.Load()
	var addrs []string
	for _, m := range hosts(v) {
		if m.Address != s.address && !slices.Contains(addrs, m.Address) {
			addrs = append(addrs, m.Address)
		}
	}
	if len(addrs) == 0 {
		// Every other host drains too: they keep their identities until
		// they stop (hosts), and the others route this node's to them.
		for _, m := range v.Live(membership.RoleActors) {
			if m.Address != s.address && !slices.Contains(addrs, m.Address) {
				addrs = append(addrs, m.Address)
			}
		}
	}
	p := newPlacement(addrs, s.cfg.Shards, v.Seq+1, shardsIn(v))
	s.placement.Store(p)
	s.dropMoved(p)
	s.recheckRelease(nil) // it owns nothing now
	s.log.Info("cluster: left; identities handed off", "to_members", len(addrs), "handing_off", s.handoffsPending())
}

// syncGates makes the live gates those of the view's live members with
// the gate role (and this node's own gate): sessions on the gates of
// members that left end, on every actor in memory here.
func (s *System) syncGates(v *membership.View) {
	now := map[string]bool{}
	probes := map[string]bool{}
	for _, m := range v.Live(membership.RoleGate) {
		if m.GateID != "" {
			now[m.GateID] = true
		}
		if m.GateProbes {
			probes[m.Address] = true
		}
	}
	s.probes.Store(&probes)
	local := ""
	if h := s.gate.Load(); h != nil {
		local = h.g.GateID()
	}
	for id := range now {
		if !s.memberGates[id] {
			s.AddGate(id)
		}
	}
	for id := range s.memberGates {
		if !now[id] && id != local {
			s.RemoveGate(id)
		}
	}
	s.memberGates = now
}

// SetGate registers the node's gate, to which ToConn messages for this
// node's connections are delivered, and adds its instance to the live
// gates.
func (s *System) SetGate(g GateSink) {
	s.gate.Store(&gateHolder{g})
	s.AddGate(g.GateID())
}

// AddGate records that the gate instance id is alive. Sessions on gate
// instances that are not recorded are taken for ended (GateAlive).
func (s *System) AddGate(id string) {
	s.gatesMu.Lock()
	s.gates[id] = struct{}{}
	n := len(s.gates)
	s.gatesMu.Unlock()
	s.metrics.gates.Set(float64(n))
}

// RemoveGate records that the gate instance id is gone (its member left,
// or the gate stopped), and tells every identity actor in this node's
// memory (a GateDown envelope), so that a session on it ends at once. An
// identity not in memory finds out when it next loads.
func (s *System) RemoveGate(id string) {
	s.gatesMu.Lock()
	_, ok := s.gates[id]
	delete(s.gates, id)
	n := len(s.gates)
	s.gatesMu.Unlock()
	if !ok {
		return
	}
	s.metrics.gates.Set(float64(n))
	told := 0
	for i := range s.local {
		sh := &s.local[i]
		sh.mu.Lock()
		for k, c := range sh.children {
			c.forwarded++
			env := &actorpb.Envelope{AppCode: uint32(k.app), Uid: k.uid,
				Body: &actorpb.Envelope_GateDown{GateDown: &actorpb.GateDown{GateId: id}}}
			if c.waitRemote || c.waitLocal {
				c.held = append(c.held, env) // behind what it holds (release.go)
			} else {
				s.actors.Root.Send(c.pid, env)
			}
			told++
		}
		sh.mu.Unlock()
	}
	s.log.Info("cluster: gate instance gone", "gate_id", id, "actors_told", told)
}

// GateAlive reports whether the gate instance id is alive (actors.Gates).
func (s *System) GateAlive(id string) bool {
	s.gatesMu.RLock()
	_, ok := s.gates[id]
	s.gatesMu.RUnlock()
	return ok
}

// Send delivers env to the actor of its identity, wherever it lives.
func (s *System) Send(env *actorpb.Envelope) { s.route(env) }

// Request sends env to its identity's actor and waits for the Reply, until
// ctx is done or the configured request timeout passes. A Failure reply is
// returned as is; the error is only for a reply that did not come.
func (s *System) Request(ctx context.Context, env *actorpb.Envelope) (*actorpb.Reply, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.RequestTimeout)
		defer cancel()
	}
	id, ch := s.replies.register()
	defer s.replies.forget(id)
	env.ReqId, env.ReplyAddress = id, s.address
	s.Send(env)
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		s.metrics.requestTimeouts.Inc()
		return nil, fmt.Errorf("%w: %s/%d/%s", ErrNoReply, ctx.Err(), env.AppCode, env.Uid)
	}
}

// RequestMany sends every envelope at once and waits for all replies (or
// ctx). Replies are in the order of envs; a missing reply is nil with its
// error set.
func (s *System) RequestMany(ctx context.Context, envs []*actorpb.Envelope) ([]*actorpb.Reply, []error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.RequestTimeout)
		defer cancel()
	}
	replies := make([]*actorpb.Reply, len(envs))
	errs := make([]error, len(envs))
	if len(envs) == 0 {
		return replies, errs
	}
	// One wait for the whole batch: the caller wakes once, when the last
	// reply is in, not once per reply.
	w := s.replies.registerMany(len(envs))
	for i, env := range envs {
		env.ReqId, env.ReplyAddress = w.base+uint64(i), s.address
	}
	for _, env := range envs {
		s.Send(env)
	}
	select {
	case <-w.done:
	case <-ctx.Done():
	}
	s.replies.forgetMany(w)
	for i := range envs {
		if replies[i] = w.slots[i].Load(); replies[i] == nil {
			s.metrics.requestTimeouts.Inc()
			errs[i] = fmt.Errorf("%w: %s/%d/%s", ErrNoReply, ctx.Err(), envs[i].AppCode, envs[i].Uid)
		}
	}
	return replies, errs
}

// Reply answers a request made with Request on any node. Without its
// lease this node answers an identity's push or presence query
// with a retryable failure, as SendToConn refuses (leaselessReply).
func (s *System) Reply(address string, r *actorpb.Reply) {
	if !s.members.LeaseValid() {
		r = leaselessReply(r)
	}
	if address == s.address {
		s.replies.deliver(r)
		return
	}
	s.actors.Root.Send(s.pidOf(&s.replyPIDs, address, repliesName), r)
}

func (s *System) pidOf(cache *sync.Map, address, name string) *actor.PID {
	if p, ok := cache.Load(address); ok {
		return p.(*actor.PID)
	}
	p := actor.NewPID(address, name)
	cache.Store(address, p)
	return p
}

// deadLetter answers, at once, a request the actor library could not
// deliver (its member's remoting cannot be reached: the member died or is
// cut off), and the requests sent to a member whose connection broke,
// instead of leaving their callers to wait for their deadline: they retry
// while membership catches up. It runs on the library's event stream, in
// the goroutine that gave up on the message.
func (s *System) deadLetter(evt any) {
	if t, ok := evt.(*remote.EndpointTerminatedEvent); ok {
		// The connection to a member broke (it died, or restarted): the
		// requests it had not answered are lost with it.
		if n := s.replies.failTo(t.Address); n > 0 {
			s.metrics.unreachable.Add(float64(n))
			s.log.Info("cluster: the connection to a member broke; its pending requests fail (retry)", "address", t.Address, "requests", n)
		}
		// So is a probe of the way to its gate: the next one, on a new
		// connection, measures it (a node back at the same address is not
		// refused for the lost probe's age).
		if v, ok := s.paths.Load(t.Address); ok {
			v.(*gatePath).probeAt.Store(0)
		}
		return
	}
	dl, ok := evt.(*actor.DeadLetterEvent)
	if !ok {
		return
	}
	switch m := dl.Message.(type) {
	case *actorpb.Envelope:
		if h := s.undeliverable.Load(); h != nil {
			s.metrics.unreachable.Inc()
			(*h)(m, "the node that owns the identity cannot be reached; retry")
		} else if m.ReqId != 0 {
			s.metrics.unreachable.Inc()
			s.fail(m, codes.Unavailable, "cluster: the node that owns the identity cannot be reached; retry")
		}
	case *actorpb.NodeRequest:
		if m.ReqId != 0 {
			s.metrics.unreachable.Inc()
			s.Reply(m.ReplyAddress, &actorpb.Reply{ReqId: m.ReqId, Body: &actorpb.Reply_Failure{Failure: &actorpb.Failure{
				Code: int32(codes.Unavailable), Message: "cluster: the node cannot be reached"}}})
		}
	}
}

// OnUndeliverable has fn answer, with why, the envelopes that cannot
// reach their identity's actor: the actor library could not deliver them
// to their identity's node (it cannot be reached), or routing refused
// them (no member hosts identities, the owner is changing, this node
// owns the identity but lost its lease). A request, a device's login,
// C2C or PULL would otherwise wait for their deadline, or for ever
// (actors.Refusal says how). Without it only requests are answered. fn
// runs on the library's goroutine or the sender's, and must not block.
func (s *System) OnUndeliverable(fn func(env *actorpb.Envelope, why string)) {
	s.undeliverable.Store(&fn)
}

// OnLeaseless has fn say what this node still sends of a ToConn while it
// holds no lease (actors.Leaseless: the answers to a device's requests,
// as retryable refusals; nil: nothing). Without it nothing is sent then.
// fn must not block.
func (s *System) OnLeaseless(fn func(*actorpb.ToConn) *actorpb.ToConn) { s.leaseless.Store(&fn) }

// fail answers an envelope that cannot be delivered: a request with a
// failure, a one-way envelope through OnUndeliverable (a device's LOGIN,
// C2C or PULL gets its refusal; the rest is counted and dropped).
func (s *System) fail(env *actorpb.Envelope, code codes.Code, msg string) {
	if env.ReqId == 0 {
		s.metrics.undeliverable.Inc()
		if h := s.undeliverable.Load(); h != nil {
			(*h)(env, msg)
		}
		return
	}
	s.Reply(env.ReplyAddress, &actorpb.Reply{ReqId: env.ReqId, Body: &actorpb.Reply_Failure{
		Failure: &actorpb.Failure{Code: int32(code), Message: msg}}})
}

func (s *System) receiveReply(ctx actor.Context) {
	if r, ok := ctx.Message().(*actorpb.Reply); ok {
		s.replies.deliver(r)
	}
}

// SendToConn delivers m to the gate that holds conn, on any node, and
// reports whether m went as it is: false when this node holds no lease
// (then only the answers to a device's requests go, as refusals:
// OnLeaseless).
func (s *System) SendToConn(conn *actorpb.ConnRef, m *actorpb.ToConn) bool {
	if !s.members.LeaseValid() {
		// Without its lease this node may no longer own the identity:
		// its owner delivers. A device's request is still answered, with
		// a refusal it retries (OnLeaseless), not left to its timeout.
		s.metrics.leaseRefused.Inc()
		if h := s.leaseless.Load(); h != nil {
			m = (*h)(m)
		} else {
			m = nil
		}
		if m != nil {
			s.sendToConn(conn, m)
		}
		return false
	}
	s.sendToConn(conn, m)
	return true
}

func (s *System) sendToConn(conn *actorpb.ConnRef, m *actorpb.ToConn) {
	p := s.path(conn.GetGateAddress())
	s.addWork(p) // probe this way (gatebacklog.go)
	if p.pid == nil {
		s.deliverLocal(conn.GetGateId(), m)
		return
	}
	m.GateId = conn.GetGateId()
	s.actors.Root.Send(p.pid, m)
}

func (s *System) receiveToConn(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actorpb.ToConn:
		s.deliverLocal(m.GateId, m)
	case *actorpb.GateProbe:
		s.answerProbe(m)
	case *actorpb.GateProbeAnswer:
		s.probeAnswered(m)
	}
}

// deliverLocal hands m to the local gate. When the connection is gone (or
// belonged to an earlier run of the gate), the identity's actor is told,
// so that it stops believing in the session.
func (s *System) deliverLocal(gateID string, m *actorpb.ToConn) {
	h := s.gate.Load()
	var err error
	if h == nil || h.g.GateID() != gateID {
		err = ErrNoGate
	} else {
		err = h.g.Deliver(m)
	}
	if (!errors.Is(err, ErrNoGate) && !errors.Is(err, ErrConnGone)) || m.Uid == "" {
		return
	}
	s.metrics.staleConns.Inc()
	s.Send(&actorpb.Envelope{AppCode: m.AppCode, Uid: m.Uid, Body: &actorpb.Envelope_Closed{Closed: &actorpb.DeviceClosed{
		Conn:   &actorpb.ConnRef{GateAddress: s.address, GateId: gateID, ConnId: m.ConnId},
		Epoch:  m.Epoch,
		Reason: "connection gone",
	}}})
}

// Shutdown leaves the cluster (other members stop routing here at once),
// hands every identity off to its new owner (each actor completes what it
// has in flight; envelopes still arriving are forwarded), waits for the
// handoffs within the request timeout, and stops remoting and the actor
// system. It is safe to call more than once.
func (s *System) Shutdown() {
	s.shutdownOnce.Do(func() {
		s.left.Store(true)
		close(s.quit)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := s.members.Leave(ctx); err != nil {
			s.log.Warn("cluster: leaving", "err", err)
		}
		cancel()
		left := time.Now()
		if s.actors != nil && s.newChild != nil {
			s.leavePlacement()
			deadline := time.Now().Add(s.cfg.RequestTimeout)
			for s.handoffsPending() > 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := s.handoffsPending(); n > 0 {
				s.log.Warn("cluster: stopping with handoffs unfinished; their callers time out and retry", "actors", n)
			}
		}
		// Release requests still waiting are answered while remoting
		// still carries the answers.
		s.finishAllWaiters()
		if s.actors != nil {
			s.drainRemoting(left)
		}
		if s.remote != nil {
			// Not the library's graceful shutdown: it flags its stream
			// readers as suspended without synchronization while they read
			// (a data race the detector reports whenever a peer is
			// connected). The handoffs are done; the server just stops.
			s.remote.Shutdown(false)
		}
		if s.actors != nil {
			s.actors.Shutdown()
		}
		s.dispatcher.stop()
	})
}

// replyRegistry correlates replies with waiting requests, without the
// library's futures (whose late replies race; see FACTS).
type replyRegistry struct {
	next   atomic.Uint64
	shards [32]replyShard
}

// init starts the ids at a random point, so that a reply meant for an
// earlier run of this node (same address, restarted) never matches a
// request of this one: ids are unique across nodes (each has its own
// reply address) and, with overwhelming odds, across restarts.
func (r *replyRegistry) init() {
	var b [8]byte
	_, _ = rand.Read(b[:])
	r.next.Store(binary.LittleEndian.Uint64(b[:]) >> 1)
}

type replyShard struct {
	mu      sync.Mutex
	waiting map[uint64]waiter
	many    map[uint64]*batchWait // requests of a RequestMany, by id
	manyTo  map[uint64]string     // where such a request went (sentTo)
}

// waiter is a request waiting for its reply: where it went (the member's
// remoting address; "" while unknown or local) and where the reply goes.
type waiter struct {
	ch chan *actorpb.Reply
	to string
}

func (r *replyRegistry) register() (uint64, chan *actorpb.Reply) {
	id := r.next.Add(1)
	if id == 0 { // 0 means "no reply wanted"
		id = r.next.Add(1)
	}
	ch := make(chan *actorpb.Reply, 1)
	sh := &r.shards[id%uint64(len(r.shards))]
	sh.mu.Lock()
	if sh.waiting == nil {
		sh.waiting = map[uint64]waiter{}
	}
	sh.waiting[id] = waiter{ch: ch}
	sh.mu.Unlock()
	return id, ch
}

// sentTo records that request id went to the member at address.
func (r *replyRegistry) sentTo(id uint64, address string) {
	sh := &r.shards[id%uint64(len(r.shards))]
	sh.mu.Lock()
	if w, ok := sh.waiting[id]; ok {
		w.to = address
		sh.waiting[id] = w
	} else if sh.many[id] != nil {
		if sh.manyTo == nil {
			sh.manyTo = map[uint64]string{}
		}
		sh.manyTo[id] = address
	}
	sh.mu.Unlock()
}

// failTo answers every request sent to the member at address with a
// retryable failure (its connection broke: a request or its reply was
// lost with it, so it may or may not have taken effect), and returns how
// many.
func (r *replyRegistry) failTo(address string) int {
	var lost []uint64
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for id, w := range sh.waiting {
			if w.to == address {
				lost = append(lost, id)
			}
		}
		for id, to := range sh.manyTo {
			if to == address {
				lost = append(lost, id)
			}
		}
		sh.mu.Unlock()
	}
	for _, id := range lost {
		r.deliver(&actorpb.Reply{ReqId: id, Body: &actorpb.Reply_Failure{Failure: &actorpb.Failure{
			Code: int32(codes.Unavailable), Message: "cluster: the connection to the node that owns the identity broke: the request may or may not have taken effect; retry with the same idempotency key"}}})
	}
	return len(lost)
}

func (r *replyRegistry) forget(id uint64) {
	sh := &r.shards[id%uint64(len(r.shards))]
	sh.mu.Lock()
	delete(sh.waiting, id)
	sh.mu.Unlock()
}

func (r *replyRegistry) deliver(rep *actorpb.Reply) {
	sh := &r.shards[rep.ReqId%uint64(len(r.shards))]
	sh.mu.Lock()
	one, ok := sh.waiting[rep.ReqId]
	delete(sh.waiting, rep.ReqId)
	var w *batchWait
	if !ok {
		if w = sh.many[rep.ReqId]; w != nil {
			delete(sh.many, rep.ReqId)
			delete(sh.manyTo, rep.ReqId)
		}
	}
	sh.mu.Unlock()
	switch {
	case ok:
		one.ch <- rep // buffered 1, and deleted above: never blocks
	case w != nil:
		w.slots[rep.ReqId-w.base].Store(rep)
		if w.left.Add(-1) == 0 {
			close(w.done)
		}
	}
}

// batchWait collects the replies of a RequestMany, whose requests have
// the consecutive ids base, base+1, …
type batchWait struct {
	base  uint64
	slots []atomic.Pointer[actorpb.Reply] // by id - base
	left  atomic.Int64                    // replies still missing
	done  chan struct{}                   // closed when none is
}

// registerMany reserves n consecutive ids (none of them 0) and waits for
// their replies together.
func (r *replyRegistry) registerMany(n int) *batchWait {
	base := r.next.Add(uint64(n)) - uint64(n) + 1
	for base == 0 || base+uint64(n-1) < base { // the block holds 0 (wrapped): take the next
		base = r.next.Add(uint64(n)) - uint64(n) + 1
	}
	w := &batchWait{base: base, slots: make([]atomic.Pointer[actorpb.Reply], n), done: make(chan struct{})}
	w.left.Store(int64(n))
	for i := range n {
		id := base + uint64(i)
		sh := &r.shards[id%uint64(len(r.shards))]
		sh.mu.Lock()
		if sh.many == nil {
			sh.many = map[uint64]*batchWait{}
		}
		sh.many[id] = w
		sh.mu.Unlock()
	}
	return w
}

// forgetMany drops what is still registered of w: replies that come
// later are not waited for.
func (r *replyRegistry) forgetMany(w *batchWait) {
	if w.left.Load() == 0 {
		return // every reply came, and took its entry with it
	}
	for i := range w.slots {
		id := w.base + uint64(i)
		sh := &r.shards[id%uint64(len(r.shards))]
		sh.mu.Lock()
		delete(sh.many, id)
		delete(sh.manyTo, id)
		sh.mu.Unlock()
	}
}

// leaselessWhy is what an app-server is told of a request its identity's
// actor handled while this node held no lease.
const leaselessWhy = "cluster: the node serving this identity lost its membership lease while handling it: it may or may not have taken effect, and a push was not delivered to the device; retry (a push with the same idempotency key is not stored twice)"

// leaselessReply is r as a node without its lease sends it. An identity's
// actor may finish a request after the lease lapsed: a stored push's
// write completes, a kick's session write. A push's success would be a
// promise the node cannot keep: SendToConn no longer delivers it, and no
// other node activates the identity to deliver what it stored until
// something else arrives for it. So the success goes out as UNAVAILABLE:
// the app-server retries, the retry wakes the identity at its owner, and
// the owner delivers (an idempotency key makes the retry find the stored
// push). A presence answer may be stale: it goes as UNAVAILABLE too. A
// kick that ended a session goes as it is: the session's end is stored
// (the write would have been fenced had another node claimed the
// identity) and its KICKOUT goes (actors.Leaseless), so it did what it
// says, and a retry would find the device offline. One that found no
// session may be stale, as a presence answer: UNAVAILABLE. Failures and
// replies that are not an identity's go as they are.
func leaselessReply(r *actorpb.Reply) *actorpb.Reply {
	switch b := r.Body.(type) {
	case *actorpb.Reply_Kick:
		if b.Kick.GetWasOnline() {
			return r
		}
	case *actorpb.Reply_Push, *actorpb.Reply_Presence:
	default:
		return r
	}
	return &actorpb.Reply{ReqId: r.ReqId, Body: &actorpb.Reply_Failure{Failure: &actorpb.Failure{Code: int32(codes.Unavailable), Message: leaselessWhy}}}
}
