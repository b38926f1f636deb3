package farm

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/courier-im/courier/cmd/courier-bench/internal/wire"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/testkit"
)

func TestFarmAgainstNode(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f, err := New(Config{
		Gate: netip.MustParseAddrPort(n.GateAddr), Secret: []byte(testkit.App1Secret), UIDPrefix: "farm-",
		First: 10, Count: 20, Loops: 2, RunID: 7, Keepalive: 200 * time.Millisecond,
		Sources: []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// One login first: the node's actors.Deps.Producer initialises shared
	// fields on its first call, which races when two shards call it at once.
	if err := f.Login(ctx, 10, 11, 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := f.Login(ctx, 11, 30, 0, 8); err != nil {
		t.Fatal(err)
	}
	if s := f.Stats(); s.Online != 20 || s.LoginOK != 20 {
		t.Fatalf("after login: %+v", s)
	}
	logins := 0
	for _, r := range f.Drain(nil) {
		if r.Kind == LoginDone && r.Code == 0 {
			logins++
		}
	}
	if logins != 20 {
		t.Fatalf("%d login records", logins)
	}
	api := n.API(t)
	for i := range 20 {
		p := wire.AppendPayload(nil, wire.Payload{Kind: wire.KindPush, RunID: 7, Index: uint64(i), SentNs: time.Now().UnixNano()}, 64)
		r, err := api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: UID("farm-", 10+i), Payload: p})
		if err != nil || !r.Online {
			t.Fatalf("push %d: %v %v", i, r, err)
		}
	}
	// C2C between the pairs, then keepalives.
	sent, err := f.Traffic(ctx, SentC2C, 1000, 300*time.Millisecond, 40)
	if err != nil || sent != 40 {
		t.Fatalf("c2c sent %d %v", sent, err)
	}
	var recs []Record
	testkit.Eventually(t, 10*time.Second, func() bool {
		recs = f.Drain(recs)
		s := f.Stats()
		return s.RecvS2C >= 20 && s.AckC2C >= 40 && s.RecvC2C >= 40 && s.AckAckC2C >= 40 && s.KeepaliveAcks >= 20
	}, "traffic: %+v", f.Stats())
	kinds := map[Kind]int{}
	for _, r := range recs {
		kinds[r.Kind]++
		if r.Kind == AckC2C && r.Code != 0 {
			t.Fatalf("C2C_ACK code %d", r.Code)
		}
	}
	if kinds[RecvS2C] != 20 || kinds[SentC2C] != 40 || kinds[AckC2C] != 40 || kinds[RecvC2C] != 40 {
		t.Fatalf("records %v", kinds)
	}
	if err := f.Reconnect(ctx, 10, 20, 4); err != nil {
		t.Fatal(err)
	}
	if s := f.Stats(); s.Online != 20 || s.LoginOK != 30 || s.Disconnects != 0 {
		t.Fatalf("after reconnect: %+v", s)
	}
	buf := AppendRecords(nil, recs)
	if back := DecodeRecords(nil, buf); len(back) != len(recs) || back[3] != recs[3] {
		t.Fatal("record codec")
	}
}
