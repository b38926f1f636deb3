package api

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/testkit"
)

// rawCodec sends and receives encoded messages as they are (*[]byte), so
// that a test can send what a protobuf library would refuse to encode.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

// withInvalidUTF8 encodes m and replaces the bytes of mark in it (a
// string field's value) with as many bytes that are not UTF-8.
func withInvalidUTF8(t *testing.T, m proto.Message, mark string) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(mark))
	if i < 0 {
		t.Fatalf("%q not in the encoding", mark)
	}
	copy(b[i:], bytes.Repeat([]byte{0xff}, len(mark)))
	return b
}

// TestInvalidUTF8IsTheRequestsFault: a request whose string field is not
// valid UTF-8 (which a protobuf library refuses to decode) is answered
// INVALID_ARGUMENT naming the field, not gRPC's INTERNAL "failed to
// unmarshal", which tells a client to retry it; nothing of it is done.
// Valid requests on the same connection are served as ever.
func TestInvalidUTF8IsTheRequestsFault(t *testing.T) {
	s := serve(t, DefaultLimits())
	conn := dialAPI(t, s.addr)
	call := func(method string, req []byte) error {
		var resp []byte
		return conn.Invoke(authed(t, 10*time.Second), method, &req, &resp, grpc.ForceCodecV2(rawCodec{}))
	}
	for _, tc := range []struct {
		method, field string
		req           []byte
	}{
		{"/courier.v1.Courier/Push", "uid", withInvalidUTF8(t, &apipb.PushRequest{AppCode: 1, Uid: "XYZ", Payload: []byte("p")}, "XYZ")},
		{"/courier.v1.Courier/PushMany", "items.idempotency_key", withInvalidUTF8(t, &apipb.PushManyRequest{Items: []*apipb.PushRequest{
			{AppCode: 1, Uid: "fine", IdempotencyKey: "k1"}, {AppCode: 1, Uid: "fine", IdempotencyKey: "XYZ"}}}, "XYZ")},
		{"/courier.v1.Courier/Kick", "reason", withInvalidUTF8(t, &apipb.KickRequest{AppCode: 1, Uid: "u", Reason: "XYZ"}, "XYZ")},
		{"/grpc.health.v1.Health/Check", "service", withInvalidUTF8(t, &healthpb.HealthCheckRequest{Service: "XYZ"}, "XYZ")},
	} {
		err := call(tc.method, tc.req)
		if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), tc.field+": not valid UTF-8") {
			t.Errorf("%s with a field that is not UTF-8: %v, want INVALID_ARGUMENT naming %s", tc.method, err, tc.field)
		}
	}
	if len(s.req.got) != 0 {
		t.Fatalf("the actors got %d requests of calls refused", len(s.req.got))
	}
	good, err := proto.Marshal(&apipb.PushRequest{AppCode: 1, Uid: "u", Payload: []byte("p")})
	if err != nil {
		t.Fatal(err)
	}
	if err := call("/courier.v1.Courier/Push", good); err != nil {
		t.Fatalf("a valid push after them: %v", err)
	}
}

// TestUnreadAnswersAreBounded: a client that does not read its answers
// (it keeps its HTTP/2 window shut) has its calls end, and their slots
// come back, while their answers wait in the node; past three quarters of
// api.max-unread-answer-bytes of those for its app, that app's calls are
// refused (RESOURCE_EXHAUSTED naming the setting) instead of the node
// holding more, while another app's are served. Once the answers go (the
// client reads, or leaves), calls are served again.
func TestUnreadAnswersAreBounded(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxUnreadAnswerBytes = 256 << 10 // an app's share: 192 KiB
	lists := &memLists{}
	for i := range 300 { // an answer of about 19 KiB
		_ = lists.Edit(context.Background(), &apipb.UpdateAccessListRequest{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1,
			Add: []string{fmt.Sprintf("%060d", i)}})
	}
	s := serveTuned(t, lim, func(s *Server) { s.lists = lists })

	r := dialRaw(t, s.addr)
	if err := r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}); err != nil {
		t.Fatal(err)
	}
	req, err := proto.Marshal(&apipb.GetAccessListsRequest{AppCode: 1})
	if err != nil {
		t.Fatal(err)
	}
	body := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(req)))
	body = append(body, req...)
	const calls = 12
	for i := range calls {
		stream := uint32(2*i + 1)
		r.openCall(t, stream, "/courier.v1.Courier/GetAccessLists", "Bearer "+testKey)
		if err := r.fr.WriteData(stream, true, body); err != nil {
			t.Fatal(err)
		}
	}
	// The calls end (their slots come back); their answers wait.
	app1 := s.srv.adm.shares[1]
	testkit.Eventually(t, 10*time.Second, func() bool {
		return s.srv.adm.calls.Load() == 0 && app1.unread.Load() >= calls*16<<10
	}, "the calls did not end with their answers counted unread")
	if node := s.srv.adm.codec.unread.Load(); node < app1.unread.Load() || node > lim.MaxUnreadAnswerBytes {
		t.Fatalf("the node counts %d bytes unread, app 1 %d", node, app1.unread.Load())
	}
	_, err = s.client.Push(authed(t, 10*time.Second), &apipb.PushRequest{AppCode: 1, Uid: "u"})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "api.max-unread-answer-bytes") || !strings.Contains(err.Error(), "for this app") {
		t.Fatalf("a call of the app while its answers wait unread: %v, want RESOURCE_EXHAUSTED for this app naming api.max-unread-answer-bytes", err)
	}
	wantReason(t, err, apipb.ReasonNodeOverloaded, "api.max-unread-answer-bytes")
	if got := testutil.ToFloat64(s.srv.adm.callsRefused.WithLabelValues("app_unread_answers")); got != 1 {
		t.Fatalf("courier_api_calls_refused_total{reason=app_unread_answers} %v", got)
	}
	ctx2 := metadata.NewOutgoingContext(authed(t, 10*time.Second), metadata.Pairs("authorization", "Bearer "+testKey2))
	if _, err := s.client.Push(ctx2, &apipb.PushRequest{AppCode: 2, Uid: "u"}); err != nil {
		t.Fatalf("another app's call meanwhile: %v", err)
	}
	// The client leaves: its answers go with its connection, dropped
	// by the transport unfreed, and are counted out when collected.
	r.c.Close()
	testkit.Eventually(t, 10*time.Second, func() bool {
		runtime.GC()
		return s.srv.adm.codec.unread.Load() == 0 && app1.unread.Load() == 0
	}, "the answers of a closed connection still counted")
	if _, err := s.client.Push(authed(t, 10*time.Second), &apipb.PushRequest{AppCode: 1, Uid: "u"}); err != nil {
		t.Fatalf("a call once the answers went: %v", err)
	}
	// Answers read as they come are counted only while on their way.
	for range 20 {
		if _, err := s.client.GetAccessLists(authed(t, 10*time.Second), &apipb.GetAccessListsRequest{AppCode: 1}); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return s.srv.adm.codec.unread.Load() == 0 }, "answers read still counted")
}
