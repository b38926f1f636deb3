package gate_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

// TestFuzzLiveGate points random input at a running gate: many
// connections send random bytes, random headers, and random frames after
// a real login, in random chunks, reconnecting whenever the gate closes
// them. Next to them a well-behaved device keeps doing KEEPALIVE round
// trips. The process must not crash and the good device must never be
// disturbed. GATE_FUZZ_DURATION (e.g. 1m) runs it longer; GATE_FUZZ_SEED
// replays a seed.
func TestFuzzLiveGate(t *testing.T) {
	duration := 3 * time.Second
	if s := os.Getenv("GATE_FUZZ_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		duration = d
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("GATE_FUZZ_SEED"); s != "" {
		if _, err := fmt.Sscan(s, &seed); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("seed %d (GATE_FUZZ_SEED=%d replays it)", seed, seed)

	tg := startGate(t, func(c *gate.Config) {
		c.LoginTimeout = 500 * time.Millisecond
		c.NewConnsPerIP = 50
		c.NewConnsPerIPBurst = 20
		c.FramesPerSecond = 2000 // the good device paces itself below this
	})
	good, goodAck := tg.login(t, "good", true)

	var (
		stop  atomic.Bool
		wg    sync.WaitGroup
		sent  atomic.Int64
		conns atomic.Int64
	)
	const workers = 48
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			local := &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+w))}
			for !stop.Load() {
				n := noisyConn(tg, rng, local, w, &stop, &wg)
				sent.Add(n)
				conns.Add(1)
			}
		}()
	}

	// The good device: round trips all along, and a push in between.
	c := tg.connOf(t, "good")
	deadline := time.Now().Add(duration)
	trips := 0
	for time.Now().Before(deadline) {
		good.Keepalive()
		trips++
		time.Sleep(time.Millisecond) // pacing the client under its rate, not synchronisation
		if trips%50 == 0 {
			payload := make([]byte, 1024)
			if err := tg.Deliver(s2c(c, goodAck.Epoch, uint32(trips), payload)); err != nil {
				t.Fatalf("push to the good device: %v", err)
			}
			expectS2C(t, good, uint32(trips), payload)
		}
	}
	stop.Store(true)
	wg.Wait()
	good.Keepalive()
	if calls := tg.h.closedFor("good"); len(calls) != 0 {
		t.Fatalf("good device closed: %+v", calls)
	}
	t.Logf("%d round trips next to %d noisy connections (%d bytes); protocol errors %v, refusals %v, closes %v",
		trips, conns.Load(), sent.Load(), tg.metric(t, "courier_gate_protocol_errors_total"),
		tg.metric(t, "courier_gate_refusals_total"), tg.metric(t, "courier_gate_closes_total"))
}

// noisyConn runs one noisy connection until the gate closes it (or stop),
// and returns the bytes it sent. A reader goroutine drains the replies.
func noisyConn(tg *testGate, rng *rand.Rand, local *net.TCPAddr, w int, stop *atomic.Bool, wg *sync.WaitGroup) int64 {
	d := net.Dialer{LocalAddr: local, Timeout: time.Second}
	c, err := d.Dial("tcp", tg.addr)
	if err != nil {
		time.Sleep(10 * time.Millisecond) // back off; not synchronisation
		return 0
	}
	defer c.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(io.Discard, c)
	}()

	var stream []byte
	switch mode := rng.IntN(4); mode {
	case 0: // pure noise
		stream = randBytes(rng, 1+rng.IntN(4096))
	case 1: // plausible headers with random fields and bodies
		for range 1 + rng.IntN(20) {
			stream = append(stream, randFrame(rng, false)...)
		}
	case 2, 3: // a real login, then random frames (valid appcode half the time)
		uid := fmt.Sprintf("noise-%d-%d", w, rng.IntN(1000))
		tok, _ := gate.MintToken(secret1, app1, uid, time.Hour)
		login := &devicepb.Login{Uid: uid, Token: tok, Zstd: rng.IntN(2) == 0}
		stream, _ = messages.AppendMessage(nil, messages.Header{Cmd: messages.CmdLogin, AppCode: app1, Seq: 1}, login)
		for range 1 + rng.IntN(40) {
			stream = append(stream, randFrame(rng, true)...)
		}
		if mode == 3 && rng.IntN(4) == 0 {
			stream = append(stream, randBytes(rng, 1+rng.IntN(64))...)
		}
	}
	var sent int64
	for len(stream) > 0 && !stop.Load() {
		n := min(len(stream), 1+rng.IntN(300))
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(stream[:n]); err != nil {
			return sent
		}
		sent += int64(n)
		stream = stream[n:]
	}
	// Linger a little so the gate's answers and timeouts happen.
	_ = c.SetReadDeadline(time.Now().Add(time.Duration(rng.IntN(50)) * time.Millisecond))
	time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond) // pacing, not synchronisation
	return sent
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// randFrame returns a frame with a valid magic and mostly valid version,
// and random command, flags, appcode, seq, length and body.
func randFrame(rng *rand.Rand, sane bool) []byte {
	cmds := messages.Cmds()
	h := messages.Header{
		Cmd:     cmds[rng.IntN(len(cmds))],
		AppCode: app1,
		MsgType: uint16(rng.Uint32()),
		Seq:     rng.Uint32(),
	}
	if rng.IntN(8) == 0 {
		h.Cmd = messages.Cmd(rng.Uint32())
	}
	if rng.IntN(6) == 0 {
		h.Flags = byte(rng.Uint32())
	}
	if !sane || rng.IntN(2) == 0 {
		h.AppCode = uint16(rng.IntN(4))
	}
	body := randBytes(rng, rng.IntN(200))
	if h.Cmd == messages.CmdKeepalive && rng.IntN(2) == 0 {
		body = nil
	}
	b := messages.AppendFrame(nil, h, body)
	switch rng.IntN(20) {
	case 0:
		b[2] = byte(rng.Uint32()) // version
	case 1:
		binary.BigEndian.PutUint32(b[14:], rng.Uint32()) // length
	case 2:
		b = b[:rng.IntN(len(b))] // truncated
	}
	return b
}
