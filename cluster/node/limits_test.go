package node_test

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// defaultRateLimits turns the gate's per-connection rate limits back on
// at their production defaults (testkit starts nodes without them).
var defaultRateLimits = []string{
	"--gate.frames-per-second", "50", "--gate.frame-burst", "200",
	"--gate.bytes-per-second", "262144", "--gate.byte-burst", "1048576",
}

// TestDrainingFullInboxIsNeverRateLimited: a device with the default
// limits logs in to a full inbox (1,000 stored messages, the default
// maximum) and acknowledges each message as it arrives, as the protocol's
// example client does: it receives all of them and is never answered
// RATE_LIMITED, because acknowledgements of what the server sent are
// credited against what it delivered.
func TestDrainingFullInboxIsNeverRateLimited(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: defaultRateLimits})
	api := n.API(t)
	const count = 1000
	req := &apipb.PushManyRequest{}
	for i := range count {
		req.Items = append(req.Items, &apipb.PushRequest{AppCode: 1, Uid: "drainer", Payload: []byte("order " + strconv.Itoa(i))})
	}
	resp, err := api.PushMany(testkit.Ctx(t, testkit.App1Key), req)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range resp.Results {
		if r.Code != 0 {
			t.Fatalf("item %d: %d %s", i, r.Code, r.Error)
		}
	}

	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1, Timeout: 15 * time.Second})
	if ack := d.Login("drainer", testkit.Token(t, 1, "drainer"), false); ack.Code != devicepb.Code_OK || ack.Pending != count {
		t.Fatalf("LOGIN_ACK %v pending %d", ack.Code, ack.Pending)
	}
	seen := map[uint32]bool{}
	deadline := time.Now().Add(2 * time.Minute)
	for len(seen) < count {
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d messages in 2 minutes", len(seen), count)
		}
		f, err := d.ReadFrame()
		if err != nil {
			t.Fatalf("after %d of %d messages: %v", len(seen), count, err)
		}
		switch f.Cmd {
		case messages.CmdS2C:
			seen[f.Seq] = true
			d.Send(messages.CmdS2CAck, d.NextSeq(), &devicepb.S2CAck{MsgId: f.Msg.(*devicepb.S2C).MsgId})
		case messages.CmdError:
			t.Fatalf("after %d of %d messages: ERROR %v", len(seen), count, f.Msg)
		case messages.CmdKickout:
			t.Fatalf("after %d of %d messages: KICKOUT %v", len(seen), count, f.Msg)
		}
	}
	d.Keepalive() // still open, still not limited
	testkit.Eventually(t, 10*time.Second, func() bool {
		pr, err := api.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{"drainer"}})
		return err == nil && pr.Entries[0].Online && pr.Entries[0].Pending == 0
	}, "every message acknowledged")
}

// TestC2SOverTheAppByteBudgetGetsUpstreamBusy: when the node holds its
// app's byte budget of upstream messages (queued or in flight at a
// subscriber that does not ack), a device's C2S gets UPSTREAM_BUSY; an
// ack makes room again.
func TestC2SOverTheAppByteBudgetGetsUpstreamBusy(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--upstream.app-max-bytes", "70000"}})
	sub := subscribe(t, n, 1, nil, 1, false)
	d := n.Device(t, 1, "gps")
	c2s := func(id string) *devicepb.C2SAck { t.Helper(); return c2s30KiB(t, d, id) }
	// The subscription may take a moment to register.
	testkit.Eventually(t, 5*time.Second, func() bool { return c2s("first").Code == devicepb.Code_OK }, "no subscriber")
	if a := c2s("second"); a.Code != devicepb.Code_OK { // queued behind the one in flight
		t.Fatalf("second: %v", a)
	}
	a := c2s("third") // 90 KiB > 70,000 bytes
	if a.Code != devicepb.Code_UPSTREAM_BUSY || a.ClientMsgId != "third" || a.MsgId != "" {
		t.Fatalf("over the budget: %v", a)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return sub.count() == 1 }, "the subscriber has the first")
	sub.mu.Lock()
	id := sub.got[0].DeliveryId
	sub.mu.Unlock()
	if err := sub.stream.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Ack{Ack: &apipb.UpstreamAck{DeliveryIds: []uint64{id}}}}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return c2s("again").Code == devicepb.Code_OK }, "no room after the ack")
}

// TestC2SDeviceShare: while the app-servers are behind, one device's C2S
// fill only its own share of what the gate holds for them
// (upstream.uid-max-bytes), not its app's whole budget: past its share
// it gets UPSTREAM_BUSY, and another device of the app still gets
// through.
func TestC2SDeviceShare(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--upstream.uid-max-bytes", "100000"}})
	subscribe(t, n, 1, nil, 1, false) // takes one, never acknowledges
	c2s := func(d *testkit.Device, id string) *devicepb.C2SAck { t.Helper(); return c2s30KiB(t, d, id) }
	flood := n.Device(t, 1, "flood")
	testkit.Eventually(t, 5*time.Second, func() bool { return c2s(flood, "first").Code == devicepb.Code_OK }, "no subscriber")
	for _, id := range []string{"second", "third"} { // 90 KiB and more held
		if a := c2s(flood, id); a.Code != devicepb.Code_OK {
			t.Fatalf("%s: %v", id, a)
		}
	}
	a := c2s(flood, "fourth") // 120 KiB > 100,000 bytes
	if a.Code != devicepb.Code_UPSTREAM_BUSY || !strings.Contains(a.Reason, "upstream.uid-max-bytes") {
		t.Fatalf("over the device's share: %v", a)
	}
	other := n.Device(t, 1, "other")
	if a := c2s(other, "mine"); a.Code != devicepb.Code_OK {
		t.Fatalf("another device of the app, with the first over its share: %v", a)
	}
	if got := metric(t, n, regexp.MustCompile(`(?m)^courier_upstream_refused_total\{why="device_over_budget"\} (\d+)`)); got != 1 {
		t.Fatalf("courier_upstream_refused_total{why=device_over_budget} %d, want 1", got)
	}
}

// TestLoginRatePerIdentity: logins of one identity beyond
// actors.logins-per-second and its burst are answered LOGIN_ACK
// RATE_LIMITED (each one writes the identity's record, synced, and kicks
// the session before); the session in place goes on, and another
// identity logs in as usual.
func TestLoginRatePerIdentity(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--actors.logins-per-second", "0.2", "--actors.login-burst", "2"}})
	login := func(uid string) *devicepb.LoginAck {
		d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
		return d.Login(uid, testkit.Token(t, 1, uid), false)
	}
	for i := range 2 {
		if a := login("looper"); a.Code != devicepb.Code_OK {
			t.Fatalf("login %d within the burst: %v", i, a)
		}
	}
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	a := d.Login("looper", testkit.Token(t, 1, "looper"), false)
	if a.Code != devicepb.Code_RATE_LIMITED || !strings.Contains(a.Reason, "actors.logins-per-second") {
		t.Fatalf("a third login at once: %v", a)
	}
	d.ExpectClosed()
	if a := login("someone-else"); a.Code != devicepb.Code_OK {
		t.Fatalf("another identity: %v", a)
	}
	pr, err := n.API(t).Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{"looper"}})
	if err != nil || !pr.Entries[0].Online {
		t.Fatalf("the session in place after a refused login: %v %v", pr, err)
	}
}

// c2s30KiB sends a C2S of 30 KiB and returns its C2S_ACK.
func c2s30KiB(t *testing.T, d *testkit.Device, id string) *devicepb.C2SAck {
	t.Helper()
	seq := d.NextSeq()
	d.Send(messages.CmdC2S, seq, &devicepb.C2S{ClientMsgId: id, Payload: make([]byte, 30<<10)})
	f := d.Expect(messages.CmdC2SAck)
	if f.Seq != seq {
		t.Fatalf("C2S_ACK seq %d, want %d", f.Seq, seq)
	}
	return f.Msg.(*devicepb.C2SAck)
}
