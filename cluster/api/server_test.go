package api

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
)

// fakeReq answers every push with seq 1 and records the envelopes.
type fakeReq struct{ got []*actorpb.Envelope }

func (f *fakeReq) Request(_ context.Context, env *actorpb.Envelope) (*actorpb.Reply, error) {
	f.got = append(f.got, env)
	return &actorpb.Reply{Body: &actorpb.Reply_Push{Push: &actorpb.PushReply{MsgId: "m", Seq: 1}}}, nil
}

func (f *fakeReq) RequestMany(ctx context.Context, envs []*actorpb.Envelope) ([]*actorpb.Reply, []error) {
	reps, errs := make([]*actorpb.Reply, len(envs)), make([]error, len(envs))
	for i, e := range envs {
		reps[i], errs[i] = f.Request(ctx, e)
	}
	return reps, errs
}

func scoped(app int) context.Context {
	return context.WithValue(context.Background(), scopeKey{}, scope{app: app})
}

func TestPushValidationNamesTheField(t *testing.T) {
	req := &fakeReq{}
	s := New(Deps{Req: req, Limits: DefaultLimits()})
	now := time.UnixMilli(1_800_000_000_000)
	s.now = func() time.Time { return now }
	ok := func() *apipb.PushRequest {
		return &apipb.PushRequest{AppCode: 1, Uid: "u", Msgtype: 3, Payload: []byte("x"), TtlMs: 60_000}
	}
	tests := []struct {
		name  string
		mut   func(*apipb.PushRequest)
		code  codes.Code
		field string
	}{
		{"app 0", func(r *apipb.PushRequest) { r.AppCode = 0 }, codes.InvalidArgument, "app_code"},
		{"app too big", func(r *apipb.PushRequest) { r.AppCode = 70000 }, codes.InvalidArgument, "app_code"},
		{"empty uid", func(r *apipb.PushRequest) { r.Uid = "" }, codes.InvalidArgument, "uid"},
		{"long uid", func(r *apipb.PushRequest) { r.Uid = strings.Repeat("u", 129) }, codes.InvalidArgument, "uid"},
		{"bad utf-8 uid", func(r *apipb.PushRequest) { r.Uid = "\xff" }, codes.InvalidArgument, "uid"},
		{"msgtype", func(r *apipb.PushRequest) { r.Msgtype = 1 << 16 }, codes.InvalidArgument, "msgtype"},
		{"payload", func(r *apipb.PushRequest) { r.Payload = make([]byte, 61<<10) }, codes.InvalidArgument, "payload"},
		{"negative ttl", func(r *apipb.PushRequest) { r.TtlMs = -1 }, codes.InvalidArgument, "ttl_ms"},
		{"ttl above max", func(r *apipb.PushRequest) { r.TtlMs = (31 * 24 * time.Hour).Milliseconds() }, codes.InvalidArgument, "ttl_ms"},
		// As a Duration these wrap: to a negative one, and to 0.45 ms.
		{"ttl wrapping negative", func(r *apipb.PushRequest) { r.TtlMs = 9_223_372_036_855 }, codes.InvalidArgument, "ttl_ms"},
		{"ttl wrapping small", func(r *apipb.PushRequest) { r.TtlMs = 18_446_744_073_710 }, codes.InvalidArgument, "ttl_ms"},
		{"key too long", func(r *apipb.PushRequest) { r.IdempotencyKey = strings.Repeat("k", 129) }, codes.InvalidArgument, "idempotency_key"},
		{"key on fire-and-forget", func(r *apipb.PushRequest) {
			r.Delivery, r.IdempotencyKey = apipb.Delivery_DELIVERY_FIRE_AND_FORGET, "k"
		}, codes.InvalidArgument, "idempotency_key"},
		{"unknown delivery", func(r *apipb.PushRequest) { r.Delivery = 7 }, codes.InvalidArgument, "delivery"},
		{"other app", func(r *apipb.PushRequest) { r.AppCode = 2 }, codes.PermissionDenied, "appcode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok()
			tt.mut(r)
			_, err := s.Push(scoped(1), r)
			if st := status.Convert(err); st.Code() != tt.code || !strings.Contains(st.Message(), tt.field) {
				t.Fatalf("got %v %q, want %v naming %q", st.Code(), st.Message(), tt.code, tt.field)
			}
		})
	}
	if len(req.got) != 0 {
		t.Fatalf("%d invalid pushes reached an actor", len(req.got))
	}
	if _, err := s.Push(scoped(1), ok()); err != nil {
		t.Fatal(err)
	}
	p := req.got[0].GetPush()
	if !p.Stored || p.SentAtMs != now.UnixMilli() || p.ExpiresAtMs != now.Add(time.Minute).UnixMilli() || p.Msgtype != 3 {
		t.Fatalf("envelope %v", p)
	}
	r := ok()
	r.TtlMs = 0
	if _, err := s.Push(scoped(AllApps), r); err != nil {
		t.Fatal(err)
	}
	if p := req.got[1].GetPush(); p.ExpiresAtMs != now.Add(72*time.Hour).UnixMilli() {
		t.Fatalf("default ttl: expires %d", p.ExpiresAtMs)
	}
}

func TestPushManyItemsFailAlone(t *testing.T) {
	s := New(Deps{Req: &fakeReq{}, Limits: DefaultLimits()})
	resp, err := s.PushMany(scoped(1), &apipb.PushManyRequest{Items: []*apipb.PushRequest{
		{AppCode: 1, Uid: "a"}, {AppCode: 1, Uid: ""}, {AppCode: 2, Uid: "b"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []codes.Code{codes.OK, codes.InvalidArgument, codes.PermissionDenied}
	for i, r := range resp.Results {
		if codes.Code(r.Code) != want[i] {
			t.Fatalf("item %d: %v %s", i, codes.Code(r.Code), r.Error)
		}
	}
	if !strings.HasPrefix(resp.Results[1].Error, "items[1]:") {
		t.Fatalf("error does not name the item: %q", resp.Results[1].Error)
	}
	many := &apipb.PushManyRequest{Items: make([]*apipb.PushRequest, 1001)}
	if _, err := s.PushMany(scoped(1), many); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("1001 items: %v", err)
	}
}

func TestKeys(t *testing.T) {
	keys := Keys{"key-of-app-one-000": 1, "operator-key-00000": AllApps}
	call := func(md ...string) (scope, error) {
		var got scope
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(md...))
		_, err := newAdmission(keys, DefaultLimits()).unary(ctx, nil, &grpc.UnaryServerInfo{}, func(ctx context.Context, _ any) (any, error) {
			got = scopeOf(ctx)
			return nil, nil
		})
		return got, err
	}
	if _, err := call(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no key: %v", err)
	}
	if _, err := call("authorization", "key-of-app-one-000"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no Bearer: %v", err)
	}
	if _, err := call("authorization", "Bearer nope"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("unknown key: %v", err)
	}
	sc, err := call("authorization", "Bearer key-of-app-one-000")
	if err != nil || !sc.allows(1) || sc.allows(2) || sc.operator() {
		t.Fatalf("app key: %+v %v", sc, err)
	}
	sc, err = call("authorization", "Bearer operator-key-00000")
	if err != nil || !sc.allows(2) || !sc.operator() {
		t.Fatalf("operator key: %+v %v", sc, err)
	}
	// The scheme is case-insensitive, and any number of spaces may
	// follow it (RFC 9110).
	for _, v := range []string{"bearer key-of-app-one-000", "BEARER  key-of-app-one-000"} {
		if sc, err := call("authorization", v); err != nil || !sc.allows(1) {
			t.Fatalf("%q: %+v %v", v, sc, err)
		}
	}
	if _, err := call("authorization", "Bearer "); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no key after the scheme: %v", err)
	}
	// A key of app 1 naming no app, or one that cannot be, is told about
	// the field (not that the key acts for another app).
	if err := (scope{app: 1}).check(0); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "app_code 0") {
		t.Fatalf("app_code 0: %v", err)
	}
	if err := (scope{app: 1}).check(2); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("another app: %v", err)
	}
}

func TestEditList(t *testing.T) {
	got := edit([]string{"a", "b", "c"}, []string{"d", "a", "e"}, []string{"b", "e"})
	if strings.Join(got, ",") != "a,c,d" {
		t.Fatalf("edit = %v", got)
	}
}

// TestStatsAppCodeInRange: an operator key may ask for any app's
// statistics, but only of an appcode there can be: 65537 was cut to 16
// bits and answered with app 1's, labelled 65537.
func TestStatsAppCodeInRange(t *testing.T) {
	s := New(Deps{Req: &fakeReq{}, Limits: DefaultLimits()})
	for _, app := range []uint32{0, 65536, 65537} {
		if _, err := s.Stats(scoped(AllApps), &apipb.StatsRequest{AppCode: app}); status.Code(err) != codes.InvalidArgument ||
			!strings.Contains(err.Error(), "app_code") {
			t.Fatalf("Stats of app_code %d: %v, want INVALID_ARGUMENT naming app_code", app, err)
		}
	}
}

// replyReq answers every request with rep.
type replyReq struct{ rep *actorpb.Reply }

func (f replyReq) Request(context.Context, *actorpb.Envelope) (*actorpb.Reply, error) {
	return f.rep, nil
}
func (f replyReq) RequestMany(_ context.Context, envs []*actorpb.Envelope) ([]*actorpb.Reply, []error) {
	reps := make([]*actorpb.Reply, len(envs))
	for i := range reps {
		reps[i] = f.rep
	}
	return reps, make([]error, len(envs))
}

// TestPushReplyFailuresReachTheCaller: a push the identity's node
// answers with a failure (a node that lost its lease while handling it
// answers UNAVAILABLE) is an error for the app-server, never an OK with
// an empty msg_id; so is a push reply that carries a code.
func TestPushReplyFailuresReachTheCaller(t *testing.T) {
	for _, rep := range []*actorpb.Reply{
		{Body: &actorpb.Reply_Failure{Failure: &actorpb.Failure{Code: int32(codes.Unavailable), Message: "lost its lease"}}},
		{Body: &actorpb.Reply_Push{Push: &actorpb.PushReply{Code: int32(codes.Unavailable), Error: "lost its lease"}}},
	} {
		s := New(Deps{Req: replyReq{rep}, Limits: DefaultLimits()})
		_, err := s.Push(scoped(1), &apipb.PushRequest{AppCode: 1, Uid: "u", Payload: []byte("x")})
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "lost its lease") {
			t.Errorf("Push answered %v: %v", rep, err)
		}
		many, err := s.PushMany(scoped(1), &apipb.PushManyRequest{Items: []*apipb.PushRequest{{AppCode: 1, Uid: "u", Payload: []byte("x")}}})
		if err != nil || many.Results[0].Code != int32(codes.Unavailable) || many.Results[0].Response != nil {
			t.Errorf("PushMany answered %v: %v %v", rep, many, err)
		}
	}
}

// stuckReq never answers: its envelopes stay queued until the caller
// gives up.
type stuckReq struct{}

func (stuckReq) Request(ctx context.Context, _ *actorpb.Envelope) (*actorpb.Reply, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (stuckReq) RequestMany(ctx context.Context, envs []*actorpb.Envelope) ([]*actorpb.Reply, []error) {
	<-ctx.Done()
	errs := make([]error, len(envs))
	for i := range errs {
		errs[i] = ctx.Err()
	}
	return make([]*actorpb.Reply, len(envs)), errs
}

// TestAbandonedPushesStillCount: a caller that gives up on its calls
// (short deadlines, retried) leaves their pushes queued at the actors;
// they keep counting against api.max-pushes-in-flight for a while, so
// such a caller cannot keep more queued than the budget.
func TestAbandonedPushesStillCount(t *testing.T) {
	lim := DefaultLimits()
	s := New(Deps{Req: stuckReq{}, Limits: lim})
	items := make([]*apipb.PushRequest, lim.MaxBatch)
	for i := range items {
		items[i] = &apipb.PushRequest{AppCode: 1, Uid: fmt.Sprint("u", i), Payload: []byte("x")}
	}
	var refused error
	for range lim.MaxPushesInFlight/lim.MaxBatch + 1 {
		ctx, cancel := context.WithTimeout(scoped(1), time.Millisecond)
		_, err := s.PushMany(ctx, &apipb.PushManyRequest{Items: items})
		cancel()
		if err != nil {
			refused = err
			break
		}
	}
	if status.Code(refused) != codes.ResourceExhausted || !strings.Contains(refused.Error(), "api.max-pushes-in-flight") {
		t.Fatalf("calls given up on freed their pushes at once: %v", refused)
	}
}

// TestAbandonedPresenceAndKicksCount: presence queries and kicks are
// requests to actors as pushes are; a caller that gave up on its calls
// at once left any number of them queued, nothing counted them. They
// take the budget of api.max-pushes-in-flight, and keep it a while
// after their caller gave up.
func TestAbandonedPresenceAndKicksCount(t *testing.T) {
	for _, call := range []string{"presence", "kick"} {
		t.Run(call, func(t *testing.T) {
			lim := DefaultLimits()
			lim.MaxPushesInFlight = 8
			s := New(Deps{Req: stuckReq{}, Limits: lim})
			var refused error
			for i := range 2 * lim.MaxPushesInFlight {
				ctx, cancel := context.WithTimeout(scoped(1), 20*time.Millisecond)
				var err error
				if call == "presence" {
					_, err = s.Presence(ctx, &apipb.PresenceRequest{AppCode: 1, Uids: []string{fmt.Sprint("a", i), fmt.Sprint("b", i)}})
				} else {
					_, err = s.Kick(ctx, &apipb.KickRequest{AppCode: 1, Uid: fmt.Sprint("u", i)})
				}
				cancel()
				if status.Code(err) == codes.ResourceExhausted {
					refused = err
					break
				}
			}
			if refused == nil || !strings.Contains(refused.Error(), "pushes-in-flight") {
				t.Fatalf("%s calls given up on were never refused: %v", call, refused)
			}
		})
	}
}
