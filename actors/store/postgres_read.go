package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages/actorpb"
)

// The statements of one read round trip (Postgres.readBatch): the loads
// and idempotency lookups of many identities, each kind one statement
// over arrays, sent together and run in one implicit transaction.
const (
	// sqlClaim claims each identity $3 times (the loads of one identity
	// in a batch get consecutive epochs, as if they came one after the
	// other). The rows are locked in (app, uid) order, as the commits'
	// fencing statement locks them, so that a batch of claims and a
	// commit never wait for each other in a cycle.
	sqlClaim = `INSERT INTO courier_identities AS d (app, uid, owner)
SELECT v.app, v.uid, v.n FROM unnest($1::int[], $2::bytea[], $3::bigint[]) WITH ORDINALITY AS v(app, uid, n, i)
ORDER BY v.i
ON CONFLICT (app, uid) DO UPDATE SET owner = d.owner + excluded.owner
RETURNING app, uid, owner, meta`
	// sqlInbox reads the inboxes of the claimed identities. It runs after
	// the claims, in the same transaction, with a snapshot that holds
	// every write committed before them (a commit holds its identities'
	// rows share-locked until it ends, and the claims wait for it).
	sqlInbox = `SELECT v.i, x.entry FROM unnest($1::int[], $2::bytea[]) WITH ORDINALITY AS v(app, uid, i)
JOIN courier_inbox x ON x.app = v.app AND x.uid = v.uid
ORDER BY v.i, x.seq`
	sqlLookup = `SELECT v.i, x.record FROM unnest($1::int[], $2::bytea[], $3::bytea[]) WITH ORDINALITY AS v(app, uid, key, i)
JOIN courier_idempotency x ON x.app = v.app AND x.uid = v.uid AND x.key = v.key
WHERE x.expires_at IS NULL OR x.expires_at > $4`
)

// Load implements Store: a LoadAsync that the caller waits for.
func (s *Postgres) Load(ctx context.Context, id Identity) (*Snapshot, error) {
	type result struct {
		snap *Snapshot
		err  error
	}
	ch := make(chan result, 1)
	s.LoadAsync(id, deadlineOf(ctx), func(snap *Snapshot, err error) { ch <- result{snap, err} })
	select {
	case r := <-ch:
		return r.snap, r.err
	case <-ctx.Done():
		return nil, unavailable("load "+id.String(), ctx.Err())
	}
}

// Idempotency implements Store: an IdempotencyAsync that the caller
// waits for.
func (s *Postgres) Idempotency(ctx context.Context, id Identity, key string) (*actorpb.IdempotencyRecord, error) {
	type result struct {
		recs []*actorpb.IdempotencyRecord
		err  error
	}
	ch := make(chan result, 1)
	s.IdempotencyAsync(id, []string{key}, deadlineOf(ctx), func(recs []*actorpb.IdempotencyRecord, err error) { ch <- result{recs, err} })
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		return r.recs[0], nil
	case <-ctx.Done():
		return nil, unavailable("idempotency key of "+id.String(), ctx.Err())
	}
}

// deadlineOf is ctx's deadline, or none (the store's timeout applies).
func deadlineOf(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(24 * time.Hour)
}

// LoadAsync implements Store: the load goes in the next read round trip.
func (s *Postgres) LoadAsync(id Identity, deadline time.Time, done func(*Snapshot, error)) {
	if !id.Valid() {
		done(nil, ErrBadIdentity)
		return
	}
	s.r.submit(readReq{id: id, deadline: s.cap(deadline), loaded: done})
}

// cap bounds a read's deadline by the store's timeout: a read is
// answered within it, the wait for a round trip included.
func (s *Postgres) cap(deadline time.Time) time.Time {
	if d := time.Now().Add(s.cfg.Timeout); d.Before(deadline) {
		return d
	}
	return deadline
}

// IdempotencyAsync implements Store: the lookup goes in the next read
// round trip.
func (s *Postgres) IdempotencyAsync(id Identity, keys []string, deadline time.Time, done func([]*actorpb.IdempotencyRecord, error)) {
	if !id.Valid() {
		done(nil, ErrBadIdentity)
		return
	}
	if len(keys) == 0 {
		done(nil, nil)
		return
	}
	s.r.submit(readReq{id: id, keys: keys, deadline: s.cap(deadline), found: done})
}

// pgLoads are the loads of one identity in a read batch.
type pgLoads struct {
	id    Identity
	reqs  []int // indexes in the batch, in arrival order
	owner int64
	meta  []byte
	found bool // the claim returned its row
	inbox [][]byte
}

// readBatch reads a batch in one round trip and answers each read. A
// failure of the round trip fails every read of it (ErrUnavailable); a
// corrupt record fails only the reads of its identity.
func (s *Postgres) readBatch(batch []readReq) error {
	deadline := time.Now().Add(s.cfg.Timeout)
	for i := range batch {
		if batch[i].deadline.Before(deadline) {
			deadline = batch[i].deadline
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	// Loads, one entry per identity, in (app, uid) order: the order the
	// claims lock rows in.
	var loads []*pgLoads
	byID := map[Identity]*pgLoads{}
	var lookups []int // indexes of the lookups in the batch
	for i := range batch {
		q := &batch[i]
		if !q.isLoad() {
			lookups = append(lookups, i)
			continue
		}
		l := byID[q.id]
		if l == nil {
			l = &pgLoads{id: q.id}
			byID[q.id] = l
			loads = append(loads, l)
		}
		l.reqs = append(l.reqs, i)
	}
	slices.SortFunc(loads, func(a, b *pgLoads) int {
		return cmp.Or(cmp.Compare(a.id.App, b.id.App), cmp.Compare(a.id.UID, b.id.UID))
	})
	// The lookups, one row per key; kRead and kPos map a row back to its
	// read and to the key's place among the read's keys.
	var kApp []int32
	var kUID, kKey [][]byte
	var kRead, kPos []int
	for _, i := range lookups {
		for p, k := range batch[i].keys {
			kApp, kUID, kKey = append(kApp, int32(batch[i].id.App)), append(kUID, []byte(batch[i].id.UID)), append(kKey, []byte(k))
			kRead, kPos = append(kRead, i), append(kPos, p)
		}
	}
	recs := make([][]*actorpb.IdempotencyRecord, len(batch))
	for _, i := range lookups {
		recs[i] = make([]*actorpb.IdempotencyRecord, len(batch[i].keys))
	}
	recErr := make([]error, len(batch))

	// A row lock that is not released (a node paused in the middle of
	// its transaction) must time out before the batch's deadline, with
	// time left to read the others apart (readApart): at the session's
	// lock_timeout (half of store.timeout) a batch with less than that
	// left failed whole on its context instead.
	// Not below 25 ms: a claim waits for this node's own commit of the
	// identity (its share lock, through the WAL flush), and one nearly
	// expired read would otherwise send its whole batch apart for that.
	lockWait := min(s.cfg.Timeout/2, max(time.Until(deadline)/2, 25*time.Millisecond))
	err := s.sendReads(ctx, lockWait, loads, kApp, kUID, kKey, func(row int64, v []byte) {
		i := kRead[row]
		rec := &actorpb.IdempotencyRecord{}
		if err := proto.Unmarshal(v, rec); err != nil {
			recErr[i] = fmt.Errorf("store: corrupt idempotency record of %s: %w", batch[i].id, err)
			return
		}
		recs[i][kPos[row]] = rec
	})
	if err != nil && lockTimedOut(err) && !oneIdentity(batch) {
		s.readApart(batch)
		return err
	}
	if err != nil {
		for i := range batch {
			what := "idempotency keys of "
			if batch[i].isLoad() {
				what = "load "
			}
			batch[i].fail(unavailable(what+batch[i].id.String(), err))
		}
		return err
	}
	for _, l := range loads {
		s.answerLoads(batch, l)
	}
	for _, i := range lookups {
		if recErr[i] != nil {
			batch[i].found(nil, recErr[i])
		} else {
			batch[i].found(recs[i], nil)
		}
	}
	return nil
}

// lockTimedOut reports whether err is PostgreSQL's lock_timeout.
func lockTimedOut(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55P03" // lock_not_available
}

// oneIdentity reports whether every read of batch is of one identity.
func oneIdentity(batch []readReq) bool {
	for i := range batch {
		if batch[i].id != batch[0].id {
			return false
		}
	}
	return true
}

// readApart reads a batch that waited past lock_timeout again, one
// identity per round trip: one identity's row locked by a transaction
// that does not end (a node paused in the middle of its batch) fails
// that identity's reads, not every read that came with it. The round
// trips go readApartConns at a time, so that a locked identity holds up
// one of them for its lock_timeout, not the others behind it.
func (s *Postgres) readApart(batch []readReq) {
	var order []Identity
	groups := map[Identity][]readReq{}
	for _, q := range batch {
		if _, ok := groups[q.id]; !ok {
			order = append(order, q.id)
		}
		groups[q.id] = append(groups[q.id], q)
	}
	// The reader's own connection, and spare ones of the pool if any are
	// free (the commit lanes and the other readers keep theirs).
	workers := 1
	for workers < min(readApartConns, len(order)) {
		select {
		case s.apart <- struct{}{}:
			workers++
			continue
		default:
		}
		break
	}
	next := make(chan []readReq)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if w > 0 {
				defer func() { <-s.apart }()
			}
			for g := range next {
				_ = s.readBatch(g)
			}
		}()
	}
	for _, id := range order {
		next <- groups[id]
	}
	close(next)
	wg.Wait()
}

// readApartConns is the most round trips one readApart has in flight.
const readApartConns = 4

// sendReads runs the statements of a read batch and fills loads; found
// is called with each lookup row found (its index among the key arrays)
// and its record.
func (s *Postgres) sendReads(ctx context.Context, lockWait time.Duration, loads []*pgLoads, kApp []int32, kUID, kKey [][]byte, found func(int64, []byte)) error {
	b := &pgx.Batch{}
	b.Queue("SELECT set_config('lock_timeout', $1, true)", strconv.FormatInt(max(lockWait.Milliseconds(), 1), 10))
	if len(loads) > 0 {
		app, uid, n := make([]int32, len(loads)), make([][]byte, len(loads)), make([]int64, len(loads))
		for i, l := range loads {
			app[i], uid[i], n[i] = int32(l.id.App), []byte(l.id.UID), int64(len(l.reqs))
		}
		b.Queue(sqlClaim, app, uid, n)
		b.Queue(sqlInbox, app, uid)
	}
	if len(kApp) > 0 {
		b.Queue(sqlLookup, kApp, kUID, kKey, s.now().UnixMilli())
	}
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return err
	}
	if len(loads) > 0 {
		rows, err := br.Query()
		if err != nil {
			return err
		}
		for rows.Next() {
			var app int32
			var uid, meta []byte
			var owner int64
			if err := rows.Scan(&app, &uid, &owner, &meta); err != nil {
				rows.Close()
				return err
			}
			// The rows come back in no promised order: find the identity.
			at, ok := slices.BinarySearchFunc(loads, Identity{App: uint16(app), UID: string(uid)}, func(l *pgLoads, id Identity) int {
				return cmp.Or(cmp.Compare(l.id.App, id.App), cmp.Compare(l.id.UID, id.UID))
			})
			if !ok {
				rows.Close()
				return fmt.Errorf("claim returned %d/%q, which was not asked for", app, uid)
			}
			loads[at].owner, loads[at].meta, loads[at].found = owner, meta, true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if err := scanIndexed(br, len(loads), "inbox row of identity", func(i int, v []byte) {
			loads[i].inbox = append(loads[i].inbox, v)
		}); err != nil {
			return err
		}
	}
	if len(kApp) > 0 {
		if err := scanIndexed(br, len(kApp), "lookup row", func(i int, v []byte) { found(int64(i), v) }); err != nil {
			return err
		}
	}
	// Close reads the end of the implicit transaction: its commit.
	return br.Close()
}

// scanIndexed reads the next result of br, rows of (1-based index into
// n requests, value), and gives each to fn with its 0-based index.
func scanIndexed(br pgx.BatchResults, n int, what string, fn func(i int, v []byte)) error {
	rows, err := br.Query()
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var i int64
		var v []byte
		if err := rows.Scan(&i, &v); err != nil {
			return err
		}
		if i < 1 || i > int64(n) {
			return fmt.Errorf("%s %d of %d", what, i, n)
		}
		fn(int(i-1), v)
	}
	return rows.Err()
}

// answerLoads answers the loads of one identity: the k-th of n gets the
// k-th of the n epochs the claim handed out, so the last one owns the
// identity, as if they had come one after the other.
func (s *Postgres) answerLoads(batch []readReq, l *pgLoads) {
	if !l.found {
		err := fmt.Errorf("%w: load %s: the claim returned no row", ErrUnavailable, l.id)
		for _, i := range l.reqs {
			batch[i].loaded(nil, err)
		}
		return
	}
	for k, i := range l.reqs {
		snap, err := l.snapshot()
		if err != nil {
			// Not ErrUnavailable: the database answered, and retrying
			// reads the same bytes (as Pebble's corrupt records).
			batch[i].loaded(nil, fmt.Errorf("store: load %s: %w", l.id, err))
			continue
		}
		snap.Owner = uint64(l.owner - int64(len(l.reqs)-1-k))
		batch[i].loaded(snap, nil)
	}
}

// snapshot decodes the identity's meta and inbox (afresh for each load:
// every activation gets entries of its own).
func (l *pgLoads) snapshot() (*Snapshot, error) {
	snap := &Snapshot{Meta: &actorpb.IdentityMeta{}}
	if l.meta != nil {
		if err := proto.Unmarshal(l.meta, snap.Meta); err != nil {
			return nil, fmt.Errorf("corrupt meta: %w", err)
		}
	}
	if len(l.inbox) > 0 {
		snap.Inbox = make([]*actorpb.InboxEntry, len(l.inbox))
	}
	for i, v := range l.inbox {
		e := &actorpb.InboxEntry{}
		if err := proto.Unmarshal(v, e); err != nil {
			return nil, fmt.Errorf("corrupt inbox entry: %w", err)
		}
		snap.Inbox[i] = e
	}
	return snap, nil
}
