package api

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/actors/stats"
	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/cluster/upstream"
	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
)

// Requester sends requests to identities (implemented by *cluster.System).
type Requester interface {
	Request(ctx context.Context, env *actorpb.Envelope) (*actorpb.Reply, error)
	RequestMany(ctx context.Context, envs []*actorpb.Envelope) ([]*actorpb.Reply, []error)
}

// Limits bound what a call may ask.
type Limits struct {
	// MaxPayload is the largest push payload (default 60 KiB, to fit a
	// 64 KiB frame with its envelope).
	MaxPayload int
	// MaxBatch is the most items of a PushMany or uids of a Presence
	// (default 1000).
	MaxBatch int
	// DefaultTTL and MaxTTL: a push without ttl_ms expires after
	// DefaultTTL; none may ask for more than MaxTTL.
	DefaultTTL time.Duration
	MaxTTL     time.Duration
	// MaxIdempotencyKey is the longest idempotency key (default 128 bytes).
	MaxIdempotencyKey int

	// MaxRequestBytes is the largest request message the server reads
	// (default 4 MiB, gRPC's own default): a PushMany must fit in it, so
	// MaxBatch pushes of up to MaxRequestBytes/MaxBatch bytes each (4 KiB
	// at the defaults), or fewer larger ones. A larger request is refused
	// by gRPC with RESOURCE_EXHAUSTED before any of it is handled. With
	// MaxCallsInFlight, MaxUpstreamStreams and MaxUnauthenticatedCalls it
	// bounds the request bytes the node holds.
	MaxRequestBytes int
	// MaxConcurrentStreams bounds the calls open at once on one
	// connection (default 256); further calls wait in the client.
	MaxConcurrentStreams uint32
	// KeepaliveMinTime is the shortest interval at which a client may
	// ping (default 10 s, also without a call open); faster pingers get
	// GOAWAY too_many_pings.
	KeepaliveMinTime time.Duration
	// KeepaliveTime: a connection quiet for this long is pinged (default
	// 1 minute), and closed if the ping is not answered within
	// KeepaliveTimeout (default 20 s): an app-server that vanished stops
	// holding its upstream deliveries.
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration
	// MaxConnectionIdle closes a connection with no call open for this
	// long (default 5 minutes) with GOAWAY; clients reconnect on demand.
	MaxConnectionIdle time.Duration

	// MaxPushesInFlight bounds the pushes the node has accepted from
	// calls and not yet answered, all callers together (default 4096): a
	// Push or PushMany that would go beyond is refused at once with
	// RESOURCE_EXHAUSTED. It bounds how long pushes can queue in the node
	// (about this many divided by the node's rate) and the memory they
	// hold; it must hold one PushMany of MaxBatch.
	MaxPushesInFlight int
	// MaxGateBacklog refuses new Push and PushMany calls with
	// RESOURCE_EXHAUSTED while the frames the local gate has to write
	// have been waiting longer than this for its event loops (the
	// smallest wait over the last 100 ms, gate.DelayWindow, while frames
	// still wait; default 20 ms; 0: never): the devices' connections are
	// not keeping up with what is pushed, and more would only queue.
	// Fire-and-forget pushes are answered before they are written, so
	// this is what bounds their delivery latency under overload. A call
	// that finds the gate behind waits up to this long for it to catch
	// up before it is refused: a saturated loop catches up within a
	// drain or two, and a call held that long costs the node less than
	// one refused and sent again (measured: a third of the refusals).
	// The node's identity actors refuse pushes to devices on other
	// nodes' gates that are this far behind (cluster.System.SetGateGuard,
	// set from this on every node).
	MaxGateBacklog time.Duration
	// MaxPushDelay refuses new Push and PushMany calls at once with
	// RESOURCE_EXHAUSTED while push calls have been taking longer than
	// this to be answered (the smallest over the last 100 ms) and the
	// node holds at least MaxBatch pushes in flight (default 50 ms; 0:
	// never): pushes are queueing in the node, and more would only wait
	// longer. A node with fewer pushes in flight serves every call,
	// however slow its disk.
	MaxPushDelay time.Duration
	// MaxConnections bounds the API connections open at once (default
	// 1024; Server.Listener). Calls on a connection over it get
	// RESOURCE_EXHAUSTED, and it is closed.
	MaxConnections int
	// MaxUnauthenticatedCalls bounds the calls without an API key
	// (health checks, reflection) open at once on the node (default 16):
	// with MaxConnections, it bounds what a client without a key can make
	// the node hold. Other calls are authenticated before their request
	// is read.
	MaxUnauthenticatedCalls int
	// MaxCallsInFlight bounds the calls with a key open at once on the
	// node, all clients and connections together, upstream streams apart
	// (default 256). A call beyond is refused with RESOURCE_EXHAUSTED from
	// its headers, before its request is read: with MaxRequestBytes, this
	// is what bounds the request bytes an app-server can make the node
	// hold (MaxConnections × MaxConcurrentStreams alone allow 262,144
	// calls). 256 calls answered in 5 ms each are 51,200 calls a second.
	MaxCallsInFlight int
	// MaxUpstreamStreams bounds the Upstream streams open at once on the
	// node (default 128): each is a subscription attached to every gate
	// of the cluster.
	MaxUpstreamStreams int
	// MaxAppCallsInFlight, MaxAppUpstreamStreams and MaxAppPushesInFlight
	// are one app's share of MaxCallsInFlight, MaxUpstreamStreams and
	// MaxPushesInFlight: what the calls with keys of one appcode may hold
	// at once (operator keys count together as one more app). 0 (the
	// default) is three quarters of the node's (192, 96 and 3072 at their
	// defaults; for pushes at least MaxBatch), so that one app-server that
	// floods the node, or leaks streams, leaves the other apps a quarter
	// of it (64 calls answered in 5 ms are 12,800 calls a second): a
	// passenger app's retry storm does not stop the orders to drivers,
	// and an app alone on a node loses little of it.
	// Beyond its share, an app's call is refused with RESOURCE_EXHAUSTED
	// (NODE_OVERLOADED for calls and pushes, LIMIT_REACHED for streams),
	// naming the setting.
	MaxAppCallsInFlight   int
	MaxAppUpstreamStreams int
	MaxAppPushesInFlight  int
	// MaxUnreadAnswerBytes bounds the bytes of answers (each over 1 KiB)
	// encoded and not yet written to their callers' connections (default
	// 128 MiB; 0: no bound). A call's slot is free once its handler
	// returns, before its answer is written: a client that does not read
	// its answers (its HTTP/2 window kept shut) would otherwise have the
	// node keep one per stream it opens, megabytes for a GetAccessLists.
	// Past it, calls with a key are refused with RESOURCE_EXHAUSTED from
	// their headers until callers read.
	MaxUnreadAnswerBytes int64
}

// AppShares returns one app's shares of the node's calls, upstream
// streams and pushes in flight, the defaults (0) resolved.
func (l Limits) AppShares() (calls, streams, pushes int) {
	share := func(set, node, least int) int {
		if set > 0 {
			return set
		}
		return min(node, max(node*3/4, least))
	}
	return share(l.MaxAppCallsInFlight, l.MaxCallsInFlight, 1), share(l.MaxAppUpstreamStreams, l.MaxUpstreamStreams, 1),
		share(l.MaxAppPushesInFlight, l.MaxPushesInFlight, l.MaxBatch)
}

// DefaultLimits returns the defaults documented on Limits.
func DefaultLimits() Limits {
	return Limits{MaxPayload: 60 << 10, MaxBatch: 1000, DefaultTTL: 72 * time.Hour, MaxTTL: 30 * 24 * time.Hour, MaxIdempotencyKey: 128,
		MaxRequestBytes: 4 << 20, MaxConcurrentStreams: 256, KeepaliveMinTime: 10 * time.Second,
		KeepaliveTime: time.Minute, KeepaliveTimeout: 20 * time.Second, MaxConnectionIdle: 5 * time.Minute,
		MaxPushesInFlight: 4096, MaxGateBacklog: 20 * time.Millisecond, MaxPushDelay: 50 * time.Millisecond,
		MaxConnections: 1024, MaxUnauthenticatedCalls: 16, MaxCallsInFlight: 256, MaxUpstreamStreams: 128,
		MaxUnreadAnswerBytes: 128 << 20}
}

// Deps are what the server works with.
type Deps struct {
	Keys   Keys
	Req    Requester
	Limits Limits
	// Lists, Stats and Upstream may be nil on a node without a gate.
	Lists    Lists
	Stats    *stats.Recorder
	Upstream *upstream.Hub
	// Backlog, if set, is the local gate's (gate.Gate.Backlog), for
	// Limits.MaxGateBacklog.
	Backlog func() time.Duration
	// Members returns the node's view of the cluster, and Provider names
	// the membership provider (for Members; may be nil).
	Members  func() *membership.View
	Provider string
	// ClusterStats, if set, gathers every live node's statistics for
	// Stats (otherwise Stats answers with this node's Stats alone).
	ClusterStats ClusterStats
	// Drain begins a node's drain (for Drain; nil: unavailable).
	Drain Drainer
}

// ClusterStats returns the raw statistics of app of every live node that
// answered before ctx ended, and the names of those that did not.
type ClusterStats func(ctx context.Context, app uint16, msgtypes []uint32, window time.Duration) ([][]stats.RawStat, []string)

// Server implements apipb.CourierServer.
type Server struct {
	apipb.UnimplementedCourierServer
	keys   Keys
	req    Requester
	limits Limits
	now    func() time.Time
	lists  Lists
	stats  *stats.Recorder
	up     *upstream.Hub

	backlog  func() time.Duration
	inFlight atomic.Int64     // pushes accepted from calls, not yet answered
	calls    gate.DelayWindow // how long push calls take to be answered
	adm      *admission
	view     func() *membership.View
	prov     string

	clusterStats ClusterStats
	drain        Drainer
	// listsMu is held by an access-list edit that adds, from its check
	// of the list's size to its end (a channel: the wait ends with the
	// call's context).
	listsMu chan struct{}
}

// New returns a server.
func New(d Deps) *Server {
	return &Server{keys: d.Keys, req: d.Req, limits: d.Limits, now: time.Now, lists: d.Lists, stats: d.Stats, up: d.Upstream,
		backlog: d.Backlog, adm: newAdmission(d.Keys, d.Limits), view: d.Members, prov: d.Provider, clusterStats: d.ClusterStats,
		drain: d.Drain, listsMu: make(chan struct{}, 1)}
}

// admitPushes takes n pushes into the node's budget (release gives them back,
// abandonedHold later if the call's ctx ended first,
// and records how long the call took), or refuses them at once with
// RESOURCE_EXHAUSTED when the node is behind (Limits.MaxGateBacklog,
// MaxPushDelay) or the budget is spent (MaxPushesInFlight).
func (s *Server) admitPushes(sc scope, n int) (release func(ctx context.Context), err error) {
	if max := s.limits.MaxGateBacklog; max > 0 && s.backlog != nil {
		b := s.backlog()
		if b > max {
			s.adm.gateWaits.Inc()
		}
		for end := time.Now().Add(max); b > max && time.Now().Before(end); b = s.backlog() {
			time.Sleep(2 * time.Millisecond)
		}
		if b > max {
			s.adm.pushesRefused.WithLabelValues("gate_backlog").Add(float64(n))
			return nil, refusalf(codes.ResourceExhausted, apipb.ReasonNodeOverloaded, "api.max-gate-backlog",
				"node overloaded: its gate's connections are %v behind what was pushed (limit %v, api.max-gate-backlog); nothing was accepted: retry later, backing off",
				b.Round(time.Millisecond), max)
		}
	}
	if max := s.limits.MaxPushDelay; max > 0 && s.inFlight.Load() >= int64(s.limits.MaxBatch) {
		if d := s.calls.Standing(time.Now()); d > max {
			s.adm.pushesRefused.WithLabelValues("push_delay").Add(float64(n))
			return nil, refusalf(codes.ResourceExhausted, apipb.ReasonNodeOverloaded, "api.max-push-delay",
				"node overloaded: pushes have been taking %v to be answered (limit %v, api.max-push-delay); nothing was accepted: retry later, backing off",
				d.Round(time.Millisecond), max)
		}
	}
	give, err := s.admitRequests(sc, n)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	return func(ctx context.Context) {
		now := time.Now()
		s.calls.Observe(now.Sub(start), now)
		give(ctx)
	}, nil
}

// refuseNodeRequests is the refusal of n requests over the node's budget
// (in: the requests in flight without them).
func (s *Server) refuseNodeRequests(in int64, n int) error {
	s.adm.pushesRefused.WithLabelValues("pushes_in_flight").Add(float64(n))
	return refusalf(codes.ResourceExhausted, apipb.ReasonNodeOverloaded, "api.max-pushes-in-flight",
		"node overloaded: %d pushes in flight, limit %d (api.max-pushes-in-flight); nothing was accepted: retry later, backing off",
		in, s.limits.MaxPushesInFlight)
}

// admitRequests takes n requests to actors (pushes, presence queries,
// kicks) into the node's budget of requests in flight and the app's
// share of it (release gives them back, abandonedHold later if the
// call's ctx ended first), or refuses them at once with
// RESOURCE_EXHAUSTED. Presence and Kick take it too: a caller that gives
// up on its calls at once would otherwise leave any number of queries
// queued in the actors.
func (s *Server) admitRequests(sc scope, n int) (release func(ctx context.Context), err error) {
	// The app's share first: an app over it must not take the node's
	// budget from the others, even for the instant of each attempt. The
	// refusal names the node's bound if that one is full too.
	app := sc.sh
	if app != nil {
		if in := app.pushes.Add(int64(n)); in > s.adm.maxAppPushes {
			app.pushes.Add(-int64(n))
			if max := s.limits.MaxPushesInFlight; max > 0 && s.inFlight.Load()+int64(n) > int64(max) {
				return nil, s.refuseNodeRequests(s.inFlight.Load(), n)
			}
			s.adm.pushesRefused.WithLabelValues("app_pushes_in_flight").Add(float64(n))
			return nil, refusalf(codes.ResourceExhausted, apipb.ReasonNodeOverloaded, "api.max-app-pushes-in-flight",
				"node overloaded for this app: %d of its pushes in flight, its share is %d (api.max-app-pushes-in-flight); nothing was accepted: retry later, backing off",
				in-int64(n), s.adm.maxAppPushes)
		}
	}
	if in := s.inFlight.Add(int64(n)); s.limits.MaxPushesInFlight > 0 && in > int64(s.limits.MaxPushesInFlight) {
		s.inFlight.Add(-int64(n))
		if app != nil {
			app.pushes.Add(-int64(n))
		}
		return nil, s.refuseNodeRequests(in-int64(n), n)
	}
	return func(ctx context.Context) {
		give := func() {
			s.inFlight.Add(-int64(n))
			if app != nil {
				app.pushes.Add(-int64(n))
			}
		}
		if ctx.Err() != nil {
			// The caller gave up (cancelled, or past its deadline) before
			// every push was answered: those still wait in the actors'
			// mailboxes, and counting them out now would let a caller with
			// short deadlines keep any number queued. They count for
			// abandonedHold more.
			time.AfterFunc(abandonedHold, give)
			return
		}
		give()
	}, nil
}

// abandonedHold is how long the pushes of a call its caller gave up on
// still count against the budgets: about the longest a queued push waits
// for its actor on a node that is behind.
const abandonedHold = 5 * time.Second

// streamWorkers is the number of goroutines that run calls. A push call
// holds its goroutine until the actors answered (after the store's sync),
// so there are more of them than cores.
const streamWorkers = 64

// ServerOptions returns the options that authenticate every call (from
// its headers, before its request is read) and apply the limits of
// Limits (request size, concurrent streams, calls without a key,
// keepalive policy, idle connections); pass them to grpc.NewServer, and
// serve on Listener for the connection cap.
func (s *Server) ServerOptions() []grpc.ServerOption {
	l := s.limits
	return []grpc.ServerOption{
		grpc.InTapHandle(s.adm.tap),
		grpc.MaxHeaderListSize(maxHeaderListSize),
		grpc.ForceServerCodecV2(s.adm.codec),
		grpc.ChainUnaryInterceptor(s.adm.codec.unary, s.adm.unary),
		grpc.ChainStreamInterceptor(s.adm.codec.stream, s.keys.stream),
		grpc.MaxRecvMsgSize(l.MaxRequestBytes),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		// Handlers run on long-lived goroutines that keep their grown
		// stacks (a goroutine per call spent a tenth of a small call's
		// CPU growing its stack); calls beyond them get their own.
		grpc.NumStreamWorkers(streamWorkers),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: l.KeepaliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time: l.KeepaliveTime, Timeout: l.KeepaliveTimeout, MaxConnectionIdle: l.MaxConnectionIdle,
		}),
	}
}

func checkIdentity(app uint32, uid string) error {
	if app == 0 || app > 0xFFFF {
		return status.Errorf(codes.InvalidArgument, "app_code %d: must be in [1, 65535]", app)
	}
	if uid == "" {
		return status.Error(codes.InvalidArgument, "uid: must not be empty")
	}
	if len(uid) > store.MaxUIDLen || !utf8.ValidString(uid) {
		return status.Errorf(codes.InvalidArgument, "uid: must be valid UTF-8 of at most %d bytes", store.MaxUIDLen)
	}
	return nil
}

// pushEnvelope validates one push and makes it an envelope (in env, if
// not nil).
func (s *Server) pushEnvelope(sc scope, r *apipb.PushRequest, now time.Time, env *pushEnv) (*actorpb.Envelope, error) {
	if err := checkIdentity(r.AppCode, r.Uid); err != nil {
		return nil, err
	}
	if err := sc.check(r.AppCode); err != nil {
		return nil, err
	}
	switch {
	case r.Msgtype > 0xFFFF:
		return nil, status.Errorf(codes.InvalidArgument, "msgtype %d: must be in [0, 65535]", r.Msgtype)
	case len(r.Payload) > s.limits.MaxPayload:
		return nil, status.Errorf(codes.InvalidArgument, "payload: %d bytes, limit %d (api.max-payload)", len(r.Payload), s.limits.MaxPayload)
	case len(r.IdempotencyKey) > s.limits.MaxIdempotencyKey:
		return nil, status.Errorf(codes.InvalidArgument, "idempotency_key: %d bytes, limit %d (api.max-idempotency-key)", len(r.IdempotencyKey), s.limits.MaxIdempotencyKey)
	case r.TtlMs < 0:
		return nil, status.Errorf(codes.InvalidArgument, "ttl_ms %d: must not be negative", r.TtlMs)
	case r.TtlMs > s.limits.MaxTTL.Milliseconds(): // in milliseconds: a Duration of it could wrap
		return nil, status.Errorf(codes.InvalidArgument, "ttl_ms %d: more than the maximum %v (api.max-ttl)", r.TtlMs, s.limits.MaxTTL)
	case r.Delivery != apipb.Delivery_DELIVERY_STORED && r.Delivery != apipb.Delivery_DELIVERY_FIRE_AND_FORGET:
		return nil, status.Errorf(codes.InvalidArgument, "delivery %d: unknown", r.Delivery)
	case r.Delivery == apipb.Delivery_DELIVERY_FIRE_AND_FORGET && r.IdempotencyKey != "":
		return nil, status.Error(codes.InvalidArgument, "idempotency_key: only stored pushes are deduplicated")
	}
	ttl := time.Duration(r.TtlMs) * time.Millisecond
	if ttl == 0 {
		ttl = s.limits.DefaultTTL
	}
	if env == nil {
		env = &pushEnv{}
	}
	env.push = actorpb.Push{
		Msgtype:        r.Msgtype,
		Payload:        r.Payload,
		Stored:         r.Delivery == apipb.Delivery_DELIVERY_STORED,
		IdempotencyKey: r.IdempotencyKey,
		SentAtMs:       now.UnixMilli(),
		ExpiresAtMs:    now.Add(ttl).UnixMilli(),
	}
	env.body.Push = &env.push
	env.env = actorpb.Envelope{AppCode: r.AppCode, Uid: r.Uid, Body: &env.body}
	return &env.env, nil
}

// pushEnv is the three messages of a push's envelope in one allocation
// (PushMany makes one slice of them per call). The actor does not keep
// them once it has handled the push.
type pushEnv struct {
	env  actorpb.Envelope
	body actorpb.Envelope_Push
	push actorpb.Push
}

// replyError turns a missing reply or a Failure into a gRPC status.
func replyError(r *actorpb.Reply, err error) error {
	if err != nil {
		return status.Errorf(codes.Unavailable, "the identity's actor did not answer in time (%v); the push may or may not have been accepted: retry with the same idempotency key", err)
	}
	if f := r.GetFailure(); f != nil {
		if reason, setting := failureReason(f); reason != "" {
			return refusal(codes.Code(f.Code), reason, setting, f.Message)
		}
		return status.Error(codes.Code(f.Code), f.Message)
	}
	return nil
}

// pushResponse fills out (new if nil) from a push's reply.
func pushResponse(r *actorpb.Reply, out *apipb.PushResponse) (*apipb.PushResponse, error) {
	p := r.GetPush()
	if p == nil {
		return nil, status.Errorf(codes.Internal, "unexpected reply %T", r.GetBody())
	}
	if p.Code != 0 {
		return nil, status.Error(codes.Code(p.Code), p.Error)
	}
	if out == nil {
		out = &apipb.PushResponse{}
	}
	out.MsgId, out.Seq, out.Duplicate, out.Online = p.MsgId, p.Seq, p.Duplicate, p.Online
	return out, nil
}

// Push implements apipb.CourierServer.
func (s *Server) Push(ctx context.Context, r *apipb.PushRequest) (*apipb.PushResponse, error) {
	env, err := s.pushEnvelope(scopeOf(ctx), r, s.now(), nil)
	if err != nil {
		return nil, err
	}
	release, err := s.admitPushes(scopeOf(ctx), 1)
	if err != nil {
		return nil, err
	}
	defer release(ctx)
	rep, err := s.req.Request(ctx, env)
	if rep.GetFailure().GetGateLate() {
		s.countLate([]*actorpb.Reply{rep}, []error{err})
	}
	if err := replyError(rep, err); err != nil {
		return nil, err
	}
	return pushResponse(rep, nil)
}

// PushMany implements apipb.CourierServer.
func (s *Server) PushMany(ctx context.Context, r *apipb.PushManyRequest) (*apipb.PushManyResponse, error) {
	if len(r.Items) > s.limits.MaxBatch {
		return nil, status.Errorf(codes.InvalidArgument, "items: %d, limit %d per call (api.max-batch)", len(r.Items), s.limits.MaxBatch)
	}
	sc, now, n := scopeOf(ctx), s.now(), len(r.Items)
	// The messages of all items in a few allocations, not a few per item.
	results := make([]*apipb.PushItemResult, n)
	resultsOf := make([]apipb.PushItemResult, n)
	responses := make([]apipb.PushResponse, n)
	slab := make([]pushEnv, n)
	envs := make([]*actorpb.Envelope, 0, n)
	idx := make([]int, 0, n)
	for i, it := range r.Items {
		results[i] = &resultsOf[i]
		env, err := s.pushEnvelope(sc, it, now, &slab[i])
		if err != nil {
			st := status.Convert(err)
			resultsOf[i] = apipb.PushItemResult{Code: int32(st.Code()), Error: fmt.Sprintf("items[%d]: %s", i, st.Message())}
			continue
		}
		envs = append(envs, env)
		idx = append(idx, i)
	}
	if len(envs) == 0 {
		// Nothing to admit: the caller needs its items' own errors, not
		// an overload that would have it retry them unchanged.
		return &apipb.PushManyResponse{Results: results}, nil
	}
	release, err := s.admitPushes(sc, len(envs))
	if err != nil {
		return nil, err
	}
	defer release(ctx)
	reps, errs := s.req.RequestMany(ctx, envs)
	s.countLate(reps, errs)
	for j, i := range idx {
		if f := reps[j].GetFailure(); errs[j] == nil && f.GetCode() != 0 {
			reason, _ := failureReason(f)
			resultsOf[i] = apipb.PushItemResult{Code: f.Code, Error: f.Message, Reason: reason}
			continue
		}
		if err := replyError(reps[j], errs[j]); err != nil {
			st := status.Convert(err)
			resultsOf[i] = apipb.PushItemResult{Code: int32(st.Code()), Error: st.Message()}
			continue
		}
		resp, err := pushResponse(reps[j], &responses[i])
		if err != nil {
			st := status.Convert(err)
			resultsOf[i] = apipb.PushItemResult{Code: int32(st.Code()), Error: st.Message()}
			continue
		}
		resultsOf[i].Response = resp
	}
	return &apipb.PushManyResponse{Results: results}, nil
}

// countLate counts the pushes of a call that their actors refused
// because deliveries to their device's gate, on another node, were late
// (the actors' Failure.GateLate), under remote_gate_backlog. They are
// answered as refused at once, not sent again while the call waits as a
// call waits for the local gate (admitPushes): measured with a gate node
// held to 40% of a core, sending them again every 5 ms for up to
// api.max-gate-backlog refused a quarter fewer but raised the delivery
// p99 by a third, as the waiting calls all sent theirs again the moment
// the gate caught up (BENCHMARKS.md, round 11).
func (s *Server) countLate(reps []*actorpb.Reply, errs []error) {
	n := 0
	for j, r := range reps {
		if errs[j] == nil && r.GetFailure().GetGateLate() {
			n++
		}
	}
	if n > 0 {
		s.adm.pushesRefused.WithLabelValues("remote_gate_backlog").Add(float64(n))
	}
}

// Kick implements apipb.CourierServer.
func (s *Server) Kick(ctx context.Context, r *apipb.KickRequest) (*apipb.KickResponse, error) {
	if err := checkIdentity(r.AppCode, r.Uid); err != nil {
		return nil, err
	}
	if err := scopeOf(ctx).check(r.AppCode); err != nil {
		return nil, err
	}
	if len(r.Reason) > 256 {
		return nil, status.Error(codes.InvalidArgument, "reason: at most 256 bytes")
	}
	reason := devicepb.KickReason_KICKED_BY_APP_SERVER
	if scopeOf(ctx).operator() {
		reason = devicepb.KickReason_KICKED_BY_OPERATOR
	}
	release, err := s.admitRequests(scopeOf(ctx), 1)
	if err != nil {
		return nil, err
	}
	rep, err := s.req.Request(ctx, &actorpb.Envelope{AppCode: r.AppCode, Uid: r.Uid,
		Body: &actorpb.Envelope_Kick{Kick: &actorpb.Kick{Reason: reason, Detail: r.Reason}}})
	release(ctx)
	if err := replyError(rep, err); err != nil {
		return nil, err
	}
	return &apipb.KickResponse{WasOnline: rep.GetKick().GetWasOnline()}, nil
}

// Presence implements apipb.CourierServer.
func (s *Server) Presence(ctx context.Context, r *apipb.PresenceRequest) (*apipb.PresenceResponse, error) {
	if err := scopeOf(ctx).check(r.AppCode); err != nil {
		return nil, err
	}
	if len(r.Uids) == 0 || len(r.Uids) > s.limits.MaxBatch {
		return nil, status.Errorf(codes.InvalidArgument, "uids: %d, want 1 to %d (api.max-batch)", len(r.Uids), s.limits.MaxBatch)
	}
	envs := make([]*actorpb.Envelope, len(r.Uids))
	for i, uid := range r.Uids {
		if err := checkIdentity(r.AppCode, uid); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "uids[%d]: %s", i, status.Convert(err).Message())
		}
		envs[i] = &actorpb.Envelope{AppCode: r.AppCode, Uid: uid, Body: &actorpb.Envelope_Presence{Presence: &actorpb.PresenceQuery{}}}
	}
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	release, err := s.admitRequests(scopeOf(ctx), len(envs))
	if err != nil {
		return nil, err
	}
	reps, errs := s.req.RequestMany(ctx, envs)
	release(ctx)
	out := &apipb.PresenceResponse{Entries: make([]*apipb.PresenceEntry, len(envs))}
	for i := range envs {
		if err := replyError(reps[i], errs[i]); err != nil {
			return nil, err
		}
		p := reps[i].GetPresence()
		e := &apipb.PresenceEntry{Uid: r.Uids[i], Online: p.GetOnline(), Pending: p.GetPending()}
		if p.GetOnline() {
			e.Session = &apipb.Session{
				GateNode: p.Conn.GetGateNode(), GateAddr: p.GateAddr, Epoch: p.Epoch, DeviceId: p.DeviceId,
				Platform: p.Platform.String(), AppVersion: p.AppVersion, LoggedInAtMs: p.LoggedInAtMs,
			}
		}
		out.Entries[i] = e
	}
	return out, nil
}
