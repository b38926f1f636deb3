package upstream

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages/apipb"
)

// net connects hubs by address, delivering at once (the real transport is
// the actor remoting, asynchronous).
type net struct {
	mu   sync.Mutex
	hubs map[string]*Hub
}

type netTransport struct {
	n    *net
	self string
}

func (t netTransport) Self() string { return t.self }

func (t netTransport) Send(address string, m proto.Message) {
	t.n.mu.Lock()
	h := t.n.hubs[address]
	t.n.mu.Unlock()
	if h != nil {
		h.Receive(proto.Clone(m))
	}
}

func (n *net) hub(t *testing.T, addr string) (*Hub, *Router) {
	r := New(DefaultConfig(), nil)
	h := NewHub(r, netTransport{n, addr}, nil)
	n.mu.Lock()
	n.hubs[addr] = h
	n.mu.Unlock()
	t.Cleanup(func() { h.Close(); r.Close() })
	return h, r
}

func next(t *testing.T, s *Subscription) []*apipb.UpstreamMessage {
	t.Helper()
	done := make(chan struct{})
	timer := time.AfterFunc(500*time.Millisecond, func() { close(done) })
	defer timer.Stop()
	var out []*apipb.UpstreamMessage
	for {
		got := s.Next(done)
		if got == nil {
			return out
		}
		out = append(out, got...)
	}
}

// C2S published at a gate reaches subscriptions on two api nodes, shared
// between them; when one api node leaves, what it held unacknowledged goes
// to the other.
func TestHubAcrossNodes(t *testing.T) {
	n := &net{hubs: map[string]*Hub{}}
	gate, gr := n.hub(t, "gate")
	a1, _ := n.hub(t, "api1")
	a2, _ := n.hub(t, "api2")
	all := []string{"gate", "api1", "api2"}
	gates := []GateRef{{Address: "gate", Instance: "gate-1"}}
	for _, h := range []*Hub{gate, a1, a2} {
		h.SetMembers(all, gates)
	}
	s1, _ := a1.Subscribe(1, []uint32{7}, 5)
	s2, _ := a2.Subscribe(1, []uint32{7}, 5)
	for i := range 10 {
		if err := gr.Publish(msg(1, 7, fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	got1, got2 := next(t, s1), next(t, s2)
	if len(got1) != 5 || len(got2) != 5 {
		t.Fatalf("shared %d/%d", len(got1), len(got2))
	}
	// api2 acks with its own ids; api1 acks nothing and leaves.
	var ids []uint64
	for _, m := range got2 {
		ids = append(ids, m.DeliveryId)
	}
	s2.Ack(ids)
	gate.SetMembers([]string{"gate", "api2"}, gates)
	again := next(t, s2)
	var msgIDs []string
	for _, m := range again {
		msgIDs = append(msgIDs, m.MsgId)
		if m.Attempt != 2 {
			t.Fatalf("redelivery attempt %d", m.Attempt)
		}
	}
	sort.Strings(msgIDs)
	var want []string
	for _, m := range got1 {
		want = append(want, m.MsgId)
	}
	sort.Strings(want)
	if fmt.Sprint(msgIDs) != fmt.Sprint(want) {
		t.Fatalf("redelivered %v, want api1's %v", msgIDs, want)
	}
	ids = ids[:0]
	for _, m := range again {
		ids = append(ids, m.DeliveryId)
	}
	s2.Ack(ids)
	if b := gr.Bytes(); b != 0 {
		t.Fatalf("the gate still holds %d bytes after every ack", b)
	}
	// A subscription that ends gives back what it holds.
	_ = gr.Publish(msg(1, 7, "last"))
	if got := next(t, s2); len(got) != 1 {
		t.Fatalf("last: %v", got)
	}
	s2.Close()
	if err := gr.Publish(msg(1, 7, "nobody")); err == nil {
		t.Fatal("published with no subscriber left")
	}
	if gr.Queued() != 1 {
		t.Fatalf("the unacked message did not go back to the queue (%d queued)", gr.Queued())
	}
}

// A node's own gate feeds its subscriptions without the transport, and
// delivery ids are the subscription's own, whatever router they came from.
func TestHubLocalAndRemoteGates(t *testing.T) {
	n := &net{hubs: map[string]*Hub{}}
	g1, r1 := n.hub(t, "g1")
	g2, r2 := n.hub(t, "g2")
	all := []string{"g1", "g2"}
	gates := []GateRef{{Address: "g1", Instance: "i1"}, {Address: "g2", Instance: "i2"}}
	g1.SetMembers(all, gates)
	g2.SetMembers(all, gates)
	s, _ := g1.Subscribe(1, nil, 10)
	_ = r1.Publish(msg(1, 1, "local"))
	_ = r2.Publish(msg(1, 1, "remote"))
	got := next(t, s)
	if len(got) != 2 || got[0].DeliveryId == got[1].DeliveryId {
		t.Fatalf("got %v", got)
	}
	s.Ack([]uint64{got[0].DeliveryId, got[1].DeliveryId})
	if r1.Bytes() != 0 || r2.Bytes() != 0 {
		t.Fatalf("held after acks: %d, %d", r1.Bytes(), r2.Bytes())
	}
}

// TestHubBatchesFitTheByteBound: however many deliveries the gates have
// queued for a subscription, one Next returns at most MaxBatchBytes
// (app-servers keep gRPC's default 4 MiB receive limit).
func TestHubBatchesFitTheByteBound(t *testing.T) {
	cfg := DefaultConfig()
	cfg.UIDMaxBytes = 0 // 6 MiB from one device
	r := New(cfg, nil)
	defer r.Close()
	h := NewLocalHub(r)
	defer h.Close()
	first, _ := r.Subscribe(1, nil, 1) // holds one, the rest queue
	defer first.Close()
	for i := range 100 {
		if err := r.Publish(&apipb.UpstreamMessage{AppCode: 1, MsgId: fmt.Sprint(i), Payload: make([]byte, 60<<10)}); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := h.Subscribe(1, nil, 1000)
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.fan.mu.Lock()
		n := len(s.fan.outbox)
		s.fan.mu.Unlock()
		if n == 99 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	got := 0
	for got < 99 {
		batch := next1(t, s)
		var size int64
		for _, m := range batch {
			size += Size(m)
		}
		if size > r.cfg.MaxBatchBytes {
			t.Fatalf("a batch of %d messages, %d bytes", len(batch), size)
		}
		got += len(batch)
	}
}

func next1(t *testing.T, s *Subscription) []*apipb.UpstreamMessage {
	t.Helper()
	done := make(chan struct{})
	timer := time.AfterFunc(2*time.Second, func() { close(done) })
	defer timer.Stop()
	b := s.Next(done)
	if b == nil {
		t.Fatal("no batch")
	}
	return b
}

// TestFaninResendsDoNotGrowIt: three gates fill their windows to a
// stream that stops reading, and send it all again (resend-after) under
// the same ids, again and again: the fanin holds each delivery once.
func TestFaninResendsDoNotGrowIt(t *testing.T) {
	const window = 50_000
	f := newFanin(window)
	defer f.close()
	for range 3 {
		for g := range 3 {
			for i := range window / 1000 {
				msgs := make([]*apipb.UpstreamMessage, 1000)
				for j := range msgs {
					msgs[j] = &apipb.UpstreamMessage{DeliveryId: uint64(i*1000 + j)}
				}
				f.deliver(fmt.Sprint("gate", g), msgs, false)
			}
		}
	}
	f.mu.Lock()
	n, out := len(f.origin), len(f.outbox)
	f.mu.Unlock()
	if n != 3*window || out != 3*window {
		t.Fatalf("%d deliveries held, %d waiting: want each of the gates' %d once", n, out, 3*window)
	}
}

// TestFaninTakesADeliveryOnceWhileHeld: a gate sends a delivery again
// when its ack is late; while the fan-in still holds it (the app-server
// has not acknowledged it), the copy is not taken, so a slow app-server
// does not get the same messages over and over and the fan-in stays
// bounded. Once acknowledged, a later copy (its ack was lost on the way
// back) is taken again.
func TestFaninTakesADeliveryOnceWhileHeld(t *testing.T) {
	f := newFanin(10)
	defer f.close()
	f.deliver("g", []*apipb.UpstreamMessage{{DeliveryId: 7, MsgId: "a"}}, false)
	f.deliver("g", []*apipb.UpstreamMessage{{DeliveryId: 7, MsgId: "a", Attempt: 2}}, false)
	f.deliver("h", []*apipb.UpstreamMessage{{DeliveryId: 7, MsgId: "b"}}, false) // another gate's 7
	got := f.take(nil, 10, 1<<20)
	if len(got) != 2 || got[0].MsgId != "a" || got[1].MsgId != "b" {
		t.Fatalf("took %v, want a once and b", got)
	}
	if acked := f.ack([]uint64{got[0].DeliveryId}); len(acked["g"]) != 1 || acked["g"][0] != 7 {
		t.Fatalf("ack: %v", acked)
	}
	f.deliver("g", []*apipb.UpstreamMessage{{DeliveryId: 7, MsgId: "a", Attempt: 3}}, false)
	if again := f.take(nil, 10, 1<<20); len(again) != 1 || again[0].Attempt != 3 {
		t.Fatalf("after the ack, the copy: %v", again)
	}
}

// TestGateRestartedAtTheSameAddress: an api node still holds a delivery
// of a gate's previous process when the gate comes back at the same
// address. The new process's deliveries are new to it (they used to
// reuse the old ids: the new message was taken for a resend of the old
// one and skipped, and the ack of the old one acknowledged the new).
func TestGateRestartedAtTheSameAddress(t *testing.T) {
	n := &net{hubs: map[string]*Hub{}}
	g, gr := n.hub(t, "g")
	a, _ := n.hub(t, "a")
	all := []string{"g", "a"}
	g.SetMembers(all, []GateRef{{Address: "g", Instance: "g-1"}})
	a.SetMembers(all, []GateRef{{Address: "g", Instance: "g-1"}})
	s, _ := a.Subscribe(1, []uint32{7}, 10)
	if err := gr.Publish(msg(1, 7, "old")); err != nil {
		t.Fatal(err)
	}
	old := next(t, s)
	if len(old) != 1 {
		t.Fatalf("before the restart: %v", old)
	}
	g.Close()
	gr.Close()
	g2, gr2 := n.hub(t, "g") // the new process, at the same address
	g2.SetMembers(all, []GateRef{{Address: "g", Instance: "g-2"}})
	a.SetMembers(all, []GateRef{{Address: "g", Instance: "g-2"}})
	if err := gr2.Publish(msg(1, 7, "new")); err != nil {
		t.Fatal(err)
	}
	got := next(t, s)
	if len(got) != 1 || got[0].MsgId != "new" {
		t.Fatalf("after the restart: %v", got)
	}
	s.Ack([]uint64{old[0].DeliveryId})
	if gr2.Bytes() == 0 {
		t.Fatal("the ack of the old process's delivery acknowledged the new one")
	}
	s.Ack([]uint64{got[0].DeliveryId})
	if b := gr2.Bytes(); b != 0 {
		t.Fatalf("%d bytes held after the new delivery's ack", b)
	}
}

// TestProxyExpiresWithoutResubscribe: an api node restarted at the same
// address (or a subscription whose unsubscribe was lost) no longer
// renews its proxies; after proxyLease the gate closes them and what they
// held goes to the other subscribers, even with resend-after off.
func TestProxyExpiresWithoutResubscribe(t *testing.T) {
	n := &net{hubs: map[string]*Hub{}}
	cfg := DefaultConfig()
	cfg.ResendAfter = 0
	gr := New(cfg, nil)
	g := NewHub(gr, netTransport{n, "g"}, nil)
	n.hubs["g"] = g
	t.Cleanup(func() { g.Close(); gr.Close() })
	a, _ := n.hub(t, "a")
	all := []string{"g", "a"}
	gates := []GateRef{{Address: "g", Instance: "g-1"}}
	g.SetMembers(all, gates)
	a.SetMembers(all, gates)
	s, _ := a.Subscribe(1, nil, 1)
	_ = gr.Publish(msg(1, 7, "held"))
	if got := next(t, s); len(got) != 1 {
		t.Fatalf("first: %v", got)
	}
	// The api node's process is replaced: the old one stops renewing.
	n.mu.Lock()
	delete(n.hubs, "a")
	n.mu.Unlock()
	local, _ := gr.Subscribe(1, nil, 1) // another subscriber
	defer local.Close()
	g.expireProxies(time.Now().Add(proxyLease / 2))
	if gr.Queued() != 0 || len(local.inflight) != 0 {
		t.Fatal("a proxy within its lease was closed")
	}
	g.expireProxies(time.Now().Add(proxyLease + time.Second))
	done := make(chan struct{})
	time.AfterFunc(2*time.Second, func() { close(done) })
	got := local.Next(done)
	if len(got) != 1 || got[0].MsgId != "held" || got[0].Attempt != 2 {
		t.Fatalf("the expired proxy's delivery: %v", got)
	}
}

// TestSubscriptionsRaceMembership: subscriptions opening and closing
// while the gate list changes (run with -race: Close ranged over the map
// attach deleted from, a crash of the whole node).
func TestSubscriptionsRaceMembership(t *testing.T) {
	n := &net{hubs: map[string]*Hub{}}
	a, _ := n.hub(t, "a")
	lists := [][]GateRef{{{Address: "g1", Instance: "1"}, {Address: "g2", Instance: "2"}}, {{Address: "g3", Instance: "3"}}}
	all := []string{"a", "g1", "g2", "g3"}
	a.SetMembers(all, lists[0])
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 300 {
			a.SetMembers(all, lists[i%2])
		}
	}()
	for range 300 {
		s, err := a.Subscribe(1, nil, 1)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	wg.Wait()
	// The last list wins, whatever order the attaches ran in.
	s, _ := a.Subscribe(1, nil, 1)
	defer s.Close()
	a.SetMembers(all, lists[0])
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.at) != 2 || s.at["1"] == nil || s.at["2"] == nil {
		t.Fatalf("attached to %v", s.at)
	}
}

// TestAckOfAnIDNotHandedOutIsIgnored: the fanin numbers deliveries as
// they arrive; an ack of one still waiting in its outbox (an app-server
// guessing, or acking from its previous stream) used to acknowledge it
// at its gate, and closing the stream then lost it. It is ignored, and
// the message goes to the next stream.
func TestAckOfAnIDNotHandedOutIsIgnored(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxBatch = 1
	r := New(cfg, nil)
	defer r.Close()
	h := NewLocalHub(r)
	defer h.Close()
	s, _ := h.Subscribe(1, nil, 10)
	for _, id := range []string{"m1", "m2"} {
		if err := r.Publish(msg(1, 7, id)); err != nil {
			t.Fatal(err)
		}
	}
	first := next1(t, s)
	if len(first) != 1 || first[0].MsgId != "m1" {
		t.Fatalf("first delivery %v", first)
	}
	s.Ack([]uint64{first[0].DeliveryId + 1}) // m2's, not handed out
	s.Close()
	s2, _ := h.Subscribe(1, nil, 10)
	defer s2.Close()
	var ids []string
	for _, m := range next(t, s2) {
		ids = append(ids, m.MsgId)
	}
	if !slices.Contains(ids, "m2") {
		t.Fatalf("the next stream got %v: m2 was lost", ids)
	}
}

// TestTwoInstancesAtThisAddressAreOneAttachment: a node restarted within
// the membership TTL is listed twice (old and new instance, one
// address). A subscription attached to its router once per instance:
// deliveries split between the two, acks reached one, and the other's
// stayed held until the old instance expired (then delivered again).
func TestTwoInstancesAtThisAddressAreOneAttachment(t *testing.T) {
	r, _, s := twoLocalInstances(t)
	for i := range 20 {
		if err := r.Publish(msg(1, 7, fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	for got < 20 {
		batch := next1(t, s)
		var ids []uint64
		for _, m := range batch {
			ids = append(ids, m.DeliveryId)
		}
		s.Ack(ids)
		got += len(batch)
	}
	waitReleased(t, r)
}

// TestFaninOfAStuckStreamStaysBounded: a stream that takes nothing (its
// app-server stopped reading, its connection alive) while other nodes'
// gates resend what it holds to other subscribers and send it new
// deliveries in their place: its fanin keeps at most a window per gate,
// forgetting the oldest from other nodes (resent by their gates), never
// this node's own gate's (it does not resend).
func TestFaninOfAStuckStreamStaysBounded(t *testing.T) {
	const window = 100
	f := newFanin(window)
	defer f.close()
	f.deliver("self", []*apipb.UpstreamMessage{{DeliveryId: 1, MsgId: "own"}}, true)
	for round := range 50 { // each round: the gate's window again, new ids
		msgs := make([]*apipb.UpstreamMessage, window)
		for j := range msgs {
			msgs[j] = &apipb.UpstreamMessage{DeliveryId: uint64(round*window + j), MsgId: fmt.Sprint(round, "/", j)}
		}
		f.deliver("other", msgs, false)
	}
	f.mu.Lock()
	n, out := len(f.origin), len(f.outbox)
	first := f.outbox[0].MsgId
	f.mu.Unlock()
	if out > 2*window || n > 2*window {
		t.Fatalf("%d deliveries waiting, %d held, after 50 windows from one gate: want at most a window per gate", out, n)
	}
	if first != "own" {
		t.Fatalf("the local gate's delivery was forgotten (first waiting: %s)", first)
	}
	got := f.take(nil, 1000, 1<<30)
	if last := got[len(got)-1].MsgId; last != "49/99" {
		t.Fatalf("the newest delivery is not kept: last %s", last)
	}
}

// TestLocalAttachmentOutlivesTheOldInstance: of two instances at this
// node's address, the one the subscription attached through leaves the
// view: the subscription attaches through the other; what the
// app-server holds from before is acknowledged through it, and new
// deliveries come through it.
func TestLocalAttachmentOutlivesTheOldInstance(t *testing.T) {
	r, h, s := twoLocalInstances(t)
	if err := r.Publish(msg(1, 7, "before")); err != nil {
		t.Fatal(err)
	}
	before := next1(t, s)
	if len(before) != 1 || before[0].MsgId != "before" {
		t.Fatalf("before: %v", before)
	}
	s.mu.Lock()
	var attached string
	for inst, a := range s.at {
		if a.local != nil {
			attached = inst
		}
	}
	s.mu.Unlock()
	other := map[string]string{"i1": "i2", "i2": "i1"}[attached]
	h.SetMembers([]string{localAddress}, []GateRef{{Address: localAddress, Instance: other}})
	if err := r.Publish(msg(1, 7, "after")); err != nil {
		t.Fatalf("publish after the old instance left: %v", err)
	}
	after := next1(t, s)
	if len(after) != 1 || after[0].MsgId != "after" {
		t.Fatalf("after the old instance left: %v (the held one must not come again)", after)
	}
	s.Ack([]uint64{before[0].DeliveryId, after[0].DeliveryId})
	waitReleased(t, r)
}

// TestFaninForgetsOnlyFromTheGateOverItsWindow: the bound is a window
// per gate: a gate that sends past its window (it resent earlier ones
// elsewhere) loses its own oldest; another gate's deliveries, still in
// flight at that gate and not resent, are kept.
func TestFaninForgetsOnlyFromTheGateOverItsWindow(t *testing.T) {
	f := newFanin(2)
	defer f.close()
	f.deliver("y", []*apipb.UpstreamMessage{{DeliveryId: 1, MsgId: "y1"}, {DeliveryId: 2, MsgId: "y2"}}, false)
	f.deliver("x", []*apipb.UpstreamMessage{{DeliveryId: 1, MsgId: "x1"}, {DeliveryId: 2, MsgId: "x2"}}, false)
	f.deliver("x", []*apipb.UpstreamMessage{{DeliveryId: 3, MsgId: "x3"}, {DeliveryId: 4, MsgId: "x4"}}, false)
	var ids []string
	for _, m := range f.take(nil, 100, 1<<20) {
		ids = append(ids, m.MsgId)
	}
	if want := []string{"y1", "y2", "x3", "x4"}; !slices.Equal(ids, want) {
		t.Fatalf("waiting %v, want %v", ids, want)
	}
}

// twoLocalInstances is a local hub whose view lists two instances at
// this node's address (a restart within the TTL), and a subscription.
func twoLocalInstances(t *testing.T) (*Router, *Hub, *Subscription) {
	r := New(DefaultConfig(), nil)
	h := NewLocalHub(r)
	h.SetMembers([]string{localAddress}, []GateRef{{Address: localAddress, Instance: "i1"}, {Address: localAddress, Instance: "i2"}})
	s, _ := h.Subscribe(1, nil, 100)
	t.Cleanup(func() { s.Close(); h.Close(); r.Close() })
	return r, h, s
}

// waitReleased waits up to 5 s for r to hold nothing (every delivery
// acknowledged), and fails the test if it still does.
func waitReleased(t *testing.T, r *Router) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.Bytes() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if b := r.Bytes(); b != 0 {
		t.Fatalf("%d bytes still held after every delivery was acknowledged", b)
	}
}

// TestFaninOfAnUnacknowledgingStreamStaysBounded: an app-server that
// reads but never acknowledges; every resend-after its gate takes the
// window back (resends it to another stream) and sends this one a new
// window. The fan-in keeps at most a window of the gate's.
func TestFaninOfAnUnacknowledgingStreamStaysBounded(t *testing.T) {
	const window = 100
	f := newFanin(window)
	defer f.close()
	id := uint64(0)
	for range 50 {
		msgs := make([]*apipb.UpstreamMessage, window)
		for j := range msgs {
			id++
			msgs[j] = &apipb.UpstreamMessage{DeliveryId: id}
		}
		f.deliver("other", msgs, false)
		if got := f.take(nil, window, 1<<30); len(got) != window {
			t.Fatalf("took %d, want %d", len(got), window)
		}
	}
	f.mu.Lock()
	n, h, o := len(f.origin), len(f.held), len(f.order["other"])
	f.mu.Unlock()
	if n > window || h > window || o > 2*window+64 {
		t.Fatalf("holds %d origins, %d held, %d ordered: want at most a window (%d)", n, h, o, window)
	}
	// The newest window is still acknowledged through to its gate.
	acked := f.ack([]uint64{f.taken})
	if len(acked["other"]) != 1 || acked["other"][0] != id {
		t.Fatalf("ack of the newest: %v, want other's %d", acked, id)
	}
}

// TestFaninOrderStaysBoundedWhenAcknowledged: a stream that acknowledges
// everything keeps no list of ids behind.
func TestFaninOrderStaysBoundedWhenAcknowledged(t *testing.T) {
	f := newFanin(10)
	defer f.close()
	for i := range 10_000 {
		f.deliver("g", []*apipb.UpstreamMessage{{DeliveryId: uint64(i + 1)}}, false)
		got := f.take(nil, 10, 1<<20)
		f.ack([]uint64{got[0].DeliveryId})
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.order) != 0 || len(f.origin) != 0 || len(f.heldN) != 0 {
		t.Fatalf("order %d, origin %d, heldN %v after every delivery was acknowledged", len(f.order["g"]), len(f.origin), f.heldN)
	}
}
