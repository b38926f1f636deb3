package messages

import (
	"bytes"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// streamCompress compresses body the way a streaming encoder does: the
// size is not known up front, so the frame declares a window instead of
// a content size.
func streamCompress(t testing.TB, body []byte, window int) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf, zstd.WithWindowSize(window))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(body); err != nil {
		t.Fatal(err)
	}
	// A flush before the end, as a stream over a socket does: the frame
	// header goes out before the size is known.
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// declaredWindow reads the window a zstd frame header declares (0 for a
// single-segment frame, which declares its content size instead).
func declaredWindow(t testing.TB, frame []byte) uint64 {
	t.Helper()
	var h zstd.Header
	if err := h.Decode(frame); err != nil {
		t.Fatal(err)
	}
	if h.SingleSegment {
		return 0
	}
	return h.WindowSize
}

// TestZstdAcceptsStreamingWindows: a standard streaming encoder's frame
// of a 30-byte body declares a window (1–8 MiB by default, up to 128 MiB
// at zstd's --ultra levels 20–22); it decodes whatever the frame limit,
// up to the 128 MiB the reference decoder accepts by default, at no cost
// in memory. A larger window is refused.
func TestZstdAcceptsStreamingWindows(t *testing.T) {
	body := []byte("driver 42 at 31.2304,121.4737!") // 30 bytes
	// A window log of 27 (level 22's) written into an 8 MiB frame's
	// Window_Descriptor (exponent 27-10, mantissa 0): an encoder with a
	// 128 MiB window would allocate it.
	ultra := streamCompress(t, body, 8<<20)
	ultra[5] = 17 << 3
	for _, c := range [][]byte{streamCompress(t, body, 1<<20), streamCompress(t, body, 8<<20),
		streamCompress(t, body, 16<<20), ultra} {
		window := declaredWindow(t, c)
		z, err := NewZstd(DefaultMaxBody)
		if err != nil {
			t.Fatal(err)
		}
		d, err := NewZstdDecoder(DefaultMaxBody)
		if err != nil {
			t.Fatal(err)
		}
		for name, dec := range map[string]func([]byte, []byte) ([]byte, error){"Zstd": z.Decompress, "ZstdDecoder": d.Decompress} {
			got, err := dec([]byte("x"), c)
			if err != nil || !bytes.Equal(got, append([]byte("x"), body...)) {
				t.Fatalf("%s, window %d: %q, %v", name, window, got, err)
			}
		}
	}
	if w := declaredWindow(t, ultra); w != MaxZstdWindow {
		t.Fatalf("the patched frame declares %d", w)
	}
	d, _ := NewZstdDecoder(DefaultMaxBody)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	buf := make([]byte, 0, DefaultMaxBody)
	for range 100 {
		if _, err := d.Decompress(buf, ultra); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("100 bodies declaring a 128 MiB window allocated %d bytes", n)
	}
	over := bytes.Clone(ultra)
	over[5] = 18 << 3 // 256 MiB
	if _, err := d.Decompress(nil, over); !errors.Is(err, ErrDecompress) {
		t.Fatalf("a 256 MiB window: %v", err)
	}
	// libzstd 1.5's own streaming output (`printf ... | zstd -c`, from a
	// pipe: no content size, a 2 MiB window, a checksum).
	cli := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x58, 0xf1, 0x00, 0x00, 0x64, 0x72, 0x69, 0x76, 0x65, 0x72, 0x20,
		0x34, 0x32, 0x20, 0x61, 0x74, 0x20, 0x33, 0x31, 0x2e, 0x32, 0x33, 0x30, 0x34, 0x2c, 0x31, 0x32,
		0x31, 0x2e, 0x34, 0x37, 0x33, 0x37, 0x21, 0x7d, 0x38, 0xaf, 0xf1}
	if w := declaredWindow(t, cli); w != 2<<20 {
		t.Fatalf("fixture declares window %d", w)
	}
	if got, err := d.Decompress(nil, cli); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("libzstd's streaming output: %q, %v", got, err)
	}
}

// TestZstdRefusesBombs: whatever the frame declares, the output is capped
// at the frame limit: a frame with its content size is refused from the
// header, a streaming one (no content size, 8 MiB window) once it passes
// the cap.
func TestZstdRefusesBombs(t *testing.T) {
	d, err := NewZstdDecoder(DefaultMaxBody)
	if err != nil {
		t.Fatal(err)
	}
	big, err := NewZstd(64 << 20)
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 10<<20)
	for name, bomb := range map[string][]byte{
		"content size declared":      big.Compress(nil, zeros),
		"streaming, 8 MiB window":    streamCompress(t, zeros, 8<<20),
		"just over the limit":        streamCompress(t, make([]byte, DefaultMaxBody+1), 8<<20),
		"content size just over cap": big.Compress(nil, make([]byte, DefaultMaxBody+1)),
		"empty, not a zstd frame":    {},
	} {
		buf := make([]byte, 0, 16)
		if out, err := d.Decompress(buf, bomb); !errors.Is(err, ErrDecompress) || len(out) != 0 {
			t.Errorf("%s (%d bytes): %d bytes out, %v", name, len(bomb), len(out), err)
		}
	}
	exact := make([]byte, DefaultMaxBody)
	if out, err := d.Decompress(nil, streamCompress(t, exact, 8<<20)); err != nil || len(out) != len(exact) {
		t.Fatalf("a body of exactly the limit: %d bytes, %v", len(out), err)
	}
}

// TestCompressDoesNotWaitForABusyEncoder: deliveries compress on many
// goroutines at once; one caller in the middle of a compression (holding
// an encoder) must not make the others wait for it.
func TestCompressDoesNotWaitForABusyEncoder(t *testing.T) {
	z, err := NewZstd(DefaultMaxBody)
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("order 17 is ready; "), 100)
	_ = z.Compress(nil, body) // an idle encoder exists now
	// Every idle encoder is taken, as by callers in mid-compression.
	var busy []*zstd.Encoder
	for {
		select {
		case e := <-z.encoders:
			busy = append(busy, e)
			continue
		default:
		}
		break
	}
	if len(busy) == 0 {
		t.Fatal("no idle encoder after a compression")
	}
	done := make(chan []byte, 1)
	go func() { done <- z.Compress(nil, body) }()
	select {
	case c := <-done:
		if got, err := z.Decompress(nil, c); err != nil || !bytes.Equal(got, body) {
			t.Fatalf("round trip: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Compress waited for a busy encoder")
	}
}

// TestZstdSmallBodiesCostTheirSize: a codec whose cap is 64 MiB (a
// client's) decompresses a body of a few hundred bytes into about that
// much memory, not the cap; a body whose frame does not say its size,
// larger than the first guess, or of two frames, still decompresses
// whole.
func TestZstdSmallBodiesCostTheirSize(t *testing.T) {
	z, err := NewZstd(64 << 20)
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("order 7 to driver 42; "), 30) // 660 bytes
	c := z.Compress(nil, body)
	if _, err := z.Decompress(nil, c); err != nil { // the decoder's own setup
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		got, err := z.Decompress(nil, c)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("%d bytes out, %v", len(got), err)
		}
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("10 bodies of %d bytes (cap 64 MiB) allocated %d bytes", len(body), n)
	}
	// No content size, 20× larger than its compressed form and past 64
	// KiB: more than the first guess.
	big := make([]byte, 1<<20)
	if got, err := z.Decompress(nil, streamCompress(t, big, 8<<20)); err != nil || len(got) != len(big) {
		t.Fatalf("a streamed 1 MiB body: %d bytes, %v", len(got), err)
	}
	two := append(z.Compress(nil, body), z.Compress(nil, big)...)
	if got, err := z.Decompress(nil, two); err != nil || len(got) != len(body)+len(big) {
		t.Fatalf("two frames: %d bytes, %v", len(got), err)
	}
}
