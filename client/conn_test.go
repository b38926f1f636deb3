package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/courier-im/courier/client"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

// TestReadFrameIgnoresWhatANewerServerAdds: docs/protocol.md tells
// clients to ignore commands they do not know; the client must not break
// the connection over one with a body, nor over a body on a command that
// has none.
func TestReadFrameIgnoresWhatANewerServerAdds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	defer func() { <-done }()
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var b []byte
		b = messages.AppendFrame(b, messages.Header{Cmd: messages.Cmd(0x50), AppCode: 1, Seq: 1}, []byte{0x08, 0x01, 0x12, 0x01, 'x'})
		b = messages.AppendFrame(b, messages.Header{Cmd: messages.CmdKeepaliveAck, AppCode: 1, Seq: 2}, []byte{0x08, 0x01})
		b = messages.AppendFrame(b, messages.Header{Cmd: messages.CmdKeepaliveAck, AppCode: 1, Seq: 3}, nil)
		_, _ = c.Write(b)
		_, _ = io.Copy(io.Discard, c) // until the client closes
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.DialConn(ctx, ln.Addr().String(), client.ConnConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for seq := uint32(1); seq <= 3; seq++ {
		f, err := c.ReadFrame()
		if err != nil {
			t.Fatalf("frame %d: %v", seq, err)
		}
		if f.Seq != seq || f.Msg != nil {
			t.Fatalf("frame %d: seq %d, message %v", seq, f.Seq, f.Msg)
		}
	}
}

// TestIncompressibleBodiesGoUncompressed: with compression on, a body
// that zstd would make larger (random bytes) goes as it is, so that one
// near the frame limit stays within it; a compressible one goes
// compressed.
func TestIncompressibleBodiesGoUncompressed(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w := client.NewConn(a, client.ConnConfig{AppCode: 1})
	w.SetCompression(true)
	r := client.NewConn(b, client.ConnConfig{AppCode: 1})
	r.SetCompression(true)
	random := make([]byte, 65_500)
	_, _ = rand.Read(random)
	for _, tc := range []struct {
		payload    []byte
		compressed bool
	}{{random, false}, {bytes.Repeat([]byte("gps "), 1000), true}} {
		go func() {
			_ = w.WriteFrame(messages.Header{Cmd: messages.CmdC2S, AppCode: 1, Seq: 2}, &devicepb.C2S{ClientMsgId: "c", Payload: tc.payload})
		}()
		f, err := r.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if f.Compressed() != tc.compressed || f.Length > messages.DefaultMaxBody {
			t.Fatalf("a body of %d bytes: compressed %v, length %d", len(tc.payload), f.Compressed(), f.Length)
		}
		if m, ok := f.Msg.(*devicepb.C2S); !ok || !bytes.Equal(m.Payload, tc.payload) {
			t.Fatalf("payload of %d bytes not read back", len(tc.payload))
		}
	}
}

// TestZstdBombCostsWhatMaxBodyAllows: a compressed body that does not
// declare its size and decompresses to 40 MiB is refused on a connection
// whose MaxBody is 64 KiB without allocating much more than that (a
// codec shared by every MaxBody let it grow to the largest, 64 MiB).
func TestZstdBombCostsWhatMaxBodyAllows(t *testing.T) {
	var z bytes.Buffer
	enc, err := zstd.NewWriter(&z) // streaming: no content size in the frame
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for range 40 {
		if _, err := enc.Write(zeros); err != nil {
			t.Fatal(err)
		}
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, messages.HeaderSize, messages.HeaderSize+z.Len())
	messages.PutHeader(frame, messages.Header{Cmd: messages.CmdS2C, AppCode: 1, Seq: 1, Flags: messages.FlagZstd, Length: uint32(z.Len())})
	frame = append(frame, z.Bytes()...)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	r := client.NewConn(b, client.ConnConfig{AppCode: 1, MaxBody: 64 << 10})
	r.SetCompression(true)
	go func() { _, _ = a.Write(frame) }()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if _, err := r.ReadFrame(); !errors.Is(err, client.ErrProtocol) {
		t.Fatalf("the bomb was read: %v", err)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
		t.Fatalf("refusing the bomb allocated %d MiB", grew>>20)
	}
}
