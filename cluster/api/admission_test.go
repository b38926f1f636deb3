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
// checks, reflection) are at most api.max-unauthenticated-calls at once;
// one more gets RESOURCE_EXHAUSTED naming the setting, and the slot is
// free again when a call ends, however it ends.
func TestUnauthenticatedCallsAreBounded(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxUnauthenticatedCalls = 2
	s := serve(t, lim)
	conn := dialAPI(t, s.addr)
	var cancels []context.CancelFunc
	for range 2 {
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
		if _, err := st.Recv(); err != nil {
			t.Fatalf("reflection without a key: %v", err)
		}
	}
	hc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "api.max-unauthenticated-calls") {
		t.Fatalf("a third call without a key: %v, want RESOURCE_EXHAUSTED naming api.max-unauthenticated-calls", err)
	}
	wantReason(t, err, apipb.ReasonLimitReached, "api.max-unauthenticated-calls")
	if got := testutil.ToFloat64(s.srv.adm.callsRefused.WithLabelValues("unauthenticated_calls")); got != 1 {
		t.Fatalf("courier_api_calls_refused_total{reason=unauthenticated_calls} %v", got)
	}
	// Calls with a key are not counted against it.
	if _, err := s.client.Push(authed(t, 10*time.Second), &apipb.PushRequest{AppCode: 1, Uid: "u"}); err != nil {
		t.Fatal(err)
	}
	cancels[0]() // the client gives up on a stream: its slot comes back
	testkit.Eventually(t, 10*time.Second, func() bool {
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil
	}, "the slot of an ended call never came back")
	// Calls that end normally give their slot back too (shortly after
	// they end: with two slots free, one lagging release is no refusal).
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
	lim.MaxCallsInFlight = 2
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
