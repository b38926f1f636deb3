package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations are the schema versions, applied in order: NNNN_name.sql is
// version NNNN. A released file is never changed; a change of schema is a
// new file.
//
//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock is the advisory lock key held while migrating
// (0x636f7572 is "cour").
const migrationLock = 0x636f7572

type migration struct {
	version int
	name    string
	sql     string
}

func loadMigrations() ([]migration, error) {
	files, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, f := range files {
		base := strings.TrimPrefix(f, "migrations/")
		v, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("store: migration %s: name must start with its version", base)
		}
		b, err := migrations.ReadFile(f)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{v, base, string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("store: migrations are not numbered 1, 2, ...: %s", m.name)
		}
	}
	return ms, nil
}

// SchemaVersion is the newest schema version this binary knows.
func SchemaVersion() int {
	ms, err := loadMigrations()
	if err != nil {
		return 0
	}
	return len(ms)
}

// migrationLockWait bounds how long a migration's statement waits for a
// table's lock before it gives up and tries again: a DDL statement queued
// behind a long transaction holds up every later query of its table for
// as long as it waits (PostgreSQL queues locks), which would stop the
// cluster's commits and loads; between tries they run.
const migrationLockWait = 2 * time.Second

// migrate brings the schema to the newest version this binary knows,
// holding an advisory lock so that nodes starting together take turns.
// Each migration and its record commit in one transaction.
func migrate(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	ms, err := loadMigrations()
	if err != nil {
		return err
	}
	return applyMigrations(ctx, pool, log, ms, migrationLockWait)
}

// applyMigrations is migrate with the migrations and the lock wait given.
func applyMigrations(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger, ms []migration, lockWait time.Duration) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return unavailable("connect", err)
	}
	defer conn.Release()
	// Another node may be migrating (the advisory lock): no lock_timeout
	// for that wait, ctx bounds it. Each migration sets its own
	// (lockWait) and tries again.
	if _, err := conn.Exec(ctx, "SET lock_timeout = 0"); err != nil {
		return unavailable("migration session", err)
	}
	defer func() { _, _ = conn.Exec(context.Background(), "RESET lock_timeout") }()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(migrationLock)); err != nil {
		return unavailable("migration lock", err)
	}
	defer func() {
		// A lost connection releases the lock by itself.
		_, _ = conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", int64(migrationLock))
	}()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS courier_schema (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)`); err != nil {
		return unavailable("schema table", err)
	}
	var cur int
	if err := conn.QueryRow(ctx, "SELECT COALESCE(max(version), 0) FROM courier_schema").Scan(&cur); err != nil {
		return unavailable("schema version", err)
	}
	if cur > len(ms) {
		return fmt.Errorf("%w: the database's schema is version %d, this binary knows up to %d: run a newer courier", ErrSchema, cur, len(ms))
	}
	for _, m := range ms[cur:] {
		for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
			err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", max(lockWait.Milliseconds(), 1))); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, m.sql); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "INSERT INTO courier_schema (version, name) VALUES ($1, $2)", m.version, m.name)
				return err
			})
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "55P03" { // lock_not_available
				log.Warn("store: a schema migration waits for transactions holding its tables; trying again", "migration", m.name, "in", wait)
				select {
				case <-ctx.Done():
					return fmt.Errorf("store: migration %s: its tables stayed locked: %w", m.name, ctx.Err())
				case <-time.After(wait):
				}
				continue
			}
			if err != nil {
				return fmt.Errorf("store: migration %s: %w", m.name, err)
			}
			break
		}
		log.Info("store: applied schema migration", "version", m.version, "name", m.name)
	}
	return nil
}
