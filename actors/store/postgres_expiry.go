package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Expired implements Store. It walks the inbox expiry index a page at a
// time from the earliest expiry and claims the identities it finds for
// ExpiredLease (an UPDATE that only one node's can win per identity), so
// nodes sweeping at once report disjoint identities. It reads at most
// 10 × max index entries per call (entries of identities another node
// holds are passed over).
func (s *Postgres) Expired(ctx context.Context, now time.Time, max int, fn func(Identity)) error {
	const (
		page    = 1000
		sqlPage = `SELECT app, uid, expires_at, seq FROM courier_inbox
WHERE expires_at <= $1 AND (expires_at, app, uid, seq) > ($2, $3, $4, $5)
ORDER BY expires_at, app, uid, seq LIMIT $6`
		// At most $5 identities of the page whose lease has run out,
		// earliest expiry first (the order they are listed in); SKIP
		// LOCKED passes over those another node is claiming now.
		sqlLease = `UPDATE courier_identities SET sweep_after = $1
WHERE (app, uid) IN (
  SELECT d.app, d.uid FROM courier_identities d
  JOIN unnest($2::int[], $3::bytea[]) WITH ORDINALITY AS v(a, u, o) ON d.app = v.a AND d.uid = v.u
  WHERE d.sweep_after <= $4 ORDER BY v.o LIMIT $5 FOR UPDATE OF d SKIP LOCKED)
RETURNING app, uid`
	)
	if s.closing() {
		return ErrClosed
	}
	nowMs := now.UnixMilli()
	leaseEnd := now.Add(s.cfg.ExpiredLease).UnixMilli()
	var (
		cExp, cSeq int64 = -1 << 62, 0
		cApp       int32
		cUID       = []byte{}
		reported   int
		seen       = map[Identity]int{} // identity -> its place in the index order
	)
	for scanned := 0; scanned < 10*max; scanned += page {
		if reported >= max {
			return nil
		}
		qctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		rows, err := s.pool.Query(qctx, sqlPage, nowMs, cExp, cApp, cUID, cSeq, page)
		if err != nil {
			cancel()
			return unavailable("expiry index", err)
		}
		var apps []int32
		var uids [][]byte
		n := 0
		for rows.Next() {
			var app int32
			var uid []byte
			if err := rows.Scan(&app, &uid, &cExp, &cSeq); err != nil {
				rows.Close()
				cancel()
				return unavailable("expiry index", err)
			}
			cApp, cUID = app, uid
			n++
			id := Identity{App: uint16(app), UID: string(uid)}
			if _, ok := seen[id]; !ok {
				seen[id] = len(seen)
				apps, uids = append(apps, app), append(uids, uid)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			cancel()
			return unavailable("expiry index", err)
		}
		if len(apps) > 0 {
			rows, err := s.pool.Query(qctx, sqlLease, leaseEnd, apps, uids, nowMs, max-reported)
			if err != nil {
				cancel()
				return unavailable("expiry lease", err)
			}
			var claimed []Identity
			for rows.Next() {
				var app int32
				var uid []byte
				if err := rows.Scan(&app, &uid); err != nil {
					rows.Close()
					cancel()
					return unavailable("expiry lease", err)
				}
				claimed = append(claimed, Identity{App: uint16(app), UID: string(uid)})
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				cancel()
				return unavailable("expiry lease", err)
			}
			// RETURNING has no order: earliest expiry first, as the
			// contract says.
			slices.SortFunc(claimed, func(a, b Identity) int { return cmp.Compare(seen[a], seen[b]) })
			for _, id := range claimed {
				fn(id)
			}
			reported += len(claimed)
		}
		cancel()
		if n < page {
			return nil
		}
	}
	return nil
}

// sweepLoop deletes expired idempotency and C2C-dedup records, paced as
// Pebble's (see there).
func (s *Postgres) sweepLoop() {
	defer s.wg.Done()
	t := time.NewTimer(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		start := time.Now()
		n, err := s.SweepIdempotency(s.cfg.SweepBatch)
		wait := s.cfg.SweepInterval
		switch {
		case err != nil:
			s.log.Warn("store: sweeping expired idempotency records", "err", err)
		case n >= s.cfg.SweepBatch:
			wait = time.Since(start)
		case n > 0:
			s.log.Debug("store: swept expired idempotency records", "count", n)
		}
		t.Reset(wait)
	}
}

// sqlSweepIdem deletes up to $2 expired records, earliest first. SKIP
// LOCKED lets nodes sweeping at once take disjoint rows; a record
// written again meanwhile is re-checked under its lock and stays.
const sqlSweepIdem = `DELETE FROM courier_idempotency WHERE (app, uid, key) IN (
SELECT app, uid, key FROM courier_idempotency WHERE expires_at <= $1
ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)`

// SweepIdempotency runs one sweep round: it deletes at most max records
// that expired by now and returns how many it deleted.
func (s *Postgres) SweepIdempotency(max int) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	tag, err := s.pool.Exec(ctx, sqlSweepIdem, s.now().UnixMilli(), max)
	if err != nil {
		return 0, unavailable("idempotency sweep", err)
	}
	s.cfg.Swept(int(tag.RowsAffected()))
	return int(tag.RowsAffected()), nil
}

// listsDoc names the access lists in courier_documents.
const listsDoc = "access-lists"

// Lists implements Store.
func (s *Postgres) Lists(ctx context.Context) (uint64, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	var v int64
	var doc []byte
	err := s.pool.QueryRow(ctx, "SELECT version, doc FROM courier_documents WHERE name = $1", listsDoc).Scan(&v, &doc)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, unavailable("lists", err)
	}
	return uint64(v), doc, nil
}

// SetLists implements Store with a conditional insert or update.
func (s *Postgres) SetLists(ctx context.Context, prev uint64, doc []byte) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	sql, args := "UPDATE courier_documents SET version = version + 1, doc = $3 WHERE name = $1 AND version = $2", []any{listsDoc, int64(prev), doc}
	if prev == 0 {
		sql, args = "INSERT INTO courier_documents (name, version, doc) VALUES ($1, 1, $2) ON CONFLICT (name) DO NOTHING", []any{listsDoc, doc}
	}
	tag, err := s.pool.Exec(ctx, sql, args...)
	if err != nil {
		return 0, unavailable("lists", err)
	}
	if tag.RowsAffected() == 0 {
		return 0, fmt.Errorf("%w: lists changed since version %d", ErrConflict, prev)
	}
	return prev + 1, nil
}
