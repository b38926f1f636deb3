package client_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/client"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/testkit"
)

// readingGate is a fake gate that reads (and ignores) what the client
// sends until it leaves.
func readingGate(t *testing.T) *fakeGate {
	t.Helper()
	return startFakeGate(t, 30, func(_ int32, c *client.Conn) {
		for {
			if _, err := c.ReadFrame(); err != nil {
				return
			}
		}
	})
}

// TestHungTokenSourceIsGivenUpAndAskedAgain: a TokenSource call that does
// not answer (an app-server that takes the request and never answers) is
// given up after DialTimeout, like discovery, and asked again after a
// backoff, whether or not it heeds its context: the client logs in with
// the next call's token. It used to wait for good, in StateConnecting.
func TestHungTokenSourceIsGivenUpAndAskedAgain(t *testing.T) {
	for _, tc := range []struct {
		name string
		hang func(ctx context.Context, release <-chan struct{})
	}{
		{"it heeds its context", func(ctx context.Context, _ <-chan struct{}) { <-ctx.Done() }},
		{"it ignores its context", func(_ context.Context, release <-chan struct{}) { <-release }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := readingGate(t)
			release := make(chan struct{})
			t.Cleanup(func() { close(release) })
			var asked atomic.Int32
			dialed := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				c, err := client.Dial(ctx, client.Config{Addr: g.addr(), AppCode: 1, UID: "ty", NoCompression: true,
					DialTimeout: 300 * time.Millisecond, BackoffInitial: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
					TokenSource: func(ctx context.Context) (string, error) {
						if asked.Add(1) == 1 {
							tc.hang(ctx, release)
							return "", ctx.Err()
						}
						return "t", nil
					}})
				if err == nil {
					c.Close()
				}
				dialed <- err
			}()
			select {
			case err := <-dialed:
				if err != nil {
					t.Fatalf("Dial with a token source whose first call hangs: %v (%d calls)", err, asked.Load())
				}
			case <-time.After(8 * time.Second): // past Dial's context: it hangs (released at cleanup)
				t.Fatalf("Dial hung in the first TokenSource call (%d calls)", asked.Load())
			}
		})
	}
}

// TestDialAndCloseDoNotWaitForAStuckTokenSource: a TokenSource that
// ignores its context and never answers does not hold up Dial past its
// context, nor Close: they used to wait for the call. The calls it
// abandons do not pile up: at most two run at once.
func TestDialAndCloseDoNotWaitForAStuckTokenSource(t *testing.T) {
	g := readingGate(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var mu sync.Mutex
	var running, most int
	stuck := func(context.Context) (string, error) {
		mu.Lock()
		running++
		most = max(most, running)
		mu.Unlock()
		<-release
		mu.Lock()
		running--
		mu.Unlock()
		return "", errors.New("released")
	}
	cfg := client.Config{Addr: g.addr(), AppCode: 1, UID: "st", NoCompression: true, TokenSource: stuck,
		DialTimeout: 100 * time.Millisecond, BackoffInitial: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond}
	returned := make(chan error, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := client.Dial(ctx, cfg)
		returned <- err
	}()
	select {
	case err := <-returned:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Dial: %v, want its context's deadline", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("Dial with a 1 s context returned after %v", d.Round(time.Millisecond))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Dial waited for the stuck TokenSource")
	}
	mu.Lock()
	n := most
	mu.Unlock()
	if n > 2 {
		t.Fatalf("%d TokenSource calls ran at once", n)
	}

	// Logged in once, then stuck in the TokenSource on the way back.
	var calls atomic.Int32
	cfg.DialTimeout = 10 * time.Second
	cfg.TokenSource = func(ctx context.Context) (string, error) {
		if calls.Add(1) == 1 {
			return "t", nil
		}
		return stuck(ctx)
	}
	var kept atomic.Pointer[client.Conn]
	g2 := startFakeGate(t, 30, func(n int32, c *client.Conn) {
		if n == 1 {
			kept.Store(c) // closed below, by the test
		}
		for {
			if _, err := c.ReadFrame(); err != nil {
				return
			}
		}
	})
	cfg.Addr = g2.addr()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	kept.Load().Close()
	testkit.Eventually(t, 5*time.Second, func() bool { return calls.Load() >= 2 }, "the client did not ask for a token again")
	closed := make(chan struct{})
	start = time.Now()
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Close took %v", d.Round(time.Millisecond))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for the stuck TokenSource")
	}
}

// TestCloseCutsShortAWriteThatStartsAfterIt: Close interrupts the
// connection while the client's goroutine is between two writes of a
// flush, on a link the server no longer reads. The next write must fail at
// once, not set a fresh WriteTimeout deadline over the interruption and
// block for it.
func TestCloseCutsShortAWriteThatStartsAfterIt(t *testing.T) {
	const sends = 600
	stop := make(chan struct{})
	g := startFakeGate(t, 30, func(n int32, c *client.Conn) {
		if n == 1 {
			time.Sleep(300 * time.Millisecond) // the sends wait for the next connection
			return
		}
		<-stop // reads nothing
	})
	t.Cleanup(func() { close(stop) }) // before the gate's cleanup waits for this
	var logins atomic.Int32
	var once sync.Once
	var cl atomic.Pointer[client.Client]
	closed := make(chan struct{})
	var closeStart atomic.Int64
	c := dialFake(t, g, func(cfg *client.Config) {
		cfg.FrameRate, cfg.FrameBurst = 1e6, 1e6
		cfg.ByteRate, cfg.ByteBurst = 1<<30, 1<<30
		cfg.WriteTimeout = 20 * time.Second
		cfg.BackoffInitial, cfg.BackoffMax = 500*time.Millisecond, 500*time.Millisecond
		cfg.OnFrame = func(out bool, h messages.Header, _ proto.Message) {
			switch {
			case out && h.Cmd == messages.CmdLogin:
				logins.Add(1)
			case out && h.Cmd == messages.CmdC2S && logins.Load() == 2:
				// The flush of the whole outbox on the second connection
				// has begun: Close now, and let the flush go on once the
				// interruption is in.
				once.Do(func() {
					closeStart.Store(time.Now().UnixNano())
					go func() { cl.Load().Close(); close(closed) }()
					time.Sleep(200 * time.Millisecond)
				})
			}
		}
	})
	cl.Store(c)
	payload := make([]byte, 32<<10) // 600 × 32 KiB: far past the socket buffers
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range sends {
		go func() { _, _ = c.SendC2S(ctx, 1, payload) }()
	}
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		t.Fatal("Close waited for a write that started after it")
	}
	if d := time.Since(time.Unix(0, closeStart.Load())); d > 2*time.Second {
		t.Fatalf("Close took %v", d.Round(time.Millisecond))
	}
}

// TestCloseWaitsForOnStatesLastCall: when Close returns, OnState has made
// its last call (StateClosed) and returned: no goroutine of the client
// runs on (package doc). It used to be called after Close returned.
func TestCloseWaitsForOnStatesLastCall(t *testing.T) {
	g := readingGate(t)
	var last atomic.Bool
	c := dialFake(t, g, func(cfg *client.Config) {
		cfg.OnState = func(s client.State, _ error) {
			if s == client.StateClosed {
				time.Sleep(200 * time.Millisecond)
				last.Store(true)
			}
		}
	})
	c.Close()
	if !last.Load() {
		t.Fatal("Close returned before OnState's last call did")
	}
}
