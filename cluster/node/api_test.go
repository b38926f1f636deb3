package node_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/cluster/node"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

func TestAPIHealthAndReflection(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	conn := n.GRPC(t, grpc.WithTransportCredentials(insecure.NewCredentials()))
	ctx := testkit.Ctx(t, "") // no API key: these services need none

	hc := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", "courier.v1.Courier"} {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health of %q: %v %v", svc, r, err)
		}
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("health of an unknown service: %v", err)
	}

	st, err := reflectpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(req *reflectpb.ServerReflectionRequest) *reflectpb.ServerReflectionResponse {
		t.Helper()
		if err := st.Send(req); err != nil {
			t.Fatal(err)
		}
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	var names []string
	for _, s := range ask(&reflectpb.ServerReflectionRequest{MessageRequest: &reflectpb.ServerReflectionRequest_ListServices{}}).GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	for _, want := range []string{"courier.v1.Courier", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !slices.Contains(names, want) {
			t.Fatalf("reflection lists %v, not %s", names, want)
		}
	}
	fd := ask(&reflectpb.ServerReflectionRequest{MessageRequest: &reflectpb.ServerReflectionRequest_FileContainingSymbol{
		FileContainingSymbol: "courier.v1.Courier"}}).GetFileDescriptorResponse()
	if fd == nil || len(fd.FileDescriptorProto) == 0 {
		t.Fatal("reflection has no descriptor of courier.v1.Courier")
	}
	// The API itself still wants a key.
	if _, err := apipb.NewCourierClient(conn).Presence(ctx, &apipb.PresenceRequest{AppCode: 1, Uids: []string{"a"}}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Presence without a key: %v", err)
	}
}

func tlsClient(t *testing.T, files testkit.TLSFiles, cert, key string) grpc.DialOption {
	t.Helper()
	pem, err := os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: pool}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg))
}

func presence(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := apipb.NewCourierClient(conn).Presence(ctx, &apipb.PresenceRequest{AppCode: 1, Uids: []string{"alice"}})
	return err
}

func TestAPITLS(t *testing.T) {
	files := testkit.NewTLSFiles(t)
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--api.tls-cert", files.ServerCert, "--api.tls-key", files.ServerKey}})
	ctx := testkit.Ctx(t, testkit.App1Key)
	if err := presence(ctx, n.GRPC(t, tlsClient(t, files, "", ""))); err != nil {
		t.Fatalf("over TLS: %v", err)
	}
	if err := presence(ctx, n.GRPC(t, grpc.WithTransportCredentials(insecure.NewCredentials()))); status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext to a TLS API: %v", err)
	}
	// A client that does not trust the CA is refused too.
	if err := presence(ctx, n.GRPC(t, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{})))); status.Code(err) != codes.Unavailable {
		t.Fatalf("TLS without the CA: %v", err)
	}
}

func TestAPIMutualTLS(t *testing.T) {
	files := testkit.NewTLSFiles(t)
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--api.tls-cert", files.ServerCert, "--api.tls-key", files.ServerKey,
		"--api.tls-client-ca", files.CA}})
	ctx := testkit.Ctx(t, testkit.App1Key)
	if err := presence(ctx, n.GRPC(t, tlsClient(t, files, files.ClientCert, files.ClientKey))); err != nil {
		t.Fatalf("with a client certificate of the CA: %v", err)
	}
	if err := presence(ctx, n.GRPC(t, tlsClient(t, files, "", ""))); status.Code(err) != codes.Unavailable {
		t.Fatalf("without a client certificate: %v", err)
	}
	if err := presence(ctx, n.GRPC(t, tlsClient(t, files, files.StrangerCert, files.StrangerKey))); status.Code(err) != codes.Unavailable {
		t.Fatalf("with a certificate of another CA: %v", err)
	}
	// Health checks go through the same TLS.
	r, err := healthpb.NewHealthClient(n.GRPC(t, tlsClient(t, files, files.ClientCert, files.ClientKey))).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health over mutual TLS: %v %v", r, err)
	}
}

// TestProxyProtocolSettings: the node's gate.proxy-* settings reach the
// gate: a connection from the trusted balancer needs its PROXY header.
func TestProxyProtocolSettings(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--gate.proxy-protocol", "--gate.proxy-from", "127.0.0.20"}})
	login, _ := messages.AppendMessage(nil, messages.Header{Cmd: messages.CmdLogin, AppCode: 1, Seq: 1},
		&devicepb.Login{Uid: "lb-client", Token: testkit.Token(t, 1, "lb-client")})
	bare := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{LocalAddr: "127.0.0.20"})
	bare.SendRaw(login)
	bare.ExpectClosed()
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{LocalAddr: "127.0.0.20"})
	d.SendRaw(append([]byte("PROXY TCP4 198.51.100.1 10.0.0.1 4000 7000\r\n"), login...))
	if f := d.Expect(messages.CmdLoginAck); f.Msg.(*devicepb.LoginAck).Code != devicepb.Code_OK {
		t.Fatalf("login through the balancer: %v", f.Msg)
	}
	// A direct client elsewhere needs no header.
	n.Device(t, 1, "direct")
}

var refusedConnsRe = regexp.MustCompile(`(?m)^courier_api_connections_refused_total (\d+)`)

// TestAPIConnectionCap: a node started with api.max-connections serves
// that many API connections; a client over the cap is told so
// (RESOURCE_EXHAUSTED naming the setting) and counted in the metrics.
func TestAPIConnectionCap(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--api.max-connections", "1"}})
	ctx := testkit.Ctx(t, testkit.App1Key)
	insecureCreds := grpc.WithTransportCredentials(insecure.NewCredentials())
	if err := presence(ctx, n.GRPC(t, insecureCreds)); err != nil {
		t.Fatal(err)
	}
	err := presence(ctx, n.GRPC(t, insecureCreds))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "api.max-connections") {
		t.Fatalf("a second connection: %v, want RESOURCE_EXHAUSTED naming api.max-connections", err)
	}
	if info := apipb.ErrorInfo(err); info.GetReason() != apipb.ReasonLimitReached || info.GetMetadata()[apipb.SettingKey] != "api.max-connections" {
		t.Fatalf("a second connection: ErrorInfo %v, want LIMIT_REACHED and the setting", info)
	}
	if got := metric(t, n, refusedConnsRe); got != 1 {
		t.Fatalf("courier_api_connections_refused_total %d, want 1", got)
	}
}

// TestAPIRefusalReasons: a push refused because the identity's inbox is
// full says so in a form a program reads without parsing the message:
// the status of a Push carries an ErrorInfo with reason INBOX_FULL and
// the setting, and a PushMany's item its reason, over real gRPC from a
// real node; an item that went through has no reason.
func TestAPIRefusalReasons(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--actors.inbox-max-messages", "2"}})
	api, ctx := n.API(t), testkit.Ctx(t, testkit.App1Key)
	push := func(uid string) *apipb.PushRequest {
		return &apipb.PushRequest{AppCode: 1, Uid: uid, Payload: []byte("order")}
	}
	for range 2 {
		if _, err := api.Push(ctx, push("full")); err != nil {
			t.Fatal(err)
		}
	}
	_, err := api.Push(ctx, push("full"))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a third push to an inbox of 2: %v, want RESOURCE_EXHAUSTED", err)
	}
	if info := apipb.ErrorInfo(err); info.GetReason() != apipb.ReasonInboxFull || info.GetMetadata()[apipb.SettingKey] != "actors.inbox-max-messages" {
		t.Fatalf("a third push to an inbox of 2: ErrorInfo %v, want INBOX_FULL and actors.inbox-max-messages", info)
	}
	r, err := api.PushMany(ctx, &apipb.PushManyRequest{Items: []*apipb.PushRequest{push("full"), push("room")}})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Results[0]; got.Code != int32(codes.ResourceExhausted) || got.Reason != apipb.ReasonInboxFull || !strings.Contains(got.Error, "actors.inbox-max-messages") {
		t.Fatalf("an item to the full inbox: %v", got)
	}
	if got := r.Results[1]; got.Code != 0 || got.Reason != "" || got.Response.GetSeq() != 1 {
		t.Fatalf("an item to an inbox with room: %v", got)
	}
}

// TestHTTPConnectionsAreBounded: the HTTP endpoint holds at most
// node.HTTPMaxConns connections (each a descriptor the gate leaves to the rest
// of the node; a gate that cannot accept stops): one more waits in the
// kernel's queue until another closes, and is served then.
func TestHTTPConnectionsAreBounded(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	get := func(c net.Conn) error {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	}
	conns := make([]net.Conn, node.HTTPMaxConns)
	for i := range conns {
		c, err := net.Dial("tcp", n.HTTPAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := get(c); err != nil { // accepted and kept alive
			t.Fatalf("connection %d: %v", i, err)
		}
		conns[i] = c
	}
	extra, err := net.Dial("tcp", n.HTTPAddr) // the kernel's queue takes it
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	done := make(chan error, 1)
	go func() { done <- get(extra) }()
	select {
	case err := <-done:
		t.Fatalf("connection %d served while %d were held: %v", node.HTTPMaxConns+1, node.HTTPMaxConns, err)
	case <-time.After(500 * time.Millisecond):
	}
	conns[0].Close()
	if err := <-done; err != nil {
		t.Fatalf("the waiting connection once another closed: %v", err)
	}
}
