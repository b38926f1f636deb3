package api

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/testkit"
)

// openCall sends the HEADERS of a gRPC call to method, with the given
// authorization (none if empty), and no body: the body is "still
// coming".
func (r *rawConn) openCall(t *testing.T, stream uint32, method, auth string) {
	t.Helper()
	r.hb.Reset()
	fields := [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", method}, {":authority", "courier"},
		{"content-type", "application/grpc"}, {"te", "trailers"}}
	if auth != "" {
		fields = append(fields, [2]string{"authorization", auth})
	}
	for _, f := range fields {
		if err := r.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: r.hb.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
}

// answer returns the grpc-status and grpc-message the server sent on
// stream, nil if it sent none before timeout.
func (r *rawConn) answer(t *testing.T, stream uint32, timeout time.Duration) (code string, msg string, ok bool) {
	t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(timeout))
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			return "", "", false
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = r.fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			fields, err := r.dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				t.Fatal(err)
			}
			if f.StreamID != stream {
				continue
			}
			for _, hf := range fields {
				switch hf.Name {
				case "grpc-status":
					code, ok = hf.Value, true
				case "grpc-message":
					msg = hf.Value
				}
			}
			if ok {
				return code, msg, true
			}
		}
	}
}

// TestCallsAreAuthenticatedBeforeTheirRequestIsRead: a call without a
// valid key is refused as soon as its headers arrive, without waiting for
// (or reading) its request; a call with a key waits for its request.
// Before the tap handle, the key was checked after the request was read,
// so a client without a key could make the server buffer up to
// api.max-request-bytes per call.
func TestCallsAreAuthenticatedBeforeTheirRequestIsRead(t *testing.T) {
	s := serve(t, DefaultLimits())
	r := dialRaw(t, s.addr)
	for i, auth := range []string{"", "Bearer not-a-key", "Basic " + testKey} {
		stream := uint32(2*i + 1)
		r.openCall(t, stream, "/courier.v1.Courier/Push", auth)
		code, msg, ok := r.answer(t, stream, 5*time.Second)
		if !ok || code != "16" { // UNAUTHENTICATED
			t.Fatalf("authorization %q: answered %v %q %q before the request was sent, want 16 (UNAUTHENTICATED) at once", auth, ok, code, msg)
		}
	}
	if got := testutil.ToFloat64(s.srv.adm.callsRefused.WithLabelValues("unauthenticated")); got != 3 {
		t.Fatalf("courier_api_calls_refused_total{reason=unauthenticated} %v, want 3", got)
	}
	// With a key, the server waits for the request: no answer.
	r.openCall(t, 7, "/courier.v1.Courier/Push", "Bearer "+testKey)
	if code, msg, ok := r.answer(t, 7, 500*time.Millisecond); ok {
		t.Fatalf("a call with a key was answered %s %q before its request", code, msg)
	}
	// Unknown methods want a key too: a client without one learns nothing.
	r2 := dialRaw(t, s.addr)
	r2.openCall(t, 1, "/courier.v1.Courier/NoSuchMethod", "")
	if code, _, ok := r2.answer(t, 1, 5*time.Second); !ok || code != "16" {
		t.Fatalf("an unknown method without a key: %v %q", ok, code)
	}
}

// TestConnectionCap: at most api.max-connections connections are served
// at once. A client over the cap gets RESOURCE_EXHAUSTED naming the
// setting on its calls, and the connection is closed; it is counted. When
// a connection ends, its slot serves the next client.
func TestConnectionCap(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxConnections = 2
	s := serve(t, lim) // s.client is not connected until its first call
	push := func(c apipb.CourierClient, d time.Duration) error {
		_, err := c.Push(authed(t, d), &apipb.PushRequest{AppCode: 1, Uid: "u"})
		return err
	}
	first := dialAPI(t, s.addr)
	if err := push(apipb.NewCourierClient(first), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := push(s.client, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(s.srv.adm.connsOpen); got != 2 {
		t.Fatalf("courier_api_connections %v, want 2", got)
	}
	third := apipb.NewCourierClient(dialAPI(t, s.addr))
	err := push(third, 10*time.Second)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "api.max-connections") {
		t.Fatalf("a call on a third connection: %v, want RESOURCE_EXHAUSTED naming api.max-connections", err)
	}
	if got := testutil.ToFloat64(s.srv.adm.connsRefused); got != 1 {
		t.Fatalf("courier_api_connections_refused_total %v, want 1", got)
	}
	// Health checks on that connection are refused as well: it is not served.
	if _, err := healthpb.NewHealthClient(dialAPI(t, s.addr)).Check(authed(t, 10*time.Second), &healthpb.HealthCheckRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a health check over the cap: %v", err)
	}
	// The connections served are unaffected.
	if err := push(s.client, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// One ends: the third client gets through once its refused connection
	// is closed and it reconnects.
	first.Close()
	testkit.Eventually(t, 20*time.Second, func() bool { return push(third, 5*time.Second) == nil },
		"the third client never got the freed slot")
	if got := testutil.ToFloat64(s.srv.adm.connsOpen); got > 2 {
		t.Fatalf("courier_api_connections %v", got)
	}
}

// TestConnectionsFarOverTheCapAreClosed: beyond the connections over the
// cap that are being answered, further ones are closed at once, and
// counted.
func TestConnectionsFarOverTheCapAreClosed(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxConnections = 1
	s := serveTuned(t, lim, func(s *Server) { s.adm.overConns = 1 })
	if _, err := s.client.Push(authed(t, 10*time.Second), &apipb.PushRequest{AppCode: 1, Uid: "u"}); err != nil {
		t.Fatal(err)
	}
	answered := dialRaw(t, s.addr) // over the cap, answered
	answered.openCall(t, 1, "/courier.v1.Courier/Push", "Bearer "+testKey)
	if code, msg, ok := answered.answer(t, 1, 5*time.Second); !ok || code != "8" || !strings.Contains(msg, "api.max-connections") {
		t.Fatalf("a call over the cap: %v %q %q, want 8 (RESOURCE_EXHAUSTED) naming api.max-connections", ok, code, msg)
	}
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(overGrace / 2)) // long before the answered one would be closed
	if n, err := c.Read(make([]byte, 64)); err != io.EOF && !isReset(err) {
		t.Fatalf("a connection far over the cap: read %d bytes, %v; want it closed at once", n, err)
	}
	if got := testutil.ToFloat64(s.srv.adm.connsRefused); got != 2 {
		t.Fatalf("courier_api_connections_refused_total %v, want 2", got)
	}
	// The answered one is closed after its grace.
	_ = answered.c.SetReadDeadline(time.Now().Add(overGrace + 10*time.Second))
	for {
		if _, err := answered.fr.ReadFrame(); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("a connection over the cap was never closed")
			}
			break
		}
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "connection reset") }

// TestUnauthenticatedCallsAreBounded: calls that need no key (health
// checks, reflection) are at most api.max-unauthenticated-calls at once,
// streams (reflection, health Watch) at most half of them, so that streams
// held open cannot fail the load balancers' health checks; one more gets
// RESOURCE_EXHAUSTED naming the setting, and the slot is free again when a
// call ends, however it ends.
func TestUnauthenticatedCallsAreBounded(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxUnauthenticatedCalls = 4 // streams: at most 2
	s := serve(t, lim)
	conn := dialAPI(t, s.addr)
	refused := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "api.max-unauthenticated-calls") {
			t.Fatalf("%s: %v, want RESOURCE_EXHAUSTED naming api.max-unauthenticated-calls", what, err)
		}
		wantReason(t, err, apipb.ReasonLimitReached, "api.max-unauthenticated-calls")
	}
	var cancels []context.CancelFunc
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cancels = append(cancels, cancel)
		defer cancel()
		st, err := reflectpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&reflectpb.ServerReflectionRequest{MessageRequest: &reflectpb.ServerReflectionRequest_ListServices{}}); err != nil {
			t.Fatal(err)
		}
		_, err = st.Recv()
		if i < 2 && err != nil {
			t.Fatalf("reflection without a key: %v", err)
		}
		if i == 2 {
			refused("a third stream without a key", err)
		}
	}
	// The streams hold half the slots: health checks still pass.
	hc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("a health check beside the streams: %v", err)
	}
	// Two checks whose requests are "still coming" take the rest.
	raw := dialRaw(t, s.addr)
	raw.openCall(t, 1, healthCheckMethod, "")
	raw.openCall(t, 3, healthCheckMethod, "")
	testkit.Eventually(t, 10*time.Second, func() bool { return s.srv.adm.public.Load() == 4 }, "the held checks are not counted")
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	refused("a fifth call without a key", err)
	if got := testutil.ToFloat64(s.srv.adm.callsRefused.WithLabelValues("unauthenticated_calls")); got != 2 {
		t.Fatalf("courier_api_calls_refused_total{reason=unauthenticated_calls} %v", got)
	}
	// Calls with a key are not counted against it.
	if _, err := s.client.Push(authed(t, 10*time.Second), &apipb.PushRequest{AppCode: 1, Uid: "u"}); err != nil {
		t.Fatal(err)
	}
	raw.c.Close()
	cancels[0]() // the client gives up on a stream: its slot comes back
	testkit.Eventually(t, 10*time.Second, func() bool {
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && s.srv.adm.public.Load() <= 1
	}, "the slots of ended calls never came back")
	// Calls that end normally give their slot back too (shortly after
	// they end: with slots free, one lagging release is no refusal).
	cancels[1]()
	testkit.Eventually(t, 10*time.Second, func() bool { return s.srv.adm.public.Load() == 0 }, "slots not given back")
	for range 20 {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("sequential health checks: %v", err)
		}
	}
}

// TestCallHeadersAreBounded: a call's headers are at most 64 KiB; a gRPC
// client learns the limit from the server's settings and fails a larger
// call itself (INTERNAL), and the connection serves other calls.
func TestCallHeadersAreBounded(t *testing.T) {
	s := serve(t, DefaultLimits())
	ctx := metadata.AppendToOutgoingContext(authed(t, 10*time.Second), "x-big", strings.Repeat("h", 100<<10))
	_, err := s.client.Push(ctx, &apipb.PushRequest{AppCode: 1, Uid: "u"})
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "header list size") {
		t.Fatalf("a call with 100 KiB of metadata: %v, want INTERNAL about the header list size", err)
	}
	ctx = metadata.AppendToOutgoingContext(authed(t, 10*time.Second), "x-fine", strings.Repeat("h", 32<<10))
	if _, err := s.client.Push(ctx, &apipb.PushRequest{AppCode: 1, Uid: "u"}); err != nil {
		t.Fatalf("a call with 32 KiB of metadata: %v", err)
	}
}

// TestCallsWithAKeyAreBounded: calls with a key are at most
// api.max-calls-in-flight at once on the node, whichever connections
// they come on, and upstream streams at most api.max-upstream-streams,
// apart from them. A call beyond is refused from its headers, before its
// request is read (RESOURCE_EXHAUSTED naming the setting); the slot is
// free again when a call ends, however it ends.
func TestCallsWithAKeyAreBounded(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxCallsInFlight, lim.MaxAppCallsInFlight = 2, 2 // one app may fill the node here
	lim.MaxUpstreamStreams = 1
	s := serve(t, lim)
	key := "Bearer " + testKey
	// Two calls whose requests are "still coming", on two connections.
	r1, r2 := dialRaw(t, s.addr), dialRaw(t, s.addr)
	r1.openCall(t, 1, "/courier.v1.Courier/Push", key)
	r2.openCall(t, 1, "/courier.v1.Courier/Presence", key)
	testkit.Eventually(t, 10*time.Second, func() bool { return s.srv.adm.calls.Load() == 2 }, "the two open calls are not counted")

	// A third, on a third connection, is answered at once, unread.
	r3 := dialRaw(t, s.addr)
	r3.openCall(t, 1, "/courier.v1.Courier/Push", key)
	if code, msg, ok := r3.answer(t, 1, 5*time.Second); !ok || code != "8" || !strings.Contains(msg, "api.max-calls-in-flight") {
		t.Fatalf("a third call before its request: answered %v %q %q, want 8 (RESOURCE_EXHAUSTED) naming api.max-calls-in-flight", ok, code, msg)
	}
	_, err := s.client.Push(authed(t, 10*time.Second), &apipb.PushRequest{AppCode: 1, Uid: "u"})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "node overloaded") {
		t.Fatalf("a push over api.max-calls-in-flight: %v, want RESOURCE_EXHAUSTED \"node overloaded\"", err)
	}
	wantReason(t, err, apipb.ReasonNodeOverloaded, "api.max-calls-in-flight")
	if got := testutil.ToFloat64(s.srv.adm.callsRefused.WithLabelValues("calls_in_flight")); got != 2 {
		t.Fatalf("courier_api_calls_refused_total{reason=calls_in_flight} %v, want 2", got)
	}

	// Upstream streams have slots of their own: one is served while the
	// calls are full, a second is refused.
	up, err := s.client.Upstream(authed(t, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Subscribe{Subscribe: &apipb.Subscribe{AppCode: 1}}}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return s.srv.adm.streams.Load() == 1 }, "the upstream stream is not counted")
	up2, err := s.client.Upstream(authed(t, 10*time.Second))
	if err == nil {
		_, err = up2.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "api.max-upstream-streams") {
		t.Fatalf("a second upstream stream: %v, want RESOURCE_EXHAUSTED naming api.max-upstream-streams", err)
	}
	wantReason(t, err, apipb.ReasonLimitReached, "api.max-upstream-streams")

	// A call the client resets gives its slot back; so does one answered.
	if err := r1.fr.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool {
		_, err := s.client.Push(authed(t, 10*time.Second), &apipb.PushRequest{AppCode: 1, Uid: "u"})
		return err == nil
	}, "the slot of a reset call never came back")
	// An answered call gives its slot back before its answer is sent: a
	// client calling again at once, with one slot free, is never refused.
	for range 200 {
		if _, err := s.client.Push(authed(t, 10*time.Second), &apipb.PushRequest{AppCode: 1, Uid: "u"}); err != nil {
			t.Fatalf("sequential pushes with one slot free: %v", err)
		}
		if got := s.srv.adm.calls.Load(); got != 1 {
			t.Fatalf("%d calls counted open as a call's answer arrived, want 1: the answered call still holds its slot", got)
		}
	}
	if got := s.srv.adm.calls.Load(); got != 1 {
		t.Fatalf("%d calls counted open, want 1 (the call still waiting for its request)", got)
	}
	if err := r2.fr.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return s.srv.adm.calls.Load() == 0 }, "slots not given back")
}

// TestOneAppCannotTakeTheNode: the calls with the keys of one app hold at
// most its share of the node's calls and upstream streams, so another
// app's calls are served while the first one floods the node; past the
// node-wide cap, every app is refused.
func TestOneAppCannotTakeTheNode(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxCallsInFlight, lim.MaxAppCallsInFlight = 3, 2
	lim.MaxUpstreamStreams, lim.MaxAppUpstreamStreams = 2, 1
	s := serve(t, lim)
	one, two := "Bearer "+testKey, "Bearer "+testKey2
	// App 1 opens two calls whose requests are "still coming": its share.
	r1, r2 := dialRaw(t, s.addr), dialRaw(t, s.addr)
	r1.openCall(t, 1, "/courier.v1.Courier/Push", one)
	r2.openCall(t, 1, "/courier.v1.Courier/Push", one)
	testkit.Eventually(t, 10*time.Second, func() bool { return s.srv.adm.calls.Load() == 2 }, "app 1's calls are not counted")
	// Its third is refused, unread, naming its share; the node has room.
	r3 := dialRaw(t, s.addr)
	r3.openCall(t, 1, "/courier.v1.Courier/Push", one)
	if code, msg, ok := r3.answer(t, 1, 5*time.Second); !ok || code != "8" || !strings.Contains(msg, "api.max-app-calls-in-flight") {
		t.Fatalf("app 1's third call: answered %v %q %q, want 8 (RESOURCE_EXHAUSTED) naming api.max-app-calls-in-flight", ok, code, msg)
	}
	_, err := s.client.Push(authed(t, 10*time.Second), &apipb.PushRequest{AppCode: 1, Uid: "u"})
	wantReason(t, err, apipb.ReasonNodeOverloaded, "api.max-app-calls-in-flight")
	if got := testutil.ToFloat64(s.srv.adm.callsRefused.WithLabelValues("app_calls_in_flight")); got != 2 {
		t.Fatalf("courier_api_calls_refused_total{reason=app_calls_in_flight} %v, want 2", got)
	}
	// App 2 is served meanwhile, call after call.
	ctx2 := metadata.NewOutgoingContext(authed(t, 10*time.Second), metadata.Pairs("authorization", two))
	for range 20 {
		if _, err := s.client.Push(ctx2, &apipb.PushRequest{AppCode: 2, Uid: "u"}); err != nil {
			t.Fatalf("app 2 while app 1 holds its share: %v", err)
		}
	}
	// App 2 holding one call fills the node: now app 2 meets the node's cap.
	r4 := dialRaw(t, s.addr)
	r4.openCall(t, 1, "/courier.v1.Courier/Push", two)
	testkit.Eventually(t, 10*time.Second, func() bool { return s.srv.adm.calls.Load() == 3 }, "app 2's call is not counted")
	if _, err := s.client.Push(ctx2, &apipb.PushRequest{AppCode: 2, Uid: "u"}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("app 2 with the node full: %v", err)
	} else {
		wantReason(t, err, apipb.ReasonNodeOverloaded, "api.max-calls-in-flight")
	}
	// A reset call of app 1 gives back both its slots.
	if err := r1.fr.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool {
		return s.srv.adm.calls.Load() == 2 && s.srv.adm.shares[1].calls.Load() == 1 && s.srv.adm.shares[2].calls.Load() == 1
	}, "a reset call's slots did not come back")

	// Upstream streams: one per app here.
	up, err := s.client.Upstream(authed(t, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Subscribe{Subscribe: &apipb.Subscribe{AppCode: 1}}}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return s.srv.adm.streams.Load() == 1 }, "app 1's stream is not counted")
	up2, err := s.client.Upstream(authed(t, 10*time.Second))
	if err == nil {
		_, err = up2.Recv()
	}
	wantReason(t, err, apipb.ReasonLimitReached, "api.max-app-upstream-streams")
	up3, err := s.client.Upstream(metadata.NewOutgoingContext(authed(t, time.Minute), metadata.Pairs("authorization", two)))
	if err != nil {
		t.Fatal(err)
	}
	if err := up3.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Subscribe{Subscribe: &apipb.Subscribe{AppCode: 2}}}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return s.srv.adm.streams.Load() == 2 }, "app 2's stream was not served while app 1 holds its share")
}

// TestAppShareOfPushesInFlight: the pushes in flight of one app stop at
// its share, while another app's are admitted up to the node's budget;
// releases give back both counts.
func TestAppShareOfPushesInFlight(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxPushesInFlight, lim.MaxAppPushesInFlight = 300, 200
	lim.MaxGateBacklog, lim.MaxPushDelay = 0, 0
	s := New(Deps{Keys: Keys{testKey: 1, testKey2: 2}, Req: &fakeReq{}, Limits: lim})
	one, two := scope{app: 1, sh: s.adm.shares[1]}, scope{app: 2, sh: s.adm.shares[2]}
	r1, err := s.admitPushes(one, 150)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.admitPushes(one, 51)
	wantReason(t, err, apipb.ReasonNodeOverloaded, "api.max-app-pushes-in-flight")
	r2, err := s.admitPushes(two, 150)
	if err != nil {
		t.Fatalf("app 2 with app 1 at 150 of its 200: %v", err)
	}
	// 300 in flight: the node's budget is spent for both.
	_, err = s.admitPushes(one, 1)
	wantReason(t, err, apipb.ReasonNodeOverloaded, "api.max-pushes-in-flight")
	if got := s.adm.shares[1].pushes.Load(); got != 150 {
		t.Fatalf("app 1 counted %d pushes after a refusal by the node, want 150", got)
	}
	if got := testutil.ToFloat64(s.adm.pushesRefused.WithLabelValues("app_pushes_in_flight")); got != 51 {
		t.Fatalf("courier_api_pushes_refused_total{reason=app_pushes_in_flight} %v, want 51", got)
	}
	r1(context.Background())
	r2(context.Background())
	if s.inFlight.Load() != 0 || s.adm.shares[1].pushes.Load() != 0 || s.adm.shares[2].pushes.Load() != 0 {
		t.Fatalf("after the releases: node %d, app 1 %d, app 2 %d", s.inFlight.Load(), s.adm.shares[1].pushes.Load(), s.adm.shares[2].pushes.Load())
	}
	r3, err := s.admitPushes(one, 200)
	if err != nil {
		t.Fatalf("app 1's whole share after the releases: %v", err)
	}
	r3(context.Background())
}

// TestAppSharesDefault: 0 is three quarters of the node's, and a share
// of pushes always holds one PushMany.
func TestAppSharesDefault(t *testing.T) {
	l := DefaultLimits()
	if c, s, p := l.AppShares(); c != 192 || s != 96 || p != 3072 {
		t.Fatalf("default shares %d calls, %d streams, %d pushes; want 192, 96, 3072", c, s, p)
	}
	l.MaxCallsInFlight, l.MaxUpstreamStreams, l.MaxPushesInFlight, l.MaxBatch = 1, 1, 1100, 1000
	if c, s, p := l.AppShares(); c != 1 || s != 1 || p != 1000 {
		t.Fatalf("shares of small caps %d, %d, %d; want 1, 1, 1000", c, s, p)
	}
	l.MaxAppCallsInFlight = 1
	if c, _, _ := l.AppShares(); c != 1 {
		t.Fatalf("a set share %d, want 1", c)
	}
}

// TestKeylessConnectionsAreClosed: connections were taken from the cap
// at accept, before any key was seen: clients without a key could hold
// every slot (gRPC keeps an idle connection 5 minutes) and every app was
// refused. Past half the cap, connections that have made no call with a
// key for a while are closed until half is open; those with a key stay.
func TestKeylessConnectionsAreClosed(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxConnections = 4
	s := serveTuned(t, lim, func(s *Server) { s.adm.keylessGrace = 300 * time.Millisecond })
	if _, err := s.client.Push(authed(t, 10*time.Second), &apipb.PushRequest{AppCode: 1, Uid: "u"}); err != nil {
		t.Fatal(err)
	}
	closed := make(chan int, 3)
	for i := range 3 {
		r := dialRaw(t, s.addr)
		go func() {
			_ = r.c.SetReadDeadline(time.Now().Add(20 * time.Second))
			for {
				if _, err := r.fr.ReadFrame(); err != nil {
					var ne net.Error
					if !errors.As(err, &ne) || !ne.Timeout() {
						closed <- i
					}
					return
				}
			}
		}()
	}
	// (A loaded machine may see a connection more, the client's own
	// reconnect: the count is of what is left open, not of the closed.)
	testkit.Eventually(t, 10*time.Second, func() bool {
		return testutil.ToFloat64(s.srv.adm.keylessClosed) >= 2 && testutil.ToFloat64(s.srv.adm.connsOpen) <= 2
	}, "keyless connections were not closed down to half the cap")
	time.Sleep(time.Second)
	if n := len(closed); n < 1 || n > 2 {
		t.Fatalf("%d of the 3 keyless connections closed, want 2 (down to half the cap; 1 if the client's own reconnect was one)", n)
	}
	if got := testutil.ToFloat64(s.srv.adm.connsOpen); got != 2 {
		t.Fatalf("courier_api_connections %v, want 2: reaping stops at half the cap", got)
	}
	// The connection with a key was kept.
	if _, err := s.client.Push(authed(t, 10*time.Second), &apipb.PushRequest{AppCode: 1, Uid: "u"}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(s.srv.adm.connsOpen); got != 2 {
		t.Fatalf("courier_api_connections %v after a call with a key: its connection was closed", got)
	}
}
