package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/courier-im/courier/client"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// ackLog records the S2C_ACKs a fake gate received.
type ackLog struct {
	mu    sync.Mutex
	acked map[string]int
}

func newAckLog() *ackLog { return &ackLog{acked: map[string]int{}} }

func (a *ackLog) add(id string) {
	a.mu.Lock()
	a.acked[id]++
	a.mu.Unlock()
}

func (a *ackLog) count(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.acked[id]
}

func (a *ackLog) total() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.acked)
}

// readAcks reads the connection until it ends, recording S2C_ACKs and
// answering each PULL with page.
func readAcks(c *client.Conn, acks *ackLog, page []*devicepb.StoredMessage) {
	for {
		f, err := c.ReadFrame()
		if err != nil {
			return
		}
		switch m := f.Msg.(type) {
		case *devicepb.S2CAck:
			acks.add(m.MsgId)
		case *devicepb.Pull:
			if c.WriteMessage(messages.CmdPullAck, 0, f.Seq, &devicepb.PullAck{Code: devicepb.Code_OK, Messages: page}) != nil {
				return
			}
		}
	}
}

// TestAutoAckComesWithTheNextRecv: by default a message is acknowledged
// when the app calls Recv again, having handled it, not as Recv hands it
// over (it used to be acked before Recv even returned: an app that died
// handling it lost it). A gate that keeps the server's window (32
// unacknowledged messages at most) gets the app, which calls Recv in a
// loop, all its messages without stalling; the last is acknowledged at
// the call after it.
func TestAutoAckComesWithTheNextRecv(t *testing.T) {
	const n, window = 100, 32
	acks := newAckLog()
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // the window: message i goes once fewer than 32 before it wait for their ack
			defer wg.Done()
			for i := 1; i <= n; i++ {
				for i-1-acks.total() >= window {
					select {
					case <-done:
						return
					case <-time.After(time.Millisecond):
					}
				}
				if c.WriteMessage(messages.CmdS2C, 0, uint32(i), &devicepb.S2C{MsgId: fmt.Sprint("m", i)}) != nil {
					return
				}
			}
		}()
		readAcks(c, acks, nil)
		close(done)
		wg.Wait()
	})
	c := dialFake(t, g, nil)
	for i := 1; i <= n; i++ {
		m := recv(t, c)
		if m.MsgID != fmt.Sprint("m", i) {
			t.Fatalf("message %d: %s", i, m.MsgID)
		}
		if i == 1 {
			time.Sleep(300 * time.Millisecond) // the app handles it; an early ack would be in by now
		}
		if acks.count(m.MsgID) != 0 {
			t.Fatalf("message %d was acknowledged while the app was handling it", i)
		}
		if i > 1 {
			prev := fmt.Sprint("m", i-1)
			testkit.Eventually(t, 5*time.Second, func() bool { return acks.count(prev) == 1 },
				"message %d not acknowledged once the app called Recv again", i-1)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := c.Recv(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Recv past the last message: %v", err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return acks.count(fmt.Sprint("m", n)) == 1 },
		"the last message not acknowledged at the call after it")
}

// TestPulledPageIsAckedAtTheNextCall: by default a page Pull returned is
// acknowledged when the app calls Pull or Recv again, not before Pull
// returns it; and Ack acknowledges a message at once, for an app that
// will not call again soon.
func TestPulledPageIsAckedAtTheNextCall(t *testing.T) {
	page := []*devicepb.StoredMessage{
		{MsgId: "p1", Seq: 1, Kind: devicepb.Kind_KIND_S2C},
		{MsgId: "p2", Seq: 2, Kind: devicepb.Kind_KIND_S2C},
	}
	acks := newAckLog()
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) { readAcks(c, acks, page) })
	c := dialFake(t, g, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := c.Pull(ctx, 0, 10)
	if err != nil || len(r.Messages) != 2 {
		t.Fatalf("pull: %+v, %v", r, err)
	}
	time.Sleep(300 * time.Millisecond) // the app handles the page
	if acks.total() != 0 {
		t.Fatal("the page was acknowledged before the app was done with it")
	}
	if _, err := c.Pull(ctx, 2, 10); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return acks.count("p1") == 1 && acks.count("p2") == 1 },
		"the page not acknowledged once the app called Pull again")
	// The second page (the same messages: this gate ignores after_seq)
	// was acknowledged already: Ack sends nothing more for them.
	for _, m := range r.Messages {
		if err := c.Ack(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if acks.count("p1") != 1 || acks.count("p2") != 1 {
		t.Fatalf("acks after Ack of acknowledged messages: p1 %d, p2 %d, want 1 each", acks.count("p1"), acks.count("p2"))
	}
}

// TestUnackedRedeliveryIsHandedAgain: with ManualAck, a message the app
// did not acknowledge is returned again, marked Redelivered, when the
// server redelivers it on the same connection: the app left it
// unacknowledged to get it again (and the server's window would stall
// after 32 such). It used to be dropped as a duplicate. Once acknowledged,
// its redeliveries are only acknowledged again.
func TestUnackedRedeliveryIsHandedAgain(t *testing.T) {
	c, acks, again := redeliveringGate(t)
	if m := recv(t, c); m.MsgID != "r1" || m.Redelivered {
		t.Fatalf("first delivery: %+v", m)
	}
	again <- struct{}{}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	m, err := c.Recv(ctx)
	if err != nil || m.MsgID != "r1" || !m.Redelivered {
		t.Fatalf("after the redelivery of a message not acknowledged: %+v, %v; want it again, marked", m, err)
	}
	if err := c.Ack(ctx, m); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return acks.count("r1") == 1 }, "no ack")
	again <- struct{}{}
	testkit.Eventually(t, 5*time.Second, func() bool { return acks.count("r1") == 2 }, "the redelivery of an acknowledged message not acknowledged again")
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if m, err := c.Recv(short); err == nil {
		t.Fatalf("an acknowledged message was handed again: %+v", m)
	}
}

// TestPushOfAPulledMessageIsNotARedelivery: with ManualAck, the server
// pushes what a PULL returned until it is acknowledged (docs/protocol.md
// §9.6). That first push on the connection is not handed to the app
// again (it has just had it from Pull); the one after, the server's
// redelivery, is.
func TestPushOfAPulledMessageIsNotARedelivery(t *testing.T) {
	page := []*devicepb.StoredMessage{{MsgId: "q1", Seq: 1, Kind: devicepb.Kind_KIND_S2C}}
	push := make(chan struct{}, 2)
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		go func() {
			for range push {
				if c.WriteMessage(messages.CmdS2C, 0, 1, &devicepb.S2C{MsgId: "q1"}) != nil {
					return
				}
			}
		}()
		readAcks(c, newAckLog(), page)
	})
	t.Cleanup(func() { close(push) })
	c := dialFake(t, g, func(cfg *client.Config) { cfg.ManualAck = true })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if r, err := c.Pull(ctx, 0, 10); err != nil || len(r.Messages) != 1 {
		t.Fatalf("pull: %+v, %v", r, err)
	}
	push <- struct{}{}
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if m, err := c.Recv(short); err == nil {
		t.Fatalf("the push of a message Pull had just returned reached the app: %+v", m)
	}
	push <- struct{}{}
	if m, err := c.Recv(ctx); err != nil || m.MsgID != "q1" || !m.Redelivered {
		t.Fatalf("after the redelivery of a pulled message not acknowledged: %+v, %v; want it again, marked", m, err)
	}
}

// TestRedeliveryQueuedThenAckedIsNotHandedAgain: with ManualAck, the
// server redelivers a message the app takes more than 2 s to handle; the
// copy waits in the queue while the app is still on it. Once the app
// acknowledges the message, that copy is not handed to it again (it
// would be handled twice).
func TestRedeliveryQueuedThenAckedIsNotHandedAgain(t *testing.T) {
	c, acks, again := redeliveringGate(t)
	m := recv(t, c)
	again <- struct{}{}                // redelivered while the app handles it
	time.Sleep(300 * time.Millisecond) // the copy is queued
	if err := c.Ack(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return acks.count("r1") == 1 }, "no ack")
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if m, err := c.Recv(short); err == nil {
		t.Fatalf("an acknowledged message was handed again: %+v", m)
	}
}

// TestLastMessageAckedWhenTheLoopIsCancelled: in the default mode the
// app's loop that ends by cancelling the context of its next Recv has
// handled the message before: it is acknowledged every time (the cancel
// raced the release, and lost half the time). Logout acknowledges too.
func TestLastMessageAckedWhenTheLoopIsCancelled(t *testing.T) {
	const n = 20
	acks := newAckLog()
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		for i := range n + 1 {
			if c.WriteMessage(messages.CmdS2C, 0, uint32(i+1), &devicepb.S2C{MsgId: fmt.Sprint("m", i)}) != nil {
				return
			}
		}
		readAcks(c, acks, nil)
	})
	c := dialFake(t, g, nil)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	m := recv(t, c)
	cancels := 0
	for range n {
		// A message may be ready as well: Recv then returns it or the
		// context's error, at random.
		next, err := c.Recv(cancelled)
		testkit.Eventually(t, 2*time.Second, func() bool { return acks.count(m.MsgID) == 1 }, "%s not acknowledged at the next Recv (err %v)", m.MsgID, err)
		if err == nil {
			m = next
			continue
		}
		cancels++
		m = recv(t, c)
	}
	if cancels == 0 {
		t.Fatal("no Recv with a cancelled context ended with its error")
	}
	ctx, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	_ = c.Logout(ctx)
	testkit.Eventually(t, 2*time.Second, func() bool { return acks.count(m.MsgID) == 1 }, "the last message not acknowledged at Logout")
}

// redeliveringGate is a fake gate that delivers one stored message, r1
// (seq 1), to a ManualAck client, and again each time the test sends on
// again (the server's redelivery); acks logs what the client
// acknowledged.
func redeliveringGate(t *testing.T) (c *client.Client, acks *ackLog, again chan<- struct{}) {
	t.Helper()
	acks = newAckLog()
	ch := make(chan struct{}, 2)
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		go func() { // the server's redeliveries, when the test says
			for range ch {
				if c.WriteMessage(messages.CmdS2C, 0, 1, &devicepb.S2C{MsgId: "r1"}) != nil {
					return
				}
			}
		}()
		if c.WriteMessage(messages.CmdS2C, 0, 1, &devicepb.S2C{MsgId: "r1"}) != nil {
			return
		}
		readAcks(c, acks, nil)
	})
	t.Cleanup(func() { close(ch) }) // before the gate's cleanup waits for its script
	return dialFake(t, g, func(cfg *client.Config) { cfg.ManualAck = true }), acks, ch
}
