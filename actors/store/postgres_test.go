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
