package cluster

import (
	"testing"

	"github.com/courier-im/courier/messages/actorpb"
)

// TestReplyBatch: a RequestMany's replies are collected by id, in any
// order; the wait ends with the last one; a batch given up leaves nothing
// registered, and replies that come after are dropped.
func TestReplyBatch(t *testing.T) {
	var r replyRegistry
	w := r.registerMany(3)
	for _, i := range []uint64{2, 0, 1} {
		select {
		case <-w.done:
			t.Fatal("done before the last reply")
		default:
		}
		r.deliver(&actorpb.Reply{ReqId: w.base + i})
	}
	<-w.done
	for i := range w.slots {
		if rep := w.slots[i].Load(); rep == nil || rep.ReqId != w.base+uint64(i) {
			t.Fatalf("slot %d: %v", i, rep)
		}
	}
	r.forgetMany(w)

	g := r.registerMany(4)
	if g.base <= w.base+2 {
		t.Fatalf("ids reused: %d after %d", g.base, w.base)
	}
	r.deliver(&actorpb.Reply{ReqId: g.base + 1})
	r.forgetMany(g) // given up with three missing
	r.deliver(&actorpb.Reply{ReqId: g.base + 2})
	if g.slots[1].Load() == nil || g.slots[2].Load() != nil {
		t.Fatal("a reply after the batch was given up was kept, or one before was lost")
	}
	for i := range r.shards {
		if n := len(r.shards[i].many) + len(r.shards[i].waiting); n != 0 {
			t.Fatalf("shard %d still holds %d entries", i, n)
		}
	}
}
