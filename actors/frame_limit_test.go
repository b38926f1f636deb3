package actors

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
)

// pullAll pulls the whole inbox page by page, as a client does (after the
// last seq of each page while has_more), and returns the pages' bodies.
func (h *harness) pullAll(c uint64) (pages [][]byte, msgs []*devicepb.StoredMessage) {
	h.t.Helper()
	after := uint32(0)
	for range 1000 {
		pull, _ := proto.Marshal(&devicepb.Pull{AfterSeq: after})
		h.d.Frame(h.now, &actorpb.DeviceFrame{Conn: conn(c), Epoch: h.d.session.Epoch, Cmd: uint32(messages.CmdPull), Body: pull})
		fs := framesTo(h.settle(), c)
		if len(fs) != 1 || messages.Cmd(fs[0].Cmd) != messages.CmdPullAck {
			h.t.Fatalf("PULL answered with %v", cmds(fs))
		}
		pa := body(h.t, fs[0], &devicepb.PullAck{})
		if pa.Code != devicepb.Code_OK || len(pa.Messages) == 0 {
			h.t.Fatalf("PULL_ACK %v with %d messages", pa.Code, len(pa.Messages))
		}
		pages, msgs = append(pages, fs[0].Body), append(msgs, pa.Messages...)
		if !pa.HasMore {
			return pages, msgs
		}
		after = pa.Messages[len(pa.Messages)-1].Seq
	}
	h.t.Fatal("PULL never reached the end of the inbox")
	return nil, nil
}

// TestPullAckFitsTheFrameLimit: a device sizes its reader to the frame
// limit (64 KiB by default; PROTOCOL.md caps decompressed bodies at it),
// so no PULL_ACK may pass it, whatever the window's bytes allow. Pages are
// still as full as the limit lets them be.
func TestPullAckFitsTheFrameLimit(t *testing.T) {
	for _, limit := range []int{messages.DefaultMaxBody, 8 << 10} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			h := newHarness(t)
			h.cfg.MaxFrameSize = limit
			h.cfg.InboxMaxBytes = 16 << 20
			var sizes []int
			for i := range 120 {
				n := (i * 997) % (limit / 3) // 0 .. a third of the limit, mixed
				sizes = append(sizes, n)
				h.push(strings.Repeat("x", n), uint64(i+1))
			}
			h.settle()
			h.login(1)
			h.settle()
			pages, msgs := h.pullAll(1)
			if len(msgs) != len(sizes) {
				t.Fatalf("pulled %d messages of %d", len(msgs), len(sizes))
			}
			for i, m := range msgs {
				if m.Seq != uint32(i+1) || len(m.Payload) != sizes[i] {
					t.Fatalf("message %d: seq %d, %d bytes; want seq %d, %d bytes", i, m.Seq, len(m.Payload), i+1, sizes[i])
				}
			}
			next := 0
			for i, p := range pages {
				if len(p) > limit {
					t.Fatalf("PULL_ACK %d: %d bytes, frame limit %d", i, len(p), limit)
				}
				var pa devicepb.PullAck
				_ = proto.Unmarshal(p, &pa)
				next += len(pa.Messages)
				if pa.HasMore && len(pa.Messages) < h.cfg.PullPage {
					// The page ended on bytes: the next message would not have fitted.
					pa.Messages = append(pa.Messages, msgs[next])
					if n := proto.Size(&pa); n <= limit && n <= h.cfg.WindowBytes {
						t.Fatalf("PULL_ACK %d ended early: with the next message it is %d bytes, limit %d", i, n, limit)
					}
				}
			}
			if len(pages) < 2 {
				t.Fatalf("%d pages: the test must make the limit matter", len(pages))
			}
		})
	}
}

// TestC2CTooLargeToDeliver: a C2C frame within the limit can make a
// delivery beyond it (the message id, the sender's uid, the times and the
// seq are added). The largest C2C whose PULL_ACK fits is stored, and its
// C2C_PUSH and PULL_ACK fit; one byte more is refused with
// MESSAGE_TOO_LARGE and nothing is stored.
func TestC2CTooLargeToDeliver(t *testing.T) {
	h := newHarness(t)
	h.login(1)
	h.settle()
	from := strings.Repeat("s", 128) // the longest uid
	var delivered []*actorpb.OutFrame
	send := func(n int, id string) *devicepb.C2CAck {
		t.Helper()
		h.d.C2C(h.now, &actorpb.C2CSend{ReplyTo: conn(9), FrameSeq: 5, FromUid: from, AtMs: h.now.UnixMilli(),
			C2C: &devicepb.C2C{ToUid: "driver-7", ClientMsgId: id, Payload: make([]byte, n)}}, nil)
		effs := h.settle()
		delivered = framesTo(effs, 1)
		return body(t, framesTo(effs, 9)[0], &devicepb.C2CAck{})
	}
	// The largest payload whose C2C frame fits the limit is refused.
	id := strings.Repeat("c", 128)
	frameMax := messages.DefaultMaxBody - proto.Size(&devicepb.C2C{ToUid: "driver-7", ClientMsgId: id}) - 4
	if n := proto.Size(&devicepb.C2C{ToUid: "driver-7", ClientMsgId: id, Payload: make([]byte, frameMax)}); n > messages.DefaultMaxBody {
		t.Fatalf("test setup: C2C of %d bytes", n)
	}
	writes := len(h.writes)
	ack := send(frameMax, id)
	if ack.Code != devicepb.Code_MESSAGE_TOO_LARGE || ack.ClientMsgId != id || !strings.Contains(ack.Reason, "frame limit") {
		t.Fatalf("C2C_ACK %v %q, want MESSAGE_TOO_LARGE", ack.Code, ack.Reason)
	}
	if h.d.Pending() != 0 || len(h.writes) != writes {
		t.Fatalf("a refused C2C was stored: pending %d, writes %d → %d", h.d.Pending(), writes, len(h.writes))
	}
	// Find the largest payload that is accepted: every byte below it is.
	lo, hi := 0, frameMax
	for lo < hi {
		mid := (lo + hi + 1) / 2
		e := &actorpb.InboxEntry{Seq: 1, Kind: devicepb.Kind_KIND_C2C, MsgId: "m1", Payload: make([]byte, mid),
			SentAtMs: h.now.UnixMilli(), ExpiresAtMs: h.now.Add(h.cfg.C2CTTL).UnixMilli(), FromUid: from, ClientMsgId: "k"}
		if h.d.tooLarge(e) == 0 {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	if ack := send(lo+1, "over"); ack.Code != devicepb.Code_MESSAGE_TOO_LARGE {
		t.Fatalf("one byte over: %v", ack.Code)
	}
	h.ids = 0 // the stored message's id is m1, as above
	ack = send(lo, "k")
	if ack.Code != devicepb.Code_OK {
		t.Fatalf("the largest deliverable C2C: %v %q", ack.Code, ack.Reason)
	}
	if len(delivered) != 1 || messages.Cmd(delivered[0].Cmd) != messages.CmdC2CPush || len(delivered[0].Body) > messages.DefaultMaxBody {
		t.Fatalf("delivery: %v", delivered)
	}
	_, msgs := h.pullAll(1)
	if len(msgs) != 1 || len(msgs[0].Payload) != lo {
		t.Fatalf("pulled %d messages", len(msgs))
	}
	// docs/protocol.md promises a payload of 65,200 bytes always fits:
	// the longest uids and client_msg_id, the largest seq and msgtype, a
	// message id of the longest the ids have.
	worst := &actorpb.InboxEntry{Seq: math.MaxUint32, Kind: devicepb.Kind_KIND_C2C, MsgId: strings.Repeat("i", 26),
		Msgtype: math.MaxUint16, Payload: make([]byte, 65_200), SentAtMs: h.now.UnixMilli(),
		ExpiresAtMs: h.now.Add(h.cfg.C2CTTL).UnixMilli(), FromUid: from, ClientMsgId: id}
	if over := h.d.tooLarge(worst); over > 0 {
		t.Fatalf("a 65,200-byte payload is %d bytes over", over)
	}
	pa := &devicepb.PullAck{Messages: msgs, HasMore: true}
	if n := proto.Size(pa); n != messages.DefaultMaxBody {
		t.Fatalf("the largest PULL_ACK of it is %d bytes, want exactly the limit %d", n, messages.DefaultMaxBody)
	}
}
