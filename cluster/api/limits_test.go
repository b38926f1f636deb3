package api

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/cluster/upstream"
	"github.com/courier-im/courier/messages/apipb"
)

// These tests run the API over real gRPC with the server options a node
// uses (Server.ServerOptions), on 127.0.0.1.

const (
	testKey  = "key-of-app-one-000"
	testKey2 = "key-of-app-two-000"
)

// served is an API server on a real listener and a client of it.
type served struct {
	addr   string
	client apipb.CourierClient
	req    *fakeReq
	up     *upstream.Router
	srv    *Server
}

func serve(t *testing.T, lim Limits) *served { t.Helper(); return serveTuned(t, lim, nil) }

// serveTuned is serve with tune applied to the Server before it serves.
func serveTuned(t *testing.T, lim Limits, tune func(*Server)) *served {
	t.Helper()
	up := upstream.New(upstream.DefaultConfig(), nil)
	t.Cleanup(up.Close)
	req := &fakeReq{}
	s := New(Deps{Keys: Keys{testKey: 1, testKey2: 2}, Req: req, Limits: lim, Upstream: upstream.NewLocalHub(up)})
	if tune != nil {
		tune(s)
	}
	srv := grpc.NewServer(s.ServerOptions()...)
	apipb.RegisterCourierServer(srv, s)
	// As on a node: health checks and reflection need no key.
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(s.Listener(ln)) }()
	t.Cleanup(srv.Stop) // before up.Close: streams end first
	return &served{addr: ln.Addr().String(), client: apipb.NewCourierClient(dialAPI(t, ln.Addr().String())), req: req, up: up, srv: s}
}

// dialAPI returns a client connection of its own to the API at addr.
func dialAPI(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func authed(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+testKey)
}

// pushManyOfSize returns a PushMany of n items whose encoding is exactly
// size bytes.
func pushManyOfSize(t *testing.T, n, size int) *apipb.PushManyRequest {
	t.Helper()
	r := &apipb.PushManyRequest{}
	for range n {
		r.Items = append(r.Items, &apipb.PushRequest{AppCode: 1, Uid: "u"})
	}
	per := (size - proto.Size(r)) / n
	for _, it := range r.Items {
		it.Payload = make([]byte, per-3) // field tag and length take ~3 bytes
	}
	for proto.Size(r) != size {
		last := r.Items[n-1]
		diff := size - proto.Size(r)
		if len(last.Payload)+diff < 0 {
			t.Fatalf("cannot reach %d bytes", size)
		}
		last.Payload = make([]byte, len(last.Payload)+diff)
	}
	return r
}

// TestPushManyUpToTheRequestLimit: a PushMany of the documented maximum
// (max-batch items in max-request-bytes) goes through over real gRPC; one
// byte more is refused with RESOURCE_EXHAUSTED before any item is
// handled.
func TestPushManyUpToTheRequestLimit(t *testing.T) {
	lim := DefaultLimits()
	s := serve(t, lim)
	full := pushManyOfSize(t, lim.MaxBatch, lim.MaxRequestBytes)
	resp, err := s.client.PushMany(authed(t, time.Minute), full)
	if err != nil {
		t.Fatalf("a PushMany of %d items in %d bytes: %v", lim.MaxBatch, lim.MaxRequestBytes, err)
	}
	if len(resp.Results) != lim.MaxBatch || resp.Results[lim.MaxBatch-1].Code != 0 {
		t.Fatalf("%d results", len(resp.Results))
	}
	handled := len(s.req.got)
	over := pushManyOfSize(t, lim.MaxBatch, lim.MaxRequestBytes+1)
	_, err = s.client.PushMany(authed(t, time.Minute), over)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("one byte over the limit: %v", err)
	}
	if len(s.req.got) != handled {
		t.Fatal("items of a refused request were handled")
	}
	// A single push of the largest payload fits whatever the batch.
	if lim.MaxPayload+1024 > lim.MaxRequestBytes {
		t.Fatalf("max-request-bytes %d does not hold one push of max-payload %d", lim.MaxRequestBytes, lim.MaxPayload)
	}
}

// TestConcurrentStreamsAreBounded: a connection may have at most
// MaxConcurrentStreams calls open; a further call waits until one ends.
func TestConcurrentStreamsAreBounded(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxConcurrentStreams = 2
	s := serve(t, lim)
	var cancels []context.CancelFunc
	for range 2 {
		ctx, cancel := context.WithCancel(authed(t, time.Minute))
		cancels = append(cancels, cancel)
		st, err := s.client.Upstream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Subscribe{Subscribe: &apipb.Subscribe{AppCode: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	// Both streams hold their slots once the server has seen them.
	deadline := time.Now().Add(10 * time.Second)
	for s.up.Publish(&apipb.UpstreamMessage{AppCode: 1, Msgtype: 1}) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the subscriptions never registered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, err := s.client.Push(authed(t, 500*time.Millisecond), &apipb.PushRequest{AppCode: 1, Uid: "u"})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a third call while two streams are open: %v, want to wait (DeadlineExceeded)", err)
	}
	cancels[0]()
	if _, err := s.client.Push(authed(t, 10*time.Second), &apipb.PushRequest{AppCode: 1, Uid: "u"}); err != nil {
		t.Fatalf("after a stream ended: %v", err)
	}
}

// rawConn is an HTTP/2 connection to the server without gRPC, to see
// what the server does with pings and idle connections.
type rawConn struct {
	c  net.Conn
	fr *http2.Framer
	// HPACK state of the connection, both ways (admission_test.go).
	hb  bytes.Buffer
	enc *hpack.Encoder
	dec *hpack.Decoder
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	r := &rawConn{c: c, fr: http2.NewFramer(c, c), dec: hpack.NewDecoder(4096, nil)}
	r.enc = hpack.NewEncoder(&r.hb)
	if err := r.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return r
}

// next returns the next frame that is not SETTINGS or WINDOW_UPDATE,
// acknowledging the server's SETTINGS; nil if the connection ended.
func (r *rawConn) next(t *testing.T, timeout time.Duration) http2.Frame {
	t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(timeout))
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("no frame within %v", timeout)
			}
			return nil
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = r.fr.WriteSettingsAck()
			}
		case *http2.WindowUpdateFrame:
		default:
			return f
		}
	}
}

func (r *rawConn) ping(t *testing.T) {
	t.Helper()
	if err := r.fr.WritePing(false, [8]byte{1}); err != nil {
		t.Fatal(err)
	}
	if f, ok := r.next(t, 5*time.Second).(*http2.PingFrame); !ok || !f.IsAck() {
		t.Fatalf("ping answered %v", f)
	}
}

// TestKeepalivePolicy: a client may ping as often as KeepaliveMinTime,
// even without a call open (an idle app-server keeping its connection
// warm); one that pings faster is told too_many_pings and cut off.
func TestKeepalivePolicy(t *testing.T) {
	lim := DefaultLimits()
	lim.KeepaliveMinTime = 200 * time.Millisecond
	s := serve(t, lim)
	polite := dialRaw(t, s.addr)
	for range 5 {
		polite.ping(t)
		time.Sleep(300 * time.Millisecond) // the client's pace, above the minimum
	}
	rude := dialRaw(t, s.addr)
	for range 5 {
		if err := rude.fr.WritePing(false, [8]byte{2}); err != nil {
			break
		}
	}
	for {
		f := rude.next(t, 5*time.Second)
		if f == nil {
			t.Fatal("closed without GOAWAY")
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			if g.ErrCode != http2.ErrCodeEnhanceYourCalm || string(g.DebugData()) != "too_many_pings" {
				t.Fatalf("GOAWAY %v %q", g.ErrCode, g.DebugData())
			}
			break
		}
	}
	polite.ping(t) // the polite one is unaffected
}

// TestIdleConnectionsAreClosed: a connection with no call open for
// MaxConnectionIdle is sent GOAWAY; a quiet one is pinged every
// KeepaliveTime and closed when the pings go unanswered.
func TestIdleConnectionsAreClosed(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxConnectionIdle = 300 * time.Millisecond
	s := serve(t, lim)
	idle := dialRaw(t, s.addr)
	for {
		f := idle.next(t, 10*time.Second)
		if f == nil {
			t.Fatal("closed without GOAWAY")
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			if !strings.Contains(string(g.DebugData()), "max_idle") {
				t.Fatalf("GOAWAY %v %q", g.ErrCode, g.DebugData())
			}
			break
		}
	}

	lim = DefaultLimits()
	lim.KeepaliveTime, lim.KeepaliveTimeout = 300*time.Millisecond, 300*time.Millisecond
	s = serve(t, lim)
	dead := dialRaw(t, s.addr) // never answers the server's pings
	start := time.Now()
	pinged := false
	for {
		f := dead.next(t, 10*time.Second)
		if f == nil {
			break // closed
		}
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			pinged = true
		}
	}
	if !pinged {
		t.Fatal("the server never pinged the quiet connection")
	}
	if el := time.Since(start); el > 8*time.Second {
		t.Fatalf("closed after %v", el)
	}
}

// TestUpstreamDeliveriesFitAClientsDefaultLimit: an app-server whose gRPC
// client keeps the default 4 MiB receive limit gets every upstream
// message, however many large ones wait when it subscribes: deliveries
// are cut at upstream's MaxBatchBytes, not only at MaxBatch messages.
func TestUpstreamDeliveriesFitAClientsDefaultLimit(t *testing.T) {
	s := serve(t, DefaultLimits())
	// A first subscriber with room for one lets the rest queue up.
	first, err := s.up.Subscribe(1, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	const count = 100
	for i := range count {
		if err := s.up.Publish(&apipb.UpstreamMessage{AppCode: 1, Msgtype: 1, MsgId: strconv.Itoa(i), Uid: "u" + strconv.Itoa(i), Payload: make([]byte, 60<<10)}); err != nil {
			t.Fatal(err)
		}
	}
	st, err := s.client.Upstream(authed(t, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Subscribe{Subscribe: &apipb.Subscribe{AppCode: 1, MaxInFlight: 1000}}}); err != nil {
		t.Fatal(err)
	}
	got := 0
	for got < count-1 {
		d, err := st.Recv()
		if err != nil {
			t.Fatalf("after %d of %d messages: %v", got, count-1, err)
		}
		if size := proto.Size(d); size > 4<<20 {
			t.Fatalf("a delivery of %d bytes", size)
		}
		got += len(d.Messages)
	}
}

// TestSubscribeMsgtypesAreBounded: a subscribe lists at most
// MaxSubscribeMsgtypes distinct msgtypes (it is repeated to every gate of
// the cluster every 2 s); duplicates do not count.
func TestSubscribeMsgtypesAreBounded(t *testing.T) {
	s := serve(t, DefaultLimits())
	subscribe := func(types []uint32) error {
		st, err := s.client.Upstream(authed(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Subscribe{Subscribe: &apipb.Subscribe{AppCode: 1, Msgtypes: types}}}); err != nil {
			t.Fatal(err)
		}
		_ = st.CloseSend()
		_, err = st.Recv()
		return err
	}
	many := make([]uint32, MaxSubscribeMsgtypes+1)
	for i := range many {
		many[i] = uint32(i)
	}
	if err := subscribe(many); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "more than 1024 distinct") {
		t.Fatalf("%d msgtypes: %v", len(many), err)
	}
	dups := make([]uint32, 100_000) // 100,000 times msgtype 0: one
	if err := subscribe(dups); err != nil && status.Code(err) == codes.InvalidArgument {
		t.Fatalf("duplicates: %v", err)
	}
}
