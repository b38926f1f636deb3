package wire

import (
	"strconv"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages/devicepb"
)

func TestPayloadRoundTrip(t *testing.T) {
	p := Payload{Kind: KindC2C, RunID: 0xdeadbeef, Index: 1<<40 + 7, SentNs: 1795000000123456789}
	for _, size := range []int{0, PayloadHeader, 128} {
		b := AppendPayload([]byte("pre"), p, size)
		if len(b) != 3+max(size, PayloadHeader) {
			t.Fatalf("size %d: len %d", size, len(b))
		}
		got, err := ParsePayload(b[3:])
		if err != nil || got != p {
			t.Fatalf("size %d: %+v %v", size, got, err)
		}
	}
	if _, err := ParsePayload([]byte("order 17 to driver 42, pickup gate 3")); err != ErrNotBench {
		t.Fatalf("foreign payload: %v", err)
	}
}

func TestBodiesMatchProtobuf(t *testing.T) {
	var f Fields
	s2c, _ := proto.Marshal(&devicepb.S2C{MsgId: "abc-1", Payload: []byte("pay"), SentAtMs: 5, ExpiresAtMs: 9})
	if err := f.Decode(s2c); err != nil || string(f.Bytes[S2CMsgID]) != "abc-1" || string(f.Bytes[S2CPayload]) != "pay" || f.Varint[3] != 5 {
		t.Fatalf("S2C: %v %+v", err, f)
	}
	ack, _ := proto.Marshal(&devicepb.C2CAck{Code: devicepb.Code_INBOX_FULL, MsgId: "m", ClientMsgId: "42"})
	if err := f.Decode(ack); err != nil || f.Varint[AckCode] != uint64(devicepb.Code_INBOX_FULL) || string(f.Bytes[AckMsgID]) != "m" {
		t.Fatalf("C2C_ACK: %v %+v", err, f)
	}
	if idx, ok := ParseIndex(f.Bytes[AckClientMsgID]); !ok || idx != 42 {
		t.Fatalf("index %d %v", idx, ok)
	}
	var c2c devicepb.C2C
	if err := proto.Unmarshal(AppendC2C(nil, []byte("bob"), []byte("7"), []byte("hi")), &c2c); err != nil ||
		c2c.ToUid != "bob" || c2c.ClientMsgId != "7" || string(c2c.Payload) != "hi" {
		t.Fatalf("C2C: %v %v", &c2c, err)
	}
	var c2s devicepb.C2S
	if err := proto.Unmarshal(AppendC2S(nil, []byte("8"), []byte("gps")), &c2s); err != nil || c2s.ClientMsgId != "8" || string(c2s.Payload) != "gps" {
		t.Fatalf("C2S: %v %v", &c2s, err)
	}
	var sa devicepb.S2CAck
	if err := proto.Unmarshal(AppendMsgIDAck(nil, []byte("abc-1")), &sa); err != nil || sa.MsgId != "abc-1" {
		t.Fatalf("S2C_ACK: %v %v", &sa, err)
	}
	if err := f.Decode([]byte{0x0A, 0x05, 'a'}); err == nil {
		t.Fatal("truncated body decoded")
	}
	if _, ok := ParseIndex([]byte(strconv.FormatUint(1<<63, 10) + "0")); ok {
		t.Fatal("overlong index parsed")
	}
	if Hash([]byte("abc")) != HashString("abc") {
		t.Fatal("hashes differ")
	}
}

func BenchmarkDecodeS2C(b *testing.B) {
	body, _ := proto.Marshal(&devicepb.S2C{MsgId: "0c9f7d2a1b3e-000001", Payload: make([]byte, 124), SentAtMs: 1795000000000, ExpiresAtMs: 1795000060000})
	var f Fields
	b.ReportAllocs()
	for b.Loop() {
		if err := f.Decode(body); err != nil {
			b.Fatal(err)
		}
	}
}
