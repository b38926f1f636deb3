package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresConfig configures the PostgreSQL store.
type PostgresConfig struct {
	// DSN is a libpq connection string or URL. Required.
	DSN string
	// MaxConns is the most connections to the database (default: Lanes
	// + Readers + 4: one per commit lane and per reader, the rest for
	// the sweeps and the lists).
	MaxConns int
	// Lanes is the number of batches committed concurrently (default 4):
	// each waits for a round trip and the database's WAL flush, so more
	// lanes keep the database busy (it joins concurrent flushes).
	Lanes int
	// MaxBatch is the most writes in one transaction (default 1024).
	MaxBatch int
	// QueueLen is the length of the commit queues, all lanes together
	// (default 8192).
	QueueLen int
	// Readers is the most read round trips (loads and idempotency
	// lookups) in flight at once (default 4, fewer if MaxConns leaves
	// less room): reads that arrive while they are busy go together in
	// the next round trip.
	Readers int
	// MaxReadBatch is the most reads in one round trip (default 256).
	MaxReadBatch int
	// ReadQueueLen is the most reads waiting for a round trip (default
	// 4096); beyond, a read fails at once with ErrOverloaded.
	ReadQueueLen int
	// Timeout bounds one transaction, load or lookup, including the wait
	// for a connection (default 5 s). A store that cannot reach the
	// database fails within it.
	Timeout time.Duration
	// SweepInterval and SweepBatch pace the idempotency sweep as in
	// PebbleConfig (defaults 1 s and 1000).
	SweepInterval time.Duration
	SweepBatch    int
	// ExpiredLease is how long an identity reported by Expired is not
	// reported again, to this node or another (default 1 minute).
	ExpiredLease time.Duration
	// NoSync commits with synchronous_commit off (benchmarks only: a
	// crash of the database loses the last commits).
	NoSync bool
	// Observe, if set, is told each batch's size and commit time.
	Observe func(n int, d time.Duration, err error)
	// ObserveRead, if set, is told each read round trip's reads and time.
	ObserveRead func(n int, d time.Duration, err error)
	// Swept, if set, is told how many expired idempotency records each
	// sweep round deleted.
	Swept func(n int)
	// Now is the clock of expiries (default time.Now; tests set it).
	Now func() time.Time
}

func (c *PostgresConfig) setDefaults() error {
	if c.DSN == "" {
		return errors.New("store: postgres DSN is required")
	}
	if c.Lanes <= 0 {
		c.Lanes = 4
	}
	if c.Readers < 0 {
		return fmt.Errorf("store: postgres Readers %d: must not be negative", c.Readers)
	}
	if c.MaxConns <= 0 {
		c.MaxConns = c.Lanes + max(c.Readers, 4) + 4
	}
	if c.MaxConns <= c.Lanes {
		return fmt.Errorf("store: postgres MaxConns %d: must exceed Lanes %d (loads need connections too)", c.MaxConns, c.Lanes)
	}
	if c.Readers == 0 {
		c.Readers = max(1, min(4, c.MaxConns-c.Lanes-1))
	}
	if c.Lanes+c.Readers > c.MaxConns {
		return fmt.Errorf("store: postgres Lanes %d + Readers %d: must not exceed MaxConns %d", c.Lanes, c.Readers, c.MaxConns)
	}
	if c.MaxReadBatch <= 0 {
		c.MaxReadBatch = 256
	}
	if c.ReadQueueLen <= 0 {
		c.ReadQueueLen = 4096
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 1024
	}
	if c.QueueLen <= 0 {
		c.QueueLen = 8192
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = time.Second
	}
	if c.SweepBatch <= 0 {
		c.SweepBatch = 1000
	}
	if c.ExpiredLease <= 0 {
		c.ExpiredLease = time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Swept == nil {
		c.Swept = func(int) {}
	}
	return nil
}

// Postgres is the Store of a cluster: every node reaches the same
// database.
//
// Fencing: Load bumps the identity's owner epoch (an UPDATE, which takes
// the row's lock) and reads its inbox in the same transaction. A commit
// first share-locks the rows of its identities whose epoch is still the
// writer's (SELECT ... FOR SHARE); every statement after it is joined with
// that condition. So a write committed before a claim is seen by the
// claim's Load, and a write after it changes nothing and fails alone
// with ErrFenced. The loads of many identities go in one round trip
// (reader, postgres_read.go): their claims lock rows in (app, uid)
// order, the order in which a commit locks them too, so the two never
// deadlock.
type Postgres struct {
	pool *pgxpool.Pool
	c    *committer
	r    *reader
	cfg  PostgresConfig
	log  *slog.Logger
	now  func() time.Time

	// failCommit, if set, fails every commit with it (tests of failures).
	failCommit atomic.Pointer[error]
	// apart holds the pool's spare connections readApart may use: not
	// the commit lanes' or the readers', and two for the sweeps and the
	// lists.
	apart chan struct{}

	quit      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// OpenPostgres connects, applies the schema migrations this binary knows
// (under an advisory lock, so that nodes starting together are safe) and
// starts the committer and the idempotency sweep. It refuses a database
// whose schema is newer than it knows (ErrSchema).
func OpenPostgres(ctx context.Context, cfg PostgresConfig, log *slog.Logger) (*Postgres, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	pc, err := parseDSN(cfg.DSN)
	if err != nil {
		return nil, err
	}
	pc.MaxConns = int32(cfg.MaxConns)
	pc.MinConns = 0
	pc.HealthCheckPeriod = 10 * time.Second
	if pc.ConnConfig.ConnectTimeout == 0 || pc.ConnConfig.ConnectTimeout > cfg.Timeout {
		pc.ConnConfig.ConnectTimeout = cfg.Timeout
	}
	rp := pc.ConnConfig.RuntimeParams
	rp["application_name"] = "courier"
	// A commit answers only once its WAL is flushed, whatever the
	// database's default.
	rp["synchronous_commit"] = "on"
	if cfg.NoSync {
		rp["synchronous_commit"] = "off"
	}
	// Each statement of a batch must see every write committed before it
	// began (a load's inbox read after its claim sees the pushes the
	// fenced owner committed while the claim waited): READ COMMITTED,
	// whatever the database's or the DSN's default. Under REPEATABLE
	// READ the claim's transaction would read the inbox from a snapshot
	// taken before, and a later push overwrite the message it missed.
	rp["default_transaction_isolation"] = "read committed"
	// A node cut off from the database in the middle of a transaction
	// (a batch half sent) is noticed by the server in about 11 s, not the
	// operating system's two hours, so that the row locks its transaction
	// holds stop blocking the identities' new owners. (A node that gives
	// up on a statement itself closes its connection, and pgx then sends
	// the server a cancel request: TestPostgresGivesUpOnTheServerToo.)
	// Values the DSN gives are kept.
	// A node paused in the middle of sending a batch (SIGSTOP, a VM
	// freeze) keeps its connection: the kernel still answers keepalives.
	// Its transaction, waiting for the rest of the batch, is then ended
	// by the server after store.timeout idle, which the node would have
	// given up at anyway, and its locks with it.
	//
	// A transaction paused in the middle of its batch is not idle,
	// though (the server waits for the rest of the batch, its Sync), and
	// holds its row locks for as long as the pause lasts. The reads and
	// commits that queue behind one of them wait at most lock_timeout,
	// half of store.timeout: a read batch that hits it is read again one
	// identity at a time (readApart), so that only the locked identity's
	// reads fail, not every read that shared its round trip.
	idleTx := strconv.FormatInt(max(cfg.Timeout.Milliseconds(), 1), 10)
	lockWait := strconv.FormatInt(max(cfg.Timeout.Milliseconds()/2, 1), 10)
	for k, v := range map[string]string{"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3",
		"idle_in_transaction_session_timeout": idleTx, "lock_timeout": lockWait} {
		if _, set := rp[k]; !set {
			rp[k] = v
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("store: postgres: %w", err)
	}
	s := &Postgres{pool: pool, cfg: cfg, log: log, now: cfg.Now, quit: make(chan struct{}),
		apart: make(chan struct{}, max(cfg.MaxConns-cfg.Lanes-cfg.Readers-2, 0))}
	mctx, cancel := context.WithTimeout(ctx, max(cfg.Timeout, 30*time.Second))
	defer cancel()
	if err := migrate(mctx, pool, log); err != nil {
		pool.Close()
		return nil, err
	}
	s.c = newCommitter(cfg.Lanes, cfg.QueueLen, cfg.MaxBatch, s.commit)
	s.c.observe = cfg.Observe
	s.r = newReader(cfg.Readers, cfg.ReadQueueLen, cfg.MaxReadBatch, s.readBatch)
	s.r.maxNeed = cfg.Timeout / 4
	s.r.observe = cfg.ObserveRead
	s.wg.Add(1)
	go s.sweepLoop()
	return s, nil
}

// CheckDSN reports whether dsn parses as a PostgreSQL connection string
// (a URL or key=value pairs), without connecting: a settings check. The
// error does not quote the password.
func CheckDSN(dsn string) error {
	_, err := pgxpool.ParseConfig(dsn)
	if err == nil {
		return nil
	}
	if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
		// A file the DSN names (sslrootcert, sslcert, sslkey, a service
		// file) that cannot be read yet, such as a certificate mounted
		// after boot: the connection's failure, retried, not a mistake
		// in the settings.
		return nil
	}
	_, err = parseDSN(dsn) // the same error, its password left out
	return err
}

func parseDSN(dsn string) (*pgxpool.Config, error) {
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// The parser's message may quote the DSN, password included.
		return nil, fmt.Errorf("store: postgres DSN does not parse (%s)", redact(err.Error(), dsn))
	}
	return pc, nil
}

// redact removes the DSN's password from msg.
func redact(msg, dsn string) string {
	if c, err := pgx.ParseConfig(dsn); err == nil && c.Password != "" {
		return strings.ReplaceAll(msg, c.Password, "****")
	}
	if i := strings.Index(msg, dsn); i >= 0 {
		return msg[:i] + "(dsn)" + msg[i+len(dsn):]
	}
	return msg
}

// unavailable wraps a database error as ErrUnavailable (a fenced write
// or a closed store is not).
func unavailable(what string, err error) error {
	if errors.Is(err, ErrClosed) {
		return err
	}
	return fmt.Errorf("%w: %s: %v", ErrUnavailable, what, err)
}

// Submit implements Store.
func (s *Postgres) Submit(w *Write, done func(error)) {
	if !w.ID.Valid() {
		done(ErrBadIdentity)
		return
	}
	s.c.submit(pending{w: w, done: done})
}

func (s *Postgres) closing() bool {
	select {
	case <-s.quit:
		return true
	default:
		return false
	}
}

// CommitWait implements Store.
func (s *Postgres) CommitWait() time.Duration { return s.c.waiting() }

// Stalled implements Store: never (a commit is bounded by Timeout; one
// waiting for a row lock, a single identity's, is no stall of the
// database).
func (s *Postgres) Stalled() bool { return false }

// Close implements Store: it stops the sweep, fails the reads that are
// queued (ErrClosed), commits the writes that are queued and closes the
// connections.
func (s *Postgres) Close() error {
	s.closeOnce.Do(func() {
		close(s.quit)
		s.wg.Wait()
		s.r.close()
		s.c.close()
		s.pool.Close()
	})
	return nil
}
