package api

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/tap"

	"github.com/courier-im/courier/messages/apipb"
)

// What an API client can make the node hold before it is authenticated:
// a connection (at most Limits.MaxConnections of them), one header block
// per connection being read (at most maxHeaderListSize), and, for the
// few calls that need no key (health checks, reflection), their requests
// (at most Limits.MaxUnauthenticatedCalls of them at once, each up to
// Limits.MaxRequestBytes). Every other call is authenticated from its
// headers, in gRPC's tap handle, before a byte of its request is read:
// a call without a valid key is refused there and its body discarded.
//
// What a client with a key can make the node hold is bounded the same
// way, node-wide: at most Limits.MaxCallsInFlight calls open at once
// (each reading a request of up to Limits.MaxRequestBytes) and
// Limits.MaxUpstreamStreams upstream streams; a call beyond is refused in
// the tap, before its request is read. Each app (the appcode of the
// call's key; operator keys together are one more) may hold only its
// share of them (Limits.MaxAppCallsInFlight, MaxAppUpstreamStreams), and
// of the pushes in flight (MaxAppPushesInFlight, in Server.admitPushes),
// so that the others always find room.

// maxHeaderListSize bounds the headers (metadata) of one call. gRPC's
// default is 16 MiB; an API call sends a few hundred bytes.
const maxHeaderListSize = 64 << 10

// overConns is how many connections over Limits.MaxConnections are
// served at once just long enough to answer their calls with
// RESOURCE_EXHAUSTED (so that the client learns why); beyond them a
// connection over the cap is closed at once. overGrace is how long such
// a connection lives.
const (
	overConns = 16
	overGrace = 2 * time.Second
)

// admission holds the API's bounds on connections and on calls without
// a key, and their metrics. Its methods are safe for concurrent use: the
// tap runs on gRPC's transport goroutines, Accept on gRPC's serving one.
type admission struct {
	keys      Keys
	maxConns  int
	overConns int // overConns, lowered by tests
	maxPublic int64
	// codec counts the answers encoded and not yet written (unread);
	// maxUnread bounds them (Limits.MaxUnreadAnswerBytes; 0: no bound).
	codec     *codec
	maxUnread int64
	public    atomic.Int64 // unauthenticated calls open
	calls     atomic.Int64 // calls with a key open, but upstream streams
	streams   atomic.Int64 // upstream streams open
	// The two budgets a call with a key takes a slot in, one or the
	// other, with its app's share of it.
	callBudget, streamBudget budget
	// Each app's share: its counts, by scope (read-only after
	// newAdmission: the keys are fixed), and the share of pushes.
	shares       map[int]*share
	maxAppPushes int64
	mu           sync.Mutex
	open, over   int
	reaping      int             // keyless connections being closed, still in open
	overAddrs    map[string]bool // remote addresses of connections over the cap
	// keyless are the connections within the cap that have made no call
	// with a key yet, by remote address: past half the cap, one that
	// makes none for keylessGrace is closed (reapKeyless), so that
	// clients without a key cannot hold the slots app-servers need.
	keyless       map[string]*limitedConn
	nKeyless      atomic.Int32 // len(keyless), read without mu
	keylessClosed prometheus.Counter
	keylessGrace  time.Duration // keylessGrace (tests shorten it)

	connsOpen    prometheus.Gauge
	connsRefused prometheus.Counter
	callsRefused *prometheus.CounterVec
	// The node's push admission (Server.admitPushes).
	pushesRefused *prometheus.CounterVec
	gateWaits     prometheus.Counter
}

func newAdmission(keys Keys, l Limits) *admission {
	appCalls, appStreams, appPushes := l.AppShares()
	a := &admission{
		codec: &codec{}, maxUnread: l.MaxUnreadAnswerBytes,
		keys: keys, maxConns: l.MaxConnections, overConns: overConns, maxPublic: int64(l.MaxUnauthenticatedCalls),
		shares: shares(keys), maxAppPushes: int64(appPushes),
		overAddrs: map[string]bool{}, keyless: map[string]*limitedConn{}, keylessGrace: keylessGrace,
		keylessClosed: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_api_keyless_connections_closed_total",
			Help: "API connections closed because they made no call with a key within 10 s while more than half of api.max-connections were open."}),
		connsOpen: prometheus.NewGauge(prometheus.GaugeOpts{Name: "courier_api_connections",
			Help: "Open connections to the gRPC API (within api.max-connections)."}),
		connsRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_api_connections_refused_total",
			Help: "Connections to the gRPC API over api.max-connections: their calls got RESOURCE_EXHAUSTED, or they were closed at once."}),
		callsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "courier_api_calls_refused_total",
			Help: "API calls refused before their request was read, by reason: unauthenticated (no or unknown key), unauthenticated_calls (over api.max-unauthenticated-calls), calls_in_flight (over api.max-calls-in-flight), app_calls_in_flight (over api.max-app-calls-in-flight), upstream_streams (over api.max-upstream-streams), app_upstream_streams (over api.max-app-upstream-streams), unread_answers (over api.max-unread-answer-bytes), app_unread_answers (over an app's three quarters of it), max_connections (on a connection over api.max-connections)."},
			[]string{"reason"}),
		pushesRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "courier_api_pushes_refused_total",
			Help: "Pushes refused with RESOURCE_EXHAUSTED because the node was overloaded (for pushes_in_flight and app_pushes_in_flight also the Presence uids, kicks and blacklist kicks, which share that budget), by reason: gate_backlog (api.max-gate-backlog), remote_gate_backlog (pushes their identity's actor refused because deliveries to the device's gate, on another node, were later than api.max-gate-backlog), push_delay (api.max-push-delay), pushes_in_flight (api.max-pushes-in-flight), app_pushes_in_flight (api.max-app-pushes-in-flight)."},
			[]string{"reason"}),
		gateWaits: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_api_gate_backlog_waits_total",
			Help: "Push calls that found the node's gate behind (api.max-gate-backlog) and waited for it; those it did not catch up for are also in courier_api_pushes_refused_total{reason=\"gate_backlog\"}."}),
	}
	a.callBudget = budget{n: &a.calls, max: int64(l.MaxCallsInFlight), appMax: int64(appCalls),
		app: func(s *share) *atomic.Int64 { return &s.calls }, label: "calls_in_flight", appLabel: "app_calls_in_flight",
		refused: refusalf(codes.ResourceExhausted, apipb.ReasonNodeOverloaded, "api.max-calls-in-flight",
			"node overloaded: %d API calls open at once on this node, the most it reads (api.max-calls-in-flight); nothing of this call was read: retry later, backing off, and put many pushes in one PushMany", l.MaxCallsInFlight),
		appRefused: refusalf(codes.ResourceExhausted, apipb.ReasonNodeOverloaded, "api.max-app-calls-in-flight",
			"node overloaded for this app: %d of its API calls open at once on this node, its share (api.max-app-calls-in-flight); nothing of this call was read: retry later, backing off, and put many pushes in one PushMany", appCalls)}
	a.streamBudget = budget{n: &a.streams, max: int64(l.MaxUpstreamStreams), appMax: int64(appStreams),
		app: func(s *share) *atomic.Int64 { return &s.streams }, label: "upstream_streams", appLabel: "app_upstream_streams",
		refused: refusalf(codes.ResourceExhausted, apipb.ReasonLimitReached, "api.max-upstream-streams",
			"too many upstream streams open on this node: at most %d (api.max-upstream-streams); subscribe on another node, or retry later", l.MaxUpstreamStreams),
		appRefused: refusalf(codes.ResourceExhausted, apipb.ReasonLimitReached, "api.max-app-upstream-streams",
			"too many upstream streams open on this node for this app: at most %d (api.max-app-upstream-streams); close streams you no longer read, subscribe on another node, or retry later", appStreams)}
	return a
}

// budget is a node-wide count of open calls with a key (calls, or
// upstream streams), its bound, each app's share of it, and the
// refusals for each being full, made once: their messages only name the
// bounds, and a flood of refusals costs no allocation for them.
type budget struct {
	n                   *atomic.Int64
	max, appMax         int64
	app                 func(*share) *atomic.Int64 // the app's count of it
	label, appLabel     string                     // courier_api_calls_refused_total's reasons
	refused, appRefused error
}

// share is what the calls with the keys of one app hold: calls, upstream
// streams and pushes in flight.
type share struct{ calls, streams, pushes, unread atomic.Int64 }

func shares(keys Keys) map[int]*share {
	m := map[int]*share{}
	for _, app := range keys {
		if m[app] == nil {
			m[app] = &share{}
		}
	}
	return m
}

func (a *admission) collectors() []prometheus.Collector {
	callsOpen := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "courier_api_calls_open",
		Help: "API calls with a key open on the node, upstream streams apart (within api.max-calls-in-flight)."},
		func() float64 { return float64(a.calls.Load()) })
	streamsOpen := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "courier_api_upstream_streams_open",
		Help: "Upstream streams open on the node (within api.max-upstream-streams)."},
		func() float64 { return float64(a.streams.Load()) })
	unread := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "courier_api_unread_answer_bytes",
		Help: "Bytes of API answers over 1 KiB encoded and not yet written to their callers' connections (within api.max-unread-answer-bytes)."},
		func() float64 { return float64(a.codec.unread.Load()) })
	return []prometheus.Collector{a.connsOpen, a.connsRefused, a.keylessClosed, a.callsRefused, a.pushesRefused, a.gateWaits, callsOpen, streamsOpen, unread}
}

// upstreamMethod is the one long-lived call: it is bounded apart
// (Limits.MaxUpstreamStreams), so that app-servers' subscriptions do not
// take the slots of pushes.
const upstreamMethod = "/courier.v1.Courier/Upstream"

// healthCheckMethod is the load balancers' call (see admission.tap).
const healthCheckMethod = "/grpc.health.v1.Health/Check"

// call is what the tap learned of a call: its scope (for a call with a
// key), and the slots it holds, in the node's count of open calls and in
// its app's (app: nil for calls without a key).
type call struct {
	sc     scope
	n, app *atomic.Int64
	stop   func() bool // of the release at the call's end
}

// Which count refused a call (call.take).
const (
	taken = iota
	nodeFull
	appFull
)

// take counts the call in its app's count (app, within appMax; nil for
// none) and in the node's (n, within max), until ctx (the call's) ends.
// It reports which was full (the node's, if both), counting nothing, or
// taken. The app's share
// is taken first: an app that keeps calling past it must not, even for
// the instant of each attempt, fill the node's count the others' calls
// need.
func (c *call) take(ctx context.Context, n *atomic.Int64, max int64, app *atomic.Int64, appMax int64) int {
	if app != nil && app.Add(1) > appMax {
		app.Add(-1)
		if n.Load() >= max {
			return nodeFull // the node's is the bound to name
		}
		return appFull
	}
	if n.Add(1) > max {
		n.Add(-1)
		if app != nil {
			app.Add(-1)
		}
		return nodeFull
	}
	// The stream's context ends with the call, whatever its outcome; but
	// only after its answer is written, so a unary call gives its slot
	// back as its handler returns (admission.unary): a client that calls
	// again as soon as it has its answer finds the slot free.
	c.n, c.app, c.stop = n, app, context.AfterFunc(ctx, c.ended)
	return taken
}

func (c *call) ended() {
	c.n.Add(-1)
	if c.app != nil {
		c.app.Add(-1)
	}
}

// release gives the call's slots back now, unless its end already did.
func (c *call) release() {
	if c.stop != nil && c.stop() {
		c.ended()
	}
}

// unary authenticates a call the tap did not (on a server without it),
// and gives a unary call's slot back when its handler returns.
func (a *admission) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if public(info.FullMethod) {
		return h(ctx, req)
	}
	ctx, err := a.keys.authenticated(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := h(ctx, req)
	if c, ok := ctx.Value(scopeKey{}).(*call); ok {
		c.release()
	}
	return resp, err
}

// tap admits or refuses a call from its headers, before gRPC reads its
// request. It runs on the connection's reader goroutine, under the
// transport's lock: it must not block.
func (a *admission) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if a.isOver(ctx) {
		a.callsRefused.WithLabelValues("max_connections").Inc()
		return nil, refusalf(codes.ResourceExhausted, apipb.ReasonLimitReached, "api.max-connections",
			"too many API connections: this node serves at most %d at once (api.max-connections), and this connection is closed in a moment; share connections between calls, or retry later", a.maxConns)
	}
	if public(info.FullMethodName) {
		// Long-lived calls without a key (health Watch, reflection)
		// hold at most half of the slots: the rest is kept for the load
		// balancers' health Checks, which a few streams held open would
		// otherwise refuse, taking the node out of service.
		// (With api.max-unauthenticated-calls 1, none: that one slot
		// is the checks'.)
		limit, what := a.maxPublic, "calls"
		if info.FullMethodName != healthCheckMethod {
			limit, what = a.maxPublic/2, "streams (health Watch, reflection), half of api.max-unauthenticated-calls"
		}
		if (&call{}).take(ctx, &a.public, limit, nil, 0) != taken {
			a.callsRefused.WithLabelValues("unauthenticated_calls").Inc()
			return nil, refusalf(codes.ResourceExhausted, apipb.ReasonLimitReached, "api.max-unauthenticated-calls",
				"too many calls without an API key at once: at most %d %s (api.max-unauthenticated-calls %d, health checks included); retry later",
				limit, what, a.maxPublic)
		}
		return ctx, nil
	}
	sc, err := a.keys.lookup(info.Header)
	if err != nil {
		a.callsRefused.WithLabelValues("unauthenticated").Inc()
		return nil, err
	}
	a.keyed(ctx)
	sc.sh = a.shares[sc.app]
	// The app's answers first: an app whose callers do not read theirs
	// holds at most three quarters of the bound, and is refused alone.
	if sh := sc.sh; a.maxUnread > 0 && sh != nil && sh.unread.Load() > a.maxUnread*3/4 {
		a.callsRefused.WithLabelValues("app_unread_answers").Inc()
		return nil, refusalf(codes.ResourceExhausted, apipb.ReasonNodeOverloaded, "api.max-unread-answer-bytes",
			"node overloaded for this app: %d MiB of its answers wait for their callers to read them, its share is %d MiB (three quarters of api.max-unread-answer-bytes); nothing of this call was read: read your answers, retry later",
			sh.unread.Load()>>20, a.maxUnread*3/4>>20)
	}
	if n := a.codec.unread.Load(); a.maxUnread > 0 && n > a.maxUnread {
		a.callsRefused.WithLabelValues("unread_answers").Inc()
		return nil, refusalf(codes.ResourceExhausted, apipb.ReasonNodeOverloaded, "api.max-unread-answer-bytes",
			"node overloaded: %d MiB of answers wait for their callers to read them (limit %d MiB, api.max-unread-answer-bytes); nothing of this call was read: read your answers, retry later",
			n>>20, a.maxUnread>>20)
	}
	b := &a.callBudget
	if info.FullMethodName == upstreamMethod {
		b = &a.streamBudget
	}
	c := &call{sc: sc}
	switch c.take(ctx, b.n, b.max, b.app(sc.sh), b.appMax) {
	case appFull:
		a.callsRefused.WithLabelValues(b.appLabel).Inc()
		return nil, b.appRefused
	case nodeFull:
		a.callsRefused.WithLabelValues(b.label).Inc()
		return nil, b.refused
	}
	return context.WithValue(ctx, scopeKey{}, c), nil
}

// keyed notes that ctx's connection made a call with a key: it is no
// longer reaped as keyless.
func (a *admission) keyed(ctx context.Context) {
	if a.nKeyless.Load() == 0 {
		return
	}
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return
	}
	key := p.Addr.String()
	a.mu.Lock()
	delete(a.keyless, key)
	a.nKeyless.Store(int32(len(a.keyless)))
	a.mu.Unlock()
}

// keylessGrace is how long a connection may go without a call with a
// key while the node is past half its connection cap.
const keylessGrace = 10 * time.Second

// reapKeyless closes lc if it is still keyless and the node is past half
// its cap, and otherwise looks again keylessGrace later while it stays
// keyless (a load balancer's health checks need no key).
func (a *admission) reapKeyless(key string, lc *limitedConn) {
	a.mu.Lock()
	if a.keyless[key] != lc {
		a.mu.Unlock()
		return
	}
	// Those being closed count out already: their slots are given back
	// only once closed, and timers fire together.
	if a.open-a.reaping <= a.maxConns/2 {
		a.mu.Unlock()
		time.AfterFunc(a.keylessGrace, func() { a.reapKeyless(key, lc) })
		return
	}
	delete(a.keyless, key)
	a.nKeyless.Store(int32(len(a.keyless)))
	a.reaping++
	lc.reaped = true
	a.mu.Unlock()
	a.keylessClosed.Inc()
	_ = lc.Close()
}

func (a *admission) isOver(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.overAddrs) > 0 && a.overAddrs[p.Addr.String()]
}

// Listener wraps the API's listener with the connection cap
// (Limits.MaxConnections): gRPC serves at most that many connections at
// once. A connection over the cap is answered: its calls are refused with
// RESOURCE_EXHAUSTED naming api.max-connections, and it is closed after
// 2 s; when more than 16 such connections are open, further ones are
// closed at once. Both are counted (courier_api_connections_refused_total).
func (s *Server) Listener(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, a: s.adm}
}

// Collectors returns the API's metrics, for a node's registry.
func (s *Server) Collectors() []prometheus.Collector { return s.adm.collectors() }

type limitListener struct {
	net.Listener
	a *admission
}

// Accept returns the next connection within the cap, or one over it that
// will be answered; it closes those that cannot be.
func (l *limitListener) Accept() (net.Conn, error) {
	a := l.a
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		a.mu.Lock()
		switch {
		case a.open < a.maxConns:
			a.open++
			key := c.RemoteAddr().String()
			lc := &limitedConn{Conn: c}
			lc.release = func() {
				a.mu.Lock()
				a.open--
				if lc.reaped {
					a.reaping--
				}
				if a.keyless[key] == lc {
					delete(a.keyless, key)
					a.nKeyless.Store(int32(len(a.keyless)))
				}
				a.mu.Unlock()
				a.connsOpen.Dec()
			}
			a.keyless[key] = lc
			a.nKeyless.Store(int32(len(a.keyless)))
			a.mu.Unlock()
			a.connsOpen.Inc()
			time.AfterFunc(a.keylessGrace, func() { a.reapKeyless(key, lc) })
			return lc, nil
		case a.over < a.overConns:
			key := c.RemoteAddr().String()
			a.over++
			a.overAddrs[key] = true
			a.mu.Unlock()
			a.connsRefused.Inc()
			lc := &limitedConn{Conn: c, release: func() {
				a.mu.Lock()
				a.over--
				delete(a.overAddrs, key)
				a.mu.Unlock()
			}}
			// gRPC resets the connection's deadlines after its handshake;
			// a timer closes it whatever gRPC does (a second Close is
			// harmless).
			time.AfterFunc(overGrace, func() { _ = lc.Close() })
			return lc, nil
		default:
			a.mu.Unlock()
			a.connsRefused.Inc()
			_ = c.Close()
		}
	}
}

// limitedConn gives its slot back when closed.
type limitedConn struct {
	net.Conn
	release func()
	once    sync.Once
	reaped  bool // closed as keyless (under the admission's mu)
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
