package node_test

import (
	"strings"
	"testing"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// TestServerFramesFitTheFrameLimit: a client written from PROTOCOL.md
// caps every body it reads, decompressed, at the frame limit (64 KiB by
// default). testkit's devices read with exactly that cap, so a larger
// frame fails the read. Here the inbox holds the largest messages there
// are: app-server pushes of api.max-payload and a C2C as large as its
// delivery may be, from a sender with the longest uid. Their deliveries
// and every PULL_ACK page, plain and compressed, fit; a C2C whose
// delivery would not is refused with MESSAGE_TOO_LARGE, and not stored.
func TestServerFramesFitTheFrameLimit(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--actors.window", "1"}})
	api := n.API(t)
	sender := strings.Repeat("s", 128)
	from := n.Device(t, 1, sender)
	// A C2C frame of the whole limit: its delivery adds the message id,
	// the sender, the times and the seq.
	id := strings.Repeat("c", 128)
	payload := messages.DefaultMaxBody - 128 - len("rx") - 3 - 2 - 4
	seq := sendC2C(from, "rx", id, strings.Repeat("p", payload))
	if ack := expectC2CAck(t, from, seq); ack.Code != devicepb.Code_MESSAGE_TOO_LARGE || !strings.Contains(ack.Reason, "frame limit") {
		t.Fatalf("C2C of a whole frame: %v %q, want MESSAGE_TOO_LARGE", ack.Code, ack.Reason)
	}
	// 1 KiB less is delivered.
	seq = sendC2C(from, "rx", id, strings.Repeat("q", payload-1024))
	if ack := expectC2CAck(t, from, seq); ack.Code != devicepb.Code_OK {
		t.Fatalf("C2C 1 KiB below the limit: %v %q", ack.Code, ack.Reason)
	}
	const pushes = 12
	for range pushes {
		push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "rx", Payload: []byte(strings.Repeat("r", 60<<10))})
	}
	for _, zstd := range []bool{false, true} {
		rx := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
		if ack := rx.Login("rx", testkit.Token(t, 1, "rx"), zstd); ack.Code != devicepb.Code_OK || ack.Pending != pushes+1 || ack.MaxFrameSize != messages.DefaultMaxBody {
			t.Fatalf("LOGIN_ACK %v, pending %d, want %d, frame limit %d, want %d", ack.Code, ack.Pending, pushes+1, ack.MaxFrameSize, messages.DefaultMaxBody)
		}
		var got []uint32
		after, pages := uint32(0), 0
		for {
			seq := rx.NextSeq()
			rx.Send(messages.CmdPull, seq, &devicepb.Pull{AfterSeq: after})
			pa := readPullAck(t, rx, seq)
			pages++
			if len(pa.Messages) == 0 {
				t.Fatalf("page %d is empty", pages)
			}
			for _, m := range pa.Messages {
				got = append(got, m.Seq)
				after = m.Seq
			}
			if !pa.HasMore {
				break
			}
		}
		if len(got) != pushes+1 || got[0] != 1 || got[pushes] != pushes+1 || pages != pushes+1 {
			t.Fatalf("zstd %v: %d pages, seqs %v: want one 60 KiB message a page", zstd, pages, got)
		}
		rx.Close()
	}
}

// readPullAck reads frames until the PULL_ACK of the PULL with seq; the
// window's C2C_PUSH (and its redeliveries) may come before it. Failures
// name frames without their bodies, which are large here.
func readPullAck(t *testing.T, d *testkit.Device, seq uint32) *devicepb.PullAck {
	t.Helper()
	for {
		f, err := d.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for PULL_ACK %d: %v", seq, err)
		}
		switch m := f.Msg.(type) {
		case *devicepb.PullAck:
			if f.Seq == seq {
				return m
			}
		case *devicepb.C2CPush:
		default:
			t.Fatalf("waiting for PULL_ACK %d: got %v (seq %d)", seq, f.Cmd, f.Seq)
		}
	}
}
