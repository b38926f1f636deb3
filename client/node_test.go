package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/courier-im/courier/client"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
	"google.golang.org/protobuf/proto"
)

// These tests run the client against a real node process over real TCP,
// and check at the end that no goroutine of the client outlived it.

func TestMain(m *testing.M) {
	// Goroutines started by package initialisation (gnet's worker pool,
	// imported through testkit) are not the client's.
	goleak.VerifyTestMain(m, goleak.IgnoreCurrent())
}

func dial(t *testing.T, addr string, app uint16, uid string, mut func(*client.Config)) *client.Client {
	t.Helper()
	cfg := client.Config{Addr: addr, AppCode: app, UID: uid, Token: testkit.Token(t, app, uid), DeviceID: "go-" + uid,
		BackoffInitial: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond, ShutdownJitter: 200 * time.Millisecond}
	if mut != nil {
		mut(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("dial %s as %d/%s: %v", addr, app, uid, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func recv(t *testing.T, c *client.Client) *client.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := c.Recv(ctx)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	return m
}

func push(t *testing.T, api apipb.CourierClient, uid string, payload string) *apipb.PushResponse {
	t.Helper()
	r, err := api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: uid, Msgtype: 7, Payload: []byte(payload)})
	if err != nil {
		t.Fatalf("push to %s: %v", uid, err)
	}
	return r
}

func pending(t *testing.T, api apipb.CourierClient, uid string) uint32 {
	t.Helper()
	r, err := api.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{uid}})
	if err != nil {
		t.Fatalf("presence: %v", err)
	}
	return r.Entries[0].Pending
}

func TestLoginReceiveAutoAck(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	api := n.API(t)
	// One message waits before the login, two come live.
	first := push(t, api, "alice", "waiting")
	c := dial(t, n.GateAddr, 1, "alice", nil)
	if c.State() != client.StateConnected || c.Epoch() == 0 {
		t.Fatalf("state %v epoch %d", c.State(), c.Epoch())
	}
	m := recv(t, c)
	if m.Kind != client.KindS2C || m.MsgID != first.MsgId || m.Seq != first.Seq || m.MsgType != 7 || string(m.Payload) != "waiting" {
		t.Fatalf("first message %+v, pushed %v", m, first)
	}
	for i := range 2 {
		r := push(t, api, "alice", fmt.Sprint("live ", i))
		if m := recv(t, c); m.MsgID != r.MsgId || m.Seq != r.Seq || m.ExpiresAt.IsZero() || m.SentAt.IsZero() {
			t.Fatalf("live message %+v, pushed %v", m, r)
		}
	}
	if c.LastSeq() != 3 {
		t.Fatalf("LastSeq %d, want 3", c.LastSeq())
	}
	// The app is handling the last message: it is not acknowledged yet
	// (the one before is, on its way to the node as the third Recv was
	// called: awaited; then the count must stay at 1).
	testkit.Eventually(t, 10*time.Second, func() bool { return pending(t, api, "alice") == 1 }, "pending never 1 while the app handles the last message")
	time.Sleep(300 * time.Millisecond)
	if p := pending(t, api, "alice"); p != 1 {
		t.Fatalf("pending %d while the app handles the last message, want 1", p)
	}
	// A fire-and-forget push arrives with seq 0 and is not counted.
	if _, err := api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: "alice", Payload: []byte("ff"),
		Delivery: apipb.Delivery_DELIVERY_FIRE_AND_FORGET}); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, c); m.Seq != 0 || string(m.Payload) != "ff" || c.LastSeq() != 3 {
		t.Fatalf("fire-and-forget %+v, LastSeq %d", m, c.LastSeq())
	}
	// Every message was acknowledged once the app called Recv after it.
	testkit.Eventually(t, 10*time.Second, func() bool { return pending(t, api, "alice") == 0 }, "alice's inbox not empty")
	if err := c.Logout(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(c.Err(), client.ErrClosed) || c.State() != client.StateClosed {
		t.Fatalf("after logout: %v %v", c.Err(), c.State())
	}
	if _, err := c.Recv(context.Background()); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("recv after logout: %v", err)
	}
}

func TestManualAckAndDuplicates(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	api := n.API(t)
	c := dial(t, n.GateAddr, 1, "bob", func(c *client.Config) { c.ManualAck = true })
	r := push(t, api, "bob", "hold me")
	m := recv(t, c)
	if m.MsgID != r.MsgId || m.Redelivered {
		t.Fatalf("got %+v", m)
	}
	// Unacknowledged, the node redelivers it (after 300 ms, then every
	// second in the testkit's settings): the app gets it again, marked,
	// and every other message once unmarked.
	r2 := push(t, api, "bob", "next")
	var first, again bool
	for !first || !again {
		switch m := recv(t, c); {
		case m.MsgID == r2.MsgId && !m.Redelivered && !first:
			first = true
		case m.Redelivered && (m.MsgID == r.MsgId || m.MsgID == r2.MsgId):
			again = again || m.MsgID == r.MsgId
		default:
			t.Fatalf("a duplicate reached the app unmarked: %+v", m)
		}
	}
	if p := pending(t, api, "bob"); p != 2 {
		t.Fatalf("pending %d before the acks, want 2", p)
	}
	for _, id := range []*client.Message{m} {
		if err := c.Ack(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return pending(t, api, "bob") == 1 }, "first ack not applied")
	// Pull returns the one left, and Ack of it empties the inbox.
	pr, err := c.Pull(context.Background(), 0, 10)
	if err != nil || len(pr.Messages) != 1 || pr.Messages[0].MsgID != r2.MsgId || pr.HasMore {
		t.Fatalf("pull: %+v %v", pr, err)
	}
	if err := c.Ack(context.Background(), pr.Messages[0]); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return pending(t, api, "bob") == 0 }, "second ack not applied")
}

func TestPullPages(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	api := n.API(t)
	for i := range 5 {
		push(t, api, "carol", fmt.Sprint(i))
	}
	c := dial(t, n.GateAddr, 1, "carol", nil)
	pr, err := c.Pull(context.Background(), 0, 2)
	if err != nil || len(pr.Messages) != 2 || !pr.HasMore || pr.Messages[0].Seq != 1 || pr.Messages[1].Seq != 2 {
		t.Fatalf("pull: %+v %v", pr, err)
	}
	// Pulled messages are acknowledged (default mode: at the app's next
	// call) and not returned by Recv; the other three are.
	var got []uint32
	for range 3 {
		got = append(got, recv(t, c).Seq)
	}
	if fmt.Sprint(got) != "[3 4 5]" {
		t.Fatalf("Recv after Pull: seqs %v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if m, err := c.Recv(ctx); err == nil { // acknowledges the last
		t.Fatalf("an extra message: %+v", m)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return pending(t, api, "carol") == 0 }, "inbox not empty")
}

func TestC2CRoundTripCompressed(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	var mu sync.Mutex
	var sentZstd, recvZstd bool
	alice := dial(t, n.GateAddr, 1, "alice", func(c *client.Config) {
		c.OnFrame = func(out bool, h messages.Header, _ proto.Message) {
			if out && h.Cmd == messages.CmdC2C && h.Compressed() {
				mu.Lock()
				sentZstd = true
				mu.Unlock()
			}
		}
	})
	bob := dial(t, n.GateAddr, 1, "bob", func(c *client.Config) {
		c.OnFrame = func(out bool, h messages.Header, _ proto.Message) {
			if !out && h.Cmd == messages.CmdC2CPush && h.Compressed() {
				mu.Lock()
				recvZstd = true
				mu.Unlock()
			}
		}
	})
	big := bytes.Repeat([]byte("driver 42 at 31.2304,121.4737; "), 200) // 6 KB, compressible
	ctx := context.Background()
	res, err := alice.SendC2C(ctx, "bob", 3, big)
	if err != nil || res.MsgID == "" || res.ClientMsgID == "" {
		t.Fatalf("send: %+v %v", res, err)
	}
	m := recv(t, bob)
	if m.Kind != client.KindC2C || m.FromUID != "alice" || m.MsgID != res.MsgID || m.ClientMsgID != res.ClientMsgID ||
		m.MsgType != 3 || !bytes.Equal(m.Payload, big) {
		t.Fatalf("bob got %+v", m)
	}
	// And back, small and uncompressed.
	if _, err := bob.SendC2C(ctx, "alice", 0, []byte("got it")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, alice); string(m.Payload) != "got it" || m.FromUID != "bob" {
		t.Fatalf("alice got %+v", m)
	}
	mu.Lock()
	sent, received := sentZstd, recvZstd
	mu.Unlock()
	if !sent || !received {
		t.Fatalf("compression: sent %v, received %v", sent, received)
	}
	// Resending with the same client message id is answered with the
	// original message and not stored twice.
	again, err := alice.SendC2C(ctx, "bob", 3, big, client.WithClientMsgID(res.ClientMsgID))
	if err != nil || again.MsgID != res.MsgID {
		t.Fatalf("resend: %+v %v (first %s)", again, err, res.MsgID)
	}
	// Refusals are ResultErrors that say whether to retry.
	_, err = alice.SendC2C(ctx, "alice", 0, []byte("to myself"))
	var re *client.ResultError
	if !errors.As(err, &re) || re.Code != devicepb.Code_BAD_RECEIVER || re.Temporary() {
		t.Fatalf("C2C to self: %v", err)
	}
	if _, err := alice.SendC2C(ctx, "bob", 0, make([]byte, 70<<10)); !errors.Is(err, client.ErrTooLarge) {
		t.Fatalf("oversized C2C: %v", err)
	}
}

func TestC2SUpstream(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	c := dial(t, n.GateAddr, 1, "dave", nil)
	ctx := context.Background()
	_, err := c.SendC2S(ctx, 5, []byte(`{"lat":31.2}`))
	var re *client.ResultError
	if !errors.As(err, &re) || re.Code != devicepb.Code_NO_SUBSCRIBER {
		t.Fatalf("C2S without subscriber: %v", err)
	}
	sctx := testkit.Ctx(t, testkit.App1Key)
	st, err := n.API(t).Upstream(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Subscribe{Subscribe: &apipb.Subscribe{AppCode: 1}}}); err != nil {
		t.Fatal(err)
	}
	var res client.C2SResult
	testkit.Eventually(t, 10*time.Second, func() bool {
		res, err = c.SendC2S(ctx, 5, []byte(`{"lat":31.2}`), client.WithClientMsgID("gps-1"))
		return err == nil
	}, "C2S never accepted: %v", err)
	d, err := st.Recv()
	if err != nil || len(d.Messages) != 1 || d.Messages[0].ClientMsgId != "gps-1" || d.Messages[0].MsgId != res.MsgID {
		t.Fatalf("upstream got %v %v, sent %+v", d, err, res)
	}
}

func TestKickedElsewhereDoesNotReconnect(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	c := dial(t, n.GateAddr, 1, "erin", nil)
	d := n.Device(t, 1, "erin") // the same identity on another connection
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the client was not stopped by LOGGED_IN_ELSEWHERE")
	}
	var ke *client.KickedError
	if _, err := c.Recv(context.Background()); !errors.As(err, &ke) || ke.Reason != devicepb.KickReason_LOGGED_IN_ELSEWHERE {
		t.Fatalf("Recv: %v", err)
	}
	// The newer session is left alone.
	d.Keepalive()
	d.Keepalive()
}

func TestKickedByAppServer(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	c := dial(t, n.GateAddr, 1, "frank", nil)
	if _, err := n.API(t).Kick(testkit.Ctx(t, testkit.App1Key), &apipb.KickRequest{AppCode: 1, Uid: "frank", Reason: "signed out"}); err != nil {
		t.Fatal(err)
	}
	<-c.Done()
	var ke *client.KickedError
	if !errors.As(c.Err(), &ke) || ke.Reason != devicepb.KickReason_KICKED_BY_APP_SERVER || ke.Detail != "signed out" {
		t.Fatalf("Err: %v", c.Err())
	}
}

func TestDialRefused(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	_, err := client.Dial(context.Background(), client.Config{Addr: n.GateAddr, AppCode: 1, UID: "gina", Token: testkit.Token(t, 1, "mallory")})
	var le *client.LoginError
	if !errors.As(err, &le) || le.Code != devicepb.Code_AUTH_FAILED {
		t.Fatalf("Dial with another uid's token: %v", err)
	}
	// A token source is asked again once after AUTH_FAILED.
	var asked atomic.Int32
	c, err := client.Dial(context.Background(), client.Config{Addr: n.GateAddr, AppCode: 1, UID: "gina",
		TokenSource: func(context.Context) (string, error) {
			if asked.Add(1) == 1 {
				return testkit.Token(t, 1, "mallory"), nil
			}
			return testkit.Token(t, 1, "gina"), nil
		}})
	if err != nil || asked.Load() != 2 {
		t.Fatalf("Dial with a token source: %v after %d tokens", err, asked.Load())
	}
	c.Close()
	// Nothing listening: Dial keeps trying until its context ends.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err = client.Dial(ctx, client.Config{Addr: addr, AppCode: 1, UID: "gina", Token: "t", BackoffInitial: 10 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) || !bytes.Contains([]byte(err.Error()), []byte("refused")) {
		t.Fatalf("Dial to a closed port: %v", err)
	}
}

// TestReconnectBackoff breaks the path to the gate (a proxy that starts
// closing every connection at once) and counts the client's attempts:
// they keep coming, never more than BackoffMax apart (plus scheduling
// slack), and not in a tight loop; once the path is back, the client is
// logged in again and receives.
func TestReconnectBackoff(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var broken atomic.Bool
	var mu sync.Mutex
	var attempts []time.Time
	var live []net.Conn
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if broken.Load() {
				mu.Lock()
				attempts = append(attempts, time.Now())
				mu.Unlock()
				c.Close()
				continue
			}
			mu.Lock()
			live = append(live, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); pipe(c, n.GateAddr) }()
		}
	}()
	const maxWait = 200 * time.Millisecond
	c := dial(t, ln.Addr().String(), 1, "hank", func(c *client.Config) {
		c.BackoffInitial, c.BackoffMax = 10*time.Millisecond, maxWait
	})
	broken.Store(true)
	mu.Lock()
	for _, l := range live {
		l.Close()
	}
	mu.Unlock()
	time.Sleep(3 * time.Second)
	broken.Store(false)
	mu.Lock()
	seen := append([]time.Time(nil), attempts...)
	mu.Unlock()
	if len(seen) < 5 || len(seen) > 300 {
		t.Fatalf("%d attempts in 3 s with waits in [0, %v)", len(seen), maxWait)
	}
	for i := 1; i < len(seen); i++ {
		if gap := seen[i].Sub(seen[i-1]); gap > maxWait+time.Second {
			t.Fatalf("attempt %d came %v after the previous one (BackoffMax %v)", i, gap, maxWait)
		}
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return c.State() == client.StateConnected }, "not reconnected")
	r := push(t, n.API(t), "hank", "back")
	if m := recv(t, c); m.MsgID != r.MsgId {
		t.Fatalf("after reconnecting got %+v", m)
	}
	c.Close()
}

func pipe(c net.Conn, addr string) {
	defer c.Close()
	up, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = copyConn(up, c); done <- struct{}{} }()
	go func() { _, _ = copyConn(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
}

func copyConn(dst, src net.Conn) (int64, error) {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		k, err := src.Read(buf)
		if k > 0 {
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return n, werr
			}
			n += int64(k)
		}
		if err != nil {
			return n, err
		}
	}
}

// discovery serves GET /v1/gates with whatever address gate holds.
func discovery(t *testing.T, gate *atomic.Value) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/gates" || r.URL.Query().Get("app") != "1" {
			http.Error(w, "want /v1/gates?app=1", http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, `{"gates":[{"addr":%q,"node":"test-node","load":0.1}]}`, gate.Load().(string))
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/v1/gates"
}

// TestRestartNothingLostOrDuplicated: the node is stopped (gracefully:
// KICKOUT SERVER_SHUTDOWN; or killed) while messages stream to a client
// that acknowledges only some of them, then started again on its data
// directory with new ports that the client finds through discovery. The
// client hands the app every message exactly once as a first delivery, in
// all seqs 1..N; only those it holds unacknowledged come again, marked
// Redelivered (ManualAck).
func TestRestartNothingLostOrDuplicated(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			n := testkit.StartNode(t, testkit.NodeOptions{})
			var gate atomic.Value
			gate.Store(n.GateAddr)
			var mu sync.Mutex
			var states []client.State
			c := dial(t, "", 1, "ivan", func(c *client.Config) {
				c.Discovery = discovery(t, &gate)
				c.ManualAck = true
				c.OnState = func(s client.State, _ error) { mu.Lock(); states = append(states, s); mu.Unlock() }
			})
			const half = 30
			api := n.API(t)
			for i := range half {
				push(t, api, "ivan", fmt.Sprint("a", i))
			}
			got := map[string]uint32{}
			seqs := map[uint32]bool{}
			// take records a message handed to the app and reports whether
			// it is a first delivery: only one the app had and did not
			// acknowledge may come again, marked Redelivered.
			take := func(m *client.Message) bool {
				t.Helper()
				if m.Redelivered {
					if _, had := got[m.MsgID]; !had {
						t.Fatalf("a message marked redelivered the app never had: %+v", m)
					}
					return false
				}
				if _, dup := got[m.MsgID]; dup || seqs[m.Seq] {
					t.Fatalf("duplicate handed to the app: %+v", m)
				}
				got[m.MsgID], seqs[m.Seq] = m.Seq, true
				return true
			}
			// Receive 10, acknowledge only 5 of them for now.
			var held []*client.Message
			for len(got) < 10 {
				m := recv(t, c)
				if !take(m) {
					continue
				}
				if len(got)%2 == 1 {
					if err := c.Ack(context.Background(), m); err != nil {
						t.Fatal(err)
					}
				} else {
					held = append(held, m)
				}
			}
			n.Stop(sig)
			testkit.Eventually(t, 10*time.Second, func() bool { return c.State() != client.StateConnected }, "client still connected")
			n.Restart()
			gate.Store(n.GateAddr)
			api = n.API(t)
			for i := range half {
				push(t, api, "ivan", fmt.Sprint("b", i))
			}
			for len(got) < 2*half {
				m := recv(t, c)
				if !take(m) {
					continue // a held one again: acknowledged below
				}
				if err := c.Ack(context.Background(), m); err != nil {
					t.Fatal(err)
				}
			}
			for s := uint32(1); s <= 2*half; s++ {
				if !seqs[s] {
					t.Fatalf("seq %d never handed to the app", s)
				}
			}
			// The five held since before the restart are acknowledged
			// now, on the new connection: the inbox empties.
			for _, m := range held {
				if err := c.Ack(context.Background(), m); err != nil {
					t.Fatal(err)
				}
			}
			testkit.Eventually(t, 15*time.Second, func() bool { return pending(t, api, "ivan") == 0 }, "inbox not empty")
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			for {
				m, err := c.Recv(ctx)
				if err != nil {
					break
				}
				if take(m) { // a held one may still come again, before its ack
					t.Fatalf("extra message %+v", m)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(states) == 0 || states[len(states)-1] != client.StateConnected {
				t.Fatalf("states %v", states)
			}
		})
	}
}

// TestGateFrameLimitFromLoginAck: a gate set to a smaller frame limit
// than the client's Config.MaxFrameSize announces it in LOGIN_ACK; the
// client refuses a body above it with ErrTooLarge before sending it
// (sent, the gate would answer FRAME_TOO_LARGE and close the connection),
// and sends one that fits.
func TestGateFrameLimitFromLoginAck(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--gate.max-frame-size", "8192", "--api.max-payload", "7168"}})
	c := dial(t, n.GateAddr, 1, "erin", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.SendC2C(ctx, "frank", 0, make([]byte, 10<<10)); !errors.Is(err, client.ErrTooLarge) || !strings.Contains(err.Error(), "limit 8192") {
		t.Fatalf("a C2C above the gate's 8 KiB: %v, want ErrTooLarge at 8192", err)
	}
	if res, err := c.SendC2C(ctx, "frank", 0, make([]byte, 4<<10)); err != nil || res.MsgID == "" {
		t.Fatalf("a C2C that fits: %+v %v", res, err)
	}
	if c.State() != client.StateConnected {
		t.Fatalf("state %v after the refusal", c.State())
	}
}
