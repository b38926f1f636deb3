package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/testkit"
)

// Tests of what only the Pebble store has; the contract both stores keep
// is in contract_test.go.

// TestPebbleUpgradesFormat1 opens a database written before the inbox
// expiry index existed: the index is built at open, and a database of a
// newer format is refused.
func TestPebbleUpgradesFormat1(t *testing.T) {
	dir := t.TempDir()
	c := newClock()
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	id := Identity{App: 1, UID: "old"}
	e := entry(1)
	e.ExpiresAtMs = c.At(-time.Minute)
	v, _ := proto.Marshal(e)
	if err := db.Set(inboxKey(nil, id, 1), v, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := OpenPebble(PebbleConfig{Dir: dir, Now: c.Now}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []Identity
	if err := s.Expired(context.Background(), c.Now(), 10, func(id Identity) { got = append(got, id) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != id {
		t.Fatalf("expired after the upgrade: %v", got)
	}
	if snap := load(t, s, id); len(snap.Inbox) != 1 {
		t.Fatalf("loaded %d entries after the upgrade, want 1", len(snap.Inbox))
	}
	if err := s.db.Set([]byte{prefixVersion}, binary.BigEndian.AppendUint32(nil, pebbleFormat+1), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := OpenPebble(PebbleConfig{Dir: dir}, nil); !errors.Is(err, ErrSchema) {
		t.Fatalf("newer format opened: %v", err)
	}
}

// TestPebbleLoadsIdentitiesWithoutOwnerKeys: a database whose identities
// have meta and inbox entries but no owner key (format 1, upgraded to 2
// by a binary that did not add them) is completed at open, so a load
// still finds their data; a never-claimed identity loads empty.
func TestPebbleLoadsIdentitiesWithoutOwnerKeys(t *testing.T) {
	dir := t.TempDir()
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	metaOnly, inboxOnly, both := Identity{App: 1, UID: "meta-only"}, Identity{App: 1, UID: "inbox-only"}, Identity{App: 2, UID: "both"}
	set := func(k []byte, m proto.Message) {
		t.Helper()
		v, _ := proto.Marshal(m)
		if err := db.Set(k, v, pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	set(appendIDKey(nil, prefixMeta, metaOnly), &actorpb.IdentityMeta{LastEpoch: 4, LastSeq: 9})
	set(appendIDKey(nil, prefixMeta, both), &actorpb.IdentityMeta{LastEpoch: 2})
	for seq := uint32(1); seq <= 3; seq++ {
		set(inboxKey(nil, inboxOnly, seq), entry(seq))
		set(inboxKey(nil, both, seq), entry(seq))
	}
	if err := db.Set([]byte{prefixVersion}, binary.BigEndian.AppendUint32(nil, 2), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	db.Close()

	for i := range 2 { // and again once completed
		s, err := OpenPebble(PebbleConfig{Dir: dir}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if snap := load(t, s, metaOnly); snap.Meta.GetLastEpoch() != 4 || snap.Meta.GetLastSeq() != 9 {
			t.Fatalf("meta-only identity loaded %v", snap.Meta)
		}
		if snap := load(t, s, inboxOnly); len(snap.Inbox) != 3 {
			t.Fatalf("inbox-only identity loaded %d entries, want 3", len(snap.Inbox))
		}
		if snap := load(t, s, both); len(snap.Inbox) != 3 || snap.Meta.GetLastEpoch() != 2 {
			t.Fatalf("identity loaded %d entries and %v", len(snap.Inbox), snap.Meta)
		}
		if snap := load(t, s, Identity{App: 1, UID: fmt.Sprint("never-seen-", i)}); len(snap.Inbox) != 0 || snap.Meta.GetLastEpoch() != 0 || snap.Owner != 1 {
			t.Fatalf("never-seen identity loaded %+v", snap)
		}
		s.Close()
	}
}

// TestPebbleSweepKeepsUp: 200,000 idempotency and dedup records expire at
// once (as after a day of 10,000 C2C sends a minute... or a burst); the
// paced sweep deletes them all within a bounded time, and the disk comes
// back near its baseline without anyone compacting by hand.
func TestPebbleSweepKeepsUp(t *testing.T) {
	if testing.Short() && os.Getenv("CI") != "true" {
		t.Skip("200,000 records")
	}
	c := newClock()
	dir := t.TempDir()
	// A small memtable, so that 200,000 records reach the tables as they
	// would with the default 32 MiB and millions of records.
	const memtable = 4 << 20
	var swept atomic.Int64
	s, err := OpenPebble(PebbleConfig{Dir: dir, Now: c.Now, MemTableSize: memtable, SweepInterval: 50 * time.Millisecond,
		Swept: func(n int) { swept.Add(int64(n)) }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The disk the data takes: everything Pebble has on disk but the
	// WAL files kept for reuse, a fixed reserve of at most
	// MemTableStopWritesThreshold+1 files of a memtable's size that is
	// overwritten, not grown, by later writes. "Near the baseline" is
	// within one memtable: the live WAL holds up to a memtable's worth of
	// the latest writes, whatever they were.
	disk := func() uint64 {
		m := s.db.Metrics()
		return m.DiskSpaceUsage() - m.WAL.ObsoletePhysicalSize
	}
	baseline := disk()
	const identities, perIdentity = 2000, 100
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range identities {
		id := Identity{App: 1, UID: fmt.Sprintf("user-%d", i)}
		owner := load(t, s, id).Owner
		w := &Write{ID: id, Owner: owner, Sync: i%100 == 0}
		for j := range perIdentity {
			w.Idem = append(w.Idem, IdemPut{Key: fmt.Sprintf("c:sender-%d:client-msg-%08d", j%7, i*perIdentity+j),
				Record: &actorpb.IdempotencyRecord{MsgId: fmt.Sprintf("%016x", i*perIdentity+j), Seq: uint32(j), ExpiresAtMs: c.At(time.Minute)}})
		}
		wg.Add(1)
		sem <- struct{}{}
		s.Submit(w, func(err error) {
			if err != nil {
				t.Error(err)
			}
			<-sem
			wg.Done()
		})
	}
	wg.Wait()
	full := disk()
	count := func(prefix byte) int {
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefix}, UpperBound: []byte{prefix + 1}})
		if err != nil {
			t.Fatal(err)
		}
		defer it.Close()
		n := 0
		for ok := it.First(); ok; ok = it.Next() {
			n++
		}
		return n
	}
	if n := count(prefixIdem); n != identities*perIdentity {
		t.Fatalf("%d records stored", n)
	}
	c.Advance(2 * time.Minute)
	// 3 s on this machine (2 cores, shared) without the race detector.
	bound := 60 * time.Second
	if testkit.RaceEnabled {
		bound *= 5
	}
	start := time.Now()
	testkit.Eventually(t, bound, func() bool { return swept.Load() == identities*perIdentity },
		"200,000 expired records not swept within %v (%d swept)", bound, swept.Load())
	took := time.Since(start)
	if n, x := count(prefixIdem), count(prefixExpiry); n != 0 || x != 0 {
		t.Fatalf("after the sweep: %d records and %d index entries left", n, x)
	}
	// Deletions reach the disk as tombstones; Pebble's own compactions
	// (tombstone-dense ones included) drop them with the data. A few
	// fresh writes give it flushes to work with, as a live node does.
	var after uint64
	testkit.Eventually(t, 120*time.Second, func() bool {
		id := Identity{App: 9, UID: "ticker"}
		mustSubmit(t, s, &Write{ID: id, Owner: load(t, s, id).Owner, Idem: []IdemPut{{Key: "k", Record: &actorpb.IdempotencyRecord{MsgId: "x"}}}})
		after = disk()
		return after < baseline+memtable
	}, "disk did not come back near its baseline")
	var tables int64
	for _, l := range s.db.Metrics().Levels {
		tables += l.TablesSize
	}
	t.Logf("200,000 records: disk %d KiB at baseline, %d KiB full; swept in %v; disk %d KiB after (tables %d KiB)",
		baseline>>10, full>>10, took.Round(time.Millisecond), after>>10, tables>>10)
}

func BenchmarkPebbleCommit(b *testing.B) {
	s, err := OpenPebble(PebbleConfig{Dir: b.TempDir()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	owners := map[int]uint64{}
	for i := range 10000 {
		snap, err := s.Load(context.Background(), Identity{App: 1, UID: fmt.Sprintf("u%d", i)})
		if err != nil {
			b.Fatal(err)
		}
		owners[i] = snap.Owner
	}
	payload := make([]byte, 200)
	var wg sync.WaitGroup
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		wg.Add(1)
		id := Identity{App: 1, UID: fmt.Sprintf("u%d", i%10000)}
		s.Submit(&Write{ID: id, Owner: owners[i%10000], Put: []*actorpb.InboxEntry{{Seq: uint32(i), MsgId: "m", Payload: payload}}}, func(error) { wg.Done() })
	}
	wg.Wait()
}

// BenchmarkPebbleReads measures the reads a device actor makes inline
// on its worker (Pebble's LoadAsync and IdempotencyAsync do not queue):
// loading an identity (claim, meta, a small inbox), loading one never
// seen (the claim only), and looking up an idempotency key that is not
// there (a new push) or is.
func BenchmarkPebbleReads(b *testing.B) {
	s, err := OpenPebble(PebbleConfig{Dir: b.TempDir()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const ids = 20000
	id := func(i int) Identity { return Identity{App: 1, UID: fmt.Sprintf("user-%d", i%ids)} }
	payload := make([]byte, 200)
	var wg sync.WaitGroup
	for i := range ids {
		snap, err := s.Load(context.Background(), id(i))
		if err != nil {
			b.Fatal(err)
		}
		w := &Write{ID: id(i), Owner: snap.Owner, Meta: &actorpb.IdentityMeta{LastSeq: 3, LastEpoch: 1}, Sync: i%1000 == 0,
			Idem: []IdemPut{{"push:k", &actorpb.IdempotencyRecord{MsgId: "m", Seq: 1, ExpiresAtMs: time.Now().Add(time.Hour).UnixMilli()}}}}
		for seq := range 3 {
			w.Put = append(w.Put, &actorpb.InboxEntry{Seq: uint32(seq + 1), MsgId: "m", Payload: payload})
		}
		wg.Add(1)
		s.Submit(w, func(error) { wg.Done() })
	}
	wg.Wait()
	// Part of the data on disk, part in the memtable, as in a node that
	// has run for a while.
	if err := s.db.Flush(); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(time.Hour)
	b.Run("load", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			s.LoadAsync(id(i), deadline, func(snap *Snapshot, err error) {
				if err != nil || len(snap.Inbox) != 3 {
					b.Fatal(err)
				}
			})
		}
	})
	b.Run("load new", func(b *testing.B) { // an identity never seen: a first login
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			s.LoadAsync(Identity{App: 1, UID: fmt.Sprintf("new-%d-%d", b.N, i)}, deadline, func(snap *Snapshot, err error) {
				if err != nil || len(snap.Inbox) != 0 {
					b.Fatal(err)
				}
			})
		}
	})
	for _, key := range []string{"push:new", "push:k"} {
		b.Run("lookup "+key, func(b *testing.B) {
			b.ReportAllocs()
			keys := []string{key}
			i := 0
			for b.Loop() {
				i++
				s.IdempotencyAsync(id(i), keys, deadline, func(_ []*actorpb.IdempotencyRecord, err error) {
					if err != nil {
						b.Fatal(err)
					}
				})
			}
		})
	}
}

// TestPebbleMinSyncIntervalSpacesSyncs: synced writes submitted one after
// another each wait for their own sync, and the syncs are at least
// MinSyncInterval apart.
func TestPebbleMinSyncIntervalSpacesSyncs(t *testing.T) {
	const interval, writes = 10 * time.Millisecond, 20
	s, err := OpenPebble(PebbleConfig{Dir: t.TempDir(), MinSyncInterval: interval}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id := Identity{App: 1, UID: "spaced"}
	owner := load(t, s, id).Owner
	start := time.Now()
	for i := 1; i <= writes; i++ {
		mustSubmit(t, s, &Write{ID: id, Owner: owner, Put: []*actorpb.InboxEntry{entry(uint32(i))}, Sync: true})
	}
	if took, least := time.Since(start), (writes-1)*interval; took < least {
		t.Fatalf("%d synced writes in a row took %v: their syncs were not %v apart (at least %v)", writes, took, interval, least)
	}
	if n := len(load(t, s, id).Inbox); n != writes {
		t.Fatalf("%d entries stored, want %d", n, writes)
	}
}
