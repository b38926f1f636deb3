package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
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

// These tests run the client against a scripted gate on real TCP: the
// orderings they need (a push racing a PULL_ACK, a KICKOUT behind a full
// receive buffer, a reconnect with a full outbox) are ones a real node
// gives only by chance.

// fakeGate answers each connection's LOGIN with LOGIN_ACK OK (heartbeat
// as given), then runs script with the connection's number (from 1).
type fakeGate struct {
	ln     net.Listener
	logins atomic.Int32
	wg     sync.WaitGroup
	// frameLimit is the max_frame_size its LOGIN_ACKs announce (0: none).
	frameLimit atomic.Uint32
}

func startFakeGate(t *testing.T, heartbeat uint32, script func(n int32, c *client.Conn)) *fakeGate {
	t.Helper()
	return startFakeGateAt(t, heartbeat, 0, script)
}

// startFakeGateAt is startFakeGate whose LOGIN_ACKs say last_seq.
func startFakeGateAt(t *testing.T, heartbeat, lastSeq uint32, script func(n int32, c *client.Conn)) *fakeGate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGate{ln: ln}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				defer nc.Close()
				c := client.NewConn(nc, client.ConnConfig{AppCode: 1})
				f, err := c.ReadFrame()
				if err != nil || f.Cmd != messages.CmdLogin {
					return
				}
				n := g.logins.Add(1)
				if c.WriteMessage(messages.CmdLoginAck, 0, f.Seq, &devicepb.LoginAck{Code: devicepb.Code_OK,
					Epoch: uint64(n), HeartbeatSeconds: heartbeat, ServerTimeMs: time.Now().UnixMilli(), LastSeq: lastSeq,
					MaxFrameSize: g.frameLimit.Load()}) != nil {
					return
				}
				script(n, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); g.wg.Wait() })
	return g
}

func (g *fakeGate) addr() string { return g.ln.Addr().String() }

func dialFake(t *testing.T, g *fakeGate, mut func(*client.Config)) *client.Client {
	t.Helper()
	cfg := client.Config{Addr: g.addr(), AppCode: 1, UID: "fay", Token: "t", NoCompression: true,
		BackoffInitial: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond}
	if mut != nil {
		mut(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("dial the fake gate: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestPulledNotAlsoReceived: the server pushes what a PULL returns until
// it is acked (docs/protocol.md §9.6). A page answered while its messages
// are pushed right behind it must reach the app once: from Pull, not from
// Recv as well.
func TestPulledNotAlsoReceived(t *testing.T) {
	const rounds, page = 100, 20
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		round := 0
		for {
			f, err := c.ReadFrame()
			if err != nil {
				return
			}
			if f.Cmd != messages.CmdPull {
				continue
			}
			var b []byte
			ack := &devicepb.PullAck{Code: devicepb.Code_OK}
			for i := range page {
				id := fmt.Sprintf("m%d-%d", round, i)
				seq := uint32(round*page + i + 1)
				ack.Messages = append(ack.Messages, &devicepb.StoredMessage{MsgId: id, Seq: seq, Kind: devicepb.Kind_KIND_S2C})
			}
			b, _ = messages.AppendMessage(b, messages.Header{Cmd: messages.CmdPullAck, AppCode: 1, Seq: f.Seq}, ack)
			for _, m := range ack.Messages {
				b, _ = messages.AppendMessage(b, messages.Header{Cmd: messages.CmdS2C, AppCode: 1, Seq: m.Seq},
					&devicepb.S2C{MsgId: m.MsgId})
			}
			if c.WriteRaw(b) != nil {
				return
			}
			round++
		}
	})
	c := dialFake(t, g, nil)
	got := make(chan *client.Message, rounds*page)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			m, err := c.Recv(ctx)
			if err != nil {
				return
			}
			got <- m
		}
	}()
	for round := range rounds {
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		r, err := c.Pull(pctx, uint32(round*page), page)
		pcancel()
		if err != nil || len(r.Messages) != page {
			t.Fatalf("pull %d: %d messages, %v", round, len(r.Messages), err)
		}
	}
	time.Sleep(200 * time.Millisecond) // let pushes still queued reach Recv
	if n := len(got); n != 0 {
		m := <-got
		t.Fatalf("%d pulled messages were also returned by Recv (the first: %s)", n, m.MsgID)
	}
}

// TestKickoutReadAfterAFailedWrite: the gate sends KICKOUT
// LOGGED_IN_ELSEWHERE and closes while the app is behind (the client has
// stopped reading). The client's next writes (its KEEPALIVEs) fail; it
// must still find the KICKOUT and stop, not log in again and kick the
// user's other device (docs/protocol.md §7).
func TestKickoutReadAfterAFailedWrite(t *testing.T) {
	g := startFakeGate(t, 1, func(n int32, c *client.Conn) {
		if n > 1 {
			_ = c.WriteMessage(messages.CmdKickout, 0, 0, &devicepb.Kickout{Reason: devicepb.KickReason_LOGGED_IN_ELSEWHERE})
			return
		}
		var b []byte
		for i := range 300 {
			b, _ = messages.AppendMessage(b, messages.Header{Cmd: messages.CmdS2C, AppCode: 1, Seq: uint32(i + 1)},
				&devicepb.S2C{MsgId: fmt.Sprint("k", i)})
		}
		b, _ = messages.AppendMessage(b, messages.Header{Cmd: messages.CmdKickout, AppCode: 1},
			&devicepb.Kickout{Reason: devicepb.KickReason_LOGGED_IN_ELSEWHERE, Detail: "another device"})
		_ = c.WriteRaw(b)
		// Closed with the client's KEEPALIVEs unread: they draw a reset.
	})
	c := dialFake(t, g, func(cfg *client.Config) { cfg.RecvBuffer = 256 })
	select {
	case <-c.Done():
	case <-time.After(8 * time.Second):
		t.Fatalf("the client did not stop after the KICKOUT (logins: %d)", g.logins.Load())
	}
	var k *client.KickedError
	if err := c.Err(); !errors.As(err, &k) || k.Reason != devicepb.KickReason_LOGGED_IN_ELSEWHERE {
		t.Fatalf("stopped with %v, want the KICKOUT", err)
	}
	if n := g.logins.Load(); n != 1 {
		t.Fatalf("%d logins: the client logged in again after LOGGED_IN_ELSEWHERE", n)
	}
}

// TestReconnectWithAFullOutboxIsPaced: sends made while disconnected go
// out on the next connection no faster than the pacing lets them (the
// gate closes a connection that bursts past its frame limit before they
// are answered, and would again at every reconnect), and all of them are
// answered on that one connection.
func TestReconnectWithAFullOutboxIsPaced(t *testing.T) {
	const sends, burst, rate = 300, 50, 500.0
	type arrival struct {
		at  time.Time
		cmd messages.Cmd
	}
	var mu sync.Mutex
	var arrivals []arrival
	var second time.Time
	g := startFakeGate(t, 30, func(n int32, c *client.Conn) {
		if n == 1 {
			// The first connection ends at once: the sends wait for the next.
			time.Sleep(300 * time.Millisecond)
			return
		}
		mu.Lock()
		second = time.Now()
		mu.Unlock()
		for {
			f, err := c.ReadFrame()
			if err != nil {
				return
			}
			mu.Lock()
			arrivals = append(arrivals, arrival{time.Now(), f.Cmd})
			mu.Unlock()
			if m, ok := f.Msg.(*devicepb.C2S); ok {
				if c.WriteMessage(messages.CmdC2SAck, f.MsgType, f.Seq, &devicepb.C2SAck{Code: devicepb.Code_OK,
					MsgId: "s-" + m.ClientMsgId, ClientMsgId: m.ClientMsgId}) != nil {
					return
				}
			}
		}
	})
	c := dialFake(t, g, func(cfg *client.Config) {
		cfg.FrameRate, cfg.FrameBurst = rate, burst
		cfg.BackoffInitial, cfg.BackoffMax = 500*time.Millisecond, 500*time.Millisecond
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make(chan error, sends)
	time.Sleep(50 * time.Millisecond)
	for i := range sends {
		go func() {
			_, err := c.SendC2S(ctx, 3, []byte("gps"), client.WithClientMsgID(fmt.Sprint("o", i)))
			errs <- err
		}()
	}
	for range sends {
		if err := <-errs; err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if n := g.logins.Load(); n != 2 {
		t.Fatalf("%d logins, want 2: the sends were not all answered on the second connection", n)
	}
	// Tokens at any arrival: burst + rate × time since the connection
	// started (with slack for scheduling).
	c2s := 0
	for _, a := range arrivals {
		if a.cmd != messages.CmdC2S {
			continue
		}
		c2s++
		allowed := burst + rate*a.at.Sub(second).Seconds() + 10
		if float64(c2s) > allowed {
			t.Fatalf("C2S %d arrived %v after the login: more than the pacing allows (%.0f)", c2s, a.at.Sub(second), allowed)
		}
	}
	if c2s < sends {
		t.Fatalf("%d C2S frames arrived, want at least %d", c2s, sends)
	}
}

// TestBadLoginFieldIsPermanent: a refusal that retrying cannot fix ends
// Dial at once (docs/protocol.md §14), and a static token over the gate's
// limit is refused before anything is sent.
func TestBadLoginFieldIsPermanent(t *testing.T) {
	var logins atomic.Int32
	addr := loginServer(t, func(_ int32, f client.Frame, c *client.Conn) bool {
		if f.Cmd == messages.CmdLogin {
			logins.Add(1)
			_ = c.WriteMessage(messages.CmdLoginAck, 0, f.Seq, &devicepb.LoginAck{Code: devicepb.Code_BAD_LOGIN_FIELD, Reason: "token too long"})
		}
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := client.Dial(ctx, client.Config{Addr: addr, AppCode: 1, UID: "bo",
		TokenSource: func(context.Context) (string, error) { return "t", nil }, BackoffInitial: 10 * time.Millisecond})
	var le *client.LoginError
	if !errors.As(err, &le) || le.Code != devicepb.Code_BAD_LOGIN_FIELD || logins.Load() != 1 {
		t.Fatalf("Dial: %v after %d logins in %v, want BAD_LOGIN_FIELD after one", err, logins.Load(), time.Since(start))
	}
	_, err = client.Dial(ctx, client.Config{Addr: addr, AppCode: 1, UID: "bo", Token: string(make([]byte, client.MaxTokenLen+1))})
	if err == nil || logins.Load() != 1 {
		t.Fatalf("Dial with a %d-byte token: %v (logins %d)", client.MaxTokenLen+1, err, logins.Load())
	}
}

// TestResendRightAfterGivingUp: a send whose caller gave up may be made
// again with the same client message id at once (SendC2C's doc), and in
// the default mode Ack sends nothing more: Recv acknowledged already.
func TestResendRightAfterGivingUp(t *testing.T) {
	var acks, c2s atomic.Int32
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		_ = c.WriteMessage(messages.CmdS2C, 0, 1, &devicepb.S2C{MsgId: "p1"})
		for {
			f, err := c.ReadFrame()
			if err != nil {
				return
			}
			switch m := f.Msg.(type) {
			case *devicepb.S2CAck:
				acks.Add(1)
			case *devicepb.C2S:
				if c2s.Add(1) == 1 {
					continue // the first is not answered
				}
				_ = c.WriteMessage(messages.CmdC2SAck, f.MsgType, f.Seq, &devicepb.C2SAck{Code: devicepb.Code_OK, MsgId: "s1", ClientMsgId: m.ClientMsgId})
			}
		}
	})
	c := dialFake(t, g, nil)
	m := recv(t, c)
	if err := c.Ack(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err := c.SendC2S(ctx, 3, []byte("x"), client.WithClientMsgID("same"))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the unanswered send: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if r, err := c.SendC2S(ctx, 3, []byte("x"), client.WithClientMsgID("same")); err != nil || r.MsgID != "s1" {
		t.Fatalf("the same id again at once: %+v, %v", r, err)
	}
	if n := acks.Load(); n != 1 {
		t.Fatalf("%d S2C_ACKs for one message received and Acked in the default mode, want 1", n)
	}
}

// TestAnswersGetThroughAFullQueue: with RecvBuffer messages waiting for
// Recv, the client still reads its connection: an app that takes one
// message and then waits for a send's answer gets it (docs/protocol.md
// §16: never block reading while waiting for an answer). Past the buffer,
// stored messages are left unacknowledged (the server delivers them
// again) and fire-and-forget pushes are dropped and counted.
func TestAnswersGetThroughAFullQueue(t *testing.T) {
	const stored, fireAndForget, buffer = 300, 50, 256
	var mu sync.Mutex
	acked := map[string]bool{}
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		var b []byte
		for i := range stored {
			b, _ = messages.AppendMessage(b, messages.Header{Cmd: messages.CmdS2C, AppCode: 1, Seq: uint32(i + 1)},
				&devicepb.S2C{MsgId: fmt.Sprint("s", i)})
		}
		for i := range fireAndForget {
			b, _ = messages.AppendMessage(b, messages.Header{Cmd: messages.CmdS2C, AppCode: 1},
				&devicepb.S2C{MsgId: fmt.Sprint("f", i)})
		}
		if c.WriteRaw(b) != nil {
			return
		}
		for {
			f, err := c.ReadFrame()
			if err != nil {
				return
			}
			switch m := f.Msg.(type) {
			case *devicepb.S2CAck:
				mu.Lock()
				acked[m.MsgId] = true
				mu.Unlock()
			case *devicepb.C2S:
				_ = c.WriteMessage(messages.CmdC2SAck, f.MsgType, f.Seq, &devicepb.C2SAck{Code: devicepb.Code_OK, MsgId: "up-1", ClientMsgId: m.ClientMsgId})
			}
		}
	})
	c := dialFake(t, g, func(cfg *client.Config) { cfg.RecvBuffer = buffer })
	testkit.Eventually(t, 5*time.Second, func() bool { return c.DroppedPushes() == fireAndForget },
		"the fire-and-forget pushes past the buffer were not counted as dropped")
	if m := recv(t, c); m.MsgID != "s0" {
		t.Fatalf("first message %s", m.MsgID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if r, err := c.SendC2S(ctx, 3, []byte("receipt")); err != nil || r.MsgID != "up-1" {
		t.Fatalf("a send with the queue full: %+v, %v", r, err)
	}
	for i := 1; i < buffer; i++ {
		if m := recv(t, c); m.MsgID != fmt.Sprint("s", i) {
			t.Fatalf("message %d: %s", i, m.MsgID)
		}
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer rcancel()
	if m, err := c.Recv(rctx); err == nil {
		t.Fatalf("a message past the buffer was queued: %s", m.MsgID)
	}
	testkit.Eventually(t, 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) == buffer
	}, "the messages taken were not all acknowledged")
	mu.Lock()
	defer mu.Unlock()
	for i := buffer; i < stored; i++ {
		if acked[fmt.Sprint("s", i)] {
			t.Fatalf("s%d, past the buffer, was acknowledged: the server would not deliver it again", i)
		}
	}
}

// TestResumePullsFitTheQueue: the client's own resume PULLs (after a
// login whose last_seq is ahead) ask for no more messages than its
// queue has room for, and the next page waits until the app took a
// quarter of it.
func TestResumePullsFitTheQueue(t *testing.T) {
	const buffer, stored = 150, 1000
	limits := make(chan uint32, 64)
	g := startFakeGateAt(t, 30, stored, func(_ int32, c *client.Conn) {
		for {
			f, err := c.ReadFrame()
			if err != nil {
				return
			}
			p, ok := f.Msg.(*devicepb.Pull)
			if !ok {
				continue
			}
			limits <- p.GetLimit()
			n := p.GetLimit()
			if p.Limit == nil || n > 100 {
				n = 100
			}
			ack := &devicepb.PullAck{Code: devicepb.Code_OK, HasMore: p.AfterSeq+n < stored}
			for seq := p.AfterSeq + 1; seq <= p.AfterSeq+n && seq <= stored; seq++ {
				ack.Messages = append(ack.Messages, &devicepb.StoredMessage{MsgId: fmt.Sprint("m", seq), Seq: seq, Kind: devicepb.Kind_KIND_S2C})
			}
			if c.WriteMessage(messages.CmdPullAck, 0, f.Seq, ack) != nil {
				return
			}
		}
	})
	c := dialFake(t, g, func(cfg *client.Config) { cfg.RecvBuffer = buffer })
	next := func() uint32 {
		t.Helper()
		select {
		case l := <-limits:
			return l
		case <-time.After(5 * time.Second):
			t.Fatal("no resume PULL")
			return 0
		}
	}
	if l := next(); l != 100 {
		t.Fatalf("first resume PULL asks for %d, want 100", l)
	}
	if l := next(); l != buffer-100 {
		t.Fatalf("second resume PULL asks for %d, want the %d the queue has room for", l, buffer-100)
	}
	select {
	case l := <-limits:
		t.Fatalf("a resume PULL for %d with the queue full", l)
	case <-time.After(300 * time.Millisecond):
	}
	for i := 1; i <= 10; i++ {
		if m := recv(t, c); m.Seq != uint32(i) {
			t.Fatalf("message %d has seq %d", i, m.Seq)
		}
	}
	select {
	case l := <-limits:
		t.Fatalf("a resume PULL for %d after the app took 10 of %d: one per message taken", l, buffer)
	case <-time.After(300 * time.Millisecond):
	}
	for i := 11; i <= 40; i++ {
		if m := recv(t, c); m.Seq != uint32(i) {
			t.Fatalf("message %d has seq %d", i, m.Seq)
		}
	}
	if l := next(); l < buffer/4 || l > 40 {
		t.Fatalf("after the app took 40, a resume PULL asks for %d", l)
	}
}

// TestStoredMessagesGetPastAFireAndForgetStream: fire-and-forget pushes
// fill at most three quarters of the receive queue; stored messages that
// come behind a stream of them still get in.
func TestStoredMessagesGetPastAFireAndForgetStream(t *testing.T) {
	const buffer, ff, stored = 256, 300, 10
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		var b []byte
		for i := range ff {
			b, _ = messages.AppendMessage(b, messages.Header{Cmd: messages.CmdS2C, AppCode: 1}, &devicepb.S2C{MsgId: fmt.Sprint("f", i)})
		}
		for i := range stored {
			b, _ = messages.AppendMessage(b, messages.Header{Cmd: messages.CmdS2C, AppCode: 1, Seq: uint32(i + 1)}, &devicepb.S2C{MsgId: fmt.Sprint("s", i)})
		}
		if c.WriteRaw(b) != nil {
			return
		}
		for {
			if _, err := c.ReadFrame(); err != nil {
				return
			}
		}
	})
	c := dialFake(t, g, func(cfg *client.Config) { cfg.RecvBuffer = buffer })
	kept := buffer - buffer/4
	testkit.Eventually(t, 5*time.Second, func() bool { return c.DroppedPushes() == ff-uint64(kept) },
		"the fire-and-forget pushes past three quarters of the queue were not dropped")
	for i := range kept + stored {
		m := recv(t, c)
		if want := i >= kept; (m.Seq != 0) != want {
			t.Fatalf("message %d: %s (seq %d)", i, m.MsgID, m.Seq)
		}
	}
}

// TestAcksOfAnEarlierConnectionArePaced: the gate lets through beyond its
// frame rate only the acks of what it delivered on the same connection.
// An app acknowledging (ManualAck) after a reconnect what it received
// before sends those acks within the client's frame pacing, not in one
// burst past the gate's limit.
func TestAcksOfAnEarlierConnectionArePaced(t *testing.T) {
	const n, burst, rate = 300, 50, 100.0
	closeFirst := make(chan struct{})
	var closeOnce sync.Once
	release := func() { closeOnce.Do(func() { close(closeFirst) }) }
	var mu sync.Mutex
	var acks []time.Time
	acked := map[string]bool{}
	var second time.Time
	g := startFakeGate(t, 30, func(conn int32, c *client.Conn) {
		if conn == 1 {
			var b []byte
			for i := range n {
				b, _ = messages.AppendMessage(b, messages.Header{Cmd: messages.CmdS2C, AppCode: 1, Seq: uint32(i + 1)}, &devicepb.S2C{MsgId: fmt.Sprint("m", i)})
			}
			if c.WriteRaw(b) != nil {
				return
			}
			<-closeFirst
			return
		}
		mu.Lock()
		second = time.Now()
		mu.Unlock()
		// What is still unacknowledged comes again after a while (the
		// server's redelivery): its acks then go at once.
		go func() {
			time.Sleep(time.Second)
			var b []byte
			mu.Lock()
			for i := range n {
				if !acked[fmt.Sprint("m", i)] {
					b, _ = messages.AppendMessage(b, messages.Header{Cmd: messages.CmdS2C, AppCode: 1, Seq: uint32(i + 1)}, &devicepb.S2C{MsgId: fmt.Sprint("m", i)})
				}
			}
			mu.Unlock()
			_ = c.WriteRaw(b)
		}()
		for {
			f, err := c.ReadFrame()
			if err != nil {
				return
			}
			if m, ok := f.Msg.(*devicepb.S2CAck); ok {
				mu.Lock()
				if !acked[m.MsgId] {
					acked[m.MsgId] = true
					acks = append(acks, time.Now())
				}
				mu.Unlock()
			}
		}
	})
	t.Cleanup(release) // runs before the gate's cleanup, which waits for its script
	c := dialFake(t, g, func(cfg *client.Config) {
		cfg.ManualAck, cfg.FrameRate, cfg.FrameBurst, cfg.RecvBuffer = true, rate, burst, 2*n
	})
	var got []*client.Message
	for range n {
		got = append(got, recv(t, c))
	}
	release()
	testkit.Eventually(t, 10*time.Second, func() bool { return g.logins.Load() == 2 && c.State() == client.StateConnected },
		"no second connection")
	for _, m := range got {
		if err := c.Ack(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	// Every message is acknowledged in the end: within the pacing, or
	// when it comes again.
	testkit.Eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) == n
	}, "not every message was acknowledged")
	mu.Lock()
	defer mu.Unlock()
	// Before the redelivery, tokens at any arrival: burst + rate × time
	// since the connection started (with slack for scheduling).
	for i, at := range acks {
		if at.Sub(second) >= time.Second {
			break
		}
		if allowed := burst + rate*at.Sub(second).Seconds() + 10; float64(i+1) > allowed {
			t.Fatalf("ack %d arrived %v after the login: more than the pacing allows (%.0f)", i+1, at.Sub(second), allowed)
		}
	}
}

// TestTokenExpiredAgainIsRetried: a token source that hands out an
// expired token twice in a row (a refresh under way, a clock behind) is
// asked again after a backoff, and an AUTH_FAILED after that still gets
// its own retry with a fresh token: only AUTH_FAILED twice stops the
// client. It used to stop after the second TOKEN_EXPIRED.
func TestTokenExpiredAgainIsRetried(t *testing.T) {
	var logins atomic.Int32
	addr := loginServer(t, func(_ int32, f client.Frame, c *client.Conn) bool {
		if f.Cmd != messages.CmdLogin {
			return false
		}
		code := devicepb.Code_TOKEN_EXPIRED
		switch n := logins.Add(1); {
		case n == 3:
			code = devicepb.Code_AUTH_FAILED // its own fresh-token retry
		case n > 3 && f.Msg.(*devicepb.Login).Token == "fresh":
			code = devicepb.Code_OK
		}
		_ = c.WriteMessage(messages.CmdLoginAck, 0, f.Seq, &devicepb.LoginAck{Code: code, HeartbeatSeconds: 30, ServerTimeMs: time.Now().UnixMilli()})
		return code == devicepb.Code_OK
	})
	var asked atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, client.Config{Addr: addr, AppCode: 1, UID: "bo", BackoffInitial: 10 * time.Millisecond,
		TokenSource: func(context.Context) (string, error) {
			if asked.Add(1) <= 2 {
				return "stale", nil
			}
			return "fresh", nil
		}})
	if err != nil {
		t.Fatalf("Dial after two expired tokens: %v (%d logins)", err, logins.Load())
	}
	cl.Close()
}

// TestLoginRefusedAsMalformedStops: an ERROR answering the LOGIN that
// says the client sends what the server cannot take (UNSUPPORTED_VERSION,
// BAD_BODY) ends Dial at once: every later LOGIN would get the same. It
// used to reconnect in a loop.
func TestLoginRefusedAsMalformedStops(t *testing.T) {
	var conns atomic.Int32
	addr := loginServer(t, func(n int32, f client.Frame, c *client.Conn) bool {
		conns.Store(n)
		_ = c.WriteMessage(messages.CmdError, 0, f.Seq, &devicepb.Error{Code: devicepb.Code_UNSUPPORTED_VERSION, Reason: "version 2 only"})
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := client.Dial(ctx, client.Config{Addr: addr, AppCode: 1, UID: "bo", Token: "t", BackoffInitial: 10 * time.Millisecond})
	var se *client.ServerError
	if !errors.As(err, &se) || se.Code != devicepb.Code_UNSUPPORTED_VERSION || conns.Load() != 1 {
		t.Fatalf("Dial: %v after %d connections, want UNSUPPORTED_VERSION after one", err, conns.Load())
	}
}

// TestRefusedResumePullIsAskedAgain: a resume PULL answered
// STORE_UNAVAILABLE is sent again a second later (the node's store was
// busy); it used to end the resume for the session.
func TestRefusedResumePullIsAskedAgain(t *testing.T) {
	pulls := make(chan time.Time, 8)
	var n atomic.Int32
	g := startFakeGateAt(t, 30, 300, func(_ int32, c *client.Conn) {
		for {
			f, err := c.ReadFrame()
			if err != nil {
				return
			}
			if _, ok := f.Msg.(*devicepb.Pull); !ok {
				continue
			}
			pulls <- time.Now()
			ack := &devicepb.PullAck{Code: devicepb.Code_STORE_UNAVAILABLE}
			if n.Add(1) > 1 {
				ack = &devicepb.PullAck{Code: devicepb.Code_OK}
			}
			if c.WriteMessage(messages.CmdPullAck, 0, f.Seq, ack) != nil {
				return
			}
		}
	})
	dialFake(t, g, nil)
	var first time.Time
	for i := range 2 {
		select {
		case at := <-pulls:
			if i == 0 {
				first = at
			} else if d := at.Sub(first); d < 500*time.Millisecond {
				t.Fatalf("asked again after %v: want a pause", d)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("resume PULL %d never came", i+1)
		}
	}
}

// TestStalledDiscoveryFallsBackToAddr: a discovery endpoint that takes
// the request and never answers (an HTTPClient without Timeout) is given
// up after DialTimeout, and the client connects through Addr; it used to
// wait for ever.
func TestStalledDiscoveryFallsBackToAddr(t *testing.T) {
	stall := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-stall:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(stall)
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) { _, _ = c.ReadFrame() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Discovery: srv.URL, Addr: g.addr(), AppCode: 1, UID: "di", Token: "t",
		HTTPClient: &http.Client{}, DialTimeout: 300 * time.Millisecond, NoCompression: true})
	if err != nil {
		t.Fatalf("Dial with a stalled discovery and Addr: %v", err)
	}
	c.Close()
}

// loginServer answers each connection's first frame with answer (given
// the connection's number from 1 and the frame), then closes it, unless
// answer returns true: then it keeps reading until the client leaves.
// It returns the address.
func loginServer(t *testing.T, answer func(n int32, f client.Frame, c *client.Conn) (keep bool)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var conns atomic.Int32
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			n := conns.Add(1)
			c := client.NewConn(nc, client.ConnConfig{AppCode: 1})
			f, err := c.ReadFrame()
			if err != nil || !answer(n, f, c) {
				nc.Close()
				continue
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer nc.Close(); _, _ = c.ReadFrame() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// TestOnStateMayCallTheClient: OnState runs on a goroutine of its own,
// so it may call the Client: Close from StateClosed used to wait for the
// client's goroutine, which waited for the callback (hung for good).
func TestOnStateMayCallTheClient(t *testing.T) {
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		for {
			if _, err := c.ReadFrame(); err != nil {
				return
			}
		}
	})
	var cl atomic.Pointer[client.Client]
	fromCallback := make(chan struct{})
	c := dialFake(t, g, func(cfg *client.Config) {
		cfg.OnState = func(s client.State, _ error) {
			if s == client.StateClosed {
				cl.Load().Close()
				close(fromCallback)
			}
		}
	})
	cl.Store(c)
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	for what, ch := range map[string]chan struct{}{"Close": closed, "Close from OnState": fromCallback} {
		select {
		case <-ch:
		case <-time.After(3 * time.Second):
			t.Fatalf("%s hung", what)
		}
	}
}

// TestSilentServerNoticedAfterTwoHeartbeats: a server that answers a
// KEEPALIVE late and then goes silent is taken for gone two heartbeats
// after the last frame from it (docs/protocol.md §8.4), not three (the
// silence was checked only when a KEEPALIVE was due).
func TestSilentServerNoticedAfterTwoHeartbeats(t *testing.T) {
	answered := make(chan time.Time, 1)
	g := startFakeGate(t, 1, func(n int32, c *client.Conn) {
		once := true
		for {
			f, err := c.ReadFrame()
			if err != nil {
				return
			}
			if f.Cmd == messages.CmdKeepalive && n == 1 && once {
				once = false
				time.Sleep(100 * time.Millisecond)
				if c.WriteMessage(messages.CmdKeepaliveAck, 0, f.Seq, nil) != nil {
					return
				}
				answered <- time.Now()
			}
		}
	})
	gone := make(chan time.Time, 1)
	dialFake(t, g, func(cfg *client.Config) {
		connected := false // OnState's calls come one at a time, in order
		cfg.OnState = func(s client.State, _ error) {
			if s == client.StateConnected {
				connected = true
			} else if connected {
				select {
				case gone <- time.Now():
				default:
				}
			}
		}
	})
	var last time.Time
	select {
	case last = <-answered:
	case <-time.After(5 * time.Second):
		t.Fatal("no KEEPALIVE")
	}
	select {
	case at := <-gone:
		if d := at.Sub(last); d < 1900*time.Millisecond || d > 2600*time.Millisecond {
			t.Fatalf("taken for gone %v after the last frame, want two heartbeats (2 s)", d.Round(time.Millisecond))
		}
	case <-time.After(6 * time.Second):
		t.Fatal("a silent server was never taken for gone")
	}
}

// TestFullQueueKeepsSeqOrder: a stored message left out of a full queue
// (the server delivers it again) holds back the later ones until it is
// in: the app gets first deliveries in seq order (PROTOCOL.md), not the
// next one first because one Recv made room.
func TestFullQueueKeepsSeqOrder(t *testing.T) {
	room := make(chan struct{})
	g := startFakeGate(t, 30, func(n int32, c *client.Conn) {
		if n != 1 {
			return
		}
		s2c := func(seq uint32) bool {
			return c.WriteMessage(messages.CmdS2C, 0, seq, &devicepb.S2C{MsgId: fmt.Sprint("m", seq), Payload: []byte("x")}) == nil
		}
		for seq := uint32(1); seq <= 5; seq++ { // 5 finds the queue (4) full
			if !s2c(seq) {
				return
			}
		}
		<-room
		for _, seq := range []uint32{6, 5, 6} { // 6 first; then 5 and 6 delivered again
			if !s2c(seq) {
				return
			}
		}
		for {
			if _, err := c.ReadFrame(); err != nil {
				return
			}
		}
	})
	var s2cs atomic.Int32
	c := dialFake(t, g, func(cfg *client.Config) {
		cfg.RecvBuffer = 4
		cfg.OnFrame = func(out bool, h messages.Header, _ proto.Message) {
			if !out && h.Cmd == messages.CmdS2C {
				s2cs.Add(1)
			}
		}
	})
	recv := func() uint32 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		m, err := c.Recv(ctx)
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		return m.Seq
	}
	// The loop that calls OnFrame also answers Recv: once it saw 5, the
	// first Recv comes after the fifth was left out.
	testkit.Eventually(t, 5*time.Second, func() bool { return s2cs.Load() == 5 }, "the five first deliveries did not come")
	got := []uint32{recv()}
	close(room)
	for range 5 {
		got = append(got, recv())
	}
	if fmt.Sprint(got) != "[1 2 3 4 5 6]" {
		t.Fatalf("the app got seqs %v, want 1 to 6 in order", got)
	}
}

// TestCloseCutsAStalledWriteShort: a server that stops reading fills the
// connection until the client's write blocks; Close returns at once
// instead of waiting out the write's timeout.
func TestCloseCutsAStalledWriteShort(t *testing.T) {
	stop := make(chan struct{})
	g := startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		<-stop // reads nothing more
	})
	t.Cleanup(func() { close(stop) }) // before the gate's cleanup waits for this
	c := dialFake(t, g, func(cfg *client.Config) {
		cfg.FrameRate, cfg.FrameBurst = 1e6, 1e6
		cfg.ByteRate, cfg.ByteBurst = 1<<30, 1<<30
		cfg.WriteTimeout = 20 * time.Second
	})
	payload := make([]byte, 32<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 400 { // ~13 MiB: far past the socket buffers
		go func() { _, _ = c.SendC2S(ctx, 1, payload) }()
	}
	time.Sleep(2 * time.Second) // the writes fill the buffers and block
	start := time.Now()
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Close took %v", d.Round(time.Millisecond))
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Close waited for the stalled write")
	}
}
