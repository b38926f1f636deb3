package upstream

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/courier-im/courier/messages/apipb"
)

func msg(app, msgtype uint32, id string) *apipb.UpstreamMessage {
	return &apipb.UpstreamMessage{AppCode: app, Msgtype: msgtype, MsgId: id}
}

// take returns what the subscriber has now, without blocking for long.
func take(t *testing.T, s *Subscriber) []*apipb.UpstreamMessage {
	t.Helper()
	done := make(chan struct{})
	timer := time.AfterFunc(200*time.Millisecond, func() { close(done) })
	defer timer.Stop()
	return s.Next(done)
}

func TestNoSubscriberAndFull(t *testing.T) {
	cfg := DefaultConfig()
	cfg.QueueLen, cfg.DefaultInFlight = 2, 1
	r := New(cfg, nil)
	defer r.Close()
	if err := r.Publish(msg(1, 5, "a")); !errors.Is(err, ErrNoSubscriber) {
		t.Fatalf("no subscriber: %v", err)
	}
	s, _ := r.Subscribe(1, []uint32{5}, 0)
	if err := r.Publish(msg(1, 6, "x")); !errors.Is(err, ErrNoSubscriber) {
		t.Fatalf("other msgtype: %v", err)
	}
	for _, id := range []string{"a", "b", "c"} { // 1 in flight + 2 queued
		if err := r.Publish(msg(1, 5, id)); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if err := r.Publish(msg(1, 5, "d")); !errors.Is(err, ErrFull) {
		t.Fatalf("full queue: %v", err)
	}
	got := take(t, s)
	if len(got) != 1 || got[0].MsgId != "a" {
		t.Fatalf("window of 1: %v", got)
	}
	s.Ack([]uint64{got[0].DeliveryId})
	if got := take(t, s); len(got) != 1 || got[0].MsgId != "b" {
		t.Fatalf("after ack: %v", got)
	}
}

func TestShareLoadAndRedeliverOnClose(t *testing.T) {
	r := New(DefaultConfig(), nil)
	defer r.Close()
	a, _ := r.Subscribe(1, nil, 10)
	b, _ := r.Subscribe(1, nil, 10)
	for i := range 10 {
		if err := r.Publish(msg(1, 4, string(rune('a'+i)))); err != nil {
			t.Fatal(err)
		}
	}
	ga, gb := take(t, a), take(t, b)
	if len(ga)+len(gb) != 10 || len(ga) < 4 || len(gb) < 4 {
		t.Fatalf("load not shared: %d and %d", len(ga), len(gb))
	}
	// a acks one and goes away: the rest of a's comes to b, oldest first.
	a.Ack([]uint64{ga[0].DeliveryId})
	a.Close()
	again := take(t, b)
	if len(again) != len(ga)-1 {
		t.Fatalf("redelivered %d, want %d", len(again), len(ga)-1)
	}
	for i, m := range again {
		if m.MsgId != ga[i+1].MsgId || m.Attempt != 2 {
			t.Fatalf("redelivery %d: %s attempt %d, want %s attempt 2", i, m.MsgId, m.Attempt, ga[i+1].MsgId)
		}
	}
	if s := a.Next(nil); s != nil {
		t.Fatal("closed subscriber got messages")
	}
}

func TestExpireQueued(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DefaultInFlight = 1
	r := New(cfg, nil)
	defer r.Close()
	now := time.Now()
	r.now = func() time.Time { return now }
	s, _ := r.Subscribe(1, nil, 0)
	_ = r.Publish(msg(1, 1, "a"))
	_ = r.Publish(msg(1, 1, "b"))
	now = now.Add(cfg.MaxAge + time.Second)
	r.expire()
	if r.Queued() != 0 {
		t.Fatalf("queued %d after expiry", r.Queued())
	}
	if got := take(t, s); len(got) != 1 || got[0].MsgId != "a" {
		t.Fatalf("in flight message must stay: %v", got)
	}
}

// TestRequeuedAreNotExpiredAtOnce: a subscriber held a message longer
// than MaxAge and went away; the message goes to the next subscriber,
// not to the expiry (it was taken: MaxAge is for what nobody took).
func TestRequeuedAreNotExpiredAtOnce(t *testing.T) {
	cfg := DefaultConfig()
	r := New(cfg, nil)
	defer r.Close()
	now := time.Now()
	r.now = func() time.Time { return now }
	a, _ := r.Subscribe(1, nil, 0)
	_ = r.Publish(msg(1, 1, "held"))
	if got := take(t, a); len(got) != 1 {
		t.Fatalf("first subscriber got %v", got)
	}
	now = now.Add(cfg.MaxAge + time.Minute)
	a.Close()
	r.expire()
	b, _ := r.Subscribe(1, nil, 0)
	if got := take(t, b); len(got) != 1 || got[0].MsgId != "held" || got[0].Attempt != 2 {
		t.Fatalf("after the first subscriber went away: %v, want the held message again", got)
	}
	// Left untaken for MaxAge after that, it expires as any other.
	b.Close()
	now = now.Add(cfg.MaxAge + time.Second)
	r.expire()
	if r.Queued() != 0 {
		t.Fatalf("queued %d after MaxAge untaken", r.Queued())
	}
}

// sized returns a message of app with a payload of n bytes.
func sized(app uint32, id string, n int) *apipb.UpstreamMessage {
	return &apipb.UpstreamMessage{AppCode: app, Msgtype: 1, MsgId: id, Uid: "u", Payload: make([]byte, n)}
}

// TestByteBudgetsPerAppAndNode: what the router holds for an app, queued
// or in flight at a subscriber, is bounded in bytes per app and for the
// node, whatever the counts allow; acks and expiry give the room back.
func TestByteBudgetsPerAppAndNode(t *testing.T) {
	one := Size(sized(1, "m00", 1000))
	cfg := DefaultConfig()
	cfg.DefaultInFlight = 2
	cfg.AppMaxBytes = 10 * one // 2 in flight + 8 queued
	cfg.MaxBytes = 15 * one
	r := New(cfg, nil)
	defer r.Close()
	now := time.Now()
	r.now = func() time.Time { return now }
	s1, _ := r.Subscribe(1, nil, 0)
	s2, _ := r.Subscribe(2, nil, 0)
	for i := range 10 {
		if err := r.Publish(sized(1, fmt.Sprintf("m%02d", i), 1000)); err != nil {
			t.Fatalf("app 1 message %d within its budget: %v", i, err)
		}
	}
	if err := r.Publish(sized(1, "m10", 1000)); !errors.Is(err, ErrOverBudget) {
		t.Fatalf("app 1 over its budget: %v", err)
	}
	// App 2 has its own budget, but the node's is shared: 5 more fit.
	for i := range 5 {
		if err := r.Publish(sized(2, fmt.Sprintf("n%02d", i), 1000)); err != nil {
			t.Fatalf("app 2 message %d within the node's budget: %v", i, err)
		}
	}
	if err := r.Publish(sized(2, "n05", 1000)); !errors.Is(err, ErrOverBudget) {
		t.Fatalf("node over its budget: %v", err)
	}
	if got := r.Bytes(); got != 15*one {
		t.Fatalf("router holds %d bytes, want %d", got, 15*one)
	}
	// An ack of app 1's in-flight messages gives room back (the freed
	// window takes two queued ones, still counted).
	got := take(t, s1)
	if len(got) != 2 {
		t.Fatalf("app 1 in flight: %d", len(got))
	}
	s1.Ack([]uint64{got[0].DeliveryId, got[1].DeliveryId})
	for i := range 2 {
		if err := r.Publish(sized(1, fmt.Sprintf("m1%d", i), 1000)); err != nil {
			t.Fatalf("after the ack, message %d: %v", i, err)
		}
	}
	if err := r.Publish(sized(1, "m12", 1000)); !errors.Is(err, ErrOverBudget) {
		t.Fatalf("app 1 full again: %v", err)
	}
	// A subscriber that goes away hands its messages back: still held.
	_ = take(t, s2)
	s2.Close()
	if got := r.Bytes(); got != 15*one {
		t.Fatalf("after a subscriber left the router holds %d bytes, want %d", got, 15*one)
	}
	// Expiry of what waits gives the room back; in flight stays.
	now = now.Add(cfg.MaxAge + time.Second)
	r.expire()
	if got := r.Bytes(); got != 2*one { // app 1's window
		t.Fatalf("after expiry the router holds %d bytes, want %d", got, 2*one)
	}
	if err := r.Publish(sized(1, "m13", 1000)); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
}

// TestMessageSizeCountsEveryField: a message's size is what the router
// keeps for it (its fields plus a fixed overhead), so ids cannot be used
// to get around the budget.
func TestMessageSizeCountsEveryField(t *testing.T) {
	base := Size(&apipb.UpstreamMessage{})
	m := &apipb.UpstreamMessage{Uid: "uid", DeviceId: "device", MsgId: "msg", ClientMsgId: "client-id", Payload: []byte("payload")}
	if got, want := Size(m), base+3+6+3+9+7; got != want || base < 128 {
		t.Fatalf("size %d, want %d (overhead %d)", got, want, base)
	}
}

// TestBatchesAreBoundedInBytes: a delivery holds at most MaxBatchBytes of
// messages, except a single message larger than that, which goes alone.
func TestBatchesAreBoundedInBytes(t *testing.T) {
	one := Size(sized(1, "m00", 1000))
	cfg := DefaultConfig()
	cfg.MaxBatchBytes = 3 * one
	r := New(cfg, nil)
	defer r.Close()
	placeholder, _ := r.Subscribe(1, nil, 1) // takes the first, the rest queue
	for i := range 8 {
		if err := r.Publish(sized(1, fmt.Sprintf("m%02d", i), 1000)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Publish(sized(1, "big", 5000)); err != nil {
		t.Fatal(err)
	}
	s, _ := r.Subscribe(1, nil, 100)
	placeholder.Close() // its message comes back to s too
	var sizes []int
	for total := 0; total < 9; {
		got := take(t, s)
		if len(got) == 0 {
			t.Fatalf("after %d messages, nothing", total)
		}
		var bytes int64
		for _, m := range got {
			bytes += Size(m)
		}
		if len(got) > 1 && bytes > cfg.MaxBatchBytes {
			t.Fatalf("a batch of %d messages, %d bytes", len(got), bytes)
		}
		sizes = append(sizes, len(got))
		total += len(got)
	}
	if last := sizes[len(sizes)-1]; last != 1 {
		t.Fatalf("batches %v: the large message must go alone", sizes)
	}
}

// TestResendUnacknowledged: a delivery to a subscriber whose batches can
// be lost on the way (another node's, ResendAfter) that is not
// acknowledged within Config.ResendAfter goes back to the queue and out
// again (attempt + 1); one that is acknowledged in time does not, and a
// subscriber that did not ask keeps what it holds.
func TestResendUnacknowledged(t *testing.T) {
	cfg := DefaultConfig()
	r := New(cfg, nil)
	defer r.Close()
	now := time.Now()
	r.now = func() time.Time { return now }
	remote, _ := r.Subscribe(1, []uint32{1}, 0)
	remote.ResendAfter()
	local, _ := r.Subscribe(1, []uint32{2}, 0)
	_ = r.Publish(msg(1, 1, "lost"))
	_ = r.Publish(msg(1, 1, "acked"))
	_ = r.Publish(msg(1, 2, "held"))
	got := take(t, remote)
	if len(got) != 2 || len(take(t, local)) != 1 {
		t.Fatalf("first deliveries: %v", got)
	}
	remote.Ack([]uint64{got[1].DeliveryId})
	now = now.Add(cfg.ResendAfter - time.Second)
	r.expire()
	if again := take(t, remote); len(again) != 0 {
		t.Fatalf("resent before ResendAfter: %v", again)
	}
	now = now.Add(2 * time.Second)
	r.expire()
	again := take(t, remote)
	if len(again) != 1 || again[0].MsgId != "lost" || again[0].Attempt != 2 {
		t.Fatalf("after ResendAfter: %v, want the unacknowledged one, attempt 2", again)
	}
	if again := take(t, local); len(again) != 0 {
		t.Fatalf("a subscriber that did not ask got %v", again)
	}
	remote.Ack([]uint64{again[0].DeliveryId})
	now = now.Add(2 * cfg.ResendAfter)
	r.expire()
	if n := r.Queued(); n != 0 || len(take(t, remote)) != 0 {
		t.Fatalf("after the ack: %d queued", n)
	}
}

type countStats struct {
	mu                       sync.Mutex
	received, acked, dropped int
}

func (c *countStats) UpstreamReceived(uint16, uint32) { c.mu.Lock(); c.received++; c.mu.Unlock() }
func (c *countStats) UpstreamAcked(uint16, uint32)    { c.mu.Lock(); c.acked++; c.mu.Unlock() }
func (c *countStats) UpstreamDropped(uint16, uint32)  { c.mu.Lock(); c.dropped++; c.mu.Unlock() }

// TestStoppingCountsWhatIsLeft: a node stopping waits (Settle) for the
// app-servers to acknowledge what its devices sent, and what is left when
// the router closes is counted as dropped, not lost silently.
func TestStoppingCountsWhatIsLeft(t *testing.T) {
	st := &countStats{}
	r := New(DefaultConfig(), st)
	h := NewLocalHub(r)
	s, _ := h.Subscribe(1, nil, 1)
	for i := range 3 {
		if err := r.Publish(msg(1, 1, fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	got := next1(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if r.Settle(ctx) {
		t.Fatal("settled with three messages held")
	}
	s.Ack([]uint64{got[0].DeliveryId}) // one acknowledged, two left
	h.Close()
	r.Close()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.received != 3 || st.acked != 1 || st.dropped != 2 {
		t.Fatalf("received %d, acked %d, dropped %d: want 3, 1, 2", st.received, st.acked, st.dropped)
	}
	if r.Bytes() != 0 {
		t.Fatalf("%d bytes held after Close", r.Bytes())
	}
}

// TestSettleReturnsOnceAcknowledged: Settle returns as soon as the last
// message is acknowledged.
func TestSettleReturnsOnceAcknowledged(t *testing.T) {
	r := New(DefaultConfig(), nil)
	defer r.Close()
	s, _ := r.Subscribe(1, nil, 10)
	defer s.Close()
	_ = r.Publish(msg(1, 1, "a"))
	got := take(t, s)
	time.AfterFunc(50*time.Millisecond, func() { s.Ack([]uint64{got[0].DeliveryId}) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if !r.Settle(ctx) || time.Since(start) > 5*time.Second {
		t.Fatalf("Settle: %v after the ack", time.Since(start))
	}
}

// BenchmarkRequeueAWholeWindow: a subscriber with a window of 65,536
// closes (or its deliveries are resent): they go back in order under the
// router's lock, which every gate loop takes to publish a C2S. The
// insertion sort of a map's random order took seconds.
func BenchmarkRequeueAWholeWindow(b *testing.B) {
	ms := make([]*message, 1<<16)
	for b.Loop() {
		b.StopTimer()
		for i, p := range rand.Perm(len(ms)) {
			ms[i] = &message{m: &apipb.UpstreamMessage{DeliveryId: uint64(p)}}
		}
		b.StartTimer()
		sortByID(ms)
	}
}

// TestRequeueKeepsDeliveryOrder: what goes back to the queue is in
// delivery order, however the in-flight map gave it.
func TestRequeueKeepsDeliveryOrder(t *testing.T) {
	ms := make([]*message, 1000)
	for i, p := range rand.Perm(len(ms)) {
		ms[i] = &message{m: &apipb.UpstreamMessage{DeliveryId: uint64(p)}}
	}
	sortByID(ms)
	for i, m := range ms {
		if m.m.DeliveryId != uint64(i) {
			t.Fatalf("position %d holds %d", i, m.m.DeliveryId)
		}
	}
}

// TestQueuePushFrontIsAmortized: messages taken back from a subscriber
// go to the front of their queue one by one (requeueLocked, under the
// router's lock); each used to copy the whole queue. Requeueing 10,000
// in front of 10,000 now allocates a few times, and keeps the order.
func TestQueuePushFrontIsAmortized(t *testing.T) {
	const n = 10_000
	msgs := make([]*message, 2*n)
	for i := range msgs {
		msgs[i] = &message{size: int64(i)}
	}
	var q queue
	allocs := testing.AllocsPerRun(1, func() {
		q = queue{}
		for _, m := range msgs[n:] {
			q.push(m)
		}
		for i := n - 1; i >= 0; i-- {
			q.pushFront(msgs[i])
		}
	})
	if allocs > 60 {
		t.Fatalf("%v allocations to requeue %d messages in front of %d", allocs, n, n)
	}
	for i := range msgs {
		if m := q.pop(); m != msgs[i] {
			t.Fatalf("message %d came out as %d", i, m.size)
		}
	}
	if q.len() != 0 {
		t.Fatalf("%d left", q.len())
	}
}

// TestPublishRefusesWhatNoDeliveryCanCarry: a C2S larger than
// MaxMessageSize (a gate.max-frame-size above 4 MiB allows one) is
// refused: sent, it would fail every app-server stream whose client
// keeps gRPC's default receive limit, and go round for ever.
func TestPublishRefusesWhatNoDeliveryCanCarry(t *testing.T) {
	r := New(DefaultConfig(), nil)
	defer r.Close()
	s, _ := r.Subscribe(1, nil, 10)
	defer s.Close()
	big := &apipb.UpstreamMessage{AppCode: 1, Msgtype: 1, MsgId: "m", Payload: make([]byte, MaxMessageSize)}
	if err := r.Publish(big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a C2S of %d bytes: %v", Size(big), err)
	}
	big.Payload = big.Payload[:MaxMessageSize-MessageOverhead-1]
	if err := r.Publish(big); err != nil {
		t.Fatalf("a C2S of %d bytes: %v", Size(big), err)
	}
}

// TestAckFillsEveryWaitingMsgtype: room freed by an ack of one msgtype
// goes to another msgtype's queue that waited for room, not only to the
// acknowledged msgtype's (a rare SOS behind a GPS flood waited for the
// next SOS, and at a stop for good).
func TestAckFillsEveryWaitingMsgtype(t *testing.T) {
	cfg := DefaultConfig()
	r := New(cfg, nil)
	defer r.Close()
	s, err := r.Subscribe(1, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*apipb.UpstreamMessage{msg(1, 1, "gps"), msg(1, 2, "sos")} {
		if err := r.Publish(m); err != nil {
			t.Fatal(err)
		}
	}
	got := take(t, s)
	if len(got) != 1 || got[0].MsgId != "gps" {
		t.Fatalf("first batch %v, want gps alone (window 1)", got)
	}
	s.Ack([]uint64{got[0].DeliveryId})
	if got = take(t, s); len(got) != 1 || got[0].MsgId != "sos" {
		t.Fatalf("after the ack: %v, want sos", got)
	}
	s.Ack([]uint64{got[0].DeliveryId})
	if n := r.Queued(); n != 0 {
		t.Fatalf("%d still queued", n)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.waiting) != 0 {
		t.Fatalf("waiting index kept %v after the queues emptied", r.waiting)
	}
}

// TestResendFillsEveryWaitingMsgtype: a resend frees the window too; a
// subscriber whose resent delivery went to another takes what waits in
// its other msgtypes' queues.
func TestResendFillsEveryWaitingMsgtype(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ResendAfter = time.Minute
	r := New(cfg, nil)
	defer r.Close()
	now := time.Now()
	r.mu.Lock()
	r.now = func() time.Time { return now }
	r.mu.Unlock()
	a, _ := r.Subscribe(1, nil, 1) // takes all, window 1; its deliveries are resent
	a.ResendAfter()
	if err := r.Publish(msg(1, 1, "gps")); err != nil {
		t.Fatal(err)
	}
	if got := take(t, a); len(got) != 1 || got[0].MsgId != "gps" {
		t.Fatalf("a got %v, want gps", got)
	}
	b, _ := r.Subscribe(1, []uint32{1}, 1)              // takes msgtype 1 only
	if err := r.Publish(msg(1, 2, "sos")); err != nil { // waits: a is full, b does not take 2
		t.Fatal(err)
	}
	r.mu.Lock()
	now = now.Add(2 * time.Minute)
	r.rr = 1 // the resent gps goes to b (b first among the least loaded)
	r.mu.Unlock()
	r.expire()
	if got := take(t, b); len(got) != 1 || got[0].MsgId != "gps" {
		t.Fatalf("b got %v, want the resent gps", got)
	}
	if got := take(t, a); len(got) != 1 || got[0].MsgId != "sos" {
		t.Fatalf("a got %v, want sos", got)
	}
}

// TestQueueShrinksAfterABurst: a queue that never empties does not keep
// the room of its longest burst.
func TestQueueShrinksAfterABurst(t *testing.T) {
	q := &queue{}
	for range 10000 {
		q.push(&message{})
	}
	for range 9990 {
		q.pop()
	}
	q.shrink()
	if c := cap(q.items); c > 64 || q.len() != 10 {
		t.Fatalf("after shrink: len %d cap %d", q.len(), c)
	}
}

// TestDeviceByteShare: one device (appcode and uid) holds at most
// UIDMaxBytes of its app's budget; another device still gets through,
// and an ack or an expiry gives the device its room back.
func TestDeviceByteShare(t *testing.T) {
	from := func(uid, id string) *apipb.UpstreamMessage {
		m := sized(1, id, 1000)
		m.Uid = uid
		return m
	}
	one := Size(from("a", "a0"))
	cfg := DefaultConfig()
	cfg.DefaultInFlight = 1
	cfg.UIDMaxBytes = 3 * one
	r := New(cfg, nil)
	defer r.Close()
	now := time.Now()
	r.now = func() time.Time { return now }
	s, _ := r.Subscribe(1, nil, 0)
	for i := range 3 {
		if err := r.Publish(from("a", fmt.Sprint("a", i))); err != nil {
			t.Fatalf("device a, message %d within its share: %v", i, err)
		}
	}
	if err := r.Publish(from("a", "a3")); !errors.Is(err, ErrDeviceOverBudget) {
		t.Fatalf("device a over its share: %v", err)
	}
	if err := r.Publish(from("b", "b0")); err != nil {
		t.Fatalf("device b beside a full a: %v", err)
	}
	got := take(t, s) // a0, in flight
	s.Ack([]uint64{got[0].DeliveryId})
	if err := r.Publish(from("a", "a3")); err != nil {
		t.Fatalf("device a after an ack: %v", err)
	}
	// Expiry of what waits (a2, a3; a1 is in flight) gives that share
	// back too.
	now = now.Add(cfg.MaxAge + time.Second)
	r.expire()
	for i := range 2 {
		if err := r.Publish(from("a", fmt.Sprint("a", 4+i))); err != nil {
			t.Fatalf("device a after its queued messages expired, message %d: %v", i, err)
		}
	}
	if err := r.Publish(from("a", "a6")); !errors.Is(err, ErrDeviceOverBudget) {
		t.Fatalf("device a full again: %v", err)
	}
}
