package actors

import (
	"bytes"
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
)

func TestS2CBodyMatchesProtoMarshal(t *testing.T) {
	big := bytes.Repeat([]byte{0xAB}, 70_000) // a length needing a 3-byte varint
	cases := []*devicepb.S2C{
		{},
		{MsgId: "m"},
		{Payload: []byte{0}},
		{SentAtMs: 1},
		{ExpiresAtMs: 1},
		{MsgId: "01JDZ3YH6M4Q8R2S5T7V9W0X1Y", Payload: []byte("order 42 is ready"), SentAtMs: 1_764_500_000_000, ExpiresAtMs: 1_764_600_000_000},
		{MsgId: "x", Payload: big, SentAtMs: -1, ExpiresAtMs: math.MaxInt64},
		{MsgId: string(bytes.Repeat([]byte("é"), 100)), SentAtMs: math.MinInt64},
	}
	for i, m := range cases {
		want, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got := appendS2C(nil, m.MsgId, m.Payload, m.SentAtMs, m.ExpiresAtMs)
		if !bytes.Equal(got, want) {
			t.Fatalf("case %d: appendS2C %x, proto.Marshal %x", i, got, want)
		}
		if n := sizeS2C(m.MsgId, m.Payload, m.SentAtMs, m.ExpiresAtMs); n != len(want) {
			t.Fatalf("case %d: sizeS2C %d, encoded %d", i, n, len(want))
		}
		f := s2cFrame(7, 9, m.MsgId, m.Payload, m.SentAtMs, m.ExpiresAtMs)
		if f.Cmd != uint32(messages.CmdS2C) || f.Msgtype != 7 || f.Seq != 9 || !bytes.Equal(f.Body, want) {
			t.Fatalf("case %d: frame %v", i, f)
		}
	}
}

func TestS2CToConnIsOneFrameForTheSession(t *testing.T) {
	d := &Device{id: store.Identity{App: 3, UID: "u"},
		session: &actorpb.SessionRecord{Epoch: 5, Conn: &actorpb.ConnRef{ConnId: 11}}}
	tc := d.s2cToConn(77, "id", []byte("gps"), 10, 0)
	if tc.AppCode != 3 || tc.Uid != "u" || tc.ConnId != 11 || tc.Epoch != 5 || len(tc.Frames) != 1 {
		t.Fatalf("ToConn %v", tc)
	}
	f := tc.Frames[0]
	var m devicepb.S2C
	if err := proto.Unmarshal(f.Body, &m); err != nil || f.Cmd != uint32(messages.CmdS2C) || f.Msgtype != 77 || f.Seq != 0 ||
		m.MsgId != "id" || string(m.Payload) != "gps" || m.SentAtMs != 10 || m.ExpiresAtMs != 0 {
		t.Fatalf("frame %v body %v %v", f, &m, err)
	}
	// The ToConn goes through remoting to another member's gate: it
	// must marshal like any other.
	b, err := proto.Marshal(tc)
	if err != nil {
		t.Fatal(err)
	}
	var back actorpb.ToConn
	if err := proto.Unmarshal(b, &back); err != nil || !proto.Equal(&back, tc) {
		t.Fatalf("round trip %v %v", &back, err)
	}
}
