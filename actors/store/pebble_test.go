package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
)

func openTest(t *testing.T, dir string) *Pebble {
	t.Helper()
	s, err := OpenPebble(PebbleConfig{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// commitSync submits w and waits for it.
func commitSync(t *testing.T, s Store, w *Write) {
	t.Helper()
	errc := make(chan error, 1)
	s.Submit(w, func(err error) { errc <- err })
	if err := <-errc; err != nil {
		t.Fatalf("commit: %v", err)
	}
}

func entry(seq uint32) *actorpb.InboxEntry {
	return &actorpb.InboxEntry{Seq: seq, Kind: devicepb.Kind_KIND_S2C, MsgId: fmt.Sprintf("m%d", seq), Payload: []byte("p")}
}

func TestPebbleLoadEmpty(t *testing.T) {
	s := openTest(t, t.TempDir())
	snap, err := s.Load(context.Background(), Identity{App: 1, UID: "nobody"})
	if err != nil {
		t.Fatal(err)
	}
	if snap.Meta.LastSeq != 0 || len(snap.Inbox) != 0 {
		t.Fatalf("empty identity: %+v", snap)
	}
	if _, err := s.Load(context.Background(), Identity{App: 1}); !errors.Is(err, ErrBadIdentity) {
		t.Fatalf("empty uid: %v", err)
	}
}

func TestPebbleInboxSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	id := Identity{App: 2, UID: "driver-1"}
	// A uid that is a prefix of the other must not see its keys.
	other := Identity{App: 2, UID: "driver-10"}
	meta := &actorpb.IdentityMeta{LastSeq: 3, LastEpoch: 7, Session: &actorpb.SessionRecord{Epoch: 7, Online: true}}
	commitSync(t, s, &Write{ID: id, Meta: meta, Put: []*actorpb.InboxEntry{entry(1), entry(2), entry(3)}})
	commitSync(t, s, &Write{ID: other, Put: []*actorpb.InboxEntry{entry(1)}})
	commitSync(t, s, &Write{ID: id, Delete: []uint32{2}})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openTest(t, dir)
	snap, err := s2.Load(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(snap.Meta, meta) {
		t.Fatalf("meta = %v, want %v", snap.Meta, meta)
	}
	if len(snap.Inbox) != 2 || snap.Inbox[0].Seq != 1 || snap.Inbox[1].Seq != 3 {
		t.Fatalf("inbox = %v", snap.Inbox)
	}
	if !proto.Equal(snap.Inbox[1], entry(3)) {
		t.Fatalf("entry 3 = %v", snap.Inbox[1])
	}
}

func TestPebbleInboxOrderBeyond255(t *testing.T) {
	s := openTest(t, t.TempDir())
	id := Identity{App: 1, UID: "u"}
	var w Write
	w.ID = id
	for _, seq := range []uint32{70000, 1, 256, 255, 65536} {
		w.Put = append(w.Put, entry(seq))
	}
	commitSync(t, s, &w)
	snap, err := s.Load(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	want := []uint32{1, 255, 256, 65536, 70000}
	for i, e := range snap.Inbox {
		if e.Seq != want[i] {
			t.Fatalf("order: got seq %d at %d, want %d", e.Seq, i, want[i])
		}
	}
}

func TestPebbleIdempotency(t *testing.T) {
	s := openTest(t, t.TempDir())
	now := time.Now()
	s.now = func() time.Time { return now }
	id := Identity{App: 1, UID: "u"}
	rec := &actorpb.IdempotencyRecord{MsgId: "m1", Seq: 1, ExpiresAtMs: now.Add(time.Hour).UnixMilli()}
	old := &actorpb.IdempotencyRecord{MsgId: "m0", Seq: 9, ExpiresAtMs: now.Add(-time.Second).UnixMilli()}
	commitSync(t, s, &Write{ID: id, Idem: []IdemPut{{"k1", rec}, {"k0", old}}})

	got, err := s.Idempotency(context.Background(), id, "k1")
	if err != nil || !proto.Equal(got, rec) {
		t.Fatalf("k1 = %v, %v", got, err)
	}
	if got, err := s.Idempotency(context.Background(), id, "k0"); got != nil || err != nil {
		t.Fatalf("expired key returned: %v, %v", got, err)
	}
	if got, err := s.Idempotency(context.Background(), id, "nope"); got != nil || err != nil {
		t.Fatalf("unknown key: %v, %v", got, err)
	}
	n, err := s.SweepExpired()
	if err != nil || n != 1 {
		t.Fatalf("sweep = %d, %v; want 1", n, err)
	}
	now = now.Add(2 * time.Hour)
	if n, err := s.SweepExpired(); err != nil || n != 1 {
		t.Fatalf("second sweep = %d, %v; want 1", n, err)
	}
	now = now.Add(-2 * time.Hour)
	if got, _ := s.Idempotency(context.Background(), id, "k1"); got != nil {
		t.Fatal("swept key still there")
	}
}

// TestPebbleGroupCommit checks that concurrent writers share syncs and
// that every write completes, in submission order per submitter.
func TestPebbleGroupCommit(t *testing.T) {
	var mu sync.Mutex
	batches, writes := 0, 0
	s, err := OpenPebble(PebbleConfig{Dir: t.TempDir(), Observe: func(n int, _ time.Duration, err error) {
		mu.Lock()
		batches++
		writes += n
		mu.Unlock()
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const writers, each = 50, 40
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := Identity{App: 1, UID: fmt.Sprintf("u%d", w)}
			done := make(chan error, each)
			last := 0
			var order sync.Mutex
			for i := 1; i <= each; i++ {
				s.Submit(&Write{ID: id, Put: []*actorpb.InboxEntry{entry(uint32(i))}}, func(err error) {
					order.Lock()
					if last != i-1 {
						err = fmt.Errorf("write %d completed after %d", i, last)
					}
					last = i
					order.Unlock()
					done <- err
				})
			}
			for range each {
				if err := <-done; err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if writes != writers*each {
		t.Fatalf("committed %d writes, want %d", writes, writers*each)
	}
	if batches >= writes {
		t.Fatalf("%d batches for %d writes: no group commit", batches, writes)
	}
	t.Logf("%d writes in %d batches", writes, batches)
	snap, err := s.Load(context.Background(), Identity{App: 1, UID: "u7"})
	if err != nil || len(snap.Inbox) != each {
		t.Fatalf("u7 inbox: %d entries, %v", len(snap.Inbox), err)
	}
}

func TestPebbleClosed(t *testing.T) {
	s, err := OpenPebble(PebbleConfig{Dir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	errc := make(chan error, 1)
	s.Submit(&Write{ID: Identity{App: 1, UID: "u"}, Delete: []uint32{1}}, func(err error) { errc <- err })
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("submit after close: %v", err)
	}
}

func BenchmarkPebbleCommit(b *testing.B) {
	s, err := OpenPebble(PebbleConfig{Dir: b.TempDir()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	payload := make([]byte, 200)
	var wg sync.WaitGroup
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		wg.Add(1)
		id := Identity{App: 1, UID: fmt.Sprintf("u%d", i%10000)}
		s.Submit(&Write{ID: id, Put: []*actorpb.InboxEntry{{Seq: uint32(i), MsgId: "m", Payload: payload}}}, func(error) { wg.Done() })
	}
	wg.Wait()
}

func TestPebbleExpired(t *testing.T) {
	s := openTest(t, t.TempDir())
	now := time.Now()
	exp := func(seq uint32, at time.Time) *actorpb.InboxEntry {
		e := entry(seq)
		e.ExpiresAtMs = at.UnixMilli()
		return e
	}
	// a: one live and one expired entry; b: only live; c: expired twice.
	commitSync(t, s, &Write{ID: Identity{App: 1, UID: "a"}, Put: []*actorpb.InboxEntry{exp(1, now.Add(time.Hour)), exp(2, now.Add(-time.Second))}})
	commitSync(t, s, &Write{ID: Identity{App: 1, UID: "b"}, Put: []*actorpb.InboxEntry{exp(1, now.Add(time.Hour)), entry(2)}})
	commitSync(t, s, &Write{ID: Identity{App: 2, UID: "c"}, Put: []*actorpb.InboxEntry{exp(1, now.Add(-time.Minute)), exp(2, now.Add(-time.Second))}})
	var got []Identity
	if err := s.Expired(context.Background(), now, 100, func(id Identity) { got = append(got, id) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != (Identity{1, "a"}) || got[1] != (Identity{2, "c"}) {
		t.Fatalf("expired identities %v", got)
	}
	got = nil
	_ = s.Expired(context.Background(), now, 1, func(id Identity) { got = append(got, id) })
	if len(got) != 1 {
		t.Fatalf("max not respected: %v", got)
	}
}
