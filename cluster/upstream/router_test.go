package upstream

import (
	"errors"
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
