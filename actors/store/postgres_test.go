package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/testkit"
)

// Tests of what only the PostgreSQL store has: a schema to migrate,
// several nodes sharing one database, a database that goes away.

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func openPG(t *testing.T, cfg PostgresConfig) *Postgres {
	t.Helper()
	s, err := OpenPostgres(context.Background(), cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestPostgresMigrations: nodes starting together migrate once; a node
// refuses a schema newer than it knows.
func TestPostgresMigrations(t *testing.T) {
	dsn := testkit.PostgresDB(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := OpenPostgres(context.Background(), PostgresConfig{DSN: dsn}, quiet)
			if err == nil {
				s.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("concurrent start: %v", err)
		}
	}
	testkit.Exec(t, dsn, "INSERT INTO courier_schema (version, name) VALUES ($1, 'from the future')", SchemaVersion()+1)
	_, err := OpenPostgres(context.Background(), PostgresConfig{DSN: dsn}, quiet)
	if !errors.Is(err, ErrSchema) {
		t.Fatalf("newer schema: %v", err)
	}
}

// TestPostgresMigrationDoesNotStopTraffic: a migration whose table is held
// by a long transaction does not queue its lock for as long as that lasts
// (which would hold up every other query of the table: the cluster's
// commits and loads): it gives up after its lock wait and tries again,
// the table's other queries run meanwhile, and it is applied once the
// transaction ends.
func TestPostgresMigrationDoesNotStopTraffic(t *testing.T) {
	dsn := testkit.PostgresDB(t)
	s := openPG(t, PostgresConfig{DSN: dsn})
	ctx := context.Background()
	long, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close(ctx)
	tx, err := long.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE courier_inbox IN ACCESS SHARE MODE"); err != nil {
		t.Fatal(err)
	}
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	next := migration{len(ms) + 1, fmt.Sprintf("%04d_test.sql", len(ms)+1), "ALTER TABLE courier_inbox ADD COLUMN test_only INTEGER"}
	done := make(chan error, 1)
	go func() { done <- applyMigrations(ctx, s.pool, quiet, append(ms, next), 200*time.Millisecond) }()
	// Meanwhile the table serves: a query waits less than a second.
	q, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(ctx)
	if _, err := q.Exec(ctx, "SET statement_timeout = 1000"); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		var n int
		if err := q.QueryRow(ctx, "SELECT count(*) FROM courier_inbox").Scan(&n); err != nil {
			t.Fatalf("a query of the table while the migration waits: %v", err)
		}
		time.Sleep(150 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("the migration ended while its table was locked: %v", err)
	default:
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the migration once the table was free: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the migration was not applied once the table was free")
	}
	var v int
	if err := q.QueryRow(ctx, "SELECT max(version) FROM courier_schema").Scan(&v); err != nil || v != next.version {
		t.Fatalf("schema version %d, %v; want %d", v, err, next.version)
	}
}

// TestPostgresDSNNotLogged: a DSN that does not parse is refused without
// repeating its password.
func TestPostgresDSNNotLogged(t *testing.T) {
	_, err := OpenPostgres(context.Background(), PostgresConfig{DSN: "postgres://u:s3cret-pw@host:notaport/db"}, quiet)
	if err == nil || strings.Contains(err.Error(), "s3cret-pw") {
		t.Fatalf("error %v", err)
	}
}

// TestPostgresSweepSharedByNodes: two nodes sweep the same expired
// records at once: each record is deleted by exactly one, both take a
// share, and all are gone.
func TestPostgresSweepSharedByNodes(t *testing.T) {
	dsn := testkit.PostgresDB(t)
	c := newClock()
	var counts [2]atomic.Int64
	cfg := func(i int) PostgresConfig {
		return PostgresConfig{DSN: dsn, Now: c.Now, SweepInterval: 20 * time.Millisecond, SweepBatch: 500,
			Swept: func(n int) { counts[i].Add(int64(n)) }}
	}
	a := openPG(t, cfg(0))
	const identities, each = 200, 100
	for i := range identities {
		id := Identity{App: 1, UID: fmt.Sprintf("u%d", i)}
		w := &Write{ID: id, Owner: load(t, a, id).Owner}
		for j := range each {
			w.Idem = append(w.Idem, IdemPut{Key: fmt.Sprintf("c:%d", j), Record: &actorpb.IdempotencyRecord{MsgId: "m", ExpiresAtMs: c.At(time.Minute)}})
		}
		mustSubmit(t, a, w)
	}
	b := openPG(t, cfg(1))
	c.Advance(2 * time.Minute)
	testkit.Eventually(t, 120*time.Second, func() bool { return counts[0].Load()+counts[1].Load() >= identities*each },
		"records not swept")
	time.Sleep(200 * time.Millisecond) // a few more rounds: none may delete anything twice
	n0, n1 := counts[0].Load(), counts[1].Load()
	if n0+n1 != identities*each {
		t.Fatalf("swept %d + %d records, want %d in all", n0, n1, identities*each)
	}
	if n0 == 0 || n1 == 0 {
		t.Fatalf("one node swept everything: %d and %d", n0, n1)
	}
	t.Logf("node a swept %d, node b %d", n0, n1)
	if _, err := b.Idempotency(context.Background(), Identity{App: 1, UID: "u7"}, "c:7"); err != nil {
		t.Fatal(err)
	}
}

// TestPostgresExpiredSharedByNodes: two nodes looking for identities with
// expired messages at once are told disjoint identities.
func TestPostgresExpiredSharedByNodes(t *testing.T) {
	dsn := testkit.PostgresDB(t)
	c := newClock()
	a := openPG(t, PostgresConfig{DSN: dsn, Now: c.Now})
	b := openPG(t, PostgresConfig{DSN: dsn, Now: c.Now})
	const n = 3000
	for i := range n {
		id := Identity{App: 1, UID: fmt.Sprintf("u%d", i)}
		e := entry(1)
		e.ExpiresAtMs = c.At(-time.Duration(i) * time.Millisecond)
		mustSubmit(t, a, &Write{ID: id, Owner: load(t, a, id).Owner, Put: []*actorpb.InboxEntry{e}})
	}
	var mu sync.Mutex
	got := map[Identity]int{}
	var wg sync.WaitGroup
	for _, s := range []*Postgres{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				if err := s.Expired(context.Background(), c.Now(), 500, func(id Identity) {
					mu.Lock()
					got[id]++
					mu.Unlock()
				}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if len(got) != n {
		t.Fatalf("%d identities reported, want %d", len(got), n)
	}
	for id, k := range got {
		if k != 1 {
			t.Fatalf("%s reported %d times", id, k)
		}
	}
}

// TestPostgresOutage: the database stops; loads, lookups and commits fail
// with ErrUnavailable within the timeout, and the store works again by
// itself once the database is back, without losing what it had accepted.
func TestPostgresOutage(t *testing.T) {
	pg := testkit.StartPostgres(t)
	dsn := pg.CreateDB(t)
	s := openPG(t, PostgresConfig{DSN: dsn, Timeout: 2 * time.Second})
	id := Identity{App: 1, UID: "u"}
	owner := load(t, s, id).Owner
	mustSubmit(t, s, &Write{ID: id, Owner: owner, Put: []*actorpb.InboxEntry{entry(1)}, Sync: true})

	pg.Stop(true) // as a crash
	start := time.Now()
	if err := submit(s, &Write{ID: id, Owner: owner, Put: []*actorpb.InboxEntry{entry(2)}}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("commit while the database is down: %v", err)
	}
	if _, err := s.Load(context.Background(), id); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("load while the database is down: %v", err)
	}
	if _, err := s.Idempotency(context.Background(), id, "k"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("lookup while the database is down: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("failing took %v", d)
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	var snap *Snapshot
	testkit.Eventually(t, 30*time.Second, func() bool {
		var err error
		snap, err = s.Load(context.Background(), id)
		return err == nil
	}, "the store did not reconnect")
	if got := seqs(snap); fmt.Sprint(got) != "[1]" {
		t.Fatalf("after the outage: %v", got)
	}
	mustSubmit(t, s, &Write{ID: id, Owner: snap.Owner, Put: []*actorpb.InboxEntry{entry(2)}})
}

// TestPostgresReadsBatched: reads that arrive while the reader's round
// trips are busy go together in the next one (one statement of arrays
// per kind), and every read gets its own answer.
func TestPostgresReadsBatched(t *testing.T) {
	var mu sync.Mutex
	var trips []int
	s := openPG(t, PostgresConfig{DSN: testkit.PostgresDB(t), Readers: 1, ObserveRead: func(n int, _ time.Duration, err error) {
		mu.Lock()
		trips = append(trips, n)
		mu.Unlock()
	}})
	for i := range 10 {
		id := Identity{App: 1, UID: fmt.Sprint("b", i)}
		mustSubmit(t, s, &Write{ID: id, Owner: load(t, s, id).Owner, Put: []*actorpb.InboxEntry{entry(uint32(i + 1))},
			Idem: []IdemPut{{"k", &actorpb.IdempotencyRecord{MsgId: fmt.Sprint("m", i)}}}})
	}
	// A round trip is observed after its reads are answered, so the last
	// setup load's observation may still be on its way: wait for all ten
	// before forgetting them, or it is counted with the batched reads.
	testkit.Eventually(t, 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		total := 0
		for _, k := range trips {
			total += k
		}
		return total == 10
	}, "the ten setup loads were not observed")
	mu.Lock()
	trips = nil
	mu.Unlock()
	restore := lockTables(t, s, "courier_identities", "courier_idempotency")
	// The first read takes the reader; the others queue behind it.
	const n = 200
	var wg sync.WaitGroup
	wg.Add(2 * n)
	for i := range n {
		id := Identity{App: 1, UID: fmt.Sprint("b", i%10)}
		s.LoadAsync(id, time.Now().Add(30*time.Second), func(snap *Snapshot, err error) {
			defer wg.Done()
			if err != nil || len(snap.Inbox) != 1 || snap.Inbox[0].Seq != uint32(i%10+1) {
				t.Errorf("load %d: %v, %v", i, snap, err)
			}
		})
		s.IdempotencyAsync(id, []string{"none", "k"}, time.Now().Add(30*time.Second), func(recs []*actorpb.IdempotencyRecord, err error) {
			defer wg.Done()
			if err != nil || recs[0] != nil || recs[1].GetMsgId() != fmt.Sprint("m", i%10) {
				t.Errorf("lookup %d: %v, %v", i, recs, err)
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	restore()
	wg.Wait()
	// A round trip is observed after its reads are answered: wait for the
	// last one's observation.
	total := 0
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		total = 0
		for _, k := range trips {
			total += k
		}
		if total >= 2*n || time.Now().After(deadline) {
			break // holding mu
		}
		mu.Unlock()
	}
	defer mu.Unlock()
	if total != 2*n || len(trips) > 4 {
		t.Fatalf("%d reads in %d round trips (%v): want them batched", total, len(trips), trips)
	}
	t.Logf("%d reads in round trips of %v", total, trips)
}

// TestPostgresReadQueueFull: when the database is slow and the read
// queue is full, a read fails at once with ErrOverloaded (the caller
// refuses the work), rather than waiting.
func TestPostgresReadQueueFull(t *testing.T) {
	s := openPG(t, PostgresConfig{DSN: testkit.PostgresDB(t), Readers: 1, MaxReadBatch: 1, ReadQueueLen: 4})
	restore := lockTables(t, s, "courier_identities")
	defer restore()
	errs := make(chan error, 6)
	for i := range 6 {
		s.LoadAsync(Identity{App: 1, UID: fmt.Sprint("q", i)}, time.Now().Add(30*time.Second), func(_ *Snapshot, err error) { errs <- err })
		if i == 0 {
			// The reader takes the first read and waits for the database.
			testkit.Eventually(t, 5*time.Second, func() bool { return len(s.r.queue) == 0 }, "the reader did not take the first read")
		}
	}
	start := time.Now()
	select {
	case err := <-errs:
		if !errors.Is(err, ErrOverloaded) {
			t.Fatalf("read beyond the queue: %v, want ErrOverloaded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the read beyond the queue was not answered")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("refusing took %v", d)
	}
	restore()
	for range 5 {
		if err := <-errs; err != nil {
			t.Fatalf("queued read: %v", err)
		}
	}
}

// TestPostgresGivesUpOnTheServerToo: a read that waits on a lock (a row
// another node's stalled transaction holds) fails after store.timeout,
// and its statement stops waiting in the database as well (pgx cancels
// it when it closes the connection): no backend is left queued on the
// lock, and the retries do not pile up there. Checked in the database
// itself, so that a change of driver or of its settings cannot quietly
// leave them there. And the sessions carry their TCP keepalive settings.
func TestPostgresGivesUpOnTheServerToo(t *testing.T) {
	// Without lock_timeout (the DSN's value is kept): this test is of
	// the node giving up at its own deadline, not of the server's.
	s := openPG(t, PostgresConfig{DSN: testkit.PostgresDB(t) + "&lock_timeout=0", Timeout: time.Second})
	var lt string
	if err := s.pool.QueryRow(context.Background(), "SHOW lock_timeout").Scan(&lt); err != nil || lt != "0" {
		t.Fatalf("lock_timeout %q (%v): the DSN's value must be kept", lt, err)
	}
	id := Identity{App: 1, UID: "locked"}
	load(t, s, id)
	var once sync.Once
	unlock := lockTables(t, s, "courier_identities")
	restore := func() { once.Do(unlock) }
	defer restore()
	for i := range 3 {
		start := time.Now()
		if _, err := s.Load(context.Background(), id); err == nil {
			t.Fatalf("load %d behind the lock succeeded", i)
		} else if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("load %d failed after %v, want about the 1 s timeout: %v", i, d, err)
		}
	}
	waiting := func() int {
		var n int
		if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	testkit.Eventually(t, 3*time.Second, func() bool { return waiting() == 0 },
		"statements the store gave up on still wait on the lock in the database")
	restore()
	if _, err := s.Load(context.Background(), id); err != nil {
		t.Fatalf("load after the lock: %v", err)
	}
	var idle string
	if err := s.pool.QueryRow(context.Background(), "SHOW tcp_keepalives_idle").Scan(&idle); err != nil || idle != "5" {
		t.Fatalf("tcp_keepalives_idle %q, %v", idle, err)
	}
	// A value the DSN gives is kept.
	s2 := openPG(t, PostgresConfig{DSN: testkit.PostgresDB(t) + "&tcp_keepalives_idle=7"})
	if err := s2.pool.QueryRow(context.Background(), "SHOW tcp_keepalives_idle").Scan(&idle); err != nil || idle != "7" {
		t.Fatalf("tcp_keepalives_idle from the DSN: %q, %v", idle, err)
	}
}

// TestPostgresReadsCommittedWhateverTheDefault: a database (or DSN) whose
// default isolation is REPEATABLE READ does not change the store's: its
// batches rely on each statement seeing what was committed before it.
func TestPostgresReadsCommittedWhateverTheDefault(t *testing.T) {
	dsn := testkit.PostgresDB(t)
	admin := openPG(t, PostgresConfig{DSN: dsn})
	var db string
	if err := admin.pool.QueryRow(context.Background(), "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.pool.Exec(context.Background(), "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" SET default_transaction_isolation = 'repeatable read'"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dsn, dsn + "&default_transaction_isolation=serializable"} {
		s := openPG(t, PostgresConfig{DSN: d})
		var iso string
		if err := s.pool.QueryRow(context.Background(), "SHOW transaction_isolation").Scan(&iso); err != nil || iso != "read committed" {
			t.Fatalf("transaction_isolation %q, %v (DSN %s)", iso, err, d)
		}
	}
}

// TestPostgresEndsAPausedTransaction: a node paused halfway through
// sending a batch holds its transaction's row locks for as long as the
// pause (its kernel keeps the connection alive); the server ends a
// transaction idle for store.timeout, and the new owner's claim goes on.
func TestPostgresEndsAPausedTransaction(t *testing.T) {
	s := openPG(t, PostgresConfig{DSN: testkit.PostgresDB(t), Timeout: time.Second})
	ctx := context.Background()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // the paused node
	if _, err := tx.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a transaction idle past store.timeout was not ended by the server")
	}
	var v string
	if err := s.pool.QueryRow(ctx, "SHOW idle_in_transaction_session_timeout").Scan(&v); err != nil || v != "1s" {
		t.Fatalf("idle_in_transaction_session_timeout %q, %v", v, err)
	}
	if err := s.pool.QueryRow(ctx, "SHOW lock_timeout").Scan(&v); err != nil || v != "500ms" {
		t.Fatalf("lock_timeout %q, %v: want half of store.timeout", v, err)
	}
}

// TestPostgresLockedIdentityFailsAlone: an identity whose row another
// transaction holds locked and does not end (a node paused in the middle
// of its batch: the server waits for the rest, its locks held) fails its
// own loads; the loads that shared a round trip with it are read again
// apart and succeed, within store.timeout. So too when the reads have
// less time left than the session's lock_timeout (they waited in the
// queue): the batch's own lock wait is shortened to leave them time.
func TestPostgresLockedIdentityFailsAlone(t *testing.T) {
	const timeout = 2 * time.Second
	s := openPG(t, PostgresConfig{DSN: testkit.PostgresDB(t), Timeout: timeout})
	ctx := context.Background()
	locked := Identity{App: 1, UID: "paused"}
	if _, err := s.Load(ctx, locked); err != nil {
		t.Fatal(err)
	}
	defer holdLocks(t, s, "SELECT 1 FROM courier_identities WHERE app = 1 AND uid = 'paused' FOR UPDATE")()
	for _, left := range []time.Duration{30 * time.Second, timeout * 4 / 10} {
		t.Run(fmt.Sprint(left), func(t *testing.T) { lockedBatch(t, s, locked, left, timeout) })
	}
}

// lockedBatch reads locked and 20 other identities in one batch, whose
// reads have left until their deadline.
func lockedBatch(t *testing.T, s *Postgres, locked Identity, left, timeout time.Duration) {

	// One round trip of the locked identity and 20 others, as a reader
	// forms it under load.
	const others = 20
	type result struct {
		id  Identity
		err error
	}
	results := make(chan result, others+1)
	ids := []Identity{locked}
	for i := range others {
		ids = append(ids, Identity{App: 1, UID: fmt.Sprint("free-", i)})
	}
	var batch []readReq
	for _, id := range ids {
		batch = append(batch, readReq{id: id, deadline: s.cap(time.Now().Add(left)),
			loaded: func(_ *Snapshot, err error) { results <- result{id, err} }})
	}
	start := time.Now()
	if err := s.readBatch(batch); !lockTimedOut(err) {
		t.Fatalf("the batch's round trip: %v, want lock_timeout", err)
	}
	for range others + 1 {
		r := <-results
		switch {
		case r.id == locked && r.err == nil:
			t.Fatal("the locked identity loaded")
		case r.id != locked && r.err != nil:
			t.Fatalf("%s, which shared a round trip with the locked identity, failed: %v", r.id, r.err)
		}
	}
	if took := time.Since(start); took > timeout+time.Second {
		t.Fatalf("the loads took %v (store.timeout %v)", took, timeout)
	}
}

// TestPostgresLockedIdentityFailsItsWritesAlone: a commit batch with a
// write of an identity whose row another transaction holds locked (a
// node paused in the middle of its own) waited past lock_timeout and
// failed every write of the batch, up to 1,024 identities' pushes. Now
// the locked identity's write fails alone (retryable), the others are
// committed, and a write of a stale owner is still fenced.
func TestPostgresLockedIdentityFailsItsWritesAlone(t *testing.T) {
	const timeout = 2 * time.Second
	s := openPG(t, PostgresConfig{DSN: testkit.PostgresDB(t), Timeout: timeout})
	ctx := context.Background()
	ids := []Identity{{App: 1, UID: "paused"}, {App: 1, UID: "stale"}}
	for i := range 20 {
		ids = append(ids, Identity{App: 1, UID: fmt.Sprint("free-", i)})
	}
	owners := map[Identity]uint64{}
	for _, id := range ids {
		snap, err := s.Load(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		owners[id] = snap.Owner
	}
	// The stale identity is claimed again: its first owner's write is
	// fenced.
	if _, err := s.Load(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	defer holdLocks(t, s, "SELECT 1 FROM courier_identities WHERE app = 1 AND uid = 'paused' FOR UPDATE")()

	var batch []pending
	for _, id := range ids {
		w := &Write{ID: id, Owner: owners[id], Sync: true, Meta: &actorpb.IdentityMeta{LastSeq: 1},
			Put: []*actorpb.InboxEntry{{Seq: 1, MsgId: "m1", Payload: []byte("p")}}}
		batch = append(batch, pending{w: w, done: func(error) {}})
	}
	start := time.Now()
	if err := s.commit(0, batch); err != nil {
		t.Fatalf("the batch failed whole: %v", err)
	}
	if took := time.Since(start); took > timeout+time.Second {
		t.Fatalf("the commit took %v (store.timeout %v)", took, timeout)
	}
	for i, p := range batch {
		switch id := ids[i]; {
		case i == 0:
			if !errors.Is(p.err, ErrUnavailable) {
				t.Fatalf("the locked identity's write: %v, want ErrUnavailable", p.err)
			}
		case i == 1:
			if !errors.Is(p.err, ErrFenced) {
				t.Fatalf("the stale owner's write: %v, want ErrFenced", p.err)
			}
		default:
			if p.err != nil {
				t.Fatalf("%s, which shared the batch with the locked identity: %v", id, p.err)
			}
			snap, err := s.Load(ctx, id)
			if err != nil || len(snap.Inbox) != 1 || snap.Meta.GetLastSeq() != 1 {
				t.Fatalf("%s after the commit: %+v, %v", id, snap, err)
			}
		}
	}
}

// TestPostgresCorruptRowIsNotAnOutage: an inbox entry that does not
// decode failed its identity's loads as ErrUnavailable, which the
// callers, the logs and the metrics take for a database outage to retry;
// the database answered. It fails as Pebble's corrupt records do.
func TestPostgresCorruptRowIsNotAnOutage(t *testing.T) {
	s := openPG(t, PostgresConfig{DSN: testkit.PostgresDB(t)})
	ctx := context.Background()
	id := Identity{App: 1, UID: "corrupt"}
	snap, err := s.Load(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := submit(s, &Write{ID: id, Owner: snap.Owner, Sync: true, Put: []*actorpb.InboxEntry{{Seq: 1, MsgId: "m1"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `UPDATE courier_inbox SET entry = '\xff' WHERE app = 1 AND uid = 'corrupt'`); err != nil {
		t.Fatal(err)
	}
	_, err = s.Load(ctx, id)
	if err == nil || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("load of a corrupt inbox entry: %v, want a corruption, not ErrUnavailable", err)
	}
}
