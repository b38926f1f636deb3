package messages

import (
	"bytes"
	"errors"
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

// TestZstdAcceptsStreamingWindowsUpTo8MiB: a standard streaming encoder's
// frame of a 30-byte body declares a window of up to 8 MiB (the decoder
// minimum RFC 8878 recommends); it decodes whatever the frame limit.
// Windows above 8 MiB (and above the frame limit) are refused.
func TestZstdAcceptsStreamingWindowsUpTo8MiB(t *testing.T) {
	body := []byte("driver 42 at 31.2304,121.4737!") // 30 bytes
	for _, window := range []int{1 << 20, 8 << 20} {
		c := streamCompress(t, body, window)
		if w := declaredWindow(t, c); w != uint64(window) {
			t.Fatalf("the streaming encoder declared window %d, want %d", w, window)
		}
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
	d, _ := NewZstdDecoder(DefaultMaxBody)
	if _, err := d.Decompress(nil, streamCompress(t, body, 16<<20)); !errors.Is(err, ErrDecompress) {
		t.Fatalf("a 16 MiB window: %v", err)
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
