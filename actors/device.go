package actors

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
)

// ReplyTo names the caller waiting for the answer to a request.
type ReplyTo struct {
	Address string
	ReqID   uint64
}

// Effect is an output of the state machine, performed by the actor wrapper
// in the order the machine produced them. Exactly one of ToConn and Reply
// is set.
type Effect struct {
	// ToConn goes to the gate that holds Conn.
	Conn   *actorpb.ConnRef
	ToConn *actorpb.ToConn
	// Reply answers a request.
	ReplyTo ReplyTo
	Reply   *actorpb.Reply
	// FailConn, if set, replaces ToConn when a store write this effect
	// waited for failed; otherwise the effect is dropped then. A Reply is
	// replaced by a Failure with FailMsg (or a generic message).
	FailConn *actorpb.ToConn
	FailMsg  string
	// failLogin: ToConn is a LOGIN_ACK OK; if the write fails, the
	// connection gets LOGIN_ACK STORE_UNAVAILABLE instead (made only
	// then: loginFailure).
	failLogin bool
}

const (
	storeDown = "the inbox store is unavailable; retry"
	// Moved answers the callers a fenced actor leaves waiting: another
	// activation of the identity has claimed it.
	Moved = "the identity moved to another node while this request was in flight: nothing was accepted; retry with the same idempotency key"
)

// MaxClientMsgIDLen is the longest client_msg_id of a C2C or C2S a device
// may send, in bytes.
const MaxClientMsgIDLen = 128

// EntryBytes is what an inbox entry counts against every byte budget (the
// inbox's, the window's, a PULL_ACK's): its stored encoding plus a frame
// header. It bounds the frame that delivers the entry (S2C and C2C_PUSH
// carry a subset of its fields under the same small field numbers) and
// its share of a PULL_ACK (a StoredMessage has its fields, plus a few
// bytes of wrapping), so the budgets hold whatever the entries contain.
func EntryBytes(e *actorpb.InboxEntry) int { return proto.Size(e) + messages.HeaderSize }

// pullAckHasMore is what a PULL_ACK's has_more adds to its body.
const pullAckHasMore = 2

// pullAckEntry is what a message of n encoded bytes adds to a PULL_ACK's
// body: StoredMessage has InboxEntry's fields under the same numbers, so
// its size is n, plus its tag and length in the repeated field.
func pullAckEntry(n int) int { return 1 + protowire.SizeVarint(uint64(n)) + n }

// tooLarge reports how many bytes the largest frame that can carry e
// alone (a PULL_ACK of that one message; S2C and C2C_PUSH carry a subset
// of its fields) would pass the frame limit by, or 0 if it fits.
func (d *Device) tooLarge(e *actorpb.InboxEntry) int {
	return max(0, pullAckHasMore+pullAckEntry(proto.Size(e))-d.env.Config.MaxFrameSize)
}

// item is an inbox entry and its delivery state in the current session.
type item struct {
	e         *actorpb.InboxEntry
	size      int       // EntryBytes(e)
	sent      bool      // written to the current session, not yet acked
	delivered bool      // written to some session before (later writes are retries)
	attempts  int       // writes to the current session
	due       time.Time // next redelivery, when sent
}

// queued is an effect waiting for the store write numbered tag.
type queued struct {
	tag uint64
	eff Effect
}

// Device is the state machine of one identity: its session, its inbox and
// what is in flight. It performs no I/O: inputs are method calls, outputs
// are a store Write to submit (TakeWrite) and Effects to perform
// (Effects). An output that depends on a write is held back until that
// write is durable ("output commit"), so an app-server never hears
// "accepted" and a device never receives a message before it is stored,
// and everything a device receives keeps the order the machine produced.
//
// At most one write is in flight; changes made meanwhile accumulate into
// the next one. If a write fails the machine must be discarded and rebuilt
// from the store (Broken reports it), since its memory is ahead of the
// store.
//
// A Device is not safe for concurrent use.
type Device struct {
	env   *MachineEnv
	id    store.Identity
	owner uint64 // the owner epoch of the snapshot, stamped on every write
	// The identity's meta, kept as fields (the IdentityMeta a write
	// stores is made when the write is taken): the last seq assigned, the
	// last session epoch and the session record (stored: online or not;
	// session: the live one, nil when offline).
	lastEpoch uint64
	// loginTAT is the LOGIN rate's theoretical arrival time (GCRA, Unix
	// nanoseconds; Config.LoginsPerSecond): one field, not a bucket.
	loginTAT int64
	stored   *actorpb.SessionRecord
	session  *actorpb.SessionRecord
	lastSeq  uint32
	// savedLastSeq is the LastSeq in the stored meta. Each stored entry
	// carries its seq, so a push need not rewrite the meta; the meta's
	// LastSeq is brought up to date when a write deletes the entry that
	// carries the highest seq (atomically with the deletion), so the
	// highest seq is never forgotten.
	savedLastSeq uint32
	takenLastSeq uint32 // LastSeq of the meta in the write in flight
	// inflight is the number of messages delivered and not yet
	// acknowledged (at most Config.Window, 4096).
	inflight int32

	// dels are the seqs of entries acknowledged (or expired) whose
	// deletion no write carries yet. They ride in the
	// identity's next write, so an acknowledged message costs no write of
	// its own; an identity that writes nothing more flushes them before
	// it leaves memory or hands off (FlushDeletions). Lost in a crash,
	// the entries are delivered again: nothing depends on a deletion.
	dels []uint32
	// indexed are the expiry buckets (store.ExpiryBucket, ascending) of the store's
	// inbox index that this machine knows are stored or in a write it
	// took: those of the entries it loaded and of those it stored since,
	// less those a write of its own unindexed. A write tells the store
	// which of its entries' buckets are indexed already (Write.Indexed),
	// so that a stream of messages to one identity costs two index
	// updates per bucket, not two per message. Usually one or two.
	indexed []int64
	leaving bool // FlushDeletions was called: the next write may unindex every bucket
	// keepIndex: a detached deletion failed, so entries this machine
	// dropped may still be stored in buckets it no longer counts as
	// indexed; it unindexes nothing more (a stale index key costs the
	// sweep a look; a missing one would keep such an entry for good).
	// Nor while detached deletions are out (detachedOut): one may fail
	// after a later write unindexed its entries' bucket.
	keepIndex   bool
	detachedOut int32

	inbox   []*item // by seq
	byMsgID map[string]*item
	// Budgets: app-server pushes and C2C messages are counted apart, so
	// that what devices send never fills the app-servers' room, and C2C
	// per sender, so that one user cannot fill another's C2C room alone.
	s2c, c2c      usage
	senders       map[string]*usage // C2C by sender uid
	inflightBytes int
	// minExpiry is a lower bound of the inbox's earliest expiry (Unix ms,
	// 0: none), so that most calls skip the expiry scan.
	minExpiry int64
	// recent remembers idempotency records written while active, so a
	// duplicate that arrives before its first write is durable is caught
	// (the store does not have it yet); nil until the first.
	recent *recentIdem

	// Output commit. Writes are numbered from 1; submitted is the number
	// of the last write handed out by TakeWrite, durable the last one that
	// completed.
	next      *store.Write
	submitted uint64
	durable   uint64
	fx        *effects // nil while no effect is queued (Release)
	inFlight  bool
	broken    bool
	fenced    bool
}

// recentIdem are the idempotency records a machine wrote while in
// memory; order lists their keys oldest first. A key leaves memory only
// once its record is durable.
type recentIdem struct {
	m     map[string]idemMemo
	order []string
}

// effects are a machine's queued effects: waiting for a write, and ready
// to perform, with spare, the other buffer of ready (see Effects). A
// machine holds them only while something is queued: Release gives them
// back to effectsPool, so that the identities in memory with nothing to
// send (most of them) do not each keep their last buffers.
type effects struct {
	waiting []queued
	ready   []Effect
	spare   []Effect
	// waitBytes is about what waiting holds (effectCost): Backlogged
	// bounds it.
	waitBytes int
}

// effectCost is what an effect is counted at while it waits for a write:
// its frames' bodies and a fixed share for the rest.
func effectCost(e *Effect) int {
	n := 64
	if e.ToConn != nil {
		for _, f := range e.ToConn.Frames {
			n += len(f.Body)
		}
	}
	return n
}

// Backlogged reports whether the effects waiting for the machine's writes
// hold about four delivery windows (actors.window-bytes) or more: a write
// that does not complete (a hung disk, a full write budget) while answers
// that need no write of their own (fire-and-forget pushes, kicks, pulls)
// keep coming would otherwise pile up without a bound. The actor
// refuses those while it holds.
func (d *Device) Backlogged() bool {
	return d.fx != nil && d.fx.waitBytes >= 4*d.env.Config.WindowBytes
}

var effectsPool = sync.Pool{New: func() any { return new(effects) }}

// effectsKeep is the largest buffer capacity that goes back to
// effectsPool; bigger ones (after a burst) are left to the garbage
// collector.
const effectsKeep = 64

// queue returns the machine's effect queues, taking them from the pool
// if it has none.
func (d *Device) queue() *effects {
	if d.fx == nil {
		d.fx = effectsPool.Get().(*effects)
	}
	return d.fx
}

// queued reports how many effects wait for a write and how many are
// ready.
func (d *Device) queued() (waiting, ready int) {
	if d.fx == nil {
		return 0, 0
	}
	return len(d.fx.waiting), len(d.fx.ready)
}

// usage is what a part of the inbox holds.
type usage struct{ n, bytes int }

// idemMemo is a remembered idempotency record and the number of the write
// that makes it durable.
type idemMemo struct {
	rec *actorpb.IdempotencyRecord
	tag uint64
}

// maxRecentIdem is how many durable idempotency keys stay in memory;
// keys whose records are not durable yet stay regardless (they are bounded
// by the inbox limits: each belongs to a stored message).
const maxRecentIdem = 256

// MachineEnv is what every machine of a node shares: its settings, its
// statistics and its message id generator (one pointer per machine
// instead of three fields).
type MachineEnv struct {
	Config *Config
	Stats  Stats         // nil: none
	NewID  func() string // message ids
}

// Owner is the owner epoch the machine's writes carry (its snapshot's).
func (d *Device) Owner() uint64 { return d.owner }

// NewDevice rebuilds the machine of id from a store snapshot.
func NewDevice(cfg *Config, id store.Identity, snap *store.Snapshot, stats Stats, newID func() string) *Device {
	return NewDeviceIn(&MachineEnv{Config: cfg, Stats: stats, NewID: newID}, id, snap)
}

// NewDeviceIn rebuilds the machine of id from a store snapshot, in env
// (shared, not to be changed once a machine uses it).
func NewDeviceIn(env *MachineEnv, id store.Identity, snap *store.Snapshot) *Device {
	if env.Stats == nil {
		e := *env
		e.Stats = NopStats{}
		env = &e
	}
	d := &Device{
		env:   env,
		id:    id,
		owner: snap.Owner,
	}
	// The maps are made when first written: most identities in memory
	// hold no message, no C2C sender and no idempotency key.
	if len(snap.Inbox) > 0 {
		d.byMsgID = make(map[string]*item, len(snap.Inbox))
	}
	if m := snap.Meta; m != nil {
		d.lastSeq, d.lastEpoch, d.stored = m.LastSeq, m.LastEpoch, m.Session
	}
	if s := d.stored; s != nil && s.Online {
		d.session = s
	}
	d.inbox = make([]*item, 0, len(snap.Inbox))
	d.savedLastSeq = d.lastSeq
	for _, e := range snap.Inbox {
		d.lastSeq = max(d.lastSeq, e.Seq)
		it := &item{e: e, size: EntryBytes(e)}
		d.inbox = append(d.inbox, it)
		d.byMsgID[e.MsgId] = it
		d.count(it, 1)
		d.noteExpiry(e.ExpiresAtMs)
		if b := store.ExpiryBucket(e.ExpiresAtMs); b != 0 {
			d.indexed, _ = addBucket(d.indexed, b)
		}
	}
	sort.Slice(d.inbox, func(i, j int) bool { return d.inbox[i].e.Seq < d.inbox[j].e.Seq })
	return d
}

// Online reports whether the identity has a live session.
func (d *Device) Online() bool { return d.session != nil }

// Session returns the live session, or nil.
func (d *Device) Session() *actorpb.SessionRecord { return d.session }

// Pending returns the number of stored messages not yet acknowledged.
func (d *Device) Pending() int { return len(d.inbox) }

// Broken reports that a write failed (or the machine was aborted): it is
// ahead of the store and must be rebuilt.
func (d *Device) Broken() bool { return d.broken }

// Fenced reports that a write failed with store.ErrFenced: another
// activation owns the identity now, and this one must stop.
func (d *Device) Fenced() bool { return d.fenced }

// WriteReady reports whether TakeDetached or TakeWrite would return a
// write now.
func (d *Device) WriteReady() bool {
	return d.next != nil && !d.broken && (!d.inFlight || d.detachable(d.next))
}

// Idle reports whether the machine can be dropped from memory without
// losing anything: no write pending or in flight, no deletion waiting for
// a write (FlushDeletions), no effect waiting, no message delivered and
// unacknowledged.
func (d *Device) Idle() bool {
	w, r := d.queued()
	return d.next == nil && !d.inFlight && len(d.dels) == 0 && w == 0 && r == 0 && d.inflight == 0
}

// IdleButDeletions reports whether the machine would be Idle once its
// pending deletions are written.
func (d *Device) IdleButDeletions() bool {
	w, r := d.queued()
	return len(d.dels) > 0 && d.next == nil && !d.inFlight && w == 0 && r == 0 && d.inflight == 0
}

// DeletionsWaiting reports whether deletions of acknowledged messages
// wait for a write while none is pending or in flight (whatever else the
// machine still holds: a delivery the device never acknowledges would
// keep IdleButDeletions false for as long as it stays).
func (d *Device) DeletionsWaiting() bool {
	return len(d.dels) > 0 && d.next == nil && !d.inFlight && !d.broken
}

// FlushDeletions makes the pending deletions part of the next write, for
// a machine that will write nothing else soon (it is about to leave
// memory, or to hand its identity off). It reports whether there were
// any. The write is detachable (TakeDetached) unless it must bring the
// meta's last seq along.
func (d *Device) FlushDeletions() bool {
	if len(d.dels) == 0 || d.broken {
		return false
	}
	d.takeDeletions(d.write())
	d.leaving = true
	return true
}

// takeIndex fills in the index hints of w, a write being taken
// (store.Write.Indexed and Unindex), and brings d.indexed up to date.
// Buckets are unindexed only when no deletion waits outside a write (an
// acknowledged entry is stored until its deletion is). While the
// machine stays, the newest bucket stays indexed even with the inbox
// empty, so that the next message's write need not index it again;
// once the machine is leaving (FlushDeletions), it goes too.
func (d *Device) takeIndex(w *store.Write) {
	leaving := d.leaving
	d.leaving = false
	// Only buckets indexed before this write are hints: one that an
	// earlier entry of the same write brings is not stored yet.
	for _, e := range w.Put {
		if b := store.ExpiryBucket(e.ExpiresAtMs); b != 0 {
			if _, found := slices.BinarySearch(d.indexed, b); found {
				w.Indexed, _ = addBucket(w.Indexed, b)
			}
		}
	}
	for _, e := range w.Put {
		if b := store.ExpiryBucket(e.ExpiresAtMs); b != 0 {
			d.indexed, _ = addBucket(d.indexed, b)
		}
	}
	if len(d.indexed) == 0 || len(d.dels) > 0 || d.keepIndex || d.detachedOut > 0 {
		return
	}
	// Every entry in the inbox expires at minExpiry or later (a lower
	// bound; 0: none has an expiry), so no entry falls in a bucket
	// before minExpiry's.
	keepFrom := int64(math.MaxInt64)
	if len(d.inbox) > 0 && d.minExpiry != 0 {
		keepFrom = store.ExpiryBucket(d.minExpiry)
	}
	newest := d.indexed[len(d.indexed)-1]
	kept := d.indexed[:0]
	for _, b := range d.indexed {
		if b < keepFrom && (leaving || b != newest) {
			w.Unindex = append(w.Unindex, b)
		} else {
			kept = append(kept, b)
		}
	}
	d.indexed = kept
}

// addBucket adds b to the ascending buckets bs unless it is there, and
// reports whether it added it. Binary search: an app-server may give each
// of an identity's messages its own minute of expiry.
func addBucket(bs []int64, b int64) ([]int64, bool) {
	i, found := slices.BinarySearch(bs, b)
	if found {
		return bs, false
	}
	return slices.Insert(bs, i, b), true
}

// takeDeletions moves the pending deletions into w, with the meta if the
// highest seq could otherwise be forgotten. It need not come along when
// the stored meta has it, or when the entry carrying it stays in the
// inbox and no write is in flight: every entry in the inbox is then
// stored, by w or by an earlier write that completed. (While a write is
// in flight, w may be detached and land even if that write fails.)
func (d *Device) takeDeletions(w *store.Write) {
	if len(d.dels) == 0 {
		return
	}
	w.Delete = append(w.Delete, d.dels...)
	d.dels = d.dels[:0]
	n := len(d.inbox)
	kept := !d.inFlight && n > 0 && d.inbox[n-1].e.Seq == d.lastSeq
	if w.Meta == nil && d.lastSeq > d.savedLastSeq && !kept {
		// No sync needed: lost together with the deletion, the entry
		// keeps the seq.
		w.Meta = metaPending
	}
}

// Settled reports whether nothing the machine accepted is in flight: no
// write pending or in flight, no effect waiting for a write. (Deliveries
// not yet acknowledged may remain: they are in the store.)
func (d *Device) Settled() bool {
	w, _ := d.queued()
	return d.next == nil && !d.inFlight && w == 0
}

// KnowsIdempotencyKey reports whether key was written while the machine
// was in memory and has not expired at now (the caller need not ask the
// store).
func (d *Device) KnowsIdempotencyKey(key string, now time.Time) bool {
	_, ok := d.recentRecord(key, now)
	return ok
}

// recentRecord returns the record remembered under key, if any and not
// expired at now: a key is remembered for its record's lifetime
// (actors.idempotency-ttl, the C2C expiry), as in the store, however long
// the identity stays in memory.
func (d *Device) recentRecord(key string, now time.Time) (idemMemo, bool) {
	if d.recent == nil {
		return idemMemo{}, false
	}
	m, ok := d.recent.m[key]
	if ok && m.rec.GetExpiresAtMs() != 0 && m.rec.GetExpiresAtMs() <= now.UnixMilli() {
		return idemMemo{}, false
	}
	return m, ok
}

// remember keeps rec in memory under key until it is durable, and forgets
// the oldest durable keys beyond maxRecentIdem.
func (d *Device) remember(key string, rec *actorpb.IdempotencyRecord) {
	r := d.recent
	if r == nil {
		r = &recentIdem{m: map[string]idemMemo{}}
		d.recent = r
	}
	r.m[key] = idemMemo{rec: rec, tag: d.submitted + 1} // in d.next
	r.order = append(r.order, key)
	for len(r.m) > maxRecentIdem {
		oldest := r.order[0]
		if r.m[oldest].tag > d.durable {
			break // the oldest key is not durable yet, and no later one is
		}
		delete(r.m, oldest)
		r.order[0] = ""
		r.order = r.order[1:]
	}
}

// count adds (sign 1) or removes (sign -1) an entry from the budgets.
func (d *Device) count(it *item, sign int) {
	if it.e.Kind != devicepb.Kind_KIND_C2C {
		d.s2c.n += sign
		d.s2c.bytes += sign * it.size
		return
	}
	d.c2c.n += sign
	d.c2c.bytes += sign * it.size
	u := d.senders[it.e.FromUid]
	if u == nil {
		if d.senders == nil {
			d.senders = map[string]*usage{}
		}
		u = &usage{}
		d.senders[it.e.FromUid] = u
	}
	u.n += sign
	u.bytes += sign * it.size
	if u.n <= 0 {
		delete(d.senders, it.e.FromUid)
	}
}

// ---- output commit ----

func (d *Device) write() *store.Write {
	if d.next == nil {
		b := &writeBuf{}
		b.w = store.Write{ID: d.id, Owner: d.owner, Put: b.put[:0], Delete: b.del[:0], Indexed: b.idx[:0]}
		d.next = &b.w
	}
	return d.next
}

// writeBuf is a write with room for its usual contents (one entry, a
// couple of deletions, one indexed bucket) in the same allocation, so
// that a message's write is one allocation, not four. Appending beyond
// the room moves that slice to an allocation of its own.
type writeBuf struct {
	w   store.Write
	put [1]*actorpb.InboxEntry
	del [2]uint32
	idx [1]int64
}

// metaPending marks a write that must store the identity's meta: TakeWrite
// replaces it with the meta as it is then. It never reaches the store.
var metaPending = &actorpb.IdentityMeta{}

// persistMeta stores the meta (a session change) durably.
func (d *Device) persistMeta() {
	w := d.write()
	w.Meta, w.Sync = metaPending, true
}

// emit queues an effect behind every write the machine has produced so far.
func (d *Device) emit(e Effect) {
	fx := d.queue()
	switch {
	case d.next != nil:
		fx.waiting = append(fx.waiting, queued{d.submitted + 1, e})
		fx.waitBytes += effectCost(&e)
	case d.inFlight:
		fx.waiting = append(fx.waiting, queued{d.submitted, e})
		fx.waitBytes += effectCost(&e)
	default:
		fx.ready = append(fx.ready, e)
	}
}

// TakeDetached returns the pending write if it only deletes inbox
// entries, or nil. Such a write is submitted without waiting: nothing the
// machine emits depends on it (lost in a crash, an acknowledged message is
// delivered once more), and the store keeps an identity's writes in order.
// The caller does not call WriteDone for it; it may ignore its failure.
func (d *Device) TakeDetached() *store.Write {
	w := d.next
	if w == nil || d.broken || !d.detachable(w) {
		return nil
	}
	d.next = nil
	// Effects queued behind this write now wait only for the write in
	// flight, if any.
	if fx := d.fx; fx != nil {
		for i := range fx.waiting {
			if fx.waiting[i].tag > d.submitted {
				fx.waiting[i].tag = d.submitted
			}
		}
		if !d.inFlight {
			for _, q := range fx.waiting {
				fx.ready = append(fx.ready, q.eff)
			}
			clear(fx.waiting)
			fx.waiting, fx.waitBytes = fx.waiting[:0], 0
		}
	}
	d.takeIndex(w)
	d.detachedOut++
	return w
}

// DetachedDone records the outcome of a write TakeDetached returned. A
// failed one's deletions were not applied: the machine unindexes no
// bucket from then on (see keepIndex).
func (d *Device) DetachedDone(failed bool) {
	if d.detachedOut > 0 {
		d.detachedOut--
	}
	d.keepIndex = d.keepIndex || failed
}

func (d *Device) detachable(w *store.Write) bool {
	return w.Meta == nil && len(w.Put) == 0 && len(w.Idem) == 0
}

// TakeWrite returns the write to submit now, or nil if there is none or
// one is already in flight. The caller must call WriteDone for it.
func (d *Device) TakeWrite() *store.Write {
	if d.inFlight || d.next == nil || d.broken {
		return nil
	}
	w := d.next
	d.next = nil
	d.takeDeletions(w)
	d.takeIndex(w)
	if w.Meta != nil {
		// The committer encodes the write on its own goroutine while the
		// machine goes on changing its meta; session records are never
		// changed once made, so sharing the record is safe.
		w.Meta = &actorpb.IdentityMeta{LastSeq: d.lastSeq, LastEpoch: d.lastEpoch, Session: d.stored}
		d.takenLastSeq = d.lastSeq
	}
	d.submitted++
	d.inFlight = true
	return w
}

// WriteDone records the outcome of the write last taken. A failure
// breaks the machine (Broken): what waited for the write, or was produced
// after it, is answered with a failure (Abort). A write fenced by the store
// (store.ErrFenced) also makes it Fenced: its callers hear that the
// identity moved.
func (d *Device) WriteDone(err error) {
	d.inFlight = false
	if err != nil {
		if errors.Is(err, store.ErrFenced) {
			d.fenced = true
			d.Abort(codes.Unavailable, Moved)
			return
		}
		d.Abort(codes.Unavailable, "")
		return
	}
	d.durable = d.submitted
	d.savedLastSeq = max(d.savedLastSeq, d.takenLastSeq)
	fx := d.fx
	if fx == nil {
		return
	}
	n := 0
	for _, q := range fx.waiting {
		if q.tag > d.durable {
			break
		}
		fx.ready = append(fx.ready, q.eff)
		fx.waitBytes -= effectCost(&q.eff)
		n++
	}
	rest := copy(fx.waiting, fx.waiting[n:])
	clear(fx.waiting[rest:])
	fx.waiting = fx.waiting[:rest]
}

// Abort breaks the machine: everything that waits for a write is void.
// Waiting requests are answered with a failure of code (msg, or the
// effect's own failure message, or a generic one), connections that wait
// for an answer get their failure frame (FailConn), and the rest is
// dropped: nothing more is delivered. Effects already released stay. The
// actor then rebuilds the machine from the store, or stops.
func (d *Device) Abort(code codes.Code, msg string) {
	d.broken = true
	fx := d.fx
	if fx == nil {
		d.next = nil
		return
	}
	for _, q := range fx.waiting {
		switch {
		case q.eff.Reply != nil:
			m := msg
			if m == "" {
				m = q.eff.FailMsg
			}
			if m == "" {
				m = storeDown
			}
			r := failure(code, m)
			r.ReqId = q.eff.ReplyTo.ReqID
			fx.ready = append(fx.ready, Effect{ReplyTo: q.eff.ReplyTo, Reply: r})
		case q.eff.FailConn != nil:
			fx.ready = append(fx.ready, Effect{Conn: q.eff.Conn, ToConn: q.eff.FailConn})
		case q.eff.failLogin:
			fx.ready = append(fx.ready, Effect{Conn: q.eff.Conn, ToConn: loginFailure(q.eff.ToConn)})
		}
	}
	clear(fx.waiting)
	fx.waiting, fx.waitBytes = fx.waiting[:0], 0
	d.next = nil
}

// Effects returns the effects to perform now, in order, and forgets them.
// The slice is the machine's: it stays valid until the next call of
// Effects or Release, and must not be kept.
func (d *Device) Effects() []Effect {
	fx := d.fx
	if fx == nil {
		return nil
	}
	out := fx.ready
	clear(fx.spare)
	fx.ready, fx.spare = fx.spare[:0], out
	return out
}

// Release says the caller is done with the slice Effects returned last.
// A machine with no effect queued then gives its buffers back to a pool
// shared by all machines: an identity in memory with nothing to send
// keeps none.
func (d *Device) Release() {
	fx := d.fx
	if fx == nil || len(fx.waiting) > 0 || len(fx.ready) > 0 {
		return
	}
	d.fx = nil
	clear(fx.spare)
	fx.waitBytes = 0
	if cap(fx.waiting) > effectsKeep || cap(fx.ready) > effectsKeep || cap(fx.spare) > effectsKeep {
		return
	}
	fx.spare = fx.spare[:0]
	effectsPool.Put(fx)
}

// ---- inputs ----

func sameConn(a, b *actorpb.ConnRef) bool {
	return a != nil && b != nil && a.ConnId == b.ConnId && a.GateId == b.GateId && a.GateAddress == b.GateAddress
}

func frame(cmd messages.Cmd, msgtype, seq uint32, body proto.Message) *actorpb.OutFrame {
	f := &actorpb.OutFrame{Cmd: uint32(cmd), Msgtype: msgtype, Seq: seq}
	if body != nil {
		b, err := proto.Marshal(body)
		if err != nil {
			// Marshalling our own generated messages cannot fail.
			panic(fmt.Sprintf("actors: marshal %T: %v", body, err))
		}
		f.Body = b
	}
	return f
}

func (d *Device) toConn(conn *actorpb.ConnRef, epoch uint64, frames ...*actorpb.OutFrame) *actorpb.ToConn {
	return &actorpb.ToConn{AppCode: uint32(d.id.App), Uid: d.id.UID, ConnId: conn.ConnId, Epoch: epoch, Frames: frames}
}

// loginSkew is how far past its gate's deadline a LOGIN may arrive and
// still count as newer than the session: the clocks of the gate's node
// and this one may differ by this much.
const loginSkew = 10 * time.Second

// superseded says whether the LOGIN m must not end the current session
// on another connection: older, its gate received it before the
// session's LOGIN (the same gate counts the LOGINs it forwards; a gate
// that does not, an older version, numbers its connections in order);
// late, it comes long after its gate gave up on it. Both happen when a
// LOGIN is held up (a partition, a paused node) while the device logged
// in again on a new connection: the late LOGIN would kick the device's
// only live session.
func (d *Device) superseded(now time.Time, m *actorpb.DeviceLogin) (older, late bool) {
	s := d.session
	switch {
	case s == nil || s.Conn == nil || m.Conn == nil || sameConn(s.Conn, m.Conn):
		return false, false
	case s.Conn.GateId == m.Conn.GateId && s.Conn.GateAddress == m.Conn.GateAddress:
		if s.LoginOrder != 0 && m.LoginOrder != 0 {
			if m.LoginOrder < s.LoginOrder {
				return true, false
			}
		} else if m.Conn.ConnId < s.Conn.ConnId {
			return true, false
		}
		// Newer, but maybe late still.
	}
	return false, m.DeadlineMs != 0 && now.UnixMilli() > m.DeadlineMs+loginSkew.Milliseconds()
}

// loginWait takes a login from the identity's login rate, or returns how
// long until one would be allowed (GCRA: at most LoginBurst at once, then
// LoginsPerSecond).
func (d *Device) loginWait(now time.Time) time.Duration {
	c := d.env.Config
	if c.LoginsPerSecond <= 0 {
		return 0
	}
	interval := int64(float64(time.Second) / c.LoginsPerSecond)
	t := now.UnixNano()
	tat := max(d.loginTAT, t)
	if over := tat + interval - t - int64(c.LoginBurst)*interval; over > 0 {
		return time.Duration(over)
	}
	d.loginTAT = tat + interval
	return 0
}

// Login starts a new session on the connection in m, ending any other.
// A LOGIN older than the session is answered as a login at once
// superseded by it: LOGIN_ACK OK, then KICKOUT LOGGED_IN_ELSEWHERE
// (PROTOCOL.md: a newer LOGIN kicks the older one). A late one is refused
// with STORE_UNAVAILABLE, to reconnect: lateness is judged by two nodes'
// clocks, and if they disagree by far more than loginSkew a device must
// not be told to stop for good.
func (d *Device) Login(now time.Time, m *actorpb.DeviceLogin) {
	if older, late := d.superseded(now, m); older {
		d.supersede(now, m)
		return
	} else if late {
		d.emit(Effect{Conn: m.Conn, ToConn: &actorpb.ToConn{AppCode: uint32(d.id.App), Uid: d.id.UID, ConnId: m.Conn.ConnId,
			Frames: []*actorpb.OutFrame{frame(messages.CmdLoginAck, 0, m.FrameSeq, &devicepb.LoginAck{Code: devicepb.Code_STORE_UNAVAILABLE,
				Reason: "this login reached the server after its gate's login timeout: reconnect", ServerTimeMs: now.UnixMilli()})},
			Login: &actorpb.LoginOutcome{Ok: false}}})
		return
	}
	// After the older and late ones: those write nothing and end no
	// session.
	if wait := d.loginWait(now); wait > 0 {
		d.emit(Effect{Conn: m.Conn, ToConn: &actorpb.ToConn{AppCode: uint32(d.id.App), Uid: d.id.UID, ConnId: m.Conn.ConnId,
			Frames: []*actorpb.OutFrame{frame(messages.CmdLoginAck, 0, m.FrameSeq, &devicepb.LoginAck{Code: devicepb.Code_RATE_LIMITED,
				Reason: fmt.Sprintf("too many logins of this identity (actors.logins-per-second %v, burst %d): log in again in %v",
					d.env.Config.LoginsPerSecond, d.env.Config.LoginBurst, wait.Round(100*time.Millisecond)), ServerTimeMs: now.UnixMilli()})},
			Login: &actorpb.LoginOutcome{Ok: false}}})
		return
	}
	d.endSession(devicepb.KickReason_LOGGED_IN_ELSEWHERE, "logged in on another connection", m.Conn)
	d.expire(now)
	d.lastEpoch++
	l := m.GetLogin()
	d.session = &actorpb.SessionRecord{
		Epoch:        d.lastEpoch,
		Conn:         m.Conn,
		GateAddr:     m.GateAddr,
		DeviceId:     l.GetDeviceId(),
		Platform:     l.GetPlatform(),
		AppVersion:   l.GetAppVersion(),
		LoggedInAtMs: now.UnixMilli(),
		Online:       true,
		Zstd:         l.GetZstd(),
		LoginOrder:   m.LoginOrder,
	}
	d.stored = d.session
	d.persistMeta()
	a := &loginAnswer{}
	a.ack = devicepb.LoginAck{
		Code:             devicepb.Code_OK,
		Epoch:            d.session.Epoch,
		HeartbeatSeconds: d.heartbeatSeconds(m),
		ServerTimeMs:     now.UnixMilli(),
		Pending:          uint32(len(d.inbox)),
		Zstd:             d.session.Zstd,
		LastSeq:          d.lastSeq,
		MaxFrameSize:     d.maxFrameSize(m),
	}
	body, err := proto.Marshal(&a.ack)
	if err != nil {
		panic(fmt.Sprintf("actors: marshal LoginAck: %v", err)) // our own message cannot fail
	}
	a.frame = actorpb.OutFrame{Cmd: uint32(messages.CmdLoginAck), Seq: m.FrameSeq, Body: body}
	a.frames[0] = &a.frame
	a.outcome = actorpb.LoginOutcome{Ok: true, AppCode: uint32(d.id.App), Uid: d.id.UID, Epoch: d.session.Epoch, Zstd: d.session.Zstd}
	a.tc = actorpb.ToConn{AppCode: uint32(d.id.App), Uid: d.id.UID, ConnId: m.Conn.ConnId, Epoch: d.session.Epoch,
		Frames: a.frames[:], Login: &a.outcome}
	d.emit(Effect{Conn: m.Conn, ToConn: &a.tc, failLogin: true})
	d.pump(now)
}

// heartbeatSeconds is the interval LOGIN_ACK announces: the gate's, that
// holds the connection and closes it when silent (the actors' own setting
// only for a gate that does not say, an older version).
func (d *Device) heartbeatSeconds(m *actorpb.DeviceLogin) uint32 {
	if m.HeartbeatSeconds != 0 {
		return m.HeartbeatSeconds
	}
	return uint32(d.env.Config.Heartbeat / time.Second)
}

// maxFrameSize is the frame limit LOGIN_ACK announces: the gate's, that
// enforces it (the actors' own setting for a gate that does not say).
func (d *Device) maxFrameSize(m *actorpb.DeviceLogin) uint32 {
	if m.MaxFrameSize != 0 {
		return m.MaxFrameSize
	}
	return uint32(d.env.Config.MaxFrameSize)
}

// supersede answers a LOGIN older than the current session: accepted and
// kicked at once, without touching the session (see superseded). Its
// connection is usually gone by then, and the answer dropped.
func (d *Device) supersede(now time.Time, m *actorpb.DeviceLogin) {
	s := d.session
	ack := frame(messages.CmdLoginAck, 0, m.FrameSeq, &devicepb.LoginAck{Code: devicepb.Code_OK, Epoch: s.Epoch,
		HeartbeatSeconds: d.heartbeatSeconds(m), ServerTimeMs: now.UnixMilli(),
		Pending: uint32(len(d.inbox)), LastSeq: d.lastSeq, MaxFrameSize: d.maxFrameSize(m)})
	kick := frame(messages.CmdKickout, 0, 0, &devicepb.Kickout{Reason: devicepb.KickReason_LOGGED_IN_ELSEWHERE,
		Detail: "logged in on another connection"})
	tc := d.toConn(m.Conn, s.Epoch, ack, kick)
	tc.Login = &actorpb.LoginOutcome{Ok: true, AppCode: uint32(d.id.App), Uid: d.id.UID, Epoch: s.Epoch}
	tc.Close, tc.CloseReason = true, devicepb.KickReason_LOGGED_IN_ELSEWHERE.String()
	d.emit(Effect{Conn: m.Conn, ToConn: tc})
}

// loginAnswer is a LOGIN_ACK OK for the gate in one allocation. Nothing
// keeps it once the gate has it.
type loginAnswer struct {
	tc      actorpb.ToConn
	frames  [1]*actorpb.OutFrame
	frame   actorpb.OutFrame
	outcome actorpb.LoginOutcome
	ack     devicepb.LoginAck
}

// loginFailure is the LOGIN_ACK STORE_UNAVAILABLE that replaces the OK
// one, ok, when the session's write fails: with its server time, as
// every LOGIN_ACK has.
func loginFailure(ok *actorpb.ToConn) *actorpb.ToConn {
	var was devicepb.LoginAck
	_ = proto.Unmarshal(ok.Frames[0].Body, &was) // the state machine's own encoding
	return &actorpb.ToConn{AppCode: ok.AppCode, Uid: ok.Uid, ConnId: ok.ConnId,
		Frames: []*actorpb.OutFrame{frame(messages.CmdLoginAck, 0, ok.Frames[0].Seq, &devicepb.LoginAck{
			Code: devicepb.Code_STORE_UNAVAILABLE, Reason: "session could not be recorded; retry", ServerTimeMs: was.ServerTimeMs})},
		Login: &actorpb.LoginOutcome{Ok: false}}
}

// endSession kicks the current session, unless it is on conn.
func (d *Device) endSession(reason devicepb.KickReason, detail string, except *actorpb.ConnRef) bool {
	s := d.session
	if s == nil || sameConn(s.Conn, except) {
		return false
	}
	tc := d.toConn(s.Conn, s.Epoch, frame(messages.CmdKickout, 0, 0, &devicepb.Kickout{Reason: reason, Detail: detail}))
	tc.Close = true
	tc.CloseReason = reason.String()
	d.emit(Effect{Conn: s.Conn, ToConn: tc})
	d.goOffline()
	return true
}

// goOffline marks the session ended; what was in flight waits for the next.
func (d *Device) goOffline() {
	s := d.session
	if s == nil {
		return
	}
	// A new record: the old one may be part of a write in flight.
	d.stored = &actorpb.SessionRecord{
		Epoch: s.Epoch, Conn: s.Conn, GateAddr: s.GateAddr, DeviceId: s.DeviceId, Platform: s.Platform,
		AppVersion: s.AppVersion, LoggedInAtMs: s.LoggedInAtMs, Online: false, Zstd: s.Zstd, LoginOrder: s.LoginOrder,
	}
	d.session = nil
	d.persistMeta()
	for _, it := range d.inbox {
		it.sent, it.attempts = false, 0
	}
	d.inflight, d.inflightBytes = 0, 0
}

// Closed ends the session if it is the one on the closed connection; a
// late close of an older connection changes nothing.
func (d *Device) Closed(now time.Time, m *actorpb.DeviceClosed) {
	if d.session != nil && sameConn(d.session.Conn, m.Conn) {
		d.goOffline()
	}
}

// GateDown ends the session if it is on the gate instance gateID, which
// is gone: nothing is sent to it (there is nobody to tell).
func (d *Device) GateDown(now time.Time, gateID string) {
	if d.session != nil && d.session.GetConn().GetGateId() == gateID {
		d.goOffline()
	}
}

// Frame handles a device frame: S2C_ACK, C2C_PUSH_ACK, PULL. Acks are
// accepted from any connection of the identity (the device has the
// message, whichever connection it came on); answers go to the connection
// that asked.
func (d *Device) Frame(now time.Time, m *actorpb.DeviceFrame) {
	switch messages.Cmd(m.Cmd) {
	case messages.CmdS2CAck:
		if id, ok := messages.MsgIDBody(m.Body); ok {
			d.ack(now, id)
		}
	case messages.CmdC2CPushAck:
		id, ok := messages.MsgIDBody(m.Body)
		if !ok {
			return
		}
		d.ack(now, id)
		if d.Backlogged() {
			// Not answered while answers pile up behind a write that does
			// not complete: the device sends its ack again.
			break
		}
		// Answered even for an unknown id: the receiver's ack of a message
		// already deleted must still stop its resending.
		d.emit(Effect{Conn: m.Conn, ToConn: d.toConn(m.Conn, m.Epoch,
			frame(messages.CmdC2CPushAckAck, 0, m.Seq, &devicepb.C2CPushAckAck{MsgId: string(id)}))})
	case messages.CmdPull:
		var pull devicepb.Pull
		if proto.Unmarshal(m.Body, &pull) != nil {
			return
		}
		d.expire(now)
		// The answer waits for the writes before it (it may hold messages
		// they store); if one fails, the device is told to PULL again
		// rather than left waiting for an answer that never comes.
		d.emit(Effect{Conn: m.Conn, ToConn: d.toConn(m.Conn, m.Epoch,
			frame(messages.CmdPullAck, 0, m.Seq, d.pull(pull.AfterSeq, pull.Limit))),
			FailConn: d.toConn(m.Conn, m.Epoch, frame(messages.CmdPullAck, 0, m.Seq, &devicepb.PullAck{Code: devicepb.Code_STORE_UNAVAILABLE}))})
	}
	// An ack makes room in the window: what it lets out must not have
	// expired meanwhile (the timer's tick may still be on its way).
	d.expire(now)
	d.pump(now)
}

func (d *Device) ack(now time.Time, msgID []byte) {
	it, ok := d.byMsgID[string(msgID)]
	if !ok {
		return
	}
	d.remove(it)
	d.env.Stats.Acked(d.id.App, it.e.Msgtype, now.Sub(time.UnixMilli(it.e.SentAtMs)))
}

// remove deletes an entry from the inbox: from memory now, from the store
// with the identity's next write.
func (d *Device) remove(it *item) {
	i := sort.Search(len(d.inbox), func(i int) bool { return d.inbox[i].e.Seq >= it.e.Seq })
	if i < len(d.inbox) && d.inbox[i] == it {
		d.inbox = append(d.inbox[:i], d.inbox[i+1:]...)
	}
	delete(d.byMsgID, it.e.MsgId)
	d.count(it, -1)
	if len(d.inbox) == 0 {
		d.minExpiry = 0
	}
	if it.sent {
		d.inflight--
		d.inflightBytes -= it.size
	}
	// The deletion waits for the identity's next write (takeDeletions).
	d.dels = append(d.dels, it.e.Seq)
}

// pull answers a PULL: at most asked messages (nil: the page size; more
// than the page size: the page size; 0: none, has_more telling whether
// any are stored past after).
func (d *Device) pull(after uint32, asked *uint32) *devicepb.PullAck {
	limit := uint32(d.env.Config.PullPage)
	if asked != nil && *asked < limit {
		limit = *asked
	}
	i := sort.Search(len(d.inbox), func(i int) bool { return d.inbox[i].e.Seq > after })
	ack := &devicepb.PullAck{Code: devicepb.Code_OK}
	// The page ends before its entries pass the window's bytes, or its
	// body the frame limit (has_more included): a device sizes its reader
	// to the frame limit. One message always goes: C2C refuses what
	// would not fit alone (tooLarge), and pushes leave 1 KiB for the rest.
	size, body := 0, pullAckHasMore
	for ; i < len(d.inbox) && len(ack.Messages) < int(limit); i++ {
		e := d.inbox[i].e
		size += d.inbox[i].size
		body += pullAckEntry(d.inbox[i].size - messages.HeaderSize)
		if (size > d.env.Config.WindowBytes || body > d.env.Config.MaxFrameSize) && len(ack.Messages) > 0 {
			break
		}
		ack.Messages = append(ack.Messages, &devicepb.StoredMessage{
			Seq: e.Seq, Kind: e.Kind, MsgId: e.MsgId, Msgtype: e.Msgtype, Payload: e.Payload,
			SentAtMs: e.SentAtMs, ExpiresAtMs: e.ExpiresAtMs, FromUid: e.FromUid, ClientMsgId: e.ClientMsgId,
		})
	}
	ack.HasMore = i < len(d.inbox)
	return ack
}

// Push accepts an app-server's push. rec is the idempotency record the
// caller found in the store for m's key (nil if none or no key).
func (d *Device) Push(now time.Time, to ReplyTo, m *actorpb.Push, rec *actorpb.IdempotencyRecord) {
	if !m.Stored {
		d.env.Stats.Accepted(d.id.App, m.Msgtype, false)
		id := d.env.NewID()
		online := d.session != nil
		if online {
			d.emit(Effect{Conn: d.session.Conn, ToConn: d.s2cToConn(m.Msgtype, id, m.Payload, m.SentAtMs, m.ExpiresAtMs)})
			d.env.Stats.Delivered(d.id.App, m.Msgtype)
		} else {
			d.env.Stats.Dropped(d.id.App, m.Msgtype)
		}
		d.reply(to, pushReply(id, 0, online, false), "")
		return
	}
	if m.IdempotencyKey != "" {
		if r, ok := d.recentRecord(PushKey(m.IdempotencyKey), now); ok {
			rec = r.rec
		}
		if rec != nil {
			d.reply(to, pushReply(rec.MsgId, rec.Seq, d.session != nil, true), "")
			return
		}
	}
	d.expire(now)
	it, e := newItem()
	e.Kind, e.MsgId, e.Msgtype, e.Payload = devicepb.Kind_KIND_S2C, d.env.NewID(), m.Msgtype, m.Payload
	e.SentAtMs, e.ExpiresAtMs, e.Seq = m.SentAtMs, m.ExpiresAtMs, d.lastSeq+1
	if why, setting := d.room(e); why != "" {
		f := failure(codes.ResourceExhausted, why)
		f.GetFailure().Reason, f.GetFailure().Setting = apipb.ReasonInboxFull, setting
		d.reply(to, f, "")
		return
	}
	d.accept(now, it, PushKey(m.IdempotencyKey), m.IdempotencyKey != "")
	d.reply(to, pushReply(e.MsgId, e.Seq, d.session != nil, false),
		"the inbox store did not confirm the write: the push may or may not be stored; retry with the same idempotency key (without one, a retry may deliver it twice)")
	d.pump(now)
}

// room returns why e (its seq already set) does not fit in its budget,
// and the setting of that budget, or "". App-server pushes and C2C
// messages have budgets of their own; C2C also per sender.
func (d *Device) room(e *actorpb.InboxEntry) (why, setting string) {
	if d.lastSeq == math.MaxUint32 {
		// The next seq would wrap to 0, which means "not stored", and
		// then reuse the seqs of messages still stored.
		return fmt.Sprintf("%s has been given every seq (%d): no more messages can be stored for it", d.id, uint32(math.MaxUint32)), ""
	}
	n := EntryBytes(e)
	if e.Kind != devicepb.Kind_KIND_C2C {
		if d.s2c.n >= d.env.Config.InboxMaxMessages {
			return fmt.Sprintf("inbox of %s is full: %d pushes waiting for acknowledgement (actors.inbox-max-messages)", d.id, d.s2c.n), "actors.inbox-max-messages"
		}
		if d.s2c.bytes+n > d.env.Config.InboxMaxBytes {
			return fmt.Sprintf("inbox of %s is full: %d bytes of pushes waiting, limit %d (actors.inbox-max-bytes)", d.id, d.s2c.bytes, d.env.Config.InboxMaxBytes), "actors.inbox-max-bytes"
		}
		return "", ""
	}
	if d.c2c.n >= d.env.Config.C2CMaxMessages {
		return fmt.Sprintf("the receiver's inbox is full: %d messages from users waiting for acknowledgement", d.c2c.n), "actors.c2c-max-messages"
	}
	if d.c2c.bytes+n > d.env.Config.C2CMaxBytes {
		return fmt.Sprintf("the receiver's inbox is full: %d bytes of messages from users waiting, limit %d", d.c2c.bytes, d.env.Config.C2CMaxBytes), "actors.c2c-max-bytes"
	}
	if u := d.senders[e.FromUid]; u != nil {
		if u.n >= d.env.Config.C2CSenderMaxMessages {
			return fmt.Sprintf("the receiver has not acknowledged %d of your messages yet: that is your share of its inbox", u.n), "actors.c2c-sender-max-messages"
		}
		if u.bytes+n > d.env.Config.C2CSenderMaxBytes {
			return fmt.Sprintf("the receiver has not acknowledged %d bytes of your messages yet, your share of its inbox is %d", u.bytes, d.env.Config.C2CSenderMaxBytes), "actors.c2c-sender-max-bytes"
		}
	}
	return "", ""
}

// accept stores the item's entry under its seq (the next one) with an
// idempotency record under key when remember is set.
func (d *Device) accept(now time.Time, it *item, key string, remember bool) {
	e := it.e
	d.lastSeq++
	e.Seq = d.lastSeq
	it.size = EntryBytes(e)
	d.inbox = append(d.inbox, it)
	if d.byMsgID == nil {
		d.byMsgID = map[string]*item{}
	}
	d.byMsgID[e.MsgId] = it
	d.count(it, 1)
	d.noteExpiry(e.ExpiresAtMs)
	w := d.write()
	w.Put = append(w.Put, e)
	w.Sync = true
	if remember {
		ttl := d.env.Config.IdempotencyTTL
		if e.Kind == devicepb.Kind_KIND_C2C {
			// A sender may resend a C2C whose C2C_ACK it never got for as
			// long as the message may still be delivered (a phone offline
			// for days resends its outbox when it comes back): the id is
			// remembered as long as the message lives.
			ttl = max(ttl, d.env.Config.C2CTTL)
		}
		rec := &actorpb.IdempotencyRecord{MsgId: e.MsgId, Seq: e.Seq, ExpiresAtMs: now.Add(ttl).UnixMilli()}
		w.Idem = append(w.Idem, store.IdemPut{Key: key, Record: rec})
		d.remember(key, rec)
	}
	d.env.Stats.Accepted(d.id.App, e.Msgtype, true)
}

// itemAndEntry is a new message's inbox item and its entry, allocated
// together: they live exactly as long as each other.
type itemAndEntry struct {
	it item
	e  actorpb.InboxEntry
}

// newItem returns an item for a new message and its (empty) entry.
func newItem() (*item, *actorpb.InboxEntry) {
	x := &itemAndEntry{}
	x.it.e = &x.e
	return &x.it, &x.e
}

// pushAnswer is the answer to a push with its oneof wrapper, allocated
// together (one allocation per push instead of three).
type pushAnswer struct {
	r actorpb.Reply
	b actorpb.Reply_Push
	p actorpb.PushReply
}

func pushReply(msgID string, seq uint32, online, duplicate bool) *actorpb.Reply {
	x := &pushAnswer{}
	x.p.MsgId, x.p.Seq, x.p.Online, x.p.Duplicate = msgID, seq, online, duplicate
	x.b.Push = &x.p
	x.r.Body = &x.b
	return &x.r
}

func failure(code codes.Code, msg string) *actorpb.Reply {
	return &actorpb.Reply{Body: &actorpb.Reply_Failure{Failure: &actorpb.Failure{Code: int32(code), Message: msg}}}
}

func (d *Device) reply(to ReplyTo, r *actorpb.Reply, failMsg string) {
	if to.ReqID == 0 {
		return
	}
	r.ReqId = to.ReqID
	d.emit(Effect{ReplyTo: to, Reply: r, FailMsg: failMsg})
}

// PushKey is the store key of an app-server's idempotency key.
func PushKey(key string) string { return "push:" + key }

// C2CKey is the idempotency key of a C2C message in its receiver's space.
// A NUL ends the sender's uid, which is unambiguous unless the uid holds
// a NUL itself (the protocol allows any bytes): then ("a\x00b", "c") and
// ("a", "b\x00c") would share a key, and the second message, from
// another user, would be acknowledged and never stored. Such a uid gets
// a key of its own form, its length first, under another prefix; every
// other uid keeps the form its stored records have.
func C2CKey(fromUID, clientMsgID string) string {
	if strings.IndexByte(fromUID, 0) < 0 {
		return "c2c:" + fromUID + "\x00" + clientMsgID
	}
	return "c2c#" + strconv.Itoa(len(fromUID)) + ":" + fromUID + clientMsgID
}

// C2C stores a message from another user of the app and acknowledges it to
// the sender's connection. rec is the idempotency record the caller found
// for C2CKey (nil if none).
func (d *Device) C2C(now time.Time, m *actorpb.C2CSend, rec *actorpb.IdempotencyRecord) {
	c := m.GetC2C()
	key := C2CKey(m.FromUid, c.GetClientMsgId())
	ackTo := func(code devicepb.Code, msgID, reason string) *actorpb.ToConn {
		return &actorpb.ToConn{
			AppCode: uint32(d.id.App), Uid: m.FromUid, ConnId: m.ReplyTo.GetConnId(), Epoch: m.ReplyEpoch,
			Frames: []*actorpb.OutFrame{frame(messages.CmdC2CAck, 0, m.FrameSeq,
				&devicepb.C2CAck{Code: code, MsgId: msgID, ClientMsgId: c.GetClientMsgId(), Reason: reason})},
		}
	}
	if r, ok := d.recentRecord(key, now); ok {
		rec = r.rec
	}
	if rec != nil {
		// The answer waits for the writes before it (the original's among
		// them, when it is not durable yet); if one fails, the resend is
		// answered as the original is.
		d.emit(Effect{Conn: m.ReplyTo, ToConn: ackTo(devicepb.Code_OK, rec.MsgId, ""),
			FailConn: ackTo(devicepb.Code_STORE_UNAVAILABLE, "", "the store did not confirm the message: it may or may not be stored; resend it with the same client_msg_id")})
		return
	}
	d.expire(now)
	it, e := newItem()
	e.Kind, e.MsgId, e.Msgtype, e.Payload, e.Seq = devicepb.Kind_KIND_C2C, d.env.NewID(), m.Msgtype, c.GetPayload(), d.lastSeq+1
	e.SentAtMs, e.ExpiresAtMs = m.AtMs, now.Add(d.env.Config.C2CTTL).UnixMilli()
	e.FromUid, e.ClientMsgId = m.FromUid, c.GetClientMsgId()
	if over := d.tooLarge(e); over > 0 {
		// Stored, it could never be delivered: the C2C frame fitted the
		// limit, but its delivery adds the message id, the sender, the
		// times and the seq.
		d.emit(Effect{Conn: m.ReplyTo, ToConn: ackTo(devicepb.Code_MESSAGE_TOO_LARGE, "", fmt.Sprintf(
			"delivered, the message would take %d bytes more than the %d-byte frame limit: shorten the payload by at least %d bytes",
			over, d.env.Config.MaxFrameSize, over))})
		return
	}
	if why, _ := d.room(e); why != "" {
		d.emit(Effect{Conn: m.ReplyTo, ToConn: ackTo(devicepb.Code_INBOX_FULL, "", why)})
		return
	}
	d.accept(now, it, key, c.GetClientMsgId() != "")
	d.emit(Effect{Conn: m.ReplyTo, ToConn: ackTo(devicepb.Code_OK, e.MsgId, ""),
		FailConn: ackTo(devicepb.Code_STORE_UNAVAILABLE, "", "the store did not confirm the message: it may or may not be stored; resend it with the same client_msg_id")})
	d.pump(now)
}

// Kick ends the session at an app-server's or operator's request.
func (d *Device) Kick(now time.Time, to ReplyTo, m *actorpb.Kick) {
	reason := m.Reason
	if reason == devicepb.KickReason_KICK_REASON_UNSPECIFIED {
		reason = devicepb.KickReason_KICKED_BY_APP_SERVER
	}
	was := d.endSession(reason, m.Detail, nil)
	d.reply(to, &actorpb.Reply{Body: &actorpb.Reply_Kick{Kick: &actorpb.KickReply{WasOnline: was}}}, "")
}

// Presence answers whether the identity is online, and where. The answer
// is what the machine knows now; it does not wait for writes in flight (a
// session's end being written, a push being stored), so that presence is
// answered even while the store is behind.
func (d *Device) Presence(to ReplyTo) {
	if to.ReqID == 0 {
		return
	}
	p := &actorpb.PresenceReply{Online: d.session != nil, Pending: uint32(len(d.inbox))}
	if s := d.session; s != nil {
		p.Conn, p.Epoch, p.GateAddr = s.Conn, s.Epoch, s.GateAddr
		p.DeviceId, p.Platform, p.AppVersion, p.LoggedInAtMs = s.DeviceId, s.Platform, s.AppVersion, s.LoggedInAtMs
	}
	fx := d.queue()
	fx.ready = append(fx.ready, Effect{ReplyTo: to, Reply: &actorpb.Reply{ReqId: to.ReqID, Body: &actorpb.Reply_Presence{Presence: p}}})
}

// Tick redelivers what is due and expires what is past its expiry.
func (d *Device) Tick(now time.Time) {
	d.expire(now)
	if d.session == nil {
		return
	}
	var frames []*actorpb.OutFrame
	for _, it := range d.inbox {
		if !it.sent || it.due.After(now) {
			continue
		}
		frames = append(frames, d.deliveryFrame(it.e))
		it.attempts++
		it.due = now.Add(d.backoff(it.attempts))
		d.env.Stats.Retried(d.id.App, it.e.Msgtype)
	}
	if len(frames) > 0 {
		d.emit(Effect{Conn: d.session.Conn, ToConn: d.toConn(d.session.Conn, d.session.Epoch, frames...)})
	}
	d.pump(now)
}

// NextDue returns when Tick should next run (zero: no need).
func (d *Device) NextDue() time.Time {
	var next time.Time
	if d.minExpiry != 0 {
		next = time.UnixMilli(d.minExpiry)
	}
	seen := 0
	for _, it := range d.inbox {
		if seen >= int(d.inflight) {
			break
		}
		if it.sent {
			seen++
			if next.IsZero() || it.due.Before(next) {
				next = it.due
			}
		}
	}
	return next
}

func (d *Device) backoff(attempts int) time.Duration {
	b := d.env.Config.RetryInitial
	for i := 1; i < attempts && b < d.env.Config.RetryMax; i++ {
		b *= 2
	}
	return min(b, d.env.Config.RetryMax)
}

func (d *Device) noteExpiry(ms int64) {
	if ms != 0 && (d.minExpiry == 0 || ms < d.minExpiry) {
		d.minExpiry = ms
	}
}

// expire deletes entries past their expiry.
func (d *Device) expire(now time.Time) {
	nowMs := now.UnixMilli()
	if d.minExpiry == 0 || nowMs < d.minExpiry {
		return
	}
	var gone []*item
	d.minExpiry = 0
	for _, it := range d.inbox {
		if exp := it.e.ExpiresAtMs; exp != 0 && exp <= nowMs {
			gone = append(gone, it)
		} else {
			d.noteExpiry(exp)
		}
	}
	for _, it := range gone {
		d.remove(it)
		d.env.Stats.Expired(d.id.App, it.e.Msgtype)
	}
}

func (d *Device) deliveryFrame(e *actorpb.InboxEntry) *actorpb.OutFrame {
	if e.Kind == devicepb.Kind_KIND_C2C {
		return frame(messages.CmdC2CPush, e.Msgtype, e.Seq, &devicepb.C2CPush{
			MsgId: e.MsgId, FromUid: e.FromUid, Payload: e.Payload, SentAtMs: e.SentAtMs, ClientMsgId: e.ClientMsgId})
	}
	return s2cFrame(e.Msgtype, e.Seq, e.MsgId, e.Payload, e.SentAtMs, e.ExpiresAtMs)
}

// pump delivers unsent entries in seq order while the window (count and
// bytes) has room, in one effect.
func (d *Device) pump(now time.Time) {
	if d.session == nil || int(d.inflight) >= d.env.Config.Window {
		return
	}
	var frames []*actorpb.OutFrame
	for _, it := range d.inbox {
		if int(d.inflight) >= d.env.Config.Window {
			break
		}
		if it.sent {
			continue
		}
		if d.inflight > 0 && d.inflightBytes+it.size > d.env.Config.WindowBytes {
			break
		}
		frames = append(frames, d.deliveryFrame(it.e))
		it.sent, it.attempts = true, 1
		it.due = now.Add(d.backoff(1))
		d.inflight++
		d.inflightBytes += it.size
		if it.delivered {
			d.env.Stats.Retried(d.id.App, it.e.Msgtype)
		} else {
			it.delivered = true
			d.env.Stats.Delivered(d.id.App, it.e.Msgtype)
		}
	}
	if len(frames) > 0 {
		d.emit(Effect{Conn: d.session.Conn, ToConn: d.toConn(d.session.Conn, d.session.Epoch, frames...)})
	}
}
