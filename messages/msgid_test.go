package messages

import (
	"bytes"
	"testing"

	"github.com/courier-im/courier/messages/devicepb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// msgIDCases are bodies MsgIDBody must judge as proto.Unmarshal does.
func msgIDCases() [][]byte {
	var cases [][]byte
	add := func(b []byte) { cases = append(cases, b) }
	ok, _ := proto.Marshal(&devicepb.S2CAck{MsgId: "0001-abc"})
	add(ok)
	add(nil)
	add(ok[:len(ok)-1])                                                                       // truncated id
	add(append(append([]byte{}, ok...), ok...))                                               // repeated: the last wins
	add(protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "\xff\xfe")) // not UTF-8
	add(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 7))         // field 1 of another wire type
	add(protowire.AppendVarint(protowire.AppendTag(append([]byte{}, ok...), 9, protowire.VarintType), 300))
	add(protowire.AppendTag(nil, 0, protowire.VarintType))   // field number 0
	add(protowire.AppendTag(nil, 5, protowire.EndGroupType)) // unmatched end of group
	g := protowire.AppendTag(nil, 5, protowire.StartGroupType)
	g = protowire.AppendVarint(protowire.AppendTag(g, 1, protowire.VarintType), 1)
	add(protowire.AppendTag(g, 5, protowire.EndGroupType)) // a well-formed group
	add(g)                                                 // an unterminated one
	add([]byte{0x0a, 0x80})                                // a length that does not end
	add(protowire.AppendFixed32(protowire.AppendTag(nil, 3, protowire.Fixed32Type), 1))
	add(protowire.AppendFixed64(protowire.AppendTag(nil, 3, protowire.Fixed64Type), 1)[:5])
	return cases
}

func checkMsgIDBody(t *testing.T, body []byte) {
	t.Helper()
	var want devicepb.S2CAck
	wantErr := proto.Unmarshal(body, &want)
	id, ok := MsgIDBody(body)
	if ok != (wantErr == nil) {
		t.Fatalf("body %x: MsgIDBody ok=%v, proto.Unmarshal error %v", body, ok, wantErr)
	}
	if ok && !bytes.Equal(id, []byte(want.MsgId)) {
		t.Fatalf("body %x: MsgIDBody id %q, proto.Unmarshal %q", body, id, want.MsgId)
	}
}

func TestMsgIDBodyMatchesProtoUnmarshal(t *testing.T) {
	for _, b := range msgIDCases() {
		checkMsgIDBody(t, b)
	}
}

func TestMsgIDBodyAllocatesNothing(t *testing.T) {
	body, _ := proto.Marshal(&devicepb.C2CPushAck{MsgId: "0001-abc"})
	if n := testing.AllocsPerRun(100, func() { MsgIDBody(body) }); n != 0 {
		t.Fatalf("MsgIDBody allocates %v times", n)
	}
}

func FuzzMsgIDBody(f *testing.F) {
	for _, b := range msgIDCases() {
		f.Add(b)
	}
	f.Fuzz(checkMsgIDBody)
}

// BenchmarkMsgIDBody compares MsgIDBody with proto.Unmarshal on an
// acknowledgement's body (BENCHMARKS.md).
func BenchmarkMsgIDBody(b *testing.B) {
	body, _ := proto.Marshal(&devicepb.S2CAck{MsgId: "0a1b2c3d4e5f60718293a4b5"})
	b.Run("proto.Unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var m devicepb.S2CAck
			if proto.Unmarshal(body, &m) != nil {
				b.Fatal("bad body")
			}
		}
	})
	b.Run("MsgIDBody", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := MsgIDBody(body); !ok {
				b.Fatal("bad body")
			}
		}
	})
}
