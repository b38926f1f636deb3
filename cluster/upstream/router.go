package upstream

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages/apipb"
)

// Config bounds the router.
type Config struct {
	// QueueLen is the most messages waiting per (appcode, msgtype) for a
	// subscriber with room (default 65,536).
	QueueLen int
	// MaxAge drops queued messages no subscriber took for this long
	// (default 10 minutes); each is counted as dropped.
	MaxAge time.Duration
	// ResendAfter: a delivery to a subscriber that asked for it
	// (Subscriber.ResendAfter: the hub's proxies of app-servers on other
	// nodes) not acknowledged this long after it left is queued again for
	// any subscriber (default 1 minute; 0: never). Between nodes a batch
	// can be lost (the remoting stream broke); without this, its messages
	// would stay in flight, never delivered, for as long as the
	// subscription lasts.
	ResendAfter time.Duration
	// DefaultInFlight is a subscriber's window when it asks for none
	// (default 1024); MaxInFlight caps what it may ask (default 65,536).
	DefaultInFlight int
	MaxInFlight     int
	// MaxBatch is the most messages in one UpstreamDelivery (default 256).
	MaxBatch int
	// MaxBatchBytes bounds the Size of the messages in one UpstreamDelivery
	// (default 1 MiB, well under gRPC clients' default 4 MiB receive
	// limit); a single larger message still goes alone.
	MaxBatchBytes int64
	// AppMaxBytes bounds the bytes (Size) of the messages the router
	// holds for one appcode, queued or in flight at a subscriber (default
	// 64 MiB); MaxBytes bounds them for all apps together (default 256
	// MiB). Beyond either a C2S is refused (ErrOverBudget).
	AppMaxBytes int64
	MaxBytes    int64
	// UIDMaxBytes bounds them for one device, its appcode and uid
	// (default 1 MiB; 0: no bound of its own): beyond, its C2S are
	// refused (ErrDeviceOverBudget), so that one device cannot take its
	// app's budget from the others while the app-servers are behind. A
	// device holding nothing may always send one message, whatever its
	// size.
	UIDMaxBytes int64
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{QueueLen: 1 << 16, MaxAge: 10 * time.Minute, ResendAfter: time.Minute, DefaultInFlight: 1024, MaxInFlight: 1 << 16, MaxBatch: 256,
		MaxBatchBytes: 1 << 20, AppMaxBytes: 64 << 20, MaxBytes: 256 << 20, UIDMaxBytes: 1 << 20}
}

// uidKey is a device: its appcode and uid.
type uidKey struct {
	app uint16
	uid string
}

// MessageOverhead is what the router counts for a message on top of its
// fields: the message and its protobuf state, its queue slot, and its
// entry in a subscriber's in-flight map.
const MessageOverhead = 256

// Size is what a message counts against the byte budgets: its payload,
// its ids and MessageOverhead.
func Size(m *apipb.UpstreamMessage) int64 {
	return int64(MessageOverhead + len(m.Payload) + len(m.Uid) + len(m.DeviceId) + len(m.MsgId) + len(m.ClientMsgId))
}

// Stats receives the router's events (implemented by the node's delivery
// statistics).
type Stats interface {
	UpstreamReceived(app uint16, msgtype uint32)
	UpstreamAcked(app uint16, msgtype uint32)
	UpstreamDropped(app uint16, msgtype uint32)
}

type key struct {
	app     uint16
	msgtype uint32
}

// message is a C2S on its way to an app-server.
type message struct {
	m        *apipb.UpstreamMessage
	queuedAt time.Time
	sentAt   time.Time // when Next handed it out (zero: still in the outbox)
	size     int64     // Size(m), held against the budgets until acked or dropped
}

// queue is a FIFO of one (appcode, msgtype).
type queue struct {
	items []*message
	head  int
}

func (q *queue) len() int        { return len(q.items) - q.head }
func (q *queue) push(m *message) { q.items = append(q.items, m) }
func (q *queue) peek() *message  { return q.items[q.head] }
func (q *queue) pushFront(m *message) {
	if q.head == 0 {
		// Room at the front, doubling as append does at the back: a
		// requeue of n messages costs O(n + len), not n copies of the
		// queue (under the router's lock, which every gate loop takes).
		n := q.len()
		room := max(n, 16)
		items := make([]*message, room+n)
		copy(items[room:], q.items)
		q.items, q.head = items, room
	}
	q.head--
	q.items[q.head] = m
}

// shrink gives back the room of a queue that held many more messages
// than it does (a queue that never empties is never deleted, and its
// slice would keep the room of its longest burst: up to QueueLen
// pointers per msgtype, outside the byte budgets).
func (q *queue) shrink() {
	if n := q.len(); cap(q.items) > 64 && n <= cap(q.items)/4 {
		items := make([]*message, n, max(2*n, 16))
		copy(items, q.items[q.head:])
		q.items, q.head = items, 0
	}
}

func (q *queue) pop() *message {
	m := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	} else if q.head > 1024 && q.head > len(q.items)/2 {
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	return m
}

// Subscriber is one app-server stream.
type Subscriber struct {
	r        *Router
	app      uint16
	all      bool
	msgtypes map[uint32]bool
	window   int
	inflight map[uint64]*message
	outbox   []*apipb.UpstreamMessage
	notify   chan struct{}
	closed   bool
	// resend: deliveries not acknowledged this long after Next handed
	// them out are queued again (0: never; ResendAfter).
	resend time.Duration
}

// ResendAfter makes the deliveries to s that are not acknowledged within
// the router's Config.ResendAfter of leaving go back to the queue, for any
// subscriber: for a subscriber whose deliveries can be lost on the way
// (another node's).
func (s *Subscriber) ResendAfter() {
	s.r.mu.Lock()
	s.resend = s.r.cfg.ResendAfter
	s.r.mu.Unlock()
}

// Router is a node's upstream router.
type Router struct {
	cfg   Config
	stats Stats
	now   func() time.Time
	log   *slog.Logger

	mu     sync.Mutex
	queues map[key]*queue
	// waiting are the queues of each app that dispatchLocked left
	// holding messages (no subscriber that takes them had room): room
	// freed in a subscriber's window (an ack, a resend) goes to them,
	// whatever msgtype freed it.
	waiting  map[uint16]map[uint32]*queue
	subs     map[uint16][]*Subscriber
	appBytes map[uint16]int64 // Size of what is held per app, queued or in flight
	uidBytes map[uidKey]int64 // and per device
	bytes    int64            // the sum of appBytes
	// nextID is the last delivery id given. It starts at a random point
	// of [0, 2^62): the hubs of other nodes know a gate's deliveries by
	// its address and their id, and a gate restarted at the same address
	// must not reuse the ids its previous process gave (an api node still
	// holding one would take the new message for a resend of the old, and
	// an ack of the old would acknowledge the new).
	nextID uint64
	rr     int
	closed bool

	quit chan struct{}
	wg   sync.WaitGroup
}

// New returns a router; stats may be nil.
func New(cfg Config, stats Stats) *Router {
	var b [8]byte
	_, _ = rand.Read(b[:])
	r := &Router{cfg: cfg, stats: stats, now: time.Now, queues: map[key]*queue{}, waiting: map[uint16]map[uint32]*queue{}, subs: map[uint16][]*Subscriber{},
		appBytes: map[uint16]int64{}, uidBytes: map[uidKey]int64{}, nextID: binary.LittleEndian.Uint64(b[:]) >> 2, log: slog.Default(), quit: make(chan struct{})}
	r.wg.Add(1)
	go r.expireLoop()
	return r
}

func (s *Subscriber) takes(msgtype uint32) bool { return s.all || s.msgtypes[msgtype] }

// MaxMessageSize is the largest C2S (its UpstreamMessage's Size) the
// router takes: one goes to an app-server in one UpstreamDelivery, and
// gRPC clients receive at most 4 MiB by default. A larger one (possible
// only with gate.max-frame-size above it) would fail every stream it was
// sent to, and be sent again and again.
const MaxMessageSize = 4<<20 - 64<<10

// Publish accepts a device's C2S for the app-servers. It returns
// ErrTooLarge, ErrNoSubscriber, ErrFull or ErrOverBudget when it does
// not accept it.
func (r *Router) Publish(m *apipb.UpstreamMessage) error {
	if Size(m) > MaxMessageSize {
		return ErrTooLarge
	}
	k := key{uint16(m.AppCode), m.Msgtype}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	subscribed := false
	for _, s := range r.subs[k.app] {
		if s.takes(k.msgtype) {
			subscribed = true
			break
		}
	}
	if !subscribed {
		return ErrNoSubscriber
	}
	q := r.queues[k]
	if q == nil {
		q = &queue{}
		r.queues[k] = q
	}
	if q.len() >= r.cfg.QueueLen {
		return ErrFull
	}
	size := Size(m)
	if r.appBytes[k.app]+size > r.cfg.AppMaxBytes || r.bytes+size > r.cfg.MaxBytes {
		return ErrOverBudget
	}
	uk := uidKey{k.app, m.Uid}
	if held := r.uidBytes[uk]; r.cfg.UIDMaxBytes > 0 && held > 0 && held+size > r.cfg.UIDMaxBytes {
		return ErrDeviceOverBudget
	}
	r.uidBytes[uk] += size
	r.appBytes[k.app] += size
	r.bytes += size
	r.nextID++
	m.DeliveryId = r.nextID
	q.push(&message{m: m, queuedAt: r.now(), size: size})
	if r.stats != nil {
		r.stats.UpstreamReceived(k.app, k.msgtype)
	}
	r.dispatchLocked(k, q)
	return nil
}

// dispatchLocked hands queued messages of k to subscribers with room, the
// least loaded first.
func (r *Router) dispatchLocked(k key, q *queue) {
	subs := r.subs[k.app]
	for q.len() > 0 {
		var best *Subscriber
		for i := range subs {
			s := subs[(r.rr+i)%len(subs)]
			if s.closed || !s.takes(k.msgtype) || len(s.inflight) >= s.window {
				continue
			}
			if best == nil || len(s.inflight) < len(best.inflight) {
				best = s
			}
		}
		if best == nil {
			w := r.waiting[k.app]
			if w == nil {
				w = map[uint32]*queue{}
				r.waiting[k.app] = w
			}
			w[k.msgtype] = q
			return
		}
		r.rr++
		m := q.pop()
		if m.m.Attempt > 0 {
			// Sent before: the batch that carried it may still be being
			// encoded (remoting) or copied (a local fan-in) without the
			// router's lock. The message handed out is never written again.
			m.m = proto.Clone(m.m).(*apipb.UpstreamMessage)
		}
		m.m.Attempt++
		best.inflight[m.m.DeliveryId] = m
		best.outbox = append(best.outbox, m.m)
		select {
		case best.notify <- struct{}{}:
		default:
		}
	}
	r.notWaiting(k)
}

// notWaiting takes k's queue out of waiting (it is empty, or gone).
func (r *Router) notWaiting(k key) {
	if w := r.waiting[k.app]; w != nil {
		delete(w, k.msgtype)
		if len(w) == 0 {
			delete(r.waiting, k.app)
		}
	}
}

// fillLocked hands s, which has room, what waits in the queues of its
// app it takes.
func (r *Router) fillLocked(s *Subscriber) {
	for mt, q := range r.waiting[s.app] {
		if s.closed || len(s.inflight) >= s.window {
			return
		}
		if s.takes(mt) {
			r.dispatchLocked(key{s.app, mt}, q)
		}
	}
}

// Subscribe registers an app-server for app and msgtypes (empty: all of
// the app's). window is its in-flight limit (0: the default).
func (r *Router) Subscribe(app uint16, msgtypes []uint32, window int) (*Subscriber, error) {
	if window <= 0 {
		window = r.cfg.DefaultInFlight
	}
	window = min(window, r.cfg.MaxInFlight)
	s := &Subscriber{r: r, app: app, all: len(msgtypes) == 0, msgtypes: map[uint32]bool{}, window: window,
		inflight: map[uint64]*message{}, notify: make(chan struct{}, 1)}
	for _, t := range msgtypes {
		s.msgtypes[t] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	r.subs[app] = append(r.subs[app], s)
	// Messages that waited for a subscriber with room go to the new one.
	for k, q := range r.queues {
		if k.app == app && s.takes(k.msgtype) {
			r.dispatchLocked(k, q)
		}
	}
	return s, nil
}

// Next blocks until messages are ready for the subscriber (at most the
// router's MaxBatch, and MaxBatchBytes unless a single message is larger)
// or done is closed; nil means the subscriber or the router is closed.
func (s *Subscriber) Next(done <-chan struct{}) []*apipb.UpstreamMessage {
	for {
		s.r.mu.Lock()
		if s.closed {
			s.r.mu.Unlock()
			return nil
		}
		if len(s.outbox) > 0 {
			n, bytes := 1, Size(s.outbox[0])
			for n < min(len(s.outbox), s.r.cfg.MaxBatch) {
				if bytes += Size(s.outbox[n]); bytes > s.r.cfg.MaxBatchBytes {
					break
				}
				n++
			}
			out := make([]*apipb.UpstreamMessage, n)
			copy(out, s.outbox)
			if s.resend > 0 {
				now := s.r.now()
				for _, m := range out {
					if im := s.inflight[m.DeliveryId]; im != nil {
						im.sentAt = now
					}
				}
			}
			rest := copy(s.outbox, s.outbox[n:])
			clear(s.outbox[rest:])
			s.outbox = s.outbox[:rest]
			if rest > 0 {
				select {
				case s.notify <- struct{}{}:
				default:
				}
			}
			s.r.mu.Unlock()
			return out
		}
		s.r.mu.Unlock()
		select {
		case <-s.notify:
		case <-done:
			return nil
		case <-s.r.quit:
			return nil
		}
	}
}

// Ack records that the subscriber processed the deliveries; ids it does
// not hold are ignored. Freed room is filled at once.
func (s *Subscriber) Ack(ids []uint64) {
	r := s.r
	r.mu.Lock()
	defer r.mu.Unlock()
	touched := map[key]bool{}
	for _, id := range ids {
		m, ok := s.inflight[id]
		if !ok {
			continue
		}
		delete(s.inflight, id)
		k := key{uint16(m.m.AppCode), m.m.Msgtype}
		r.release(k.app, m.m.Uid, m.size)
		touched[k] = true
		if r.stats != nil {
			r.stats.UpstreamAcked(k.app, k.msgtype)
		}
	}
	for k := range touched {
		if q := r.queues[k]; q != nil {
			r.dispatchLocked(k, q)
		}
	}
	// The room may be for another msgtype's queue: one that waits
	// would otherwise wait for that msgtype's next message (or, at a
	// stop, for good).
	r.fillLocked(s)
}

// Close ends the subscription: what it held unacknowledged goes back to
// the front of its queues, in delivery order, for the other subscribers.
func (s *Subscriber) Close() {
	r := s.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	subs := r.subs[s.app]
	for i, x := range subs {
		if x == s {
			r.subs[s.app] = append(subs[:i:i], subs[i+1:]...)
			break
		}
	}
	// Requeue newest first so that the oldest ends up at the front. Their
	// age starts again: MaxAge drops what no subscriber took, and these
	// were taken (a stream that held them longer than MaxAge must not
	// have them dropped the moment it ends). Older messages behind them
	// then expire no sooner than these: kept longer, never dropped early.
	back := make([]*message, 0, len(s.inflight))
	for _, m := range s.inflight {
		back = append(back, m)
	}
	touched := map[key]bool{}
	r.requeueLocked(back, r.now(), touched)
	s.inflight, s.outbox = nil, nil
	for k := range touched {
		r.dispatchLocked(k, r.queues[k])
	}
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// sortByID sorts in delivery order: O(n log n), under the router's lock,
// which every gate loop takes to publish a C2S (a window may be 65,536:
// the insertion sort of a map's random order took seconds).
func sortByID(ms []*message) {
	// The ids sorted beside their messages: no pointer chased per
	// comparison.
	type idm struct {
		id uint64
		m  *message
	}
	byID := make([]idm, len(ms))
	for i, m := range ms {
		byID[i] = idm{m.m.DeliveryId, m}
	}
	slices.SortFunc(byID, func(a, b idm) int { return cmp.Compare(a.id, b.id) })
	for i := range byID {
		ms[i] = byID[i].m
	}
}

// release gives back the budget of a message no longer held (r.mu held).
func (r *Router) release(app uint16, uid string, size int64) {
	r.bytes -= size
	uk := uidKey{app, uid}
	if r.uidBytes[uk] -= size; r.uidBytes[uk] == 0 {
		delete(r.uidBytes, uk)
	}
	if r.appBytes[app] -= size; r.appBytes[app] == 0 {
		delete(r.appBytes, app)
	}
}

// Bytes returns the Size of everything the router holds, queued or in
// flight.
func (r *Router) Bytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bytes
}

// Queued returns how many messages wait for a subscriber, in all queues.
func (r *Router) Queued() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, q := range r.queues {
		n += q.len()
	}
	return n
}

// expireLoop drops messages that waited longer than MaxAge.
func (r *Router) expireLoop() {
	defer r.wg.Done()
	t := time.NewTicker(min(r.cfg.MaxAge/4, 10*time.Second))
	defer t.Stop()
	for {
		select {
		case <-r.quit:
			return
		case <-t.C:
			r.expire()
		}
	}
}

func (r *Router) expire() {
	now := r.now()
	cut := now.Add(-r.cfg.MaxAge)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resendLocked(now)
	for k, q := range r.queues {
		for q.len() > 0 && q.peek().queuedAt.Before(cut) {
			m := q.pop()
			r.release(k.app, m.m.Uid, m.size)
			if r.stats != nil {
				r.stats.UpstreamDropped(k.app, k.msgtype)
			}
		}
		if q.len() == 0 {
			delete(r.queues, k)
			r.notWaiting(k)
		} else {
			q.shrink()
		}
	}
}

// requeueLocked puts messages taken back from a subscriber at the front
// of their queues, oldest first (the newest is pushed first), their age
// counted from now, and notes their queues in touched for a dispatch.
func (r *Router) requeueLocked(back []*message, now time.Time, touched map[key]bool) {
	sortByID(back)
	for i := len(back) - 1; i >= 0; i-- {
		m := back[i]
		k := key{uint16(m.m.AppCode), m.m.Msgtype}
		q := r.queues[k]
		if q == nil {
			q = &queue{}
			r.queues[k] = q
		}
		m.queuedAt, m.sentAt = now, time.Time{}
		q.pushFront(m)
		touched[k] = true
	}
}

// resendLocked queues again the deliveries of the subscribers that asked
// for it (Subscriber.ResendAfter) unacknowledged for longer than that:
// oldest first, at the front of their queues, as a closed subscriber's.
func (r *Router) resendLocked(now time.Time) {
	touched := map[key]bool{}
	var freed []*Subscriber
	for _, subs := range r.subs {
		for _, s := range subs {
			if s.resend <= 0 || s.closed {
				continue
			}
			cut := now.Add(-s.resend)
			var back []*message
			for id, m := range s.inflight {
				if !m.sentAt.IsZero() && m.sentAt.Before(cut) {
					back = append(back, m)
					delete(s.inflight, id)
				}
			}
			if len(back) > 0 {
				r.requeueLocked(back, now, touched)
				freed = append(freed, s)
			}
		}
	}
	for k := range touched {
		r.dispatchLocked(k, r.queues[k])
	}
	for _, s := range freed {
		r.fillLocked(s)
	}
}

// SetLog sets the logger of the router's warnings (default slog.Default).
func (r *Router) SetLog(l *slog.Logger) { r.log = l }

// Settle waits until the router holds nothing (every message taken and
// acknowledged by an app-server) or ctx ends, and reports whether it is
// empty. A node stopping waits for it after its gate stopped, so that
// what its devices sent reaches the app-servers.
func (r *Router) Settle(ctx context.Context) bool {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if r.Bytes() == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return r.Bytes() == 0
		case <-t.C:
		}
	}
}

// Close stops the router: subscribers' Next returns nil, Publish fails.
// What it still holds, queued or delivered and not acknowledged, is
// dropped: counted (Stats.UpstreamDropped) and logged.
func (r *Router) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	dropped := 0
	drop := func(m *message) {
		dropped++
		if r.stats != nil {
			r.stats.UpstreamDropped(uint16(m.m.AppCode), m.m.Msgtype)
		}
	}
	for _, q := range r.queues {
		for q.len() > 0 {
			drop(q.pop())
		}
	}
	for _, subs := range r.subs {
		for _, s := range subs {
			for _, m := range s.inflight {
				drop(m)
			}
			s.inflight, s.outbox = nil, nil
		}
	}
	r.queues, r.waiting, r.appBytes, r.uidBytes, r.bytes = map[key]*queue{}, map[uint16]map[uint32]*queue{}, map[uint16]int64{}, map[uidKey]int64{}, 0
	r.mu.Unlock()
	close(r.quit)
	r.wg.Wait()
	if dropped > 0 {
		r.log.Warn("upstream: stopped with C2S messages no app-server acknowledged; they are dropped (counted as dropped)", "messages", dropped)
	}
}
