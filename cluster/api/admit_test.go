package api

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/actors/stats"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
)

// heldReq answers pushes only when released, so that they stay in flight.
type heldReq struct {
	instantReq
	release chan struct{}
	entered chan int
}

func (h *heldReq) RequestMany(ctx context.Context, envs []*actorpb.Envelope) ([]*actorpb.Reply, []error) {
	h.entered <- len(envs)
	<-h.release
	return h.instantReq.RequestMany(ctx, envs)
}

// TestPushesInFlightAreBounded: beyond api.max-pushes-in-flight, a call is
// refused at once with RESOURCE_EXHAUSTED naming the setting; once the
// pushes in flight are answered, calls are accepted again.
func TestPushesInFlightAreBounded(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxBatch, lim.MaxPushesInFlight = 10, 15
	req := &heldReq{release: make(chan struct{}), entered: make(chan int, 4)}
	s := New(Deps{Req: req, Limits: lim})
	many := func(n int) *apipb.PushManyRequest {
		r := &apipb.PushManyRequest{}
		for range n {
			r.Items = append(r.Items, &apipb.PushRequest{AppCode: 1, Uid: "u", Payload: []byte("x")})
		}
		return r
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := s.PushMany(scoped(1), many(10)); err != nil {
			t.Errorf("first call: %v", err)
		}
	}()
	<-req.entered // 10 in flight
	start := time.Now()
	_, err := s.PushMany(scoped(1), many(6))
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !contains(st.Message(), "api.max-pushes-in-flight") {
		t.Fatalf("16 in flight: %v", err)
	}
	wantReason(t, err, apipb.ReasonNodeOverloaded, "api.max-pushes-in-flight")
	if got := testutil.ToFloat64(s.adm.pushesRefused.WithLabelValues("pushes_in_flight")); got != 6 {
		t.Fatalf("courier_api_pushes_refused_total{reason=pushes_in_flight} = %v, want 6", got)
	}
	if _, err := s.Push(scoped(1), many(1).Items[0]); err != nil {
		// 11 in flight: within the limit (Push goes through Request).
		t.Fatalf("11 in flight: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("the refusal took %v", d)
	}
	close(req.release)
	wg.Wait()
	if _, err := s.PushMany(scoped(1), many(10)); err != nil {
		t.Fatalf("after the answers: %v", err)
	}
	if n := s.inFlight.Load(); n != 0 {
		t.Fatalf("%d pushes still counted in flight", n)
	}
}

// TestGateBacklogRefusesPushes: while the gate's backlog is above
// api.max-gate-backlog, pushes are refused with RESOURCE_EXHAUSTED (after
// waiting that long for it to fall); with the limit at 0 they never are.
func TestGateBacklogRefusesPushes(t *testing.T) {
	backlog := 50 * time.Millisecond
	lim := DefaultLimits()
	s := New(Deps{Req: instantReq{}, Limits: lim, Backlog: func() time.Duration { return backlog }})
	push := &apipb.PushRequest{AppCode: 1, Uid: "u", Payload: []byte("x")}
	_, err := s.Push(scoped(1), push)
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !contains(st.Message(), "api.max-gate-backlog") {
		t.Fatalf("backlog 50ms: %v", err)
	}
	wantReason(t, err, apipb.ReasonNodeOverloaded, "api.max-gate-backlog")

	resp, err := s.PushMany(scoped(1), &apipb.PushManyRequest{Items: []*apipb.PushRequest{push}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("PushMany with backlog 50ms: %v %v", resp, err)
	}
	backlog = 5 * time.Millisecond
	if _, err := s.Push(scoped(1), push); err != nil {
		t.Fatalf("backlog 5ms: %v", err)
	}
	backlog = time.Second
	t0 := time.Now()
	_, err = s.Push(scoped(1), push)
	if took := time.Since(t0); status.Code(err) != codes.ResourceExhausted || took < lim.MaxGateBacklog || took > 10*lim.MaxGateBacklog {
		t.Fatalf("backlog 1s: refused after %v (want %v, about): %v", took, lim.MaxGateBacklog, err)
	}
	// Three calls of one push waited and were refused (the one at 5 ms
	// did not wait).
	if got := testutil.ToFloat64(s.adm.pushesRefused.WithLabelValues("gate_backlog")); got != 3 {
		t.Fatalf("courier_api_pushes_refused_total{reason=gate_backlog} = %v, want 3", got)
	}
	if got := testutil.ToFloat64(s.adm.gateWaits); got != 3 {
		t.Fatalf("courier_api_gate_backlog_waits_total = %v, want 3", got)
	}
	s.limits.MaxGateBacklog = 0
	if _, err := s.Push(scoped(1), push); err != nil {
		t.Fatalf("limit off: %v", err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestSlowPushesRefuseMore: while push calls have been taking longer than
// api.max-push-delay and at least api.max-batch pushes are in flight, new
// calls are refused; with fewer in flight, a slow node still serves them.
func TestSlowPushesRefuseMore(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxBatch, lim.MaxPushDelay = 2, 50*time.Millisecond
	req := &heldReq{release: make(chan struct{}), entered: make(chan int, 8)}
	s := New(Deps{Req: req, Limits: lim})
	push := func() *apipb.PushManyRequest {
		return &apipb.PushManyRequest{Items: []*apipb.PushRequest{{AppCode: 1, Uid: "u", Payload: []byte("x")}}}
	}
	var once sync.Once
	release := func() { once.Do(func() { close(req.release) }) }
	t.Cleanup(release) // a failing test must not leave calls held forever
	// Calls that each take 60 ms, ten per window of 100 ms (a window with
	// little work in it says nothing), over more than two windows; the
	// last ones dated ahead, so that a test descheduled for a while on a
	// loaded machine still finds the windows recent.
	now := time.Now().Add(-100 * time.Millisecond)
	for i := range 40 {
		s.calls.Observe(60*time.Millisecond, now.Add(time.Duration(i)*10*time.Millisecond))
	}
	done := make(chan struct{})
	go func() { // one push in flight: below max-batch, served
		defer close(done)
		if _, err := s.PushMany(scoped(1), push()); err != nil {
			t.Errorf("one push in flight on a slow node: %v", err)
		}
	}()
	<-req.entered
	go func() {
		if _, err := s.PushMany(scoped(1), push()); err != nil {
			t.Errorf("second push: %v", err)
		}
	}()
	<-req.entered // two in flight: max-batch
	_, err := s.PushMany(scoped(1), push())
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "api.max-push-delay") {
		t.Fatalf("slow calls, two in flight: %v", err)
	}
	wantReason(t, err, apipb.ReasonNodeOverloaded, "api.max-push-delay")

	if got := testutil.ToFloat64(s.adm.pushesRefused.WithLabelValues("push_delay")); got != 1 {
		t.Fatalf("courier_api_pushes_refused_total{reason=push_delay} = %v, want 1", got)
	}
	release()
	<-done
}

// TestGateBacklogWaitedOut: a push that finds the gate behind waits for it
// to catch up and is accepted if it does within api.max-gate-backlog.
func TestGateBacklogWaitedOut(t *testing.T) {
	var behind atomic.Bool
	behind.Store(true)
	lim := DefaultLimits()
	s := New(Deps{Req: instantReq{}, Limits: lim, Backlog: func() time.Duration {
		if behind.Load() {
			return time.Second
		}
		return 0
	}})
	time.AfterFunc(lim.MaxGateBacklog/4, func() { behind.Store(false) })
	push := &apipb.PushRequest{AppCode: 1, Uid: "u", Payload: []byte("x")}
	if _, err := s.Push(scoped(1), push); err != nil {
		t.Fatalf("gate caught up within %v: %v", lim.MaxGateBacklog, err)
	}
	if w, r := testutil.ToFloat64(s.adm.gateWaits), testutil.ToFloat64(s.adm.pushesRefused.WithLabelValues("gate_backlog")); w != 1 || r != 0 {
		t.Fatalf("waits %v, refused %v: want 1 and 0", w, r)
	}
}

// lateReq refuses pushes to the uids in late as an actor does while their
// gate is late (Failure.GateLate); it records every envelope it is sent,
// in order.
type lateReq struct {
	mu   sync.Mutex
	late map[string]bool
	sent []string
}

func (l *lateReq) Request(ctx context.Context, env *actorpb.Envelope) (*actorpb.Reply, error) {
	r, e := l.RequestMany(ctx, []*actorpb.Envelope{env})
	return r[0], e[0]
}

func (l *lateReq) RequestMany(_ context.Context, envs []*actorpb.Envelope) ([]*actorpb.Reply, []error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	reps := make([]*actorpb.Reply, len(envs))
	for i, e := range envs {
		l.sent = append(l.sent, e.Uid+":"+string(e.GetPush().Payload))
		if l.late[e.Uid] {
			reps[i] = &actorpb.Reply{Body: &actorpb.Reply_Failure{Failure: &actorpb.Failure{
				Code: int32(codes.ResourceExhausted), Message: "node overloaded: deliveries to the gate holding 1/" + e.Uid + "'s connection are 30ms late", GateLate: true}}}
			continue
		}
		reps[i] = &actorpb.Reply{Body: &actorpb.Reply_Push{Push: &actorpb.PushReply{MsgId: "m"}}}
	}
	return reps, make([]error, len(envs))
}

// TestLateGateRefusalsCounted: a push its actor refused because its
// device's gate, on another node, is late is answered refused at once, in
// its item, and counted under remote_gate_backlog; the call's other items
// are served.
func TestLateGateRefusalsCounted(t *testing.T) {
	lim := DefaultLimits()
	req := &lateReq{late: map[string]bool{"slow": true}}
	s := New(Deps{Req: req, Limits: lim})
	item := func(uid, payload string) *apipb.PushRequest {
		return &apipb.PushRequest{AppCode: 1, Uid: uid, Payload: []byte(payload)}
	}
	r, err := s.PushMany(scoped(1), &apipb.PushManyRequest{Items: []*apipb.PushRequest{item("slow", "1"), item("fine", "2")}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Results[0].Code != int32(codes.ResourceExhausted) || !strings.HasPrefix(r.Results[0].Error, "node overloaded: deliveries to the gate holding") ||
		r.Results[0].Reason != apipb.ReasonNodeOverloaded || r.Results[1].Code != 0 || r.Results[1].Reason != "" {
		t.Fatalf("results %v", r.Results)
	}
	_, err = s.Push(scoped(1), item("slow", "3"))
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.HasPrefix(st.Message(), "node overloaded: deliveries to the gate holding") {
		t.Fatalf("Push to a device whose gate is late: %v", err)
	}
	// The fake answers as a node of the version before Failure.reason
	// did: the API still names the reason.
	wantReason(t, err, apipb.ReasonNodeOverloaded, "api.max-gate-backlog")
	if got := strings.Join(req.sent, " "); got != "slow:1 fine:2 slow:3" {
		t.Fatalf("sent %s; want each push once", got)
	}
	if got := testutil.ToFloat64(s.adm.pushesRefused.WithLabelValues("remote_gate_backlog")); got != 2 {
		t.Fatalf("courier_api_pushes_refused_total{reason=remote_gate_backlog} = %v, want 2", got)
	}
}

// wantReason fails t unless err carries Courier's google.rpc.ErrorInfo
// with reason and the setting.
func wantReason(t *testing.T, err error, reason, setting string) {
	t.Helper()
	info := apipb.ErrorInfo(err)
	if info == nil {
		t.Fatalf("%v: no ErrorInfo among the details, want reason %s", err, reason)
	}
	if info.Domain != apipb.ErrorDomain || info.Reason != reason || info.Metadata[apipb.SettingKey] != setting {
		t.Fatalf("%v: ErrorInfo %v, want reason %s, setting %s", err, info, reason, setting)
	}
	// An overloaded node says how long to wait; other refusals do not.
	var retry *errdetails.RetryInfo
	for _, d := range status.Convert(err).Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	switch {
	case reason == apipb.ReasonNodeOverloaded && (retry == nil || retry.RetryDelay.AsDuration() != RetryAfterOverload):
		t.Fatalf("%v: RetryInfo %v, want a delay of %v", err, retry, RetryAfterOverload)
	case reason != apipb.ReasonNodeOverloaded && retry != nil:
		t.Fatalf("%v: RetryInfo %v on a %s refusal", err, retry, reason)
	}
}

// TestPushManyOfInvalidItemsIsNotRefusedWhole: a PushMany none of whose
// items is valid gets each item's own error even while the node is
// behind, not a whole-call overload that would have it retry them
// unchanged.
func TestPushManyOfInvalidItemsIsNotRefusedWhole(t *testing.T) {
	s := New(Deps{Req: instantReq{}, Limits: DefaultLimits(), Backlog: func() time.Duration { return time.Second }})
	resp, err := s.PushMany(scoped(1), &apipb.PushManyRequest{Items: []*apipb.PushRequest{
		{AppCode: 2, Uid: "u", Payload: []byte("x")},
		{AppCode: 1, Uid: "", Payload: []byte("x")},
	}})
	if err != nil {
		t.Fatalf("PushMany of invalid items while behind: %v", err)
	}
	if r := resp.Results; len(r) != 2 || r[0].Code != int32(codes.PermissionDenied) || r[1].Code != int32(codes.InvalidArgument) {
		t.Fatalf("results %v, want PERMISSION_DENIED and INVALID_ARGUMENT", r)
	}
}

// TestStatsQueryIsBounded: a Stats call names at most MaxQueryMsgtypes
// msgtypes, each a msgtype or the others' series, before anything is
// asked of the nodes.
func TestStatsQueryIsBounded(t *testing.T) {
	asked := 0
	s := New(Deps{Req: instantReq{}, Limits: DefaultLimits(), ClusterStats: func(context.Context, uint16, []uint32, time.Duration) ([][]stats.RawStat, []string) {
		asked++
		return nil, nil
	}})
	many := make([]uint32, stats.MaxQueryMsgtypes+1)
	for i := range many {
		many[i] = uint32(i)
	}
	if _, err := s.Stats(scoped(1), &apipb.StatsRequest{AppCode: 1, Msgtypes: many}); status.Code(err) != codes.InvalidArgument || !contains(err.Error(), "msgtypes") {
		t.Fatalf("%d msgtypes: %v", len(many), err)
	}
	if _, err := s.Stats(scoped(1), &apipb.StatsRequest{AppCode: 1, Msgtypes: []uint32{1, 70000}}); status.Code(err) != codes.InvalidArgument || !contains(err.Error(), "msgtypes[1]") {
		t.Fatalf("msgtype 70000: %v", err)
	}
	if asked != 0 {
		t.Fatalf("the nodes were asked %d times for refused queries", asked)
	}
	if _, err := s.Stats(scoped(1), &apipb.StatsRequest{AppCode: 1, Msgtypes: append(many[:stats.MaxQueryMsgtypes-1], stats.OtherMsgtype)}); err != nil || asked != 1 {
		t.Fatalf("%d msgtypes with the others' series: %v (asked %d)", stats.MaxQueryMsgtypes, err, asked)
	}
}
