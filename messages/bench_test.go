package messages

import (
	"testing"

	"github.com/courier-im/courier/messages/devicepb"
	"google.golang.org/protobuf/proto"
)

var sinkHeader Header

func BenchmarkHeaderEncode(b *testing.B) {
	h := Header{Cmd: CmdS2C, AppCode: 2, MsgType: 7, Seq: 123456, Length: 180}
	buf := make([]byte, HeaderSize)
	b.ReportAllocs()
	for b.Loop() {
		PutHeader(buf, h)
	}
}

func BenchmarkHeaderDecode(b *testing.B) {
	buf := AppendHeader(nil, Header{Cmd: CmdS2C, AppCode: 2, MsgType: 7, Seq: 123456, Length: 180})
	b.ReportAllocs()
	for b.Loop() {
		h, err := ParseHeader(buf, DefaultMaxBody)
		if err != nil {
			b.Fatal(err)
		}
		sinkHeader = h
	}
}

// typicalS2C is an order pushed to a driver: a 160-byte payload.
func typicalS2C() *devicepb.S2C {
	payload := []byte(`{"order":"A-20261127-000123","pickup":[31.2304,121.4737],"drop":[31.1443,121.8083],"fare":4650,"eta":420,"note":"gate 3"}`)
	return &devicepb.S2C{MsgId: "0c9f7d2a1b3e-000001", Payload: payload, SentAtMs: 1795000000000, ExpiresAtMs: 1795000060000}
}

func BenchmarkS2CFrameEncode(b *testing.B) {
	msg := typicalS2C()
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		buf, err = AppendMessage(buf[:0], Header{Cmd: CmdS2C, AppCode: 2, MsgType: 7, Seq: 123456}, msg)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkS2CFrameDecode(b *testing.B) {
	frame, err := AppendMessage(nil, Header{Cmd: CmdS2C, AppCode: 2, MsgType: 7, Seq: 123456}, typicalS2C())
	if err != nil {
		b.Fatal(err)
	}
	p := NewParser(DefaultMaxBody)
	var msg devicepb.S2C
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		p.Feed(frame)
		f, ok, err := p.Next()
		if !ok || err != nil {
			b.Fatal(ok, err)
		}
		if err := proto.Unmarshal(f.Body, &msg); err != nil {
			b.Fatal(err)
		}
	}
}
