package client_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/client"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// answeringGate is a fake gate that answers every C2S and C2C OK.
func answeringGate(t *testing.T) *fakeGate {
	t.Helper()
	return startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		for {
			f, err := c.ReadFrame()
			if err != nil {
				return
			}
			switch m := f.Msg.(type) {
			case *devicepb.C2S:
				err = c.WriteMessage(messages.CmdC2SAck, f.MsgType, f.Seq, &devicepb.C2SAck{Code: devicepb.Code_OK, MsgId: "s-" + m.ClientMsgId, ClientMsgId: m.ClientMsgId})
			case *devicepb.C2C:
				err = c.WriteMessage(messages.CmdC2CAck, f.MsgType, f.Seq, &devicepb.C2CAck{Code: devicepb.Code_OK, MsgId: "c-" + m.ClientMsgId, ClientMsgId: m.ClientMsgId})
			}
			if err != nil {
				return
			}
		}
	})
}

// TestSendNotUTF8IsRefusedBeforeItIsQueued: protobuf does not encode a
// string field that is not valid UTF-8 (proto.Size counts it all the
// same). Such a send is refused at the call, with ErrNotUTF8 and the
// field's name, and never reaches the connection; it used to be queued,
// fail in the writer, and be taken for a broken link.
func TestSendNotUTF8IsRefusedBeforeItIsQueued(t *testing.T) {
	g := answeringGate(t)
	var sent atomic.Int32
	c := dialFake(t, g, func(cfg *client.Config) {
		cfg.OnFrame = func(out bool, h messages.Header, _ proto.Message) {
			if out && (h.Cmd == messages.CmdC2S || h.Cmd == messages.CmdC2C) {
				sent.Add(1)
			}
		}
	})
	for _, tc := range []struct {
		name, field string
		send        func(context.Context) error
	}{
		{"C2S client message id", "client message id", func(ctx context.Context) error {
			_, err := c.SendC2S(ctx, 1, []byte("x"), client.WithClientMsgID("id-\xff"))
			return err
		}},
		{"C2C client message id", "client message id", func(ctx context.Context) error {
			_, err := c.SendC2C(ctx, "bob", 1, []byte("x"), client.WithClientMsgID("id-\xff"))
			return err
		}},
		{"C2C receiver", "toUID", func(ctx context.Context) error {
			_, err := c.SendC2C(ctx, "bo\xffb", 1, []byte("x"))
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			err := tc.send(ctx)
			if !errors.Is(err, client.ErrNotUTF8) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("send: %v, want ErrNotUTF8 naming the %s", err, tc.field)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.SendC2S(ctx, 1, []byte("x"), client.WithClientMsgID("fine")); err != nil {
		t.Fatalf("a valid send after the refused ones: %v", err)
	}
	if n, logins := sent.Load(), g.logins.Load(); n != 1 || logins != 1 {
		t.Fatalf("%d sends written over %d logins, want the valid one on the first", n, logins)
	}
}

// TestUnencodableSendFailsAloneNotTheSession: a send whose body does not
// encode after all (past the API's checks) fails on its own, at once, and
// the session goes on: the writer used to take the encode error for a
// broken link and reconnect in a loop, the send at the head of the outbox
// every time and every later one stuck behind it.
func TestUnencodableSendFailsAloneNotTheSession(t *testing.T) {
	g := answeringGate(t)
	c := dialFake(t, g, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := c.SendC2SUnchecked(ctx, 1, "id-\xff", []byte("x"))
	if err == nil || ctx.Err() != nil {
		t.Fatalf("the send that does not encode: %v (context: %v), want its own error at once", err, ctx.Err())
	}
	if _, err := c.SendC2S(ctx, 1, []byte("x")); err != nil {
		t.Fatalf("the next send: %v", err)
	}
	if n := g.logins.Load(); n != 1 {
		t.Fatalf("%d logins: the encode error was taken for a broken connection", n)
	}
}

// TestSendAboveANewGatesLimitFailsAlone: a send in flight when the
// connection drops is sent again on the next session; if that session's
// gate announces a smaller frame limit than the send's body, the send
// fails with ErrTooLarge and is not written (the gate would close the
// connection on it, and every session after it the same way).
func TestSendAboveANewGatesLimitFailsAlone(t *testing.T) {
	cut := make(chan struct{})
	var written atomic.Int32
	var g *fakeGate
	g = startFakeGate(t, 30, func(n int32, c *client.Conn) {
		if n == 1 {
			for { // takes the C2S, never answers it
				f, err := c.ReadFrame()
				if err != nil {
					return
				}
				if f.Cmd == messages.CmdC2S {
					g.frameLimit.Store(8192) // the next gate's
					<-cut
					return
				}
			}
		}
		for {
			f, err := c.ReadFrame()
			if err != nil {
				return
			}
			if f.Cmd == messages.CmdC2S {
				written.Add(1)
			}
		}
	})
	c := dialFake(t, g, nil)
	res := make(chan error, 1)
	go func() {
		_, err := c.SendC2S(context.Background(), 1, make([]byte, 10<<10))
		res <- err
	}()
	testkit.Eventually(t, 5*time.Second, func() bool { return g.frameLimit.Load() != 0 }, "the C2S never reached the first gate")
	close(cut)
	select {
	case err := <-res:
		if !errors.Is(err, client.ErrTooLarge) || !strings.Contains(err.Error(), "the gate's limit 8192") {
			t.Fatalf("the send resent to a gate of 8 KiB: %v, want ErrTooLarge", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the send neither failed nor was answered")
	}
	if n := written.Load(); n != 0 {
		t.Fatalf("the C2S above the second gate's limit was written to it (%d times)", n)
	}
	if g.logins.Load() != 2 || c.State() != client.StateConnected {
		t.Fatalf("logins %d, state %v: the session on the second gate should go on", g.logins.Load(), c.State())
	}
}

// TestSendTheGateClosesOnFailsAlone: a gate that does not announce its
// frame limit (an older server) answers a body above it ERROR
// FRAME_TOO_LARGE from the header and resets the connection, so the
// client's write of the large body fails. The send fails with that error;
// it does not go first again on every session after (the client used to
// reconnect for ever, every send behind it held up).
func TestSendTheGateClosesOnFailsAlone(t *testing.T) {
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		for {
			var hdr [messages.HeaderSize]byte
			if _, err := io.ReadFull(c.NetConn(), hdr[:]); err != nil {
				return
			}
			h, err := messages.ParseHeader(hdr[:], 8192)
			if errors.Is(err, messages.ErrFrameTooLarge) {
				_ = c.WriteMessage(messages.CmdError, 0, h.Seq, &devicepb.Error{Code: devicepb.Code_FRAME_TOO_LARGE, Reason: "over 8192"})
				_ = c.NetConn().(*net.TCPConn).SetLinger(0)
				return // a reset: the client's write of the body fails
			}
			if err != nil || h.Length > 0 && func() error { _, err := io.CopyN(io.Discard, c.NetConn(), int64(h.Length)); return err }() != nil {
				return
			}
		}
	})
	c := dialFake(t, g, func(cfg *client.Config) { cfg.MaxFrameSize = 1 << 20 })
	body := make([]byte, 512<<10)
	_, _ = rand.Read(body) // incompressible (compression is off anyway)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.SendC2S(ctx, 1, body)
	var re *client.ResultError
	if !errors.As(err, &re) || re.Code != devicepb.Code_FRAME_TOO_LARGE {
		t.Fatalf("a send above the gate's unannounced limit: %v, want FRAME_TOO_LARGE", err)
	}
	if n := g.logins.Load(); n > 2 {
		t.Fatalf("%d logins: the send was written again after the refusal", n)
	}
}

// TestC2CSendsArePacedUnderTheGatesC2CRate: the gate answers C2C beyond
// its C2C rate RATE_LIMITED, unstored; the client paces its C2C sends
// under Config.C2CRate instead (an outbox flushed after a reconnect
// would otherwise see most of its messages refused).
func TestC2CSendsArePacedUnderTheGatesC2CRate(t *testing.T) {
	g := answeringGate(t)
	var mu sync.Mutex
	var at []time.Time
	c := dialFake(t, g, func(cfg *client.Config) {
		cfg.C2CRate, cfg.C2CBurst = 10, 3
		cfg.OnFrame = func(out bool, h messages.Header, _ proto.Message) {
			if out && h.Cmd == messages.CmdC2C {
				mu.Lock()
				at = append(at, time.Now())
				mu.Unlock()
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.SendC2C(ctx, "bob", 1, []byte("x"), client.WithClientMsgID(fmt.Sprint("m", i))); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(at) != 6 {
		t.Fatalf("%d C2C written, want 6", len(at))
	}
	// 3 at once, then 10 a second: the sixth at least 0.3 s after the
	// start (0.25 s allows for the limiter's rounding).
	if d := at[5].Sub(start); d < 250*time.Millisecond {
		t.Fatalf("the sixth C2C went %v after the start: not paced at 10 a second after a burst of 3", d)
	}
}

// TestC2CWaitingForItsRateDoesNotHoldOtherSends: C2C sends past the C2C
// rate wait their turn, in order, but a C2S (or a pull) sent after them
// goes at once: the gate keeps no order between them, and a reconnect's
// outbox of chat messages would otherwise hold a GPS report for minutes.
func TestC2CWaitingForItsRateDoesNotHoldOtherSends(t *testing.T) {
	g := answeringGate(t)
	c := dialFake(t, g, func(cfg *client.Config) { cfg.C2CRate, cfg.C2CBurst = 0.2, 1 }) // one every 5 s
	bg, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.SendC2C(bg, "bob", 1, []byte("x"), client.WithClientMsgID(fmt.Sprint("c", i))); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, client.ErrClosed) {
				t.Error(err)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond) // the three are queued, two waiting
	ctx, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	if _, err := c.SendC2S(ctx, 1, []byte("gps")); err != nil {
		t.Fatalf("a C2S behind C2C waiting for their rate: %v", err)
	}
	cancel() // the C2C still waiting are given up
	wg.Wait()
}

// TestC2CRefusedForTheRateIsSentAgain: a C2C the gate answers
// RATE_LIMITED (the identity's C2C rate, spent by another client of it)
// was not stored; the client sends it again once its pacing lets a C2C
// go, and the caller gets the answer of the try that was stored.
func TestC2CRefusedForTheRateIsSentAgain(t *testing.T) {
	var tries atomic.Int32
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		for {
			f, err := c.ReadFrame()
			if err != nil {
				return
			}
			m, ok := f.Msg.(*devicepb.C2C)
			if !ok {
				continue
			}
			a := &devicepb.C2CAck{Code: devicepb.Code_OK, MsgId: "stored", ClientMsgId: m.ClientMsgId}
			if tries.Add(1) == 1 {
				a = &devicepb.C2CAck{Code: devicepb.Code_RATE_LIMITED, ClientMsgId: m.ClientMsgId, Reason: "over the identity's C2C rate"}
			}
			if c.WriteMessage(messages.CmdC2CAck, 0, f.Seq, a) != nil {
				return
			}
		}
	})
	c := dialFake(t, g, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := c.SendC2C(ctx, "bob", 1, []byte("x"))
	if err != nil || res.MsgID != "stored" || tries.Load() != 2 {
		t.Fatalf("a C2C refused for the rate once: %+v %v after %d tries, want stored at the second", res, err, tries.Load())
	}
}
