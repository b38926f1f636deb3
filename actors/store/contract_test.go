package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

func TestMain(m *testing.M) { os.Exit(testkit.Main(m)) }

// The contract every Store keeps, run against each implementation: what
// the device actors rely on, whichever store a node uses.

// clock is an injected clock.
type clock struct{ ms atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ms.Store(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).UnixMilli())
	return c
}

func (c *clock) Now() time.Time                 { return time.UnixMilli(c.ms.Load()) }
func (c *clock) Advance(d time.Duration)        { c.ms.Add(d.Milliseconds()) }
func (c *clock) At(d time.Duration) int64       { return c.Now().Add(d).UnixMilli() }
func (c *clock) Time(d time.Duration) time.Time { return c.Now().Add(d) }

// opts are what a contract test may ask of the store it opens.
type opts struct {
	clock   *clock
	observe func(n int, d time.Duration, err error)
	// sweepInterval is long by default: tests sweep by hand.
	sweepInterval time.Duration
}

// kind is one Store implementation under test.
type kind struct {
	name string
	// open opens a store on a fresh location and returns a function that
	// opens another store on the same data (with the same options).
	open func(t *testing.T, o opts) (Store, func() Store)
	// sweep runs one idempotency sweep round of up to max records.
	sweep func(s Store, max int) (int, error)
	// breakCommits makes every commit fail until the returned function
	// is called.
	breakCommits func(t *testing.T, s Store) (restore func())
	// widenRaces, if set, makes the window between a commit's owner
	// check and its commit long enough for a test to hit.
	widenRaces func(s Store)
	// blockReads makes loads and idempotency lookups wait (for the
	// database, the disk) until the returned function is called.
	blockReads func(t *testing.T, s Store) (restore func())
}

func kinds() []kind {
	return []kind{
		{
			name: "pebble",
			open: func(t *testing.T, o opts) (Store, func() Store) {
				dir := t.TempDir()
				open := func() Store {
					s, err := OpenPebble(PebbleConfig{Dir: dir, Now: o.clock.Now, Observe: o.observe, SweepInterval: o.sweepInterval}, quiet)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { s.Close() })
					return s
				}
				return open(), open
			},
			sweep: func(s Store, max int) (int, error) { return s.(*Pebble).SweepIdempotency(max) },
			// Pebble makes a batch visible within microseconds of its
			// owner check; a millisecond lets claims land in between.
			widenRaces: func(s Store) { s.(*Pebble).commitDelay.Store(int64(time.Millisecond)) },
			breakCommits: func(_ *testing.T, s Store) func() {
				// Pebble fails a commit only when the disk does: the
				// hook stands in for it, on the real commit path.
				err := fmt.Errorf("%w: injected disk failure", ErrUnavailable)
				s.(*Pebble).failCommit.Store(&err)
				return func() { s.(*Pebble).failCommit.Store(nil) }
			},
			// A read that does not return (a hung disk): holding the lock
			// that Close takes keeps every read from starting.
			blockReads: func(t *testing.T, s Store) func() {
				p := s.(*Pebble)
				p.mu.Lock()
				var once sync.Once
				restore := func() { once.Do(p.mu.Unlock) }
				t.Cleanup(restore)
				return restore
			},
		},
		{
			name: "postgres",
			open: func(t *testing.T, o opts) (Store, func() Store) {
				dsn := testkit.PostgresDB(t)
				open := func() Store {
					s, err := OpenPostgres(context.Background(), PostgresConfig{DSN: dsn, Now: o.clock.Now, Observe: o.observe,
						SweepInterval: o.sweepInterval, Timeout: 3 * time.Second}, quiet)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { s.Close() })
					return s
				}
				return open(), open
			},
			sweep: func(s Store, max int) (int, error) { return s.(*Postgres).SweepIdempotency(max) },
			breakCommits: func(t *testing.T, s Store) func() {
				// A real failure: another session holds the inbox table
				// locked, so every commit runs into the store's timeout.
				return lockTables(t, s.(*Postgres), "courier_identities")
			},
			blockReads: func(t *testing.T, s Store) func() {
				return lockTables(t, s.(*Postgres), "courier_identities", "courier_idempotency")
			},
		},
	}
}

// lockTables has another session of the database hold tables locked
// (ACCESS EXCLUSIVE: not even read) until the returned function is
// called.
func lockTables(t *testing.T, s *Postgres, tables ...string) func() {
	t.Helper()
	var stmts []string
	for _, table := range tables {
		stmts = append(stmts, "LOCK TABLE "+table+" IN ACCESS EXCLUSIVE MODE")
	}
	return holdLocks(t, s, stmts...)
}

// holdLocks has another session of the database run stmts in a
// transaction and hold the locks they take until the returned function
// is called.
func holdLocks(t *testing.T, s *Postgres, stmts ...string) func() {
	t.Helper()
	ctx := context.Background()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err == nil {
		// Another session, not a node's: the store's sessions end a
		// transaction idle for store.timeout, this one holds its locks.
		_, err = tx.Exec(ctx, "SET LOCAL idle_in_transaction_session_timeout = 0")
	}
	for _, stmt := range stmts {
		if err == nil {
			_, err = tx.Exec(ctx, stmt)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	return func() {
		_ = tx.Rollback(ctx)
		conn.Release()
	}
}

// TestContract runs every contract test against every store.
func TestContract(t *testing.T) {
	tests := []struct {
		name string
		fn   func(t *testing.T, k kind)
	}{
		{"LoadEmpty", testLoadEmpty},
		{"InboxBySeq", testInboxBySeq},
		{"LastSeqAndSessionAcrossRestart", testMetaAcrossRestart},
		{"IdempotencyExpiry", testIdempotencyExpiry},
		{"IdempotencySweepKeepsRewritten", testSweepKeepsRewritten},
		{"ExpiredByIndex", testExpiredByIndex},
		{"ExpiredEarliestFirst", testExpiredEarliestFirst},
		{"Lists", testLists},
		{"FencingTwoActivations", testFencing},
		{"FencedWriteFailsAlone", testFencedWriteAlone},
		{"FencingUnderConcurrentWrites", testFencingConcurrent},
		{"GroupCommitManyIdentities", testGroupCommit},
		{"FailedCommitReportedToEveryWaiter", testFailedCommit},
		{"Closed", testClosed},
		{"AsyncReads", testAsyncReads},
		{"AsyncLoadsOfManyIdentities", testAsyncLoadsOfMany},
		{"AsyncLoadsOfOneIdentityTogether", testAsyncLoadsOfOne},
		{"AsyncReadsAnsweredByTheirDeadline", testAsyncReadDeadline},
		{"ClaimsAndCommitsTogether", testClaimsAndCommits},
	}
	for _, k := range kinds() {
		t.Run(k.name, func(t *testing.T) {
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) { tc.fn(t, k) })
			}
		})
	}
}

// submit submits w and waits for its outcome.
func submit(s Store, w *Write) error {
	errc := make(chan error, 1)
	s.Submit(w, func(err error) { errc <- err })
	return <-errc
}

func mustSubmit(t *testing.T, s Store, w *Write) {
	t.Helper()
	if err := submit(s, w); err != nil {
		t.Fatalf("commit: %v", err)
	}
}

func load(t *testing.T, s Store, id Identity) *Snapshot {
	t.Helper()
	snap, err := s.Load(context.Background(), id)
	if err != nil {
		t.Fatalf("load %s: %v", id, err)
	}
	return snap
}

func entry(seq uint32) *actorpb.InboxEntry {
	return &actorpb.InboxEntry{Seq: seq, Kind: devicepb.Kind_KIND_S2C, MsgId: fmt.Sprintf("m%d", seq), Payload: []byte("p")}
}

func seqs(snap *Snapshot) []uint32 {
	var out []uint32
	for _, e := range snap.Inbox {
		out = append(out, e.Seq)
	}
	return out
}

func testLoadEmpty(t *testing.T, k kind) {
	s, _ := k.open(t, opts{clock: newClock()})
	snap := load(t, s, Identity{App: 1, UID: "nobody"})
	if snap.Meta == nil || snap.Meta.LastSeq != 0 || len(snap.Inbox) != 0 || snap.Owner == 0 {
		t.Fatalf("empty identity: %+v", snap)
	}
	if _, err := s.Load(context.Background(), Identity{App: 1}); !errors.Is(err, ErrBadIdentity) {
		t.Fatalf("empty uid: %v", err)
	}
	if err := submit(s, &Write{ID: Identity{App: 1}}); !errors.Is(err, ErrBadIdentity) {
		t.Fatalf("write of an empty uid: %v", err)
	}
	// A uid longer than an identity's bound reads no other's records.
	long := Identity{App: 1, UID: strings.Repeat("u", 300)}
	if _, err := s.Idempotency(context.Background(), long, "k"); !errors.Is(err, ErrBadIdentity) {
		t.Fatalf("idempotency key of a %d-byte uid: %v", len(long.UID), err)
	}
}

func testInboxBySeq(t *testing.T, k kind) {
	s, _ := k.open(t, opts{clock: newClock()})
	id := Identity{App: 2, UID: "driver-1"}
	// A uid that is a prefix of the other must not see its entries, nor
	// the same uid of another app.
	other, otherApp := Identity{App: 2, UID: "driver-10"}, Identity{App: 3, UID: "driver-1"}
	snap := load(t, s, id)
	w := &Write{ID: id, Owner: snap.Owner}
	for _, seq := range []uint32{70000, 1, 256, 255, 65536, 2} {
		w.Put = append(w.Put, entry(seq))
	}
	mustSubmit(t, s, w)
	for _, o := range []Identity{other, otherApp} {
		mustSubmit(t, s, &Write{ID: o, Owner: load(t, s, o).Owner, Put: []*actorpb.InboxEntry{entry(1)}})
	}
	snap = load(t, s, id)
	mustSubmit(t, s, &Write{ID: id, Owner: snap.Owner, Delete: []uint32{2, 999}})
	snap = load(t, s, id)
	want := []uint32{1, 255, 256, 65536, 70000}
	if got := seqs(snap); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("inbox %v, want %v", got, want)
	}
	if !proto.Equal(snap.Inbox[4], entry(70000)) {
		t.Fatalf("entry = %v", snap.Inbox[4])
	}
	if got := seqs(load(t, s, other)); fmt.Sprint(got) != "[1]" {
		t.Fatalf("other identity's inbox %v", got)
	}
}

func testMetaAcrossRestart(t *testing.T, k kind) {
	s, reopen := k.open(t, opts{clock: newClock()})
	id := Identity{App: 2, UID: "ana"}
	snap := load(t, s, id)
	meta := &actorpb.IdentityMeta{LastSeq: 3, LastEpoch: 7, Session: &actorpb.SessionRecord{Epoch: 7, Online: true, DeviceId: "phone"}}
	mustSubmit(t, s, &Write{ID: id, Owner: snap.Owner, Meta: meta, Put: []*actorpb.InboxEntry{entry(1), entry(2), entry(3)}, Sync: true})
	// Entries without the meta: the last seq is the highest entry's.
	mustSubmit(t, s, &Write{ID: id, Owner: snap.Owner, Put: []*actorpb.InboxEntry{entry(4)}, Sync: true})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := reopen()
	snap2 := load(t, s2, id)
	if !proto.Equal(snap2.Meta, meta) {
		t.Fatalf("meta = %v, want %v", snap2.Meta, meta)
	}
	if got := seqs(snap2); fmt.Sprint(got) != "[1 2 3 4]" {
		t.Fatalf("inbox %v", got)
	}
	if snap2.Owner == snap.Owner {
		t.Fatalf("owner %d handed out twice", snap.Owner)
	}
}

func testIdempotencyExpiry(t *testing.T, k kind) {
	c := newClock()
	s, _ := k.open(t, opts{clock: c})
	id := Identity{App: 1, UID: "u"}
	snap := load(t, s, id)
	live := &actorpb.IdempotencyRecord{MsgId: "m1", Seq: 1, ExpiresAtMs: c.At(time.Hour)}
	old := &actorpb.IdempotencyRecord{MsgId: "m0", Seq: 9, ExpiresAtMs: c.At(-time.Second)}
	// C2C dedup keys share the table; any bytes are allowed in a key.
	dedup := &actorpb.IdempotencyRecord{MsgId: "c1", Seq: 2, ExpiresAtMs: c.At(time.Minute)}
	mustSubmit(t, s, &Write{ID: id, Owner: snap.Owner, Idem: []IdemPut{{"p:k1", live}, {"p:k0", old}, {"c:bob\x00\xff", dedup}}})
	ctx := context.Background()
	if got, err := s.Idempotency(ctx, id, "p:k1"); err != nil || !proto.Equal(got, live) {
		t.Fatalf("k1 = %v, %v", got, err)
	}
	if got, err := s.Idempotency(ctx, id, "c:bob\x00\xff"); err != nil || !proto.Equal(got, dedup) {
		t.Fatalf("dedup key = %v, %v", got, err)
	}
	if got, err := s.Idempotency(ctx, id, "p:k0"); got != nil || err != nil {
		t.Fatalf("expired key returned: %v, %v", got, err)
	}
	if got, err := s.Idempotency(ctx, Identity{App: 1, UID: "v"}, "p:k1"); got != nil || err != nil {
		t.Fatalf("another identity's key: %v, %v", got, err)
	}
	if n, err := k.sweep(s, 100); err != nil || n != 1 {
		t.Fatalf("sweep = %d, %v; want 1", n, err)
	}
	c.Advance(2 * time.Minute)
	if got, _ := s.Idempotency(ctx, id, "c:bob\x00\xff"); got != nil {
		t.Fatal("expired dedup key returned")
	}
	if n, err := k.sweep(s, 100); err != nil || n != 1 {
		t.Fatalf("second sweep = %d, %v; want 1", n, err)
	}
	c.Advance(-2 * time.Minute)
	if got, _ := s.Idempotency(ctx, id, "c:bob\x00\xff"); got != nil {
		t.Fatal("swept key still there")
	}
	if got, _ := s.Idempotency(ctx, id, "p:k1"); got == nil {
		t.Fatal("live key swept")
	}
}

// testSweepKeepsRewritten: a record written again with a later expiry
// after its first expiry survives the sweep of the first.
func testSweepKeepsRewritten(t *testing.T, k kind) {
	c := newClock()
	s, _ := k.open(t, opts{clock: c})
	id := Identity{App: 1, UID: "u"}
	owner := load(t, s, id).Owner
	mustSubmit(t, s, &Write{ID: id, Owner: owner, Idem: []IdemPut{{"k", &actorpb.IdempotencyRecord{MsgId: "a", ExpiresAtMs: c.At(time.Second)}}}})
	c.Advance(time.Minute)
	mustSubmit(t, s, &Write{ID: id, Owner: owner, Idem: []IdemPut{{"k", &actorpb.IdempotencyRecord{MsgId: "b", ExpiresAtMs: c.At(time.Hour)}}}})
	if _, err := k.sweep(s, 100); err != nil {
		t.Fatal(err)
	}
	got, err := s.Idempotency(context.Background(), id, "k")
	if err != nil || got == nil || got.MsgId != "b" {
		t.Fatalf("rewritten record after the sweep: %v, %v", got, err)
	}
}

func testExpiredByIndex(t *testing.T, k kind) {
	c := newClock()
	s, _ := k.open(t, opts{clock: c})
	exp := func(seq uint32, d time.Duration) *actorpb.InboxEntry {
		e := entry(seq)
		e.ExpiresAtMs = c.At(d)
		return e
	}
	a, b, cc := Identity{App: 1, UID: "a"}, Identity{App: 1, UID: "b"}, Identity{App: 2, UID: "c"}
	// a: one live and one expired entry; b: only live; c: expired twice.
	oa := load(t, s, a).Owner
	mustSubmit(t, s, &Write{ID: a, Owner: oa, Put: []*actorpb.InboxEntry{exp(1, time.Hour), exp(2, -time.Second)}})
	mustSubmit(t, s, &Write{ID: b, Owner: load(t, s, b).Owner, Put: []*actorpb.InboxEntry{exp(1, time.Hour), entry(2)}})
	oc := load(t, s, cc).Owner
	c1, c2 := exp(1, -time.Minute), exp(2, -time.Second)
	mustSubmit(t, s, &Write{ID: cc, Owner: oc, Put: []*actorpb.InboxEntry{c1, c2}})
	expired := func(max int) []Identity {
		var got []Identity
		if err := s.Expired(context.Background(), c.Now(), max, func(id Identity) { got = append(got, id) }); err != nil {
			t.Fatal(err)
		}
		sort.Slice(got, func(i, j int) bool { return got[i].String() < got[j].String() })
		return got
	}
	if got := expired(100); len(got) != 2 || got[0] != a || got[1] != cc {
		t.Fatalf("expired identities %v", got)
	}
	// The actor of c drops its expired entries (once without, once with
	// an Unindex hint): c is not reported again; a is (a store shared by
	// nodes reports it after its lease).
	mustSubmit(t, s, &Write{ID: cc, Owner: oc, Delete: []uint32{1}})
	mustSubmit(t, s, &Write{ID: cc, Owner: oc, Delete: []uint32{2}, Unindex: []int64{ExpiryBucket(c1.ExpiresAtMs), ExpiryBucket(c2.ExpiresAtMs)}})
	if snap := load(t, s, cc); len(snap.Inbox) != 0 {
		t.Fatalf("c's inbox after the deletions: %v", snap.Inbox)
	}
	c.Advance(2 * time.Minute)
	if got := expired(100); len(got) != 1 || got[0] != a {
		t.Fatalf("after c's sweep: %v", got)
	}
	c.Advance(2 * time.Minute)
	if got := expired(1); len(got) != 1 {
		t.Fatalf("max not respected: %v", got)
	}
	// Later, a's live entry has expired too; b's entry without expiry
	// never does.
	c.Advance(2 * time.Hour)
	if got := expired(100); len(got) != 2 || got[0] != a || got[1] != b {
		t.Fatalf("two hours later: %v", got)
	}
}

// testExpiredEarliestFirst: with fewer identities asked for than have
// expired entries, those whose entries expired first are reported.
func testExpiredEarliestFirst(t *testing.T, k kind) {
	c := newClock()
	s, _ := k.open(t, opts{clock: c})
	// Neither the order of writing nor that of the uids gives the
	// answer: the earliest expired are u8 and u6, written second and
	// fourth.
	for _, w := range []struct {
		uid string
		ago time.Duration
	}{{"u9", time.Minute}, {"u8", 3 * time.Hour}, {"u7", time.Second}, {"u6", 2 * time.Hour}} {
		id := Identity{App: 1, UID: w.uid}
		ago := w.ago
		e := entry(1)
		e.ExpiresAtMs = c.At(-ago)
		mustSubmit(t, s, &Write{ID: id, Owner: load(t, s, id).Owner, Put: []*actorpb.InboxEntry{e}})
	}
	var got []string
	if err := s.Expired(context.Background(), c.Now(), 2, func(id Identity) { got = append(got, id.UID) }); err != nil {
		t.Fatal(err)
	}
	sort.Strings(got)
	if len(got) != 2 || got[0] != "u6" || got[1] != "u8" {
		t.Fatalf("the two earliest expired: %v, want [u6 u8]", got)
	}
}

func testLists(t *testing.T, k kind) {
	s, reopen := k.open(t, opts{clock: newClock()})
	ctx := context.Background()
	v, doc, err := s.Lists(ctx)
	if err != nil || v != 0 || doc != nil {
		t.Fatalf("no lists yet: %d %q %v", v, doc, err)
	}
	if v, err = s.SetLists(ctx, 0, []byte(`{"a":1}`)); err != nil || v != 1 {
		t.Fatalf("first set: %d %v", v, err)
	}
	if _, err := s.SetLists(ctx, 0, []byte(`{"lost":1}`)); !errors.Is(err, ErrConflict) {
		t.Fatalf("set on a stale version: %v", err)
	}
	if v, err = s.SetLists(ctx, 1, []byte(`{"a":2}`)); err != nil || v != 2 {
		t.Fatalf("second set: %d %v", v, err)
	}
	if _, err := s.SetLists(ctx, 1, []byte(`{"lost":2}`)); !errors.Is(err, ErrConflict) {
		t.Fatalf("set on a stale version: %v", err)
	}
	s.Close()
	s = reopen()
	if v, doc, err := s.Lists(ctx); err != nil || v != 2 || string(doc) != `{"a":2}` {
		t.Fatalf("after reopen: %d %q %v", v, doc, err)
	}
}

// testFencing: two activations of one identity. The older one's writes
// fail and change nothing; what it wrote before the newer one's claim is
// in the newer one's snapshot.
func testFencing(t *testing.T, k kind) {
	s, _ := k.open(t, opts{clock: newClock()})
	id := Identity{App: 1, UID: "split"}
	first := load(t, s, id)
	mustSubmit(t, s, &Write{ID: id, Owner: first.Owner, Put: []*actorpb.InboxEntry{entry(1)}, Meta: &actorpb.IdentityMeta{LastSeq: 1}})
	second := load(t, s, id)
	if second.Owner == first.Owner {
		t.Fatalf("both activations got owner %d", first.Owner)
	}
	if got := seqs(second); fmt.Sprint(got) != "[1]" {
		t.Fatalf("the second activation does not see the first's write: %v", got)
	}
	// The first activation goes on as if it still owned the identity.
	for _, w := range []*Write{
		{ID: id, Owner: first.Owner, Put: []*actorpb.InboxEntry{entry(2)}},
		{ID: id, Owner: first.Owner, Delete: []uint32{1}},
		{ID: id, Owner: first.Owner, Meta: &actorpb.IdentityMeta{LastSeq: 99}},
		{ID: id, Owner: first.Owner, Idem: []IdemPut{{"k", &actorpb.IdempotencyRecord{MsgId: "stale"}}}},
		{ID: id, Owner: 0, Put: []*actorpb.InboxEntry{entry(3)}},
	} {
		if err := submit(s, w); !errors.Is(err, ErrFenced) {
			t.Fatalf("stale write %+v: %v, want ErrFenced", w, err)
		}
	}
	mustSubmit(t, s, &Write{ID: id, Owner: second.Owner, Put: []*actorpb.InboxEntry{entry(2)}, Meta: &actorpb.IdentityMeta{LastSeq: 2}})
	third := load(t, s, id)
	if got := seqs(third); fmt.Sprint(got) != "[1 2]" || third.Meta.LastSeq != 2 {
		t.Fatalf("after the stale writes: inbox %v, last seq %d", got, third.Meta.LastSeq)
	}
	if rec, _ := s.Idempotency(context.Background(), id, "k"); rec != nil {
		t.Fatalf("a fenced write stored an idempotency record: %v", rec)
	}
	if err := submit(s, &Write{ID: id, Owner: second.Owner, Put: []*actorpb.InboxEntry{entry(3)}}); !errors.Is(err, ErrFenced) {
		t.Fatalf("second activation after the third's claim: %v", err)
	}
}

// testFencedWriteAlone: in one batch, a fenced write fails and the
// others commit.
func testFencedWriteAlone(t *testing.T, k kind) {
	s, _ := k.open(t, opts{clock: newClock()})
	ids := make([]Identity, 50)
	owners := make([]uint64, len(ids))
	for i := range ids {
		ids[i] = Identity{App: 1, UID: fmt.Sprintf("u%d", i)}
		owners[i] = load(t, s, ids[i]).Owner
	}
	victim := 17
	load(t, s, ids[victim]) // a new activation fences the old owner
	var wg sync.WaitGroup
	errs := make([]error, len(ids))
	for i := range ids {
		wg.Add(1)
		s.Submit(&Write{ID: ids[i], Owner: owners[i], Put: []*actorpb.InboxEntry{entry(1)}, Sync: true}, func(err error) {
			errs[i] = err
			wg.Done()
		})
	}
	wg.Wait()
	for i, err := range errs {
		switch {
		case i == victim && !errors.Is(err, ErrFenced):
			t.Errorf("fenced write: %v", err)
		case i != victim && err != nil:
			t.Errorf("write %d failed with the fenced one: %v", i, err)
		}
		n := len(load(t, s, ids[i]).Inbox)
		if (i == victim) != (n == 0) {
			t.Errorf("identity %d holds %d entries", i, n)
		}
	}
}

// testFencingConcurrent: while an activation streams writes, another
// claims the identity. Every write the first saw succeed is in the
// second's snapshot; every other failed with ErrFenced and left nothing.
func testFencingConcurrent(t *testing.T, k kind) {
	s, _ := k.open(t, opts{clock: newClock()})
	if k.widenRaces != nil {
		k.widenRaces(s)
	}
	id := Identity{App: 1, UID: "race"}
	for round := range 20 {
		first := load(t, s, id)
		base := uint32(round * 1_000_000)
		var mu sync.Mutex
		ok := map[uint32]bool{}
		var fenced atomic.Int32
		var wg sync.WaitGroup
		stop := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint32(1); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				seq := base + i
				err := submit(s, &Write{ID: id, Owner: first.Owner, Put: []*actorpb.InboxEntry{entry(seq)}, Sync: i%2 == 0})
				switch {
				case err == nil:
					mu.Lock()
					ok[seq] = true
					mu.Unlock()
				case errors.Is(err, ErrFenced):
					fenced.Add(1)
				default:
					t.Errorf("write %d: %v", seq, err)
					return
				}
				if i == 900_000 {
					t.Errorf("round %d: still writing after 900,000 writes", round)
					return
				}
			}
		}()
		testkit.Eventually(t, 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(ok) >= 20 }, "first writes")
		second := load(t, s, id)
		testkit.Eventually(t, 30*time.Second, func() bool { return fenced.Load() >= 3 }, "writes after the claim fail")
		close(stop)
		wg.Wait()
		mu.Lock()
		inSnap := map[uint32]bool{}
		for _, e := range second.Inbox {
			if e.Seq > base {
				inSnap[e.Seq] = true
			}
		}
		for seq := range ok {
			if !inSnap[seq] {
				t.Fatalf("round %d: write %d succeeded but the next owner's snapshot lacks it", round, seq)
			}
		}
		for seq := range inSnap {
			if !ok[seq] {
				t.Fatalf("round %d: snapshot holds %d, which was not reported written", round, seq)
			}
		}
		now := load(t, s, id)
		n := 0
		for _, e := range now.Inbox {
			if e.Seq > base {
				n++
			}
		}
		if n != len(ok) {
			t.Fatalf("round %d: %d entries stored, %d writes succeeded (fenced writes left some)", round, n, len(ok))
		}
		mu.Unlock()
	}
}

// testGroupCommit checks that concurrent writers of many identities share
// commits and that every write completes, in submission order per
// identity.
func testGroupCommit(t *testing.T, k kind) {
	var mu sync.Mutex
	batches, writes := 0, 0
	s, _ := k.open(t, opts{clock: newClock(), observe: func(n int, _ time.Duration, err error) {
		mu.Lock()
		batches++
		writes += n
		mu.Unlock()
	}})
	const writers, each = 50, 40
	owners := make([]uint64, writers)
	for w := range writers {
		owners[w] = load(t, s, Identity{App: 1, UID: fmt.Sprintf("u%d", w)}).Owner
	}
	mu.Lock()
	batches, writes = 0, 0 // only the writes below
	mu.Unlock()
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
				s.Submit(&Write{ID: id, Owner: owners[w], Put: []*actorpb.InboxEntry{entry(uint32(i))}, Sync: true}, func(err error) {
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
	if writes != writers*each {
		t.Fatalf("committed %d writes, want %d", writes, writers*each)
	}
	if batches >= writes/4 {
		t.Fatalf("%d batches for %d writes: no group commit", batches, writes)
	}
	t.Logf("%d writes in %d batches", writes, batches)
	mu.Unlock()
	for w := range writers {
		if snap := load(t, s, Identity{App: 1, UID: fmt.Sprintf("u%d", w)}); len(snap.Inbox) != each {
			t.Fatalf("u%d inbox: %d entries", w, len(snap.Inbox))
		}
	}
}

// testFailedCommit: when a commit fails, every write of it is told, and
// nothing of it is stored; the store works again afterwards.
func testFailedCommit(t *testing.T, k kind) {
	s, _ := k.open(t, opts{clock: newClock()})
	const n = 30
	ids := make([]Identity, n)
	owners := make([]uint64, n)
	for i := range ids {
		ids[i] = Identity{App: 1, UID: fmt.Sprintf("f%d", i)}
		owners[i] = load(t, s, ids[i]).Owner
	}
	restore := k.breakCommits(t, s)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range ids {
		wg.Add(1)
		s.Submit(&Write{ID: ids[i], Owner: owners[i], Put: []*actorpb.InboxEntry{entry(1)}, Sync: true}, func(err error) {
			errs[i] = err
			wg.Done()
		})
	}
	wg.Wait()
	restore()
	for i, err := range errs {
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("write %d: %v, want ErrUnavailable", i, err)
		}
	}
	for i := range ids {
		if snap := load(t, s, ids[i]); len(snap.Inbox) != 0 {
			t.Fatalf("a failed write was stored: %v", seqs(snap))
		}
	}
	// The store recovers by itself.
	mustSubmit(t, s, &Write{ID: ids[0], Owner: load(t, s, ids[0]).Owner, Put: []*actorpb.InboxEntry{entry(1)}})
}

func testClosed(t *testing.T, k kind) {
	s, _ := k.open(t, opts{clock: newClock()})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := submit(s, &Write{ID: Identity{App: 1, UID: "u"}, Delete: []uint32{1}}); !errors.Is(err, ErrClosed) {
		t.Fatalf("submit after close: %v", err)
	}
	if _, err := s.Load(context.Background(), Identity{App: 1, UID: "u"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("load after close: %v", err)
	}
}

// loadAsync calls LoadAsync and waits for its answer.
func loadAsync(s Store, id Identity, deadline time.Time) (*Snapshot, error) {
	type result struct {
		snap *Snapshot
		err  error
	}
	ch := make(chan result, 1)
	s.LoadAsync(id, deadline, func(snap *Snapshot, err error) { ch <- result{snap, err} })
	r := <-ch
	return r.snap, r.err
}

// lookupAsync calls IdempotencyAsync and waits for its answer.
func lookupAsync(s Store, id Identity, keys ...string) ([]*actorpb.IdempotencyRecord, error) {
	return lookupBy(s, id, time.Now().Add(10*time.Second), keys...)
}

func lookupBy(s Store, id Identity, deadline time.Time, keys ...string) ([]*actorpb.IdempotencyRecord, error) {
	type result struct {
		recs []*actorpb.IdempotencyRecord
		err  error
	}
	ch := make(chan result, 1)
	s.IdempotencyAsync(id, keys, deadline, func(recs []*actorpb.IdempotencyRecord, err error) { ch <- result{recs, err} })
	r := <-ch
	return r.recs, r.err
}

// testAsyncReads: LoadAsync and IdempotencyAsync answer as Load and
// Idempotency do; a lookup of several keys answers each in its place.
func testAsyncReads(t *testing.T, k kind) {
	c := newClock()
	s, _ := k.open(t, opts{clock: c})
	id := Identity{App: 1, UID: "async"}
	snap, err := loadAsync(s, id, time.Now().Add(10*time.Second))
	if err != nil || snap.Owner == 0 || snap.Meta == nil || len(snap.Inbox) != 0 {
		t.Fatalf("first load: %+v, %v", snap, err)
	}
	live := &actorpb.IdempotencyRecord{MsgId: "m1", Seq: 1, ExpiresAtMs: c.At(time.Hour)}
	forever := &actorpb.IdempotencyRecord{MsgId: "m2", Seq: 2}
	old := &actorpb.IdempotencyRecord{MsgId: "m0", Seq: 9, ExpiresAtMs: c.At(-time.Second)}
	meta := &actorpb.IdentityMeta{LastSeq: 2, LastEpoch: 1}
	mustSubmit(t, s, &Write{ID: id, Owner: snap.Owner, Meta: meta, Put: []*actorpb.InboxEntry{entry(2), entry(1)},
		Idem: []IdemPut{{"p:k1", live}, {"p:k2", forever}, {"p:k0", old}}, Sync: true})
	snap2, err := loadAsync(s, id, time.Now().Add(10*time.Second))
	if err != nil {
		t.Fatalf("second load: %v", err)
	}
	if snap2.Owner <= snap.Owner || !proto.Equal(snap2.Meta, meta) || fmt.Sprint(seqs(snap2)) != "[1 2]" {
		t.Fatalf("second load: owner %d after %d, meta %v, inbox %v", snap2.Owner, snap.Owner, snap2.Meta, seqs(snap2))
	}
	if err := submit(s, &Write{ID: id, Owner: snap.Owner, Delete: []uint32{1}}); !errors.Is(err, ErrFenced) {
		t.Fatalf("write of the first load's owner after the second: %v", err)
	}
	recs, err := lookupAsync(s, id, "p:k2", "p:none", "p:k0", "p:k1", "p:k2")
	if err != nil || len(recs) != 5 {
		t.Fatalf("lookup: %v, %v", recs, err)
	}
	want := []*actorpb.IdempotencyRecord{forever, nil, nil, live, forever}
	for i := range want {
		if !proto.Equal(recs[i], want[i]) || (want[i] == nil) != (recs[i] == nil) {
			t.Fatalf("key %d: %v, want %v", i, recs[i], want[i])
		}
	}
	if recs, err := lookupAsync(s, Identity{App: 1, UID: "other"}, "p:k1"); err != nil || len(recs) != 1 || recs[0] != nil {
		t.Fatalf("another identity's key: %v, %v", recs, err)
	}
	if _, err := loadAsync(s, Identity{App: 1}, time.Now().Add(time.Second)); !errors.Is(err, ErrBadIdentity) {
		t.Fatalf("empty uid: %v", err)
	}
	s.Close()
	if _, err := loadAsync(s, id, time.Now().Add(time.Second)); !errors.Is(err, ErrClosed) {
		t.Fatalf("load after close: %v", err)
	}
	if _, err := lookupAsync(s, id, "p:k1"); !errors.Is(err, ErrClosed) {
		t.Fatalf("lookup after close: %v", err)
	}
}

// testAsyncLoadsOfMany: many identities load and look up at once (a
// login storm); each gets its own snapshot and records.
func testAsyncLoadsOfMany(t *testing.T, k kind) {
	c := newClock()
	s, _ := k.open(t, opts{clock: c})
	const n = 300
	id := func(i int) Identity { return Identity{App: uint16(1 + i%3), UID: fmt.Sprintf("storm-%d", i)} }
	for i := range n {
		if i%2 == 0 {
			continue // half have nothing stored
		}
		w := &Write{ID: id(i), Owner: load(t, s, id(i)).Owner, Meta: &actorpb.IdentityMeta{LastSeq: uint32(i)}}
		for seq := range i % 5 {
			w.Put = append(w.Put, entry(uint32(seq+1)))
		}
		w.Idem = []IdemPut{{"k", &actorpb.IdempotencyRecord{MsgId: fmt.Sprint("m", i), ExpiresAtMs: c.At(time.Hour)}}}
		mustSubmit(t, s, w)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Add(2)
		s.LoadAsync(id(i), time.Now().Add(20*time.Second), func(snap *Snapshot, err error) {
			defer wg.Done()
			switch {
			case err != nil:
				errs <- fmt.Errorf("load %d: %w", i, err)
			case i%2 == 0 && (snap.Meta.LastSeq != 0 || len(snap.Inbox) != 0):
				errs <- fmt.Errorf("load %d: last seq %d, inbox %v; want nothing", i, snap.Meta.LastSeq, seqs(snap))
			case i%2 == 1 && (snap.Meta.LastSeq != uint32(i) || len(snap.Inbox) != i%5):
				errs <- fmt.Errorf("load %d: last seq %d, inbox %v", i, snap.Meta.LastSeq, seqs(snap))
			}
		})
		s.IdempotencyAsync(id(i), []string{"k"}, time.Now().Add(20*time.Second), func(recs []*actorpb.IdempotencyRecord, err error) {
			defer wg.Done()
			switch {
			case err != nil:
				errs <- fmt.Errorf("lookup %d: %w", i, err)
			case i%2 == 0 && recs[0] != nil, i%2 == 1 && recs[0].GetMsgId() != fmt.Sprint("m", i):
				errs <- fmt.Errorf("lookup %d: %v", i, recs[0])
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// testAsyncLoadsOfOne: loads of one identity issued at once (they may
// share a round trip) get distinct owner epochs, and only the last
// claim's owner can write, as if they had come one after the other.
func testAsyncLoadsOfOne(t *testing.T, k kind) {
	s, _ := k.open(t, opts{clock: newClock()})
	id := Identity{App: 1, UID: "twice"}
	mustSubmit(t, s, &Write{ID: id, Owner: load(t, s, id).Owner, Put: []*actorpb.InboxEntry{entry(1)}})
	const n = 8
	owners := make(chan uint64, n)
	for range n {
		s.LoadAsync(id, time.Now().Add(20*time.Second), func(snap *Snapshot, err error) {
			if err != nil || fmt.Sprint(seqs(snap)) != "[1]" {
				t.Errorf("load: %v %v", seqs(snap), err)
				owners <- 0
				return
			}
			owners <- snap.Owner
		})
	}
	seen := map[uint64]bool{}
	var last uint64
	for range n {
		o := <-owners
		if seen[o] {
			t.Fatalf("owner %d handed out twice", o)
		}
		seen[o] = true
		last = max(last, o)
	}
	for o := range seen {
		err := submit(s, &Write{ID: id, Owner: o, Put: []*actorpb.InboxEntry{entry(2)}})
		if o == last && err != nil {
			t.Fatalf("the last claim's write: %v", err)
		}
		if o != last && !errors.Is(err, ErrFenced) {
			t.Fatalf("an earlier claim's write: %v, want ErrFenced", err)
		}
	}
}

// testAsyncReadDeadline: a read the database does not answer is
// answered with ErrUnavailable by its deadline; so is a read queued
// behind it, and the store reads again once the database does.
func testAsyncReadDeadline(t *testing.T, k kind) {
	s, _ := k.open(t, opts{clock: newClock()})
	id := Identity{App: 1, UID: "late"}
	restore := k.blockReads(t, s)
	start := time.Now()
	const wait = 500 * time.Millisecond
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The call itself never waits for the store: its caller is an
			// actor dispatcher's worker, which every identity shares.
			type result struct{ err error }
			ch := make(chan result, 1)
			called := time.Now()
			if i%2 == 0 {
				s.LoadAsync(Identity{App: 1, UID: fmt.Sprint("late-", i)}, time.Now().Add(wait), func(_ *Snapshot, err error) { ch <- result{err} })
			} else {
				s.IdempotencyAsync(id, []string{"k"}, time.Now().Add(wait), func(_ []*actorpb.IdempotencyRecord, err error) { ch <- result{err} })
			}
			if d := time.Since(called); d > wait/2 {
				t.Errorf("read %d: the call took %v while the store does not answer", i, d)
			}
			err := (<-ch).err
			if !errors.Is(err, ErrUnavailable) {
				t.Errorf("read %d while the database does not answer: %v, want ErrUnavailable", i, err)
			}
			if d := time.Since(start); d > wait+3*time.Second {
				t.Errorf("read %d answered after %v, its deadline was %v", i, d, wait)
			}
		}()
	}
	wg.Wait()
	restore()
	if _, err := loadAsync(s, id, time.Now().Add(10*time.Second)); err != nil {
		t.Fatalf("load once the database answers: %v", err)
	}
}

// testClaimsAndCommitsTogether: loads of many identities (claims) and
// commits of the same identities run at once, in both orders of
// arrival, without failing each other (no deadlock between a batch of
// claims and a batch of writes): every write either commits or is
// fenced by a claim, and every load succeeds.
func testClaimsAndCommits(t *testing.T, k kind) {
	s, _ := k.open(t, opts{clock: newClock()})
	const n = 40
	ids := make([]Identity, n)
	var mu sync.Mutex
	owners := make([]uint64, n)
	for i := range ids {
		// Reverse order of names against index: arrival order is not
		// lock order.
		ids[i] = Identity{App: 1, UID: fmt.Sprintf("mix-%03d", n-i)}
		owners[i] = load(t, s, ids[i]).Owner
	}
	deadline := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	var loads, writes, fenced atomic.Int64
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := uint32(1); time.Now().Before(deadline); seq++ {
				var done sync.WaitGroup
				for j := range n {
					i := (j*7 + w) % n
					mu.Lock()
					o := owners[i]
					mu.Unlock()
					done.Add(1)
					s.Submit(&Write{ID: ids[i], Owner: o, Put: []*actorpb.InboxEntry{entry(seq)}, Meta: &actorpb.IdentityMeta{LastSeq: seq}, Sync: true}, func(err error) {
						defer done.Done()
						switch {
						case err == nil:
							writes.Add(1)
						case errors.Is(err, ErrFenced):
							fenced.Add(1)
						default:
							t.Errorf("write: %v", err)
						}
					})
				}
				done.Wait()
			}
		}()
	}
	for l := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				var done sync.WaitGroup
				for j := range n {
					i := j
					if l == 1 {
						i = n - 1 - j
					}
					done.Add(1)
					s.LoadAsync(ids[i], time.Now().Add(10*time.Second), func(snap *Snapshot, err error) {
						defer done.Done()
						if err != nil {
							t.Errorf("load: %v", err)
							return
						}
						loads.Add(1)
						mu.Lock()
						owners[i] = max(owners[i], snap.Owner)
						mu.Unlock()
					})
				}
				done.Wait()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d loads, %d writes committed, %d fenced", loads.Load(), writes.Load(), fenced.Load())
	if loads.Load() == 0 || writes.Load() == 0 {
		t.Fatal("nothing happened")
	}
}
