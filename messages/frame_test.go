package messages

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/courier-im/courier/messages/devicepb"
	"google.golang.org/protobuf/proto"
)

func header(mut func(b []byte)) []byte {
	b := AppendHeader(nil, Header{Cmd: CmdKeepalive, AppCode: 7, MsgType: 3, Seq: 42})
	if mut != nil {
		mut(b)
	}
	return b
}

func TestParseHeaderErrors(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		max     uint32
		want    error
		wantSeq uint32 // seq must be decoded for errors answered with ERROR
	}{
		{"ok", header(nil), 100, nil, 42},
		{"empty", nil, 100, ErrShortHeader, 0},
		{"truncated header", header(nil)[:HeaderSize-1], 100, ErrShortHeader, 0},
		{"bad magic", header(func(b []byte) { b[0] = 0xDE }), 100, ErrBadMagic, 0},
		{"bad magic second byte", header(func(b []byte) { b[1] = 0 }), 100, ErrBadMagic, 0},
		{"unknown version", header(func(b []byte) { b[2] = 2 }), 100, ErrUnsupportedVersion, 42},
		{"version zero", header(func(b []byte) { b[2] = 0 }), 100, ErrUnsupportedVersion, 42},
		{"oversized length", header(func(b []byte) { binary.BigEndian.PutUint32(b[14:], 101) }), 100, ErrFrameTooLarge, 42},
		{"max length ok", header(func(b []byte) { binary.BigEndian.PutUint32(b[14:], 100) }), 100, nil, 42},
		{"huge length", header(func(b []byte) { binary.BigEndian.PutUint32(b[14:], 0xFFFFFFFF) }), DefaultMaxBody, ErrFrameTooLarge, 42},
		{"reserved flag", header(func(b []byte) { b[4] = 0x02 }), 100, ErrBadFlags, 42},
		{"all reserved flags", header(func(b []byte) { b[4] = 0xFF }), 100, ErrBadFlags, 42},
		{"zstd flag ok", header(func(b []byte) { b[4] = FlagZstd }), 100, nil, 42},
		{"reserved byte ignored", header(func(b []byte) { b[5] = 0xAA }), 100, nil, 42},
		// The protocol's order: version is checked before length, length
		// before flags.
		{"version before length", header(func(b []byte) { b[2] = 9; binary.BigEndian.PutUint32(b[14:], 1000) }), 100, ErrUnsupportedVersion, 42},
		{"length before flags", header(func(b []byte) { b[4] = 0x80; binary.BigEndian.PutUint32(b[14:], 1000) }), 100, ErrFrameTooLarge, 42},
		// An unknown command is not a header error: the gate answers it
		// after the login check.
		{"unknown command", header(func(b []byte) { b[3] = 0x99 }), 100, nil, 42},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseHeader(tt.in, tt.max)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("ParseHeader() error = %v, want %v", err, tt.want)
			}
			if h.Seq != tt.wantSeq {
				t.Fatalf("seq = %d, want %d", h.Seq, tt.wantSeq)
			}
		})
	}
}

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		err   error
		code  devicepb.Code
		fatal bool
	}{
		{ErrBadMagic, devicepb.Code_OK, true},
		{ErrUnsupportedVersion, devicepb.Code_UNSUPPORTED_VERSION, true},
		{ErrFrameTooLarge, devicepb.Code_FRAME_TOO_LARGE, true},
		{ErrBadFlags, devicepb.Code_BAD_FLAGS, false},
		{ErrDecompress, devicepb.Code_BAD_BODY, false},
		{ErrTruncated, devicepb.Code_OK, true},
	}
	for _, tt := range tests {
		if got := WireCode(tt.err); got != tt.code {
			t.Errorf("WireCode(%v) = %v, want %v", tt.err, got, tt.code)
		}
		if got := Fatal(tt.err); got != tt.fatal {
			t.Errorf("Fatal(%v) = %v, want %v", tt.err, got, tt.fatal)
		}
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Version: Version, Cmd: CmdS2C, Flags: FlagZstd, AppCode: 0xFFFF, MsgType: 0xABCD, Seq: 0xDEADBEEF, Length: 5}
	b := AppendHeader(nil, h)
	if len(b) != HeaderSize {
		t.Fatalf("len = %d", len(b))
	}
	want := []byte{0xC0, 0xDE, 1, 0x20, 1, 0, 0xFF, 0xFF, 0xAB, 0xCD, 0xDE, 0xAD, 0xBE, 0xEF, 0, 0, 0, 5}
	if !bytes.Equal(b, want) {
		t.Fatalf("encoded % x, want % x", b, want)
	}
	got, err := ParseHeader(b, 100)
	if err != nil || got != h {
		t.Fatalf("ParseHeader = %+v, %v; want %+v", got, err, h)
	}
}

func TestAppendMessage(t *testing.T) {
	msg := &devicepb.S2C{MsgId: "m1", Payload: []byte("order 17"), SentAtMs: 1}
	b, err := AppendMessage([]byte("prefix"), Header{Cmd: CmdS2C, AppCode: 2, Seq: 9}, msg)
	if err != nil {
		t.Fatal(err)
	}
	if string(b[:6]) != "prefix" {
		t.Fatal("prefix clobbered")
	}
	h, err := ParseHeader(b[6:], DefaultMaxBody)
	if err != nil {
		t.Fatal(err)
	}
	if int(h.Length) != len(b)-6-HeaderSize || h.Cmd != CmdS2C || h.Seq != 9 || h.AppCode != 2 {
		t.Fatalf("header %+v, frame len %d", h, len(b))
	}
	got, err := DecodeBody(h.Cmd, b[6+HeaderSize:])
	if err != nil || !proto.Equal(got, msg) {
		t.Fatalf("body = %v, %v", got, err)
	}
	empty, err := AppendMessage(nil, Header{Cmd: CmdKeepaliveAck}, nil)
	if err != nil || len(empty) != HeaderSize {
		t.Fatalf("empty body frame: %d bytes, %v", len(empty), err)
	}
}

func TestDecodeBody(t *testing.T) {
	if _, err := DecodeBody(CmdKeepalive, []byte{1}); !errors.Is(err, ErrBodyNotEmpty) {
		t.Fatalf("keepalive with body: %v", err)
	}
	if m, err := DecodeBody(CmdKeepalive, nil); m != nil || err != nil {
		t.Fatalf("keepalive: %v %v", m, err)
	}
	if _, err := DecodeBody(CmdLogin, []byte{0xFF, 0xFF, 0xFF}); err == nil {
		t.Fatal("garbage login body decoded")
	}
	for _, c := range Cmds() {
		if !c.Known() || (!c.FromClient() && !c.FromServer()) {
			t.Fatalf("%v: known=%v", c, c.Known())
		}
	}
	if Cmd(0x99).Known() || Cmd(0x99).String() != "0x99" || CmdC2CPushAckAck.String() != "C2C_PUSH_ACK_ACK" {
		t.Fatal("command table")
	}
}

func TestParserFrames(t *testing.T) {
	var stream []byte
	var want []Frame
	for i := range 50 {
		body := bytes.Repeat([]byte{byte(i)}, i*7)
		h := Header{Version: Version, Cmd: CmdC2S, AppCode: 1, Seq: uint32(i), Length: uint32(len(body))}
		stream = AppendFrame(stream, h, body)
		want = append(want, Frame{Header: h, Body: body})
	}
	for _, chunk := range []int{1, 2, 17, HeaderSize, 1000, len(stream)} {
		p := NewParser(DefaultMaxBody)
		var got []Frame
		for off := 0; off < len(stream); off += chunk {
			p.Feed(stream[off:min(off+chunk, len(stream))])
			for {
				f, ok, err := p.Next()
				if err != nil {
					t.Fatalf("chunk %d: %v", chunk, err)
				}
				if !ok {
					break
				}
				f.Body = bytes.Clone(f.Body)
				got = append(got, f)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("chunk %d: %d frames, want %d", chunk, len(got), len(want))
		}
		for i := range got {
			if got[i].Header != want[i].Header || !bytes.Equal(got[i].Body, want[i].Body) {
				t.Fatalf("chunk %d frame %d differs", chunk, i)
			}
		}
	}
}

func TestParserErrors(t *testing.T) {
	t.Run("bad flags consumed, stream goes on", func(t *testing.T) {
		p := NewParser(100)
		b := AppendFrame(nil, Header{Cmd: CmdKeepalive, Flags: 0x04, Seq: 1}, []byte("xy"))
		b = AppendFrame(b, Header{Cmd: CmdKeepalive, Seq: 2}, nil)
		p.Feed(b)
		f, ok, err := p.Next()
		if !ok || !errors.Is(err, ErrBadFlags) || f.Seq != 1 || string(f.Body) != "xy" {
			t.Fatalf("first: %+v %v %v", f, ok, err)
		}
		f, ok, err = p.Next()
		if !ok || err != nil || f.Seq != 2 {
			t.Fatalf("second: %+v %v %v", f, ok, err)
		}
	})
	t.Run("oversized length is fatal before the body arrives", func(t *testing.T) {
		p := NewParser(100)
		p.Feed(AppendHeader(nil, Header{Cmd: CmdC2S, Seq: 5, Length: 101}))
		f, ok, err := p.Next()
		if ok || !errors.Is(err, ErrFrameTooLarge) || f.Seq != 5 {
			t.Fatalf("%+v %v %v", f, ok, err)
		}
		if _, _, err := p.Next(); !errors.Is(err, ErrFrameTooLarge) {
			t.Fatalf("error not sticky: %v", err)
		}
	})
	t.Run("truncated body waits", func(t *testing.T) {
		p := NewParser(100)
		p.Feed(AppendFrame(nil, Header{Cmd: CmdC2S, Length: 10}, make([]byte, 10))[:HeaderSize+9])
		if _, ok, err := p.Next(); ok || err != nil {
			t.Fatalf("%v %v", ok, err)
		}
	})
	t.Run("reader reports truncation", func(t *testing.T) {
		full := AppendFrame(nil, Header{Cmd: CmdC2S, Length: 10}, make([]byte, 10))
		for _, cut := range []int{1, HeaderSize - 1, HeaderSize, HeaderSize + 9} {
			r := NewReader(bytes.NewReader(full[:cut]), 100)
			if _, err := r.ReadFrame(); !errors.Is(err, ErrTruncated) {
				t.Fatalf("cut %d: %v", cut, err)
			}
		}
		r := NewReader(bytes.NewReader(full), 100)
		if _, err := r.ReadFrame(); err != nil {
			t.Fatal(err)
		}
		if _, err := r.ReadFrame(); !errors.Is(err, io.EOF) {
			t.Fatalf("clean end: %v", err)
		}
	})
}

func TestZstd(t *testing.T) {
	z, err := NewZstd(1 << 10)
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("driver 42 at 31.2304,121.4737; "), 40) // 1240 bytes
	c := z.Compress(nil, body)
	if len(c) >= len(body) {
		t.Fatalf("did not compress: %d >= %d", len(c), len(body))
	}
	if _, err := z.Decompress(nil, c); !errors.Is(err, ErrDecompress) {
		t.Fatalf("body above the 1 KiB cap decompressed: %v", err)
	}
	small := body[:900]
	got, err := z.Decompress([]byte("x"), z.Compress(nil, small))
	if err != nil || !bytes.Equal(got[1:], small) || got[0] != 'x' {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := z.Decompress(nil, []byte("not zstd at all")); !errors.Is(err, ErrDecompress) {
		t.Fatalf("garbage: %v", err)
	}
	// A bomb: 64 MiB of zeros compresses to a few KiB.
	big, err := NewZstd(64 << 20)
	if err != nil {
		t.Fatal(err)
	}
	bomb := big.Compress(nil, make([]byte, 64<<20))
	if _, err := z.Decompress(nil, bomb); !errors.Is(err, ErrDecompress) {
		t.Fatalf("bomb: %v", err)
	}
}

// TestErrorAnswers: each decoding error maps to the answer PROTOCOL.md
// gives it; a body that must be empty is BAD_BODY and the connection
// stays, and a short header only means "read more".
func TestErrorAnswers(t *testing.T) {
	for _, c := range []struct {
		err   error
		code  devicepb.Code
		fatal bool
	}{
		{ErrShortHeader, devicepb.Code_OK, false},
		{ErrBadMagic, devicepb.Code_OK, true},
		{ErrUnsupportedVersion, devicepb.Code_UNSUPPORTED_VERSION, true},
		{ErrFrameTooLarge, devicepb.Code_FRAME_TOO_LARGE, true},
		{ErrBadFlags, devicepb.Code_BAD_FLAGS, false},
		{ErrTruncated, devicepb.Code_OK, true},
		{ErrDecompress, devicepb.Code_BAD_BODY, false},
		{ErrBodyNotEmpty, devicepb.Code_BAD_BODY, false},
	} {
		if got := WireCode(c.err); got != c.code {
			t.Errorf("WireCode(%v) = %v, want %v", c.err, got, c.code)
		}
		if got := Fatal(c.err); got != c.fatal {
			t.Errorf("Fatal(%v) = %v, want %v", c.err, got, c.fatal)
		}
	}
}
