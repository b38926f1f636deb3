package messages

import (
	"bytes"
	"errors"
	"testing"

	"github.com/courier-im/courier/messages/devicepb"
	"google.golang.org/protobuf/proto"
)

// FuzzParser feeds arbitrary input to a Parser in chunks whose sizes the
// fuzzer also chooses. The parser must never panic; every frame it returns
// must re-encode to exactly the bytes it came from, and its body must
// decode (or fail to decode) without a panic.
func FuzzParser(f *testing.F) {
	seed := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	login, _ := AppendMessage(nil, Header{Cmd: CmdLogin, AppCode: 1, Seq: 1},
		&devicepb.Login{Uid: "u1", Token: "t", DeviceId: "d", Zstd: true})
	s2c, _ := AppendMessage(nil, Header{Cmd: CmdS2C, AppCode: 1, Seq: 2},
		&devicepb.S2C{MsgId: "m", Payload: []byte("p")})
	ka := AppendFrame(nil, Header{Cmd: CmdKeepalive, Seq: 3}, nil)
	f.Add(seed(login, s2c, ka), []byte{1, 5, 18, 200})
	f.Add(seed(ka, ka, ka), []byte{18})
	f.Add(header(func(b []byte) { b[2] = 9 }), []byte{3})
	f.Add(header(func(b []byte) { b[4] = 0x80 }), []byte{})
	f.Add([]byte{0xC0, 0xDE, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF}, []byte{7})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), []byte{2})

	f.Fuzz(func(t *testing.T, data []byte, chunks []byte) {
		const maxBody = 1 << 12
		p := NewParser(maxBody)
		consumed := 0
		off := 0
		for i := 0; off < len(data); i++ {
			n := len(data) - off
			if len(chunks) > 0 {
				n = min(int(chunks[i%len(chunks)])+1, n)
			}
			p.Feed(data[off : off+n])
			off += n
			for {
				fr, ok, err := p.Next()
				if err != nil && !errors.Is(err, ErrBadFlags) {
					if !Fatal(err) {
						t.Fatalf("non-fatal error stopped the parser: %v", err)
					}
					return
				}
				if !ok {
					break
				}
				if fr.Length > maxBody || int(fr.Length) != len(fr.Body) {
					t.Fatalf("frame length %d, body %d", fr.Length, len(fr.Body))
				}
				size := HeaderSize + len(fr.Body)
				again := AppendFrame(nil, fr.Header, fr.Body)
				orig := data[consumed : consumed+size]
				// The reserved byte is ignored on receipt and written as 0.
				if !bytes.Equal(again[:5], orig[:5]) || !bytes.Equal(again[6:], orig[6:]) {
					t.Fatalf("round trip differs:\n got % x\nwant % x", again, orig)
				}
				consumed += size
				if m, err := DecodeBody(fr.Cmd, fr.Body); err == nil && m != nil {
					// A body that decodes re-encodes to one that decodes
					// to the same message.
					b, err := proto.Marshal(m)
					if err != nil {
						t.Fatalf("re-marshal: %v", err)
					}
					m2 := NewBody(fr.Cmd)
					if err := proto.Unmarshal(b, m2); err != nil || !proto.Equal(m, m2) {
						t.Fatalf("body round trip: %v", err)
					}
				}
			}
		}
		if consumed+p.Buffered() != len(data) {
			t.Fatalf("consumed %d + buffered %d != %d", consumed, p.Buffered(), len(data))
		}
	})
}

// FuzzHeaderRoundTrip checks that every header ParseHeader accepts encodes
// back to the same 18 bytes (reserved byte aside).
func FuzzHeaderRoundTrip(f *testing.F) {
	f.Add(AppendHeader(nil, Header{Cmd: CmdS2C, Seq: 1, Length: 3}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b, DefaultMaxBody)
		if err != nil {
			return
		}
		again := AppendHeader(nil, h)
		if !bytes.Equal(again[:5], b[:5]) || !bytes.Equal(again[6:], b[6:HeaderSize]) {
			t.Fatalf("got % x, want % x", again, b[:HeaderSize])
		}
	})
}
