package node_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// sendC2C sends a C2C and returns its frame seq.
func sendC2C(d *testkit.Device, to, clientID, payload string) uint32 {
	seq := d.NextSeq()
	d.Send(messages.CmdC2C, seq, &devicepb.C2C{ToUid: to, ClientMsgId: clientID, Payload: []byte(payload)})
	return seq
}

func expectC2CAck(t *testing.T, d *testkit.Device, seq uint32) *devicepb.C2CAck {
	t.Helper()
	f := d.Expect(messages.CmdC2CAck)
	if f.Seq != seq {
		t.Fatalf("C2C_ACK seq %d, want %d", f.Seq, seq)
	}
	return f.Msg.(*devicepb.C2CAck)
}

// TestC2CBothOnline walks the 13 steps of a chat message between two
// online users: the sender's C2C (1) reaches the gate (2), goes to the
// receiver's actor (3), which stores it (4) and answers C2C_ACK on the
// receiver's behalf (5-6); the actor pushes C2C_PUSH (7-8) to the
// receiver's connection; the receiver's C2C_PUSH_ACK (9-10) deletes it
// (11) and is confirmed by C2C_PUSH_ACK_ACK (12-13).
func TestC2CBothOnline(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	rider := n.Device(t, 1, "rider")
	driver := n.Device(t, 1, "driver")

	seq := sendC2C(rider, "driver", "c-1", "where are you?")
	ack := expectC2CAck(t, rider, seq)
	if ack.Code != devicepb.Code_OK || ack.MsgId == "" || ack.ClientMsgId != "c-1" {
		t.Fatalf("C2C_ACK %v", ack)
	}
	f := driver.Expect(messages.CmdC2CPush)
	p := f.Msg.(*devicepb.C2CPush)
	if p.MsgId != ack.MsgId || p.FromUid != "rider" || string(p.Payload) != "where are you?" || p.ClientMsgId != "c-1" || f.Seq != 1 {
		t.Fatalf("C2C_PUSH seq %d %v", f.Seq, p)
	}
	ackSeq := driver.NextSeq()
	driver.Send(messages.CmdC2CPushAck, ackSeq, &devicepb.C2CPushAck{MsgId: p.MsgId})
	aa := driver.Expect(messages.CmdC2CPushAckAck)
	if aa.Seq != ackSeq || aa.Msg.(*devicepb.C2CPushAckAck).MsgId != p.MsgId {
		t.Fatalf("C2C_PUSH_ACK_ACK seq %d %v", aa.Seq, aa.Msg)
	}
	pr, err := n.API(t).Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{"driver"}})
	if err != nil || pr.Entries[0].Pending != 0 {
		t.Fatalf("driver's inbox after ack: %v %v", pr, err)
	}
}

// TestC2CReceiverOfflineThenLogin: the message waits in the receiver's
// inbox, in seq order with pushes from the app-server.
func TestC2CReceiverOfflineThenLogin(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	rider := n.Device(t, 1, "rider")
	api := n.API(t)
	push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "driver", Payload: []byte("order 9")})
	seq := sendC2C(rider, "driver", "c-1", "I'm at gate 3")
	if ack := expectC2CAck(t, rider, seq); ack.Code != devicepb.Code_OK {
		t.Fatalf("C2C_ACK %v", ack)
	}
	push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "driver", Payload: []byte("order 10")})

	driver := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	if la := driver.Login("driver", testkit.Token(t, 1, "driver"), false); la.Pending != 3 {
		t.Fatalf("pending %d", la.Pending)
	}
	want := []messages.Cmd{messages.CmdS2C, messages.CmdC2CPush, messages.CmdS2C}
	for i, cmd := range want {
		f := driver.Expect(cmd)
		if f.Seq != uint32(i+1) {
			t.Fatalf("frame %d: %v seq %d", i, cmd, f.Seq)
		}
	}
}

func TestC2CDuplicateResend(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	rider := n.Device(t, 1, "rider")
	driver := n.Device(t, 1, "driver")
	first := expectC2CAck(t, rider, sendC2C(rider, "driver", "c-7", "hello"))
	push1 := driver.Expect(messages.CmdC2CPush).Msg.(*devicepb.C2CPush)

	// Resent before the receiver acked: acknowledged again, stored once.
	again := expectC2CAck(t, rider, sendC2C(rider, "driver", "c-7", "hello"))
	if again.MsgId != first.MsgId || again.Code != devicepb.Code_OK {
		t.Fatalf("resend before ack: %v vs %v", again, first)
	}
	driver.Send(messages.CmdC2CPushAck, driver.NextSeq(), &devicepb.C2CPushAck{MsgId: push1.MsgId})
	// Redeliveries of the one message (retry-initial is 300 ms in tests)
	// may come before the answer on a loaded machine; nothing else may.
	skipRedeliveries := func(until messages.Cmd) {
		t.Helper()
		for {
			f, err := driver.ReadFrame()
			if err != nil {
				t.Fatalf("waiting for %v: %v", until, err)
			}
			if f.Cmd == until {
				return
			}
			if p, ok := f.Msg.(*devicepb.C2CPush); !ok || p.MsgId != push1.MsgId {
				t.Fatalf("got %v %v, want %v or a redelivery of %s", f.Cmd, f.Msg, until, push1.MsgId)
			}
		}
	}
	skipRedeliveries(messages.CmdC2CPushAckAck)

	// Resent after the receiver acked: still acknowledged, not stored.
	after := expectC2CAck(t, rider, sendC2C(rider, "driver", "c-7", "hello"))
	if after.MsgId != first.MsgId {
		t.Fatalf("resend after ack: %v", after)
	}
	driver.Send(messages.CmdKeepalive, driver.NextSeq(), nil)
	skipRedeliveries(messages.CmdKeepaliveAck) // no new C2C_PUSH arrived before this answer
	pr, _ := n.API(t).Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{"driver"}})
	if pr.Entries[0].Pending != 0 {
		t.Fatalf("stored twice: pending %d", pr.Entries[0].Pending)
	}
}

func TestC2CRefusals(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	rider := n.Device(t, 1, "rider")
	if a := expectC2CAck(t, rider, sendC2C(rider, "rider", "c-1", "me")); a.Code != devicepb.Code_BAD_RECEIVER {
		t.Fatalf("to self: %v", a.Code)
	}
	if a := expectC2CAck(t, rider, sendC2C(rider, "", "c-2", "nobody")); a.Code != devicepb.Code_BAD_RECEIVER {
		t.Fatalf("to empty uid: %v", a.Code)
	}
	_, err := n.API(t).UpdateAccessList(testkit.Ctx(t, testkit.App1Key), &apipb.UpdateAccessListRequest{
		List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: []string{"spammer"}})
	if err != nil {
		t.Fatal(err)
	}
	if a := expectC2CAck(t, rider, sendC2C(rider, "spammer", "c-3", "hi")); a.Code != devicepb.Code_RECEIVER_BLOCKED {
		t.Fatalf("to a blacklisted uid: %v", a.Code)
	}
	// Another app's users cannot be reached: a frame must carry the
	// login's appcode.
	seq := rider.NextSeq()
	b, _ := messages.AppendMessage(nil, messages.Header{Cmd: messages.CmdC2C, AppCode: 2, Seq: seq},
		&devicepb.C2C{ToUid: "x", ClientMsgId: "c-4"})
	rider.SendRaw(b)
	rider.ExpectError(devicepb.Code_APP_MISMATCH, seq)
}

// subscriber is a fake app-server on the Upstream stream.
type subscriber struct {
	t      *testing.T
	stream apipb.Courier_UpstreamClient
	cancel context.CancelFunc
	mu     sync.Mutex
	got    []*apipb.UpstreamMessage
	ack    bool
}

func subscribe(t *testing.T, n *testkit.Node, app uint32, msgtypes []uint32, window uint32, ack bool) *subscriber {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+testkit.App1Key)
	st, err := n.API(t).Upstream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Subscribe{Subscribe: &apipb.Subscribe{
		AppCode: app, Msgtypes: msgtypes, MaxInFlight: window}}}); err != nil {
		t.Fatal(err)
	}
	s := &subscriber{t: t, stream: st, cancel: cancel, ack: ack}
	go func() {
		for {
			d, err := st.Recv()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got = append(s.got, d.Messages...)
			s.mu.Unlock()
			if ack {
				ids := make([]uint64, len(d.Messages))
				for i, m := range d.Messages {
					ids[i] = m.DeliveryId
				}
				_ = st.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Ack{Ack: &apipb.UpstreamAck{DeliveryIds: ids}}})
			}
		}
	}()
	return s
}

func (s *subscriber) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

func (s *subscriber) ids() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for _, m := range s.got {
		out[m.ClientMsgId]++
	}
	return out
}

func sendC2S(t *testing.T, d *testkit.Device, msgtype uint16, clientID string) *devicepb.C2SAck {
	t.Helper()
	seq := d.NextSeq()
	b, _ := messages.AppendMessage(nil, messages.Header{Cmd: messages.CmdC2S, AppCode: d.AppCode(), MsgType: msgtype, Seq: seq},
		&devicepb.C2S{ClientMsgId: clientID, Payload: []byte(`{"lat":31.23,"lng":121.47}`)})
	d.SendRaw(b)
	f := d.Expect(messages.CmdC2SAck)
	if f.Seq != seq {
		t.Fatalf("C2S_ACK seq %d, want %d", f.Seq, seq)
	}
	return f.Msg.(*devicepb.C2SAck)
}

func TestC2SNoSubscriber(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	d := n.Device(t, 1, "driver")
	if a := sendC2S(t, d, 3, "gps-1"); a.Code != devicepb.Code_NO_SUBSCRIBER || a.ClientMsgId != "gps-1" {
		t.Fatalf("C2S_ACK %v", a)
	}
	// A subscriber of another msgtype does not take it either.
	subscribe(t, n, 1, []uint32{4}, 0, true)
	testkit.Eventually(t, 5*time.Second, func() bool { return sendC2S(t, d, 4, "probe").Code == devicepb.Code_OK }, "subscriber never registered")
	if a := sendC2S(t, d, 3, "gps-2"); a.Code != devicepb.Code_NO_SUBSCRIBER {
		t.Fatalf("C2S of an unsubscribed msgtype: %v", a.Code)
	}
	// Operators see the refusals (the probes that failed before the
	// subscription registered count too).
	if got := metric(t, n, regexp.MustCompile(`(?m)^courier_upstream_refused_total\{why="no_subscriber"\} (\d+)`)); got < 2 {
		t.Fatalf("courier_upstream_refused_total{why=no_subscriber} %d, want at least 2", got)
	}
}

func TestC2STwoSubscribersShareLoad(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	a := subscribe(t, n, 1, []uint32{3}, 4, true)
	b := subscribe(t, n, 1, []uint32{3}, 4, true)
	d := n.Device(t, 1, "driver")
	testkit.Eventually(t, 5*time.Second, func() bool { return sendC2S(t, d, 3, "warmup").Code == devicepb.Code_OK }, "no subscriber")
	const count = 200
	for i := range count {
		if ack := sendC2S(t, d, 3, fmt.Sprintf("gps-%d", i)); ack.Code != devicepb.Code_OK || ack.MsgId == "" {
			t.Fatalf("C2S %d: %v", i, ack)
		}
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return a.count()+b.count() == count+1 }, "not all delivered")
	if a.count() < count/4 || b.count() < count/4 {
		t.Fatalf("load not shared: %d and %d", a.count(), b.count())
	}
	seen := a.ids()
	for id, c := range b.ids() {
		seen[id] += c
	}
	for i := range count {
		if seen[fmt.Sprintf("gps-%d", i)] != 1 {
			t.Fatalf("gps-%d delivered %d times", i, seen[fmt.Sprintf("gps-%d", i)])
		}
	}
}

func TestC2SSubscriberDisappearsNothingLost(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	// The first subscriber receives but never acknowledges, then goes
	// away; everything it held must reach the second.
	quitter := subscribe(t, n, 1, nil, 1000, false)
	d := n.Device(t, 1, "driver")
	testkit.Eventually(t, 5*time.Second, func() bool { return sendC2S(t, d, 1, "warmup").Code == devicepb.Code_OK }, "no subscriber")
	const count = 100
	for i := range count {
		if ack := sendC2S(t, d, 1, fmt.Sprintf("m-%d", i)); ack.Code != devicepb.Code_OK {
			t.Fatalf("C2S %d: %v", i, ack)
		}
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return quitter.count() == count+1 }, "quitter did not get them")
	// Held, unacknowledged: the gate's upstream memory shows it.
	heldRe := regexp.MustCompile(`(?m)^courier_upstream_held_bytes (\d+)`)
	if held := metric(t, n, heldRe); held < count*20 {
		t.Fatalf("courier_upstream_held_bytes %d with %d C2S unacknowledged", held, count+1)
	}
	stayer := subscribe(t, n, 1, nil, 1000, true)
	quitter.cancel()
	testkit.Eventually(t, 10*time.Second, func() bool { return stayer.count() >= count+1 }, "redelivery incomplete")
	ids := stayer.ids()
	for i := range count {
		if ids[fmt.Sprintf("m-%d", i)] != 1 {
			t.Fatalf("m-%d reached the second subscriber %d times", i, ids[fmt.Sprintf("m-%d", i)])
		}
	}
	stayer.mu.Lock()
	for _, m := range stayer.got {
		if m.Attempt != 2 || m.Uid != "driver" || m.AppCode != 1 {
			t.Fatalf("redelivered message %v", m)
		}
	}
	stayer.mu.Unlock()
	// Acknowledged by the second, nothing is held any more.
	testkit.Eventually(t, 10*time.Second, func() bool { return metric(t, n, heldRe) == 0 }, "courier_upstream_held_bytes not back to 0")
}

// TestStatisticsMatchWhatHappened pushes, acks, lets expire and drops a
// known number of messages and expects exactly those counts.
func TestStatisticsMatchWhatHappened(t *testing.T) {
	// No redelivery while the test device acks: the testkit's 300 ms
	// first retry made an ack late on a loaded machine count as a
	// retried, twice delivered message.
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--actors.retry-initial", "20s", "--actors.retry-max", "30s"}})
	api := n.API(t)
	d := n.Device(t, 1, "stat-online")
	// 5 stored to an online device, all acked (msgtype 7).
	for i := range 5 {
		push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "stat-online", Msgtype: 7, Payload: []byte{byte(i)}})
		_, m := expectS2C(t, d)
		ackS2C(d, m.MsgId)
	}
	// 3 stored to an offline device with a short TTL: they expire (msgtype 7).
	for range 3 {
		push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "stat-offline", Msgtype: 7, TtlMs: 100})
	}
	// 4 fire-and-forget to an offline device: dropped (msgtype 8).
	for range 4 {
		push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "stat-offline", Msgtype: 8,
			Delivery: apipb.Delivery_DELIVERY_FIRE_AND_FORGET})
	}
	time.Sleep(300 * time.Millisecond) // past the TTL
	// The expired ones are noticed when the identity is next touched.
	if la := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1}).Login("stat-offline", testkit.Token(t, 1, "stat-offline"), false); la.Pending != 0 {
		t.Fatalf("pending %d after expiry", la.Pending)
	}
	var st *apipb.StatsResponse
	testkit.Eventually(t, 5*time.Second, func() bool {
		var err error
		st, err = api.Stats(testkit.Ctx(t, testkit.App1Key), &apipb.StatsRequest{AppCode: 1, WindowSeconds: 600})
		return err == nil && len(st.Msgtypes) == 2 && st.Msgtypes[0].Total.Acked == 5 && st.Msgtypes[0].Total.Expired == 3
	}, "statistics never settled")
	m7, m8 := st.Msgtypes[0], st.Msgtypes[1]
	if m7.Msgtype != 7 || m7.Total.Accepted != 8 || m7.Total.Delivered != 5 || m7.Total.Acked != 5 ||
		m7.Total.Expired != 3 || m7.Total.Dropped != 0 || m7.Total.Retried != 0 {
		t.Fatalf("msgtype 7: %v", m7.Total)
	}
	if m7.ArrivalRateTotal != 5.0/8 || m7.Window.Acked != 5 || m7.AckLatencyTotal.Count != 5 {
		t.Fatalf("msgtype 7 rate %v window %v latency %v", m7.ArrivalRateTotal, m7.Window, m7.AckLatencyTotal)
	}
	if m8.Msgtype != 8 || m8.Total.Accepted != 4 || m8.Total.Dropped != 4 || m8.Total.Delivered != 0 {
		t.Fatalf("msgtype 8: %v", m8.Total)
	}
	if st.All.Total.Accepted != 12 {
		t.Fatalf("sum %v", st.All.Total)
	}
	if _, err := api.Stats(testkit.Ctx(t, testkit.App2Key), &apipb.StatsRequest{AppCode: 1}); err == nil {
		t.Fatal("app 2's key read app 1's statistics")
	}
}

// TestExpirySweepWithoutLogin: expired messages of a device that never
// comes back are dropped (and counted) by the background sweep.
func TestExpirySweepWithoutLogin(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--actors.expiry-sweep", "300ms", "--actors.passivate-after", "200ms"}})
	api := n.API(t)
	for range 3 {
		push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "gone", Msgtype: 9, TtlMs: 300})
	}
	push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "gone", Msgtype: 9})
	testkit.Eventually(t, 10*time.Second, func() bool {
		st, err := api.Stats(testkit.Ctx(t, testkit.App1Key), &apipb.StatsRequest{AppCode: 1, Msgtypes: []uint32{9}})
		return err == nil && len(st.Msgtypes) == 1 && st.Msgtypes[0].Total.Expired == 3
	}, "the sweep never expired the messages")
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	if la := d.Login("gone", testkit.Token(t, 1, "gone"), false); la.Pending != 1 {
		t.Fatalf("pending %d, want the 1 message without a short expiry", la.Pending)
	}
}

// TestListsFileReloads: a node's gate.lists-file is read again when it
// changes: a new content is in force at the gates; one that does not
// parse keeps the lists in force, is logged, and counted where operators
// alert (courier_gate_list_updates_total, source file, result error).
func TestListsFileReloads(t *testing.T) {
	file := filepath.Join(t.TempDir(), "lists.json")
	write := func(s string) {
		t.Helper()
		// Renamed into place, as an operator's tool should.
		if err := os.WriteFile(file+".new", []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file+".new", file); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"uid_blacklist": {"1": ["first"]}}`)
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--gate.lists-file", file, "--gate.lists-poll-interval", "100ms"}})
	blocked := func(uid string) bool {
		t.Helper()
		for {
			d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
			if err := d.TrySend(messages.Header{Cmd: messages.CmdLogin, AppCode: 1, Seq: d.NextSeq()},
				&devicepb.Login{Uid: uid, Token: testkit.Token(t, 1, uid)}); err != nil {
				t.Fatal(err)
			}
			f, err := d.ReadFrame()
			d.Close()
			if err != nil {
				// A login under way when new lists block its uid is cut
				// off without an answer: a device logs in again.
				continue
			}
			return f.Cmd == messages.CmdLoginAck && f.Msg.(*devicepb.LoginAck).Code == devicepb.Code_UID_BLOCKED
		}
	}
	if !blocked("first") || blocked("second") {
		t.Fatal("the lists file at start is not in force")
	}
	write(`{"uid_blacklist": {"1": ["second"]}}`)
	testkit.Eventually(t, 10*time.Second, func() bool { return blocked("second") && !blocked("first") }, "the changed lists file never took effect")
	errorsRe := regexp.MustCompile(`(?m)^courier_gate_list_updates_total\{result="error",source="file"\} (\d+)`)
	write(`{"uid_blacklist": {"1": ["third"]`)
	testkit.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(n.Logs(), "lists file not applied") && metricOr0(t, n, errorsRe) == 1
	}, "a lists file that does not parse was not logged and counted once")
	if !blocked("second") || blocked("third") {
		t.Fatal("a lists file that does not parse changed the lists in force")
	}
	// A file gone is one failure more, not one per poll.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return metricOr0(t, n, errorsRe) == 2 }, "a lists file gone was not counted")
	time.Sleep(500 * time.Millisecond) // 5 polls
	if got := metricOr0(t, n, errorsRe); got != 2 || !blocked("second") {
		t.Fatalf("with the lists file gone: %d errors counted, want 2 (once), or the lists in force changed", got)
	}
}

// TestC2CRateBoundsWhatOneDeviceStores: C2C to uids nobody uses is
// stored for each of them; a device that sends them faster than
// gate.c2c-per-second gets RATE_LIMITED for the rest, and those are not
// stored (the receivers' inboxes say so), while the connection goes on.
func TestC2CRateBoundsWhatOneDeviceStores(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--gate.c2c-per-second", "1", "--gate.c2c-burst", "2"}})
	d := n.Device(t, 1, "spammer")
	// All four at once (waiting for each answer, a slow store would let
	// the bucket refill between them), then the answers by seq.
	to := map[uint32]string{}
	for i := range 4 {
		to[sendC2C(d, fmt.Sprint("ghost-", i), fmt.Sprint("c-", i), "x")] = fmt.Sprint("ghost-", i)
	}
	var stored, limited []string
	for range 4 {
		f := d.Expect(messages.CmdC2CAck)
		switch a := f.Msg.(*devicepb.C2CAck); a.Code {
		case devicepb.Code_OK:
			stored = append(stored, to[f.Seq])
		case devicepb.Code_RATE_LIMITED:
			limited = append(limited, to[f.Seq])
		default:
			t.Fatalf("C2C to %s: %v", to[f.Seq], a)
		}
	}
	if len(stored) != 2 || len(limited) != 2 {
		t.Fatalf("stored for %v, rate limited for %v: want the burst of 2 stored", stored, limited)
	}
	api := n.API(t)
	r, err := api.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: append(stored, limited...)})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range r.Entries {
		if want := uint32(map[bool]int{true: 1}[slices.Contains(stored, e.Uid)]); e.Pending != want {
			t.Fatalf("%s has %d pending, want %d", e.Uid, e.Pending, want)
		}
	}
	// The connection goes on.
	d.Send(messages.CmdKeepalive, d.NextSeq(), nil)
	d.Expect(messages.CmdKeepaliveAck)
}
