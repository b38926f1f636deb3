package gate_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

const streamWindow = 8 << 20

// streamZstd compresses body as a streaming encoder does over a socket
// (flushed before the end, so no content size): the frame declares the
// encoder's window, here 8 MiB.
func streamZstd(t testing.TB, body []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf, zstd.WithWindowSize(streamWindow))
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.Write(body)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	var h zstd.Header
	if err := h.Decode(buf.Bytes()); err != nil || h.SingleSegment || h.WindowSize != streamWindow {
		t.Fatalf("streaming frame header %+v, %v", h, err)
	}
	return buf.Bytes()
}

// TestZstdStreamingEncoderBodyDecodes: a client compressing with a
// standard streaming encoder (8 MiB window declared) gets its 30-byte
// body through; a streaming bomb still gets BAD_BODY and the connection
// stays open.
func TestZstdStreamingEncoderBodyDecodes(t *testing.T) {
	tg := startGate(t, nil)
	d, ack := tg.login(t, "sven", true)
	if !ack.Zstd {
		t.Fatal("compression not on")
	}
	c2s := mustMarshal(&devicepb.C2S{ClientMsgId: "c1", Payload: []byte("lat 31.23045 lng 121.473")})
	if len(c2s) != 30 {
		t.Fatalf("body is %d bytes", len(c2s))
	}
	d.SendRaw(frame(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: 5, Flags: messages.FlagZstd}, streamZstd(t, c2s)))
	testkit.Eventually(t, wait, func() bool { return len(tg.h.Frames()) == 1 }, "the C2S reaches the handler")
	if f := tg.h.Frames()[0]; !bytes.Equal(f.body, c2s) || f.h.Seq != 5 {
		t.Fatalf("handler got seq %d %x", f.h.Seq, f.body)
	}
	bomb := streamZstd(t, make([]byte, 10<<20))
	d.SendRaw(frame(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: 6, Flags: messages.FlagZstd}, bomb))
	d.ExpectError(devicepb.Code_BAD_BODY, 6)
	d.Keepalive()
	if n := len(tg.h.Frames()); n != 1 {
		t.Fatalf("handler got %d frames", n)
	}
}

// TestZstdDecoderMemoryStaysFlat: a thousand connections each send a
// streaming-compressed body (8 MiB window) and a bomb; the gate's memory
// grows by what an idle connection costs, not by a decoder per
// connection. The gate runs in a child process so that the clients' own
// memory is not counted.
func TestZstdDecoderMemoryStaysFlat(t *testing.T) {
	ch := startChild(t)
	c2s := mustMarshal(&devicepb.C2S{ClientMsgId: "c1", Payload: []byte("lat 31.23045 lng 121.473")})
	good := frame(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: 2, Flags: messages.FlagZstd}, streamZstd(t, c2s))
	bomb := frame(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: 3, Flags: messages.FlagZstd}, streamZstd(t, make([]byte, 10<<20)))
	keepalive := frame(messages.Header{Cmd: messages.CmdKeepalive, AppCode: app1, Seq: 4}, nil)
	traffic := append(append(append([]byte(nil), good...), bomb...), keepalive...)

	octet := byte(20 + (time.Now().Unix()/60+100)%200) // away from other runs' TIME_WAIT
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	open := func(from, n int) {
		t.Helper()
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					k := from + int(next.Add(1)) - 1
					if k >= from+n {
						return
					}
					c, err := zstdSession(ch.addr, k, net.IPv4(127, octet, byte(k/4000), 1), traffic)
					if err != nil {
						errs <- fmt.Errorf("connection %d: %w", k, err)
						return
					}
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	const warm, total = 100, 1100
	open(0, warm) // every loop has made its decoder and buffer
	a := ch.stats()
	open(warm, total-warm)
	b := ch.stats()
	if a.conns != warm || b.conns != total {
		t.Fatalf("child holds %d then %d connections", a.conns, b.conns)
	}
	n := float64(total - warm)
	rss, heap := float64(b.rss-a.rss)/n, float64(b.heap-a.heap)/n
	t.Logf("per connection that sent a compressed body and a bomb: rss %.0f B, heap %.0f B (rss %.1f → %.1f MiB)",
		rss, heap, mib(a.rss), mib(b.rss))
	// An idle connection costs ~2-4 KiB; a decoder of its own would cost
	// over 100 KiB.
	const limit = 32 << 10
	if rss > limit || heap > limit {
		t.Fatalf("memory grew by rss %.0f B, heap %.0f B per connection: more than %d", rss, heap, limit)
	}
}

// zstdSession logs connection k in with compression, writes traffic, and
// reads until the KEEPALIVE_ACK (seq 4), checking the bomb (seq 3) got
// BAD_BODY. The connection stays open.
func zstdSession(addr string, k int, src net.IP, traffic []byte) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (net.Conn, error) { c.Close(); return nil, err }
	uid := "z-" + strconv.Itoa(k)
	tok, err := gate.MintToken(secret1, app1, uid, time.Hour)
	if err != nil {
		return fail(err)
	}
	login, _ := messages.AppendMessage(nil, messages.Header{Cmd: messages.CmdLogin, AppCode: app1, Seq: 1},
		&devicepb.Login{Uid: uid, Token: tok, DeviceId: "z", Zstd: true})
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(login); err != nil {
		return fail(err)
	}
	read := func() (messages.Cmd, uint32, []byte, error) {
		var hdr [messages.HeaderSize]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return 0, 0, nil, err
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[14:]))
		_, err := io.ReadFull(c, body)
		return messages.Cmd(hdr[3]), binary.BigEndian.Uint32(hdr[10:]), body, err
	}
	cmd, _, body, err := read()
	var ack devicepb.LoginAck
	if err != nil || cmd != messages.CmdLoginAck || proto.Unmarshal(body, &ack) != nil || !ack.Zstd {
		return fail(fmt.Errorf("login: %v %v %v", cmd, &ack, err))
	}
	if _, err := c.Write(traffic); err != nil {
		return fail(err)
	}
	badBody := false
	for {
		cmd, seq, body, err := read()
		if err != nil {
			return fail(err)
		}
		switch {
		case cmd == messages.CmdError && seq == 3:
			var e devicepb.Error
			if proto.Unmarshal(body, &e) != nil || e.Code != devicepb.Code_BAD_BODY {
				return fail(fmt.Errorf("bomb answered %v", &e))
			}
			badBody = true
		case cmd == messages.CmdError:
			return fail(fmt.Errorf("ERROR for seq %d: %x", seq, body))
		case cmd == messages.CmdKeepaliveAck:
			if !badBody {
				return fail(fmt.Errorf("the bomb was not refused"))
			}
			_ = c.SetDeadline(time.Time{})
			return c, nil
		}
	}
}
