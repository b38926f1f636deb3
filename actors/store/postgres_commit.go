package store

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
)

// The statements of one commit. They are sent together (one round trip)
// and run in one implicit transaction. The first share-locks the
// identities whose owner epoch is still the writer's and returns the
// indexes of those writes; every later statement joins the same
// condition, so a fenced write changes nothing. Arrays (unnest) carry a
// whole batch in one statement each. The rows are locked in (app, uid)
// order, the order in which a batch of loads claims them (sqlClaim):
// transactions that lock in one order never wait for each other in a
// cycle. The later statements lock only rows the first has locked.
const (
	sqlFence = `SELECT v.i FROM unnest($1::int[], $2::bytea[], $3::bigint[], $4::int[]) AS v(app, uid, owner, i)
JOIN courier_identities d ON d.app = v.app AND d.uid = v.uid AND d.owner = v.owner
ORDER BY d.app, d.uid
FOR SHARE OF d`
	// sqlOwners is sqlFence without the lock: the writes whose owner is
	// still the writer's, whoever holds their rows.
	sqlOwners = `SELECT v.i FROM unnest($1::int[], $2::bytea[], $3::bigint[], $4::int[]) AS v(app, uid, owner, i)
JOIN courier_identities d ON d.app = v.app AND d.uid = v.uid AND d.owner = v.owner`
	sqlMeta = `UPDATE courier_identities d SET meta = v.meta
FROM unnest($1::int[], $2::bytea[], $3::bigint[], $4::bytea[]) AS v(app, uid, owner, meta)
WHERE d.app = v.app AND d.uid = v.uid AND d.owner = v.owner`
	sqlDelete = `DELETE FROM courier_inbox x
USING unnest($1::int[], $2::bytea[], $3::bigint[], $4::bigint[]) AS v(app, uid, owner, seq), courier_identities d
WHERE x.app = v.app AND x.uid = v.uid AND x.seq = v.seq
  AND d.app = v.app AND d.uid = v.uid AND d.owner = v.owner`
	sqlPut = `INSERT INTO courier_inbox (app, uid, seq, expires_at, entry)
SELECT v.app, v.uid, v.seq, NULLIF(v.exp, 0), v.entry
FROM unnest($1::int[], $2::bytea[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bytea[]) AS v(app, uid, owner, seq, exp, entry)
JOIN courier_identities d ON d.app = v.app AND d.uid = v.uid AND d.owner = v.owner
ON CONFLICT (app, uid, seq) DO UPDATE SET expires_at = excluded.expires_at, entry = excluded.entry`
	sqlIdem = `INSERT INTO courier_idempotency (app, uid, key, expires_at, record)
SELECT v.app, v.uid, v.key, NULLIF(v.exp, 0), v.record
FROM unnest($1::int[], $2::bytea[], $3::bigint[], $4::bytea[], $5::bigint[], $6::bytea[]) AS v(app, uid, owner, key, exp, record)
JOIN courier_identities d ON d.app = v.app AND d.uid = v.uid AND d.owner = v.owner
ON CONFLICT (app, uid, key) DO UPDATE SET expires_at = excluded.expires_at, record = excluded.record`
)

// pgOwned names a row of an identity as written by one owner: rows of
// one batch are merged per key (the last write wins), which a single
// statement needs (it may not change a row twice).
type pgOwned struct {
	app   int32
	uid   string
	owner int64
	key   string // seq or idempotency key; "" for the meta
}

// pgRow is the final state of a row in a batch: a put (val set) or a
// deletion.
type pgRow struct {
	seq int64
	exp int64
	val []byte
	del bool
}

// pgBatch accumulates a batch as column arrays.
type pgBatch struct {
	fence             []int32 // write indexes, with fenceApp... below
	fenceApp          []int32
	fenceUID          [][]byte
	fenceOwner        []int64
	inbox, idem, meta map[pgOwned]pgRow
	inboxOrd, idemOrd []pgOwned // first-seen order (deterministic statements)
	metaOrd           []pgOwned
	sync              bool // some write asked for durability
}

func (b *pgBatch) set(m map[pgOwned]pgRow, ord *[]pgOwned, k pgOwned, r pgRow) {
	if _, ok := m[k]; !ok {
		*ord = append(*ord, k)
	}
	m[k] = r
}

// commit writes a batch in one transaction: one WAL flush if a write of
// it asked for Sync; otherwise the transaction commits with
// synchronous_commit off for itself alone (durable with the next flush,
// as Pebble's unsynced batches).
//
// A batch whose owner check waited for a row lock past lock_timeout (a
// node paused in the middle of its own transaction holds an identity's
// row) is committed again at once without the locked identities, whose
// writes alone fail (commitSkippingLocked): one locked row no longer
// fails up to a batch's 1,024 writes of other identities.
func (s *Postgres) commit(_ int, ws []pending) error {
	b, err := buildBatch(ws, nil)
	if err != nil {
		return err
	}
	if err := s.failCommit.Load(); err != nil {
		return *err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	allowed, err := s.send(ctx, s.pool, b, len(ws))
	if lockTimedOut(err) {
		// In what is left of store.timeout: the commit stays bounded by it.
		return s.commitSkippingLocked(ctx, ws)
	}
	if err != nil {
		return unavailable("commit", err)
	}
	for i := range ws {
		if !allowed[i] {
			ws[i].err = ErrFenced
		}
	}
	return nil
}

// buildBatch turns the writes of ws (those include accepts, all if nil)
// into a batch's column arrays.
func buildBatch(ws []pending, include func(i int) bool) (*pgBatch, error) {
	b := &pgBatch{inbox: map[pgOwned]pgRow{}, idem: map[pgOwned]pgRow{}, meta: map[pgOwned]pgRow{}}
	for i, p := range ws {
		if include != nil && !include(i) {
			continue
		}
		w := p.w
		app, uid, owner := int32(w.ID.App), w.ID.UID, int64(w.Owner)
		b.fence = append(b.fence, int32(i))
		b.fenceApp = append(b.fenceApp, app)
		b.fenceUID = append(b.fenceUID, []byte(uid))
		b.fenceOwner = append(b.fenceOwner, owner)
		b.sync = b.sync || w.Sync
		if w.Meta != nil {
			v, err := proto.Marshal(w.Meta)
			if err != nil {
				return nil, err
			}
			b.set(b.meta, &b.metaOrd, pgOwned{app, uid, owner, ""}, pgRow{val: v})
		}
		for _, e := range w.Put {
			v, err := proto.Marshal(e)
			if err != nil {
				return nil, err
			}
			b.set(b.inbox, &b.inboxOrd, pgOwned{app, uid, owner, strconv.FormatUint(uint64(e.Seq), 10)}, pgRow{seq: int64(e.Seq), exp: e.ExpiresAtMs, val: v})
		}
		for _, seq := range w.Delete {
			b.set(b.inbox, &b.inboxOrd, pgOwned{app, uid, owner, strconv.FormatUint(uint64(seq), 10)}, pgRow{seq: int64(seq), del: true})
		}
		for _, ip := range w.Idem {
			v, err := proto.Marshal(ip.Record)
			if err != nil {
				return nil, err
			}
			b.set(b.idem, &b.idemOrd, pgOwned{app, uid, owner, ip.Key}, pgRow{exp: ip.Record.ExpiresAtMs, val: v})
		}
	}
	return b, nil
}

// commitSkippingLocked commits ws in one transaction without the writes
// of identities whose row another transaction holds locked: those fail
// alone with ErrUnavailable (their actors reload, and their loads wait
// for the lock in turn). The owner check locks what it can at once
// (SKIP LOCKED); a write whose row it skipped but whose owner is still
// the writer's was locked out, any other is fenced. The rest is the
// usual batch, on the rows already locked. Two round trips, only after
// a lock timeout.
func (s *Postgres) commitSkippingLocked(ctx context.Context, ws []pending) error {
	full, err := buildBatch(ws, nil)
	if err != nil {
		return err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return unavailable("commit", err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // after Commit, a no-op
	indexes := func(sql string) ([]bool, error) {
		rows, err := tx.Query(ctx, sql, full.fenceApp, full.fenceUID, full.fenceOwner, full.fence)
		if err != nil {
			return nil, err
		}
		return writeIndexes(rows, len(ws))
	}
	lockedNow, err := indexes(sqlFence + " SKIP LOCKED")
	if err != nil {
		return unavailable("commit", err)
	}
	owned, err := indexes(sqlOwners)
	if err != nil {
		return unavailable("commit", err)
	}
	locked := 0
	for i := range ws {
		switch {
		case lockedNow[i]:
		case owned[i]:
			ws[i].err = fmt.Errorf("%w: commit: the row of %s is locked by another transaction (a node paused in the middle of its own?) past lock_timeout", ErrUnavailable, ws[i].w.ID)
			locked++
		default:
			ws[i].err = ErrFenced
		}
	}
	b, err := buildBatch(ws, func(i int) bool { return lockedNow[i] })
	if err != nil {
		return err
	}
	if len(b.fence) > 0 {
		allowed, err := s.send(ctx, tx, b, len(ws))
		if err != nil {
			return unavailable("commit", err)
		}
		for i := range ws {
			if lockedNow[i] && !allowed[i] {
				ws[i].err = ErrFenced
			}
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return unavailable("commit", err)
	}
	s.log.Warn("store: a commit waited for locked rows past lock_timeout; committed without them", "writes", len(ws), "locked_out", locked)
	return nil
}

// batchSender is what send sends a batch on: the pool (a transaction of
// its own) or an open transaction.
type batchSender interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// send runs the batch's statements on on and returns which of n writes
// were not fenced (indexed as the writes the batch was built from).
func (s *Postgres) send(ctx context.Context, on batchSender, b *pgBatch, n int) ([]bool, error) {
	q := &pgx.Batch{}
	pre := 0
	if !b.sync && !s.cfg.NoSync {
		q.Queue("SELECT set_config('synchronous_commit', 'off', true)")
		pre = 1
	}
	q.Queue(sqlFence, b.fenceApp, b.fenceUID, b.fenceOwner, b.fence)
	stmts := 1
	if len(b.metaOrd) > 0 {
		var app []int32
		var uid, val [][]byte
		var owner []int64
		for _, k := range b.metaOrd {
			app, uid, owner, val = append(app, k.app), append(uid, []byte(k.uid)), append(owner, k.owner), append(val, b.meta[k].val)
		}
		q.Queue(sqlMeta, app, uid, owner, val)
		stmts++
	}
	var dApp, pApp []int32
	var dUID, pUID, pVal [][]byte
	var dOwner, dSeq, pOwner, pSeq, pExp []int64
	for _, k := range b.inboxOrd {
		r := b.inbox[k]
		if r.del {
			dApp, dUID, dOwner, dSeq = append(dApp, k.app), append(dUID, []byte(k.uid)), append(dOwner, k.owner), append(dSeq, r.seq)
			continue
		}
		pApp, pUID, pOwner, pSeq = append(pApp, k.app), append(pUID, []byte(k.uid)), append(pOwner, k.owner), append(pSeq, r.seq)
		pExp, pVal = append(pExp, r.exp), append(pVal, r.val)
	}
	if len(dApp) > 0 {
		q.Queue(sqlDelete, dApp, dUID, dOwner, dSeq)
		stmts++
	}
	if len(pApp) > 0 {
		q.Queue(sqlPut, pApp, pUID, pOwner, pSeq, pExp, pVal)
		stmts++
	}
	if len(b.idemOrd) > 0 {
		var app []int32
		var uid, key, val [][]byte
		var owner, exp []int64
		for _, k := range b.idemOrd {
			r := b.idem[k]
			app, uid, owner, key = append(app, k.app), append(uid, []byte(k.uid)), append(owner, k.owner), append(key, []byte(k.key))
			exp, val = append(exp, r.exp), append(val, r.val)
		}
		q.Queue(sqlIdem, app, uid, owner, key, exp, val)
		stmts++
	}
	br := on.SendBatch(ctx, q)
	defer br.Close()
	for range pre {
		if _, err := br.Exec(); err != nil {
			return nil, err
		}
	}
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	allowed, err := writeIndexes(rows, n)
	if err != nil {
		return nil, err
	}
	for range stmts - 1 {
		if _, err := br.Exec(); err != nil {
			return nil, err
		}
	}
	// Close reads the end of the implicit transaction: its commit.
	if err := br.Close(); err != nil {
		return nil, err
	}
	return allowed, nil
}

// writeIndexes reads rows of write indexes (an owner check's answer) into
// which of n writes they name, and closes rows.
func writeIndexes(rows pgx.Rows, n int) ([]bool, error) {
	defer rows.Close()
	got := make([]bool, n)
	for rows.Next() {
		var i int32
		if err := rows.Scan(&i); err != nil {
			return nil, err
		}
		got[i] = true
	}
	return got, rows.Err()
}
