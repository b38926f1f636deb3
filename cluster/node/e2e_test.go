package node_test

import (
	"fmt"
	"google.golang.org/protobuf/proto"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// These tests run a real node process and talk to it over real TCP and
// real gRPC, as devices and app-servers do.

func push(t *testing.T, api apipb.CourierClient, key string, req *apipb.PushRequest) *apipb.PushResponse {
	t.Helper()
	resp, err := api.Push(testkit.Ctx(t, key), req)
	if err != nil {
		t.Fatalf("push to %d/%s: %v", req.AppCode, req.Uid, err)
	}
	return resp
}

func expectS2C(t *testing.T, d *testkit.Device) (uint32, *devicepb.S2C) {
	t.Helper()
	f := d.Expect(messages.CmdS2C)
	return f.Seq, f.Msg.(*devicepb.S2C)
}

func ackS2C(d *testkit.Device, msgID string) {
	d.Send(messages.CmdS2CAck, d.NextSeq(), &devicepb.S2CAck{MsgId: msgID})
}

// stream reads a device's stored messages in seq order, as a client
// following the protocol does: a redelivery (a message the node sent again
// because its ack had not arrived after retry-initial, which a loaded
// machine can stretch) repeats an earlier seq with the same msg_id; it is
// acknowledged again and skipped. Anything else out of order fails.
type stream struct {
	t    *testing.T
	d    *testkit.Device
	last uint32
	ids  map[uint32]string
}

func newStream(t *testing.T, d *testkit.Device) *stream {
	return &stream{t: t, d: d, ids: map[uint32]string{}}
}

// next returns the next message not seen before; its seq is above every
// earlier one.
func (s *stream) next() (uint32, *devicepb.S2C) {
	s.t.Helper()
	for {
		seq, m := expectS2C(s.t, s.d)
		if seq > s.last {
			s.last, s.ids[seq] = seq, m.MsgId
			return seq, m
		}
		if s.ids[seq] != m.MsgId {
			s.t.Fatalf("seq %d again (after %d) with msg_id %s, first delivered as %q", seq, s.last, m.MsgId, s.ids[seq])
		}
		s.t.Logf("seq %d delivered again (its ack came after the retry)", seq)
		ackS2C(s.d, m.MsgId)
	}
}

func TestLoginKeepaliveLogout(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	ack := d.Login("alice", testkit.Token(t, 1, "alice"), false)
	if ack.Code != devicepb.Code_OK || ack.Epoch == 0 || ack.HeartbeatSeconds != 30 || ack.Pending != 0 {
		t.Fatalf("LOGIN_ACK %v", ack)
	}
	d.Keepalive()
	api := n.API(t)
	pr, err := api.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{"alice"}})
	if err != nil || !pr.Entries[0].Online || pr.Entries[0].Session.DeviceId != "dev-alice" {
		t.Fatalf("presence while logged in: %v %v", pr, err)
	}
	d.Send(messages.CmdLogout, d.NextSeq(), nil)
	d.Expect(messages.CmdLogoutAck)
	d.ExpectClosed()
	testkit.Eventually(t, 5*time.Second, func() bool {
		pr, err := api.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{"alice"}})
		return err == nil && !pr.Entries[0].Online
	}, "alice still online after LOGOUT")
	// A push after logout waits for the next login.
	if r := push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "alice", Payload: []byte("later")}); r.Online {
		t.Fatal("push after logout reported online")
	}
}

func TestBadTokenRefused(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	// A token for another uid.
	if ack := d.Login("alice", testkit.Token(t, 1, "mallory"), false); ack.Code != devicepb.Code_AUTH_FAILED {
		t.Fatalf("LOGIN_ACK %v", ack)
	}
	d.ExpectClosed()
}

// TestSecondLoginKicksFirst: the later LOGIN wins, even on a connection
// opened before the first one's (PROTOCOL.md: a newer LOGIN kicks the
// older one).
func TestSecondLoginKicksFirst(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	early := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1}) // logs in last
	first := n.Device(t, 1, "bob")
	second := n.Device(t, 1, "bob")
	if ack := early.Login("bob", testkit.Token(t, 1, "bob"), false); ack.Code != devicepb.Code_OK {
		t.Fatalf("the later LOGIN on the earliest connection: %v", ack)
	}
	if k := second.Expect(messages.CmdKickout).Msg.(*devicepb.Kickout); k.Reason != devicepb.KickReason_LOGGED_IN_ELSEWHERE {
		t.Fatalf("kick reason %v", k.Reason)
	}
	second.ExpectClosed()
	early.Keepalive()
	if r := push(t, n.API(t), testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "bob", Payload: []byte("to the latest login"),
		Delivery: apipb.Delivery_DELIVERY_FIRE_AND_FORGET}); !r.Online {
		t.Fatal("push after the latest login: not online")
	}
	if _, m := expectS2C(t, early); string(m.Payload) != "to the latest login" {
		t.Fatalf("payload %q", m.Payload)
	}
	early.Close()
	k := first.Expect(messages.CmdKickout).Msg.(*devicepb.Kickout)
	if k.Reason != devicepb.KickReason_LOGGED_IN_ELSEWHERE {
		t.Fatalf("kick reason %v", k.Reason)
	}
	first.ExpectClosed()
	third := n.Device(t, 1, "bob")
	third.Keepalive()
	// The kicked connections closed after the latest login: its session
	// must still receive pushes.
	api := n.API(t)
	r := push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "bob", Payload: []byte("to the newest")})
	if !r.Online {
		t.Fatal("push after the kick: not online")
	}
	if _, m := expectS2C(t, third); string(m.Payload) != "to the newest" {
		t.Fatalf("payload %q", m.Payload)
	}
}

func TestSimultaneousLoginsLeaveOneSession(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	const k = 8
	devs := make([]*testkit.Device, k)
	for i := range devs {
		devs[i] = testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	}
	tok := testkit.Token(t, 1, "carol")
	login, _ := messages.AppendMessage(nil, messages.Header{Cmd: messages.CmdLogin, AppCode: 1, Seq: 1},
		&devicepb.Login{Uid: "carol", Token: tok})
	// All LOGIN frames leave at the same moment.
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, _ = d.Conn().Write(login)
		}()
	}
	close(start)
	wg.Wait()
	// Every connection gets LOGIN_ACK OK; all but one are then kicked.
	survivors := 0
	for _, d := range devs {
		f, err := d.ReadFrame()
		if err != nil || f.Cmd != messages.CmdLoginAck || f.Msg.(*devicepb.LoginAck).Code != devicepb.Code_OK {
			t.Fatalf("first frame: %v %v", f.Cmd, err)
		}
		f, err = d.ReadFrame()
		switch {
		case err == nil && f.Cmd == messages.CmdKickout:
			d.ExpectClosed()
		case err != nil && !testkit.Closed(err):
			// No frame within the timeout: this one survived.
			survivors++
		default:
			t.Fatalf("second frame: %v %v", f.Cmd, err)
		}
	}
	if survivors != 1 {
		t.Fatalf("%d sessions survived simultaneous logins, want 1", survivors)
	}
}

func TestPushOnlineAcked(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	d := n.Device(t, 1, "dave")
	api := n.API(t)
	r := push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "dave", Msgtype: 7, Payload: []byte("order 1")})
	if !r.Online || r.Seq != 1 || r.MsgId == "" {
		t.Fatalf("push response %v", r)
	}
	f := d.Expect(messages.CmdS2C)
	m := f.Msg.(*devicepb.S2C)
	if f.Seq != 1 || f.MsgType != 7 || m.MsgId != r.MsgId || string(m.Payload) != "order 1" || m.ExpiresAtMs == 0 {
		t.Fatalf("S2C seq %d msgtype %d %v", f.Seq, f.MsgType, m)
	}
	ackS2C(d, m.MsgId)
	testkit.Eventually(t, 5*time.Second, func() bool {
		pr, err := api.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{"dave"}})
		return err == nil && pr.Entries[0].Pending == 0
	}, "acked message still pending")
	// No redelivery after the ack (retry-initial is 300 ms in tests).
	d.Keepalive()
	time.Sleep(700 * time.Millisecond) // a window in which a retry would have come
	d.Keepalive()
}

func TestOfflineThenLoginInSeqOrder(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	api := n.API(t)
	const count = 50
	for i := range count {
		r := push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "erin", Payload: []byte(strconv.Itoa(i))})
		if r.Online || r.Seq != uint32(i+1) {
			t.Fatalf("push %d: %v", i, r)
		}
	}
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	ack := d.Login("erin", testkit.Token(t, 1, "erin"), false)
	if ack.Pending != count || ack.LastSeq != count {
		t.Fatalf("LOGIN_ACK pending %d last_seq %d", ack.Pending, ack.LastSeq)
	}
	// First deliveries come in seq order; a redelivery of a message whose
	// ack the node has not processed yet (retry-initial is 300 ms in tests)
	// may come later than newer ones, as the protocol allows.
	for i := 0; i < count; {
		seq, m := expectS2C(t, d)
		if seq <= uint32(i) {
			ackS2C(d, m.MsgId)
			continue
		}
		if seq != uint32(i+1) || string(m.Payload) != strconv.Itoa(i) {
			t.Fatalf("message %d: seq %d payload %q", i, seq, m.Payload)
		}
		ackS2C(d, m.MsgId) // acks open the window for the rest
		i++
	}
}

func TestRetryAfterDroppedAck(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	d := n.Device(t, 1, "frank")
	api := n.API(t)
	r := push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "frank", Payload: []byte("x")})
	seq1, m1 := expectS2C(t, d)
	// No ack: the same message comes again with the same seq and id.
	seq2, m2 := expectS2C(t, d)
	if seq1 != seq2 || m1.MsgId != m2.MsgId || m2.MsgId != r.MsgId {
		t.Fatalf("redelivery differs: %d/%s then %d/%s", seq1, m1.MsgId, seq2, m2.MsgId)
	}
	ackS2C(d, m2.MsgId)
	d.Keepalive()
}

func TestExpiredMessageNotDelivered(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	api := n.API(t)
	push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "gina", Payload: []byte("short"), TtlMs: 200})
	push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "gina", Payload: []byte("long")})
	time.Sleep(400 * time.Millisecond) // let the first one expire
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	if ack := d.Login("gina", testkit.Token(t, 1, "gina"), false); ack.Pending != 1 {
		t.Fatalf("pending %d, want 1", ack.Pending)
	}
	if seq, m := expectS2C(t, d); seq != 2 || string(m.Payload) != "long" {
		t.Fatalf("got seq %d %q", seq, m.Payload)
	}
}

func TestIdempotentPush(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	api := n.API(t)
	req := &apipb.PushRequest{AppCode: 1, Uid: "hank", Payload: []byte("once"), IdempotencyKey: "order-42"}
	r1 := push(t, api, testkit.App1Key, req)
	r2 := push(t, api, testkit.App1Key, req)
	if r1.Duplicate || !r2.Duplicate || r1.MsgId != r2.MsgId || r1.Seq != r2.Seq {
		t.Fatalf("first %v, retry %v", r1, r2)
	}
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	if ack := d.Login("hank", testkit.Token(t, 1, "hank"), false); ack.Pending != 1 {
		t.Fatalf("pending %d after an idempotent retry", ack.Pending)
	}
}

func TestFireAndForget(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	api := n.API(t)
	ff := &apipb.PushRequest{AppCode: 1, Uid: "ivy", Payload: []byte("gps"), Delivery: apipb.Delivery_DELIVERY_FIRE_AND_FORGET}
	if r := push(t, api, testkit.App1Key, ff); r.Online || r.Seq != 0 {
		t.Fatalf("offline fire-and-forget: %v", r)
	}
	d := n.Device(t, 1, "ivy")
	if r := push(t, api, testkit.App1Key, ff); !r.Online {
		t.Fatalf("online fire-and-forget: %v", r)
	}
	if seq, m := expectS2C(t, d); seq != 0 || string(m.Payload) != "gps" {
		t.Fatalf("seq %d payload %q", seq, m.Payload)
	}
}

func TestPullPages(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--actors.window", "1"}})
	api := n.API(t)
	for i := range 7 {
		push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "jack", Payload: []byte(strconv.Itoa(i))})
	}
	d := n.Device(t, 1, "jack")
	expectS2C(t, d) // the window of 1
	var seen []uint32
	after, pages := uint32(0), 0
	for {
		seq := d.NextSeq()
		d.Send(messages.CmdPull, seq, &devicepb.Pull{AfterSeq: after, Limit: proto.Uint32(3)})
		var f testkit.Frame
		for f = d.Expect(messages.CmdPullAck); f.Seq != seq; f = d.Expect(messages.CmdPullAck) {
		}
		pa := f.Msg.(*devicepb.PullAck)
		pages++
		for _, m := range pa.Messages {
			seen = append(seen, m.Seq)
			after = m.Seq
		}
		if !pa.HasMore {
			break
		}
		if len(pa.Messages) != 3 {
			t.Fatalf("page %d has %d messages", pages, len(pa.Messages))
		}
	}
	if pages != 3 || len(seen) != 7 || seen[0] != 1 || seen[6] != 7 {
		t.Fatalf("%d pages, seqs %v", pages, seen)
	}
}

func TestAPIKeyScopedToItsApp(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	api := n.API(t)
	_, err := api.Push(testkit.Ctx(t, testkit.App2Key), &apipb.PushRequest{AppCode: 1, Uid: "kim", Payload: []byte("x")})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("app 2 key pushing to app 1: %v", err)
	}
	_, err = api.Push(testkit.Ctx(t, "not-a-key-at-all-000"), &apipb.PushRequest{AppCode: 1, Uid: "kim"})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := api.Push(testkit.Ctx(t, testkit.OperatorKey), &apipb.PushRequest{AppCode: 2, Uid: "kim"}); err != nil {
		t.Fatalf("operator key: %v", err)
	}
	_, err = api.Kick(testkit.Ctx(t, testkit.App2Key), &apipb.KickRequest{AppCode: 1, Uid: "kim"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("app 2 key kicking in app 1: %v", err)
	}
	_, err = api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: ""})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty uid: %v", err)
	}
	// PushMany: a bad item fails alone.
	resp, err := api.PushMany(testkit.Ctx(t, testkit.App1Key), &apipb.PushManyRequest{Items: []*apipb.PushRequest{
		{AppCode: 1, Uid: "kim", Payload: []byte("ok")},
		{AppCode: 2, Uid: "kim", Payload: []byte("other app")},
	}})
	if err != nil || resp.Results[0].Code != 0 || resp.Results[1].Code != int32(codes.PermissionDenied) {
		t.Fatalf("PushMany: %v %v", resp, err)
	}
}

func TestKickByAppServer(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	d := n.Device(t, 1, "lee")
	r, err := n.API(t).Kick(testkit.Ctx(t, testkit.App1Key), &apipb.KickRequest{AppCode: 1, Uid: "lee", Reason: "fraud check"})
	if err != nil || !r.WasOnline {
		t.Fatalf("kick: %v %v", r, err)
	}
	k := d.Expect(messages.CmdKickout).Msg.(*devicepb.Kickout)
	if k.Reason != devicepb.KickReason_KICKED_BY_APP_SERVER || k.Detail != "fraud check" {
		t.Fatalf("kickout %v", k)
	}
	d.ExpectClosed()
}

var counterRe = regexp.MustCompile(`(?m)^courier_actors_passivations_total (\d+)`)

func metric(t *testing.T, n *testkit.Node, re *regexp.Regexp) int {
	t.Helper()
	v, ok := scrapeMetric(t, n, re)
	if !ok {
		t.Fatalf("metric %v not found", re)
	}
	return v
}

// metricOr0 is metric for a series that may not exist yet.
func metricOr0(t *testing.T, n *testkit.Node, re *regexp.Regexp) int {
	t.Helper()
	v, _ := scrapeMetric(t, n, re)
	return v
}

// scrapeMetric reads the node's /metrics and returns the first
// submatch of re as a number, if re matches.
func scrapeMetric(t *testing.T, n *testkit.Node, re *regexp.Regexp) (int, bool) {
	t.Helper()
	resp, err := http.Get("http://" + n.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := re.FindSubmatch(b)
	if m == nil {
		return 0, false
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v, true
}

func TestPassivationKeepsInbox(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--actors.passivate-after", "200ms"}})
	api := n.API(t)
	for i := range 3 {
		push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "mia", Payload: []byte(fmt.Sprint(i))})
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return metric(t, n, counterRe) >= 1 }, "the idle actor never passivated")
	r := push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "mia", Payload: []byte("3")})
	if r.Seq != 4 {
		t.Fatalf("seq after reactivation %d, want 4", r.Seq)
	}
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	if ack := d.Login("mia", testkit.Token(t, 1, "mia"), false); ack.Pending != 4 {
		t.Fatalf("pending %d", ack.Pending)
	}
	for i := range 4 {
		seq, m := expectS2C(t, d)
		if seq != uint32(i+1) || string(m.Payload) != fmt.Sprint(i) {
			t.Fatalf("message %d: seq %d %q", i, seq, m.Payload)
		}
		ackS2C(d, m.MsgId)
	}
	// An online, idle identity may passivate too; its session survives.
	before := metric(t, n, counterRe)
	testkit.Eventually(t, 10*time.Second, func() bool { return metric(t, n, counterRe) > before }, "online actor never passivated")
	push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "mia", Payload: []byte("after")})
	for {
		seq, m := expectS2C(t, d)
		if string(m.Payload) == "after" {
			if seq != 5 {
				t.Fatalf("seq %d", seq)
			}
			break
		}
	}
}

var activeRe = regexp.MustCompile(`(?m)^courier_actors_active (\d+)`)

func testRestart(t *testing.T, sig syscall.Signal) { testRestartWith(t, sig, testkit.NodeOptions{}) }

func testRestartWith(t *testing.T, sig syscall.Signal, opts testkit.NodeOptions) {
	// Short passivation: every identity of this test leaves memory soon
	// after its last message, unless something keeps it (a ghost session).
	opts.Args = append(opts.Args, "--actors.passivate-after", "300ms")
	n := testkit.StartNode(t, opts)
	api := n.API(t)
	// olga is online when the node stops, and never comes back.
	n.Device(t, 1, "olga")
	const count = 200
	reqs := &apipb.PushManyRequest{}
	for i := range count {
		reqs.Items = append(reqs.Items, &apipb.PushRequest{AppCode: 1, Uid: "nora", Payload: []byte(strconv.Itoa(i))})
	}
	resp, err := api.PushMany(testkit.Ctx(t, testkit.App1Key), reqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range resp.Results {
		if r.Code != 0 {
			t.Fatalf("item %d: %v", i, r.Error)
		}
	}
	n.Stop(sig)
	n.Restart()
	restarted := time.Now()
	api = n.API(t)
	expectGhostGone(t, n, api, "olga", restarted)
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	ack := d.Login("nora", testkit.Token(t, 1, "nora"), false)
	if ack.Pending != count {
		t.Fatalf("after %v: pending %d, want %d", sig, ack.Pending, count)
	}
	st := newStream(t, d)
	for i := range count {
		seq, m := st.next()
		if seq != uint32(i+1) || string(m.Payload) != strconv.Itoa(i) {
			t.Fatalf("after %v, message %d: seq %d %q", sig, i, seq, m.Payload)
		}
		ackS2C(d, m.MsgId)
	}
	d.Keepalive() // the acks are in
	// A crash right after the acks: their deletions may be lost (the
	// messages then come again, with their seq and id), but no seq is
	// ever handed out twice.
	n.Stop(syscall.SIGKILL)
	n.Restart()
	d = testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	ack = d.Login("nora", testkit.Token(t, 1, "nora"), false)
	if ack.LastSeq != count || ack.Pending > count {
		t.Fatalf("after acks and a crash: last_seq %d pending %d", ack.LastSeq, ack.Pending)
	}
	r := push(t, n.API(t), testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "nora", Payload: []byte("next")})
	if r.Seq != count+1 {
		t.Fatalf("seq after restart %d, want %d", r.Seq, count+1)
	}
	for {
		seq, m := expectS2C(t, d)
		ackS2C(d, m.MsgId)
		if seq == count+1 {
			if string(m.Payload) != "next" {
				t.Fatalf("seq %d payload %q", seq, m.Payload)
			}
			break
		}
		if seq > count || string(m.Payload) != strconv.Itoa(int(seq)-1) {
			t.Fatalf("redelivery seq %d payload %q", seq, m.Payload)
		}
	}
}

// expectGhostGone checks that uid, online when the node stopped, is
// offline after the restart: presence says so within 2 s, a stored push
// answers online=false, a fire-and-forget push is counted dropped and not
// delivered, and the identity leaves memory (nothing is in flight to a
// session that no longer exists).
func expectGhostGone(t *testing.T, n *testkit.Node, api apipb.CourierClient, uid string, restarted time.Time) {
	t.Helper()
	var online bool
	for {
		pr, err := api.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{uid}})
		if err != nil {
			t.Fatal(err)
		}
		if online = pr.Entries[0].Online; !online || time.Since(restarted) > 2*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if online {
		t.Fatalf("%s still online 2 s after the restart", uid)
	}
	if r := push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: uid, Payload: []byte("stored")}); r.Online {
		t.Fatalf("stored push to %s after the restart answered online", uid)
	}
	const ffType = 77
	if r := push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: uid, Msgtype: ffType, Payload: []byte("gps"),
		Delivery: apipb.Delivery_DELIVERY_FIRE_AND_FORGET}); r.Online {
		t.Fatalf("fire-and-forget push to %s after the restart answered online", uid)
	}
	st, err := api.Stats(testkit.Ctx(t, testkit.App1Key), &apipb.StatsRequest{AppCode: 1, Msgtypes: []uint32{ffType}})
	if err != nil || len(st.Msgtypes) != 1 {
		t.Fatalf("stats: %v %v", st, err)
	}
	if tot := st.Msgtypes[0].Total; tot.Dropped != 1 || tot.Delivered != 0 {
		t.Fatalf("fire-and-forget to a ghost: dropped %d delivered %d, want 1 and 0", tot.Dropped, tot.Delivered)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return metric(t, n, activeRe) == 0 },
		"an identity stayed in memory after the restart (a ghost session keeps it busy)")
}

func TestRestartAfterSIGTERM(t *testing.T) { testRestart(t, syscall.SIGTERM) }

func TestRestartAfterSIGKILL(t *testing.T) { testRestart(t, syscall.SIGKILL) }
