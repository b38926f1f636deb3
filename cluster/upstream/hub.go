package upstream

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	mrand "math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
)

// Transport carries the hubs' messages between nodes (implemented by the
// node with its cluster membership). Send must not block.
type Transport interface {
	// Self is this node's remoting address.
	Self() string
	// Send delivers m to the hub of the node at address.
	Send(address string, m proto.Message)
}

// Hub joins the upstream routers of every gate in the cluster to the
// app-servers subscribed on any api node. A device's C2S stays in the
// router of the gate that received it until an app-server acknowledges
// it; an app-server's subscription on an api node is a subscriber in the
// router of every live gate (a proxy, whose deliveries travel to the api
// node and whose acks travel back). When an api node leaves the cluster,
// the gates close its proxies and what it held unacknowledged goes to the
// other subscribers; when a gate leaves, what its router held is lost
// (the router is in memory).
//
// Goroutines: one pump per proxy (gate side: it moves deliveries from the
// router to the api node), owned by the Hub and stopped by Close or when
// the proxy closes. Lock order: Hub.mu, then Router.mu or fanin.mu.
type Hub struct {
	r   *Router
	t   Transport
	log *slog.Logger

	mu      sync.Mutex
	proxies map[string]*proxy        // gate side, by subscription id
	subs    map[string]*Subscription // api side, by subscription id
	gates   []GateRef                // live gate members
	gen     uint64                   // SetMembers calls: orders the subscriptions' attaches
	live    map[string]bool          // live members' addresses
	closed  bool
	prefix  string // of this process's subscription ids: address and a random part
	nextSub atomic.Uint64

	quit chan struct{}
	wg   sync.WaitGroup
}

// resubscribeEvery is how often a subscription repeats its subscribe to
// the gates (they ignore what they already have): a subscribe lost, or
// refused by a gate whose view did not yet include the api node, is
// repaired within this time. A subscription thus reaches every live gate
// within this time of the later of its start and the gate's joining.
const resubscribeEvery = 2 * time.Second

// proxyLease is how long a gate keeps a proxy its api node has not
// subscribed again (every resubscribeEvery): a subscription that ended
// while its unsubscribe was lost, or raced a subscribe, and one of an api
// node restarted at the same address, would otherwise hold what it was
// given, undelivered, for as long as the api node lives. What an expired
// proxy held goes to the other subscribers.
const proxyLease = 15 * time.Second

// GateRef names one live instance of a gate member.
type GateRef struct {
	Address  string // remoting address
	Instance string // member instance id: new at every start and rejoin
}

// NewHub returns the hub of a node's router r. A node without the gate
// role has a router that no device publishes to.
func NewHub(r *Router, t Transport, log *slog.Logger) *Hub {
	if log == nil {
		log = slog.Default()
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	h := &Hub{r: r, t: t, log: log, proxies: map[string]*proxy{}, subs: map[string]*Subscription{}, live: map[string]bool{},
		prefix: t.Self() + "/" + hex.EncodeToString(b[:]) + "/", quit: make(chan struct{})}
	h.wg.Add(1)
	go h.resubscribeLoop()
	return h
}

// resubscribeLoop repeats every subscription's subscribe to the other
// nodes' gates.
func (h *Hub) resubscribeLoop() {
	defer h.wg.Done()
	t := time.NewTicker(resubscribeEvery)
	defer t.Stop()
	for {
		select {
		case <-h.quit:
			return
		case <-t.C:
		}
		h.mu.Lock()
		subs := make([]*Subscription, 0, len(h.subs))
		for _, s := range h.subs {
			subs = append(subs, s)
		}
		h.mu.Unlock()
		h.expireProxies(time.Now())
		for _, s := range subs {
			s.resubscribe()
		}
	}
}

// expireProxies closes the proxies whose api node has not subscribed
// again for proxyLease.
func (h *Hub) expireProxies(now time.Time) {
	h.mu.Lock()
	var stale []*proxy
	for id, p := range h.proxies {
		if now.Sub(p.seen) > proxyLease {
			stale = append(stale, p)
			delete(h.proxies, id)
		}
	}
	h.mu.Unlock()
	for _, p := range stale {
		h.log.Info("upstream: a subscription was not renewed by its api node; its deliveries go to the other subscribers", "sub", p.id, "api_node", p.sink)
		p.sub.Close()
	}
}

// proxy is a subscription of an app-server on another node (or this one),
// held in this gate's router.
type proxy struct {
	id   string
	sink string // the api node's address
	sub  *Subscriber
	seen time.Time // the last subscribe from the api node (h.mu)
}

// SetMembers takes the cluster's live members (their remoting addresses)
// and the live gate instances: subscriptions attach to new gates and
// forget departed ones, and proxies of api nodes that left are closed
// (what they held goes back to the queues).
func (h *Hub) SetMembers(live []string, gates []GateRef) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.live = map[string]bool{}
	for _, a := range live {
		h.live[a] = true
	}
	h.gates = append(h.gates[:0:0], gates...)
	h.gen++
	gen := h.gen
	var gone []*proxy
	for id, p := range h.proxies {
		if !h.live[p.sink] {
			gone = append(gone, p)
			delete(h.proxies, id)
		}
	}
	subs := make([]*Subscription, 0, len(h.subs))
	for _, s := range h.subs {
		subs = append(subs, s)
	}
	h.mu.Unlock()
	for _, p := range gone {
		h.log.Info("upstream: an api node left; its subscription's deliveries go to the other subscribers", "sub", p.id, "api_node", p.sink)
		p.sub.Close()
	}
	for _, s := range subs {
		s.attach(gates, gen)
	}
}

// Receive handles a message from another node's hub.
func (h *Hub) Receive(m proto.Message) {
	switch m := m.(type) {
	case *actorpb.UpstreamSubscribe:
		h.openProxy(m)
	case *actorpb.UpstreamUnsubscribe:
		h.closeProxy(m.SubId)
	case *actorpb.UpstreamAck:
		h.mu.Lock()
		p := h.proxies[m.SubId]
		h.mu.Unlock()
		if p != nil {
			p.sub.Ack(m.DeliveryIds)
		}
	case *actorpb.UpstreamBatch:
		h.mu.Lock()
		s := h.subs[m.SubId]
		h.mu.Unlock()
		if s == nil {
			// The subscription ended: the gate stops sending and gives what
			// it sent to the other subscribers.
			h.t.Send(m.GateAddress, &actorpb.UpstreamUnsubscribe{SubId: m.SubId})
			return
		}
		s.fan.deliver(m.GateAddress, m.Messages, false)
	}
}

// openProxy subscribes an api node's app-server in this gate's router.
func (h *Hub) openProxy(m *actorpb.UpstreamSubscribe) {
	h.mu.Lock()
	// A sink this node does not see live is refused: it left (a zombie
	// must rejoin first), or it joined a moment ago and its next
	// subscribe, within resubscribeEvery, is taken.
	if p := h.proxies[m.SubId]; p != nil {
		p.seen = time.Now()
		h.mu.Unlock()
		return
	}
	if h.closed || !h.live[m.SinkAddress] {
		h.mu.Unlock()
		return
	}
	sub, err := h.r.Subscribe(uint16(m.AppCode), m.Msgtypes, int(m.Window))
	if err != nil {
		h.mu.Unlock()
		return
	}
	// Its batches travel over remoting, where one can be lost.
	sub.ResendAfter()
	p := &proxy{id: m.SubId, sink: m.SinkAddress, sub: sub, seen: time.Now()}
	h.proxies[m.SubId] = p
	h.wg.Add(1)
	h.mu.Unlock()
	go h.pump(p)
}

// pump moves a proxy's deliveries to its api node until it closes.
func (h *Hub) pump(p *proxy) {
	defer h.wg.Done()
	self := h.t.Self()
	for {
		msgs := p.sub.Next(h.quit)
		if msgs == nil {
			return
		}
		h.t.Send(p.sink, &actorpb.UpstreamBatch{SubId: p.id, GateAddress: self, Messages: msgs})
	}
}

func (h *Hub) closeProxy(id string) {
	h.mu.Lock()
	p := h.proxies[id]
	delete(h.proxies, id)
	h.mu.Unlock()
	if p != nil {
		p.sub.Close()
	}
}

// Subscribe subscribes an app-server of this node to app's msgtypes
// (empty: all) on every live gate of the cluster; window bounds what each
// gate has in flight to it (0: the default).
func (h *Hub) Subscribe(app uint16, msgtypes []uint32, window int) (*Subscription, error) {
	if window <= 0 {
		window = h.r.cfg.DefaultInFlight
	}
	window = min(window, h.r.cfg.MaxInFlight)
	s := &Subscription{h: h, id: h.prefix + strconv.FormatUint(h.nextSub.Add(1), 10), app: app,
		msgtypes: msgtypes, window: window, fan: newFanin(window), at: map[string]*attachment{}}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, ErrClosed
	}
	h.subs[s.id] = s
	gates, gen := append([]GateRef(nil), h.gates...), h.gen
	h.mu.Unlock()
	s.attach(gates, gen)
	return s, nil
}

// Close closes every proxy and subscription and waits for the pumps. It
// is safe to call more than once.
func (h *Hub) Close() {
	h.mu.Lock()
	if !h.closed {
		close(h.quit)
	}
	h.closed = true
	proxies, subs := h.proxies, h.subs
	h.proxies, h.subs = map[string]*proxy{}, map[string]*Subscription{}
	h.mu.Unlock()
	for _, p := range proxies {
		p.sub.Close()
	}
	for _, s := range subs {
		s.Close()
	}
	h.wg.Wait()
}

// Subscription is an app-server's subscription on this node, fed by the
// routers of every gate in the cluster. Its delivery ids are its own.
type Subscription struct {
	h        *Hub
	id       string
	app      uint16
	msgtypes []uint32
	window   int
	fan      *fanin

	// mu is held while the subscription sends its subscribes and
	// unsubscribes (Transport.Send does not block), so that the gates get
	// them in the order of the decisions: no subscribe after the
	// unsubscribe of a subscription that ended.
	mu     sync.Mutex
	at     map[string]*attachment // by gate instance
	gen    uint64                 // of the gate list attached to (Hub.gen)
	closed bool
}

// attachment is a Subscription's part at one gate.
type attachment struct {
	address string
	local   *Subscriber // this node's own router; nil for another node's
}

// attach subscribes at the gate instances not yet subscribed to, and
// forgets the ones that left (what they held is gone with them). gen is
// the Hub.gen of gates: a list older than the one attached to is ignored
// (Subscribe's attach can run after a SetMembers' newer one).
func (s *Subscription) attach(gates []GateRef, gen uint64) {
	self := s.h.t.Self()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || gen < s.gen {
		return
	}
	s.gen = gen
	present := map[string]bool{}
	for _, g := range gates {
		present[g.Instance] = true
	}
	for inst, a := range s.at {
		if !present[inst] {
			delete(s.at, inst)
			if a.local != nil {
				a.local.Close()
			}
		}
	}
	hasLocal := false
	for _, a := range s.at {
		hasLocal = hasLocal || a.local != nil
	}
	for _, g := range gates {
		if _, done := s.at[g.Instance]; done {
			continue
		}
		if g.Address == self && hasLocal {
			// Two instances at this node's address (it restarted within
			// the membership TTL: the old one is still listed) are one
			// router: a second local attachment would split its
			// deliveries, and acks would reach only one of them.
			continue
		}
		if g.Address != self {
			s.at[g.Instance] = &attachment{address: g.Address}
			s.h.t.Send(g.Address, &actorpb.UpstreamSubscribe{SubId: s.id, SinkAddress: self, AppCode: uint32(s.app),
				Msgtypes: s.msgtypes, Window: uint32(s.window)})
			continue
		}
		// This node's own gate: subscribe directly, no remoting.
		sub, err := s.h.r.Subscribe(s.app, s.msgtypes, s.window)
		if err != nil {
			continue
		}
		s.at[g.Instance] = &attachment{address: g.Address, local: sub}
		hasLocal = true
		s.h.wg.Add(1)
		go func() {
			defer s.h.wg.Done()
			for {
				msgs := sub.Next(s.fan.done)
				if msgs == nil {
					return
				}
				s.fan.deliver(self, msgs, true)
			}
		}()
	}
}

// resubscribe repeats the subscribe to every other node's gate.
func (s *Subscription) resubscribe() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for _, a := range s.at {
		if a.local == nil {
			s.h.t.Send(a.address, &actorpb.UpstreamSubscribe{SubId: s.id, SinkAddress: s.h.t.Self(), AppCode: uint32(s.app),
				Msgtypes: s.msgtypes, Window: uint32(s.window)})
		}
	}
}

// Next blocks until deliveries are ready (at most the router's MaxBatch
// and MaxBatchBytes, unless a single message is larger) or done is closed; nil means the subscription or the node is closing.
func (s *Subscription) Next(done <-chan struct{}) []*apipb.UpstreamMessage {
	return s.fan.take(done, s.h.r.cfg.MaxBatch, s.h.r.cfg.MaxBatchBytes)
}

// Ack acknowledges deliveries to the gates they came from.
func (s *Subscription) Ack(ids []uint64) {
	self := s.h.t.Self()
	for gate, gids := range s.fan.ack(ids) {
		var local *Subscriber
		if gate == self {
			s.mu.Lock()
			for _, a := range s.at {
				if a.local != nil {
					local = a.local
				}
			}
			s.mu.Unlock()
		}
		if local != nil {
			local.Ack(gids)
		} else if gate != self {
			s.h.t.Send(gate, &actorpb.UpstreamAck{SubId: s.id, DeliveryIds: gids})
		}
	}
}

// Close ends the subscription on every gate; what it held
// unacknowledged goes to the other subscribers.
func (s *Subscription) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	for _, a := range s.at {
		if a.local != nil {
			a.local.Close()
		} else {
			s.h.t.Send(a.address, &actorpb.UpstreamUnsubscribe{SubId: s.id})
		}
	}
	s.at = map[string]*attachment{}
	s.mu.Unlock()
	s.h.mu.Lock()
	delete(s.h.subs, s.id)
	s.h.mu.Unlock()
	s.fan.close()
}

// fanin merges deliveries from several gates into one stream of
// deliveries with ids of its own.
type fanin struct {
	mu     sync.Mutex
	lastID uint64
	// taken is the last id take handed out (ids go out in order): an ack
	// of a later one, still in the outbox, is ignored (the app-server
	// never had it; acknowledged, it would be lost with the outbox).
	taken  uint64
	origin map[uint64]origin
	// held maps back: the deliveries not acknowledged yet, by origin. A
	// gate sends a delivery again when its ack is late (resend-after); one
	// still held here (waiting for the app-server, or being processed) is
	// not taken twice, so a slow app-server is not sent the same
	// messages again and again, and what the fanin holds stays bounded by
	// what the gates have in flight to the subscription: each gate's
	// window, and its byte budgets (nothing is forgotten or skipped: a
	// delivery skipped here would wait at its gate for a resend, for good
	// from this node's own gate, which does not resend).
	held   map[origin]uint64
	outbox []*apipb.UpstreamMessage
	// window is the subscription's window at each gate; waiting counts
	// the outbox's deliveries by gate. A gate resends what was not
	// acknowledged in time, to whichever subscriber: to a stream that
	// takes nothing (its app-server stopped reading) another node's gate
	// would send new deliveries in place of those, again and again, the
	// resent ones never leaving the outbox. So the outbox holds at most a
	// window of each gate's: beyond, that gate's oldest (which it has
	// resent, or which a process of it that is gone sent) are forgotten.
	// This node's own gate's are not: its router never resends, and
	// never has more than a window out.
	window  int
	waiting map[string]int
	// heldN counts held by gate, and order lists each gate's held ids
	// oldest first (with acknowledged ones among them, dropped lazily).
	// A gate never has more than a window out to the subscription: past
	// that, what is held of it was taken back by the gate and resent to
	// another stream (an app-server that reads but does not acknowledge),
	// and the oldest is forgotten; kept, every resend-after would add a
	// window of entries for as long as the stream lived.
	heldN  map[string]int
	order  map[string][]uint64
	notify chan struct{}
	done   chan struct{}
	closed bool
}

type origin struct {
	gate string
	id   uint64
}

func newFanin(window int) *fanin {
	// Ids start at a random point, as the routers' do: acks an app-server
	// still sends from its previous stream do not match this one's.
	start := mrand.Uint64N(1 << 62)
	return &fanin{lastID: start, taken: start, origin: map[uint64]origin{}, held: map[origin]uint64{},
		window: max(window, 1), waiting: map[string]int{}, heldN: map[string]int{}, order: map[string][]uint64{}, notify: make(chan struct{}, 1), done: make(chan struct{})}
}

// deliver takes messages from gate; shared says they belong to a local
// router (and are copied before their delivery id is rewritten).
func (f *fanin) deliver(gate string, msgs []*apipb.UpstreamMessage, shared bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	for _, m := range msgs {
		o := origin{gate, m.DeliveryId}
		if _, ok := f.held[o]; ok {
			continue // sent again by its gate while still held here
		}
		if shared {
			m = proto.Clone(m).(*apipb.UpstreamMessage)
		}
		f.lastID++
		f.origin[f.lastID] = o
		f.held[o] = f.lastID
		f.heldN[gate]++
		f.order[gate] = append(f.order[gate], f.lastID)
		m.DeliveryId = f.lastID
		f.outbox = append(f.outbox, m)
		f.waiting[gate]++
	}
	if over := f.waiting[gate] - f.window; over > 0 && !shared {
		f.forgetOldest(gate, over)
	}
	if !shared {
		f.forgetTaken(gate)
	}
	f.compactOrder(gate)
	select {
	case f.notify <- struct{}{}:
	default:
	}
}

// forgetOldest drops the n oldest deliveries of gate in the outbox (f.mu
// held).
func (f *fanin) forgetOldest(gate string, n int) {
	kept := f.outbox[:0]
	for _, m := range f.outbox {
		if n > 0 {
			if o := f.origin[m.DeliveryId]; o.gate == gate {
				f.forget(m.DeliveryId, o)
				f.waiting[gate]--
				n--
				continue
			}
		}
		kept = append(kept, m)
	}
	clear(f.outbox[len(kept):])
	f.outbox = kept
}

// forget drops the delivery id of origin o (f.mu held).
func (f *fanin) forget(id uint64, o origin) {
	delete(f.origin, id)
	if f.held[o] == id {
		delete(f.held, o)
	}
	if f.heldN[o.gate]--; f.heldN[o.gate] <= 0 {
		delete(f.heldN, o.gate)
	}
}

// forgetTaken forgets gate's oldest deliveries taken and not
// acknowledged while it holds more than a window of them (see heldN).
func (f *fanin) forgetTaken(gate string) {
	ids := f.order[gate]
	for f.heldN[gate] > f.window && len(ids) > 0 && ids[0] <= f.taken {
		if o, ok := f.origin[ids[0]]; ok {
			f.forget(ids[0], o)
		}
		ids = ids[1:]
	}
	f.order[gate] = ids
}

// compactOrder drops the acknowledged ids from gate's order once they
// are most of it (f.mu held).
func (f *fanin) compactOrder(gate string) {
	if f.heldN[gate] == 0 {
		delete(f.order, gate) // nothing held: a gate gone leaves nothing behind
		return
	}
	ids := f.order[gate]
	if len(ids) <= 2*f.heldN[gate]+64 {
		return
	}
	kept := make([]uint64, 0, f.heldN[gate])
	for _, id := range ids {
		if o, ok := f.origin[id]; ok && o.gate == gate {
			kept = append(kept, id)
		}
	}
	if len(kept) == 0 {
		delete(f.order, gate)
		return
	}
	f.order[gate] = kept
}

// take returns the next deliveries: at most maxN messages and maxBytes
// of Size (a single larger message goes alone), blocking until there are
// some or done is closed.
func (f *fanin) take(done <-chan struct{}, maxN int, maxBytes int64) []*apipb.UpstreamMessage {
	for {
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			return nil
		}
		if len(f.outbox) > 0 {
			n, bytes := 1, Size(f.outbox[0])
			for n < min(len(f.outbox), maxN) {
				if bytes += Size(f.outbox[n]); bytes > maxBytes {
					break
				}
				n++
			}
			out := make([]*apipb.UpstreamMessage, n)
			copy(out, f.outbox)
			f.taken = out[n-1].DeliveryId
			for _, m := range out {
				g := f.origin[m.DeliveryId].gate
				if f.waiting[g]--; f.waiting[g] <= 0 {
					delete(f.waiting, g)
				}
			}
			rest := copy(f.outbox, f.outbox[n:])
			clear(f.outbox[rest:])
			f.outbox = f.outbox[:rest]
			if rest > 0 {
				select {
				case f.notify <- struct{}{}:
				default:
				}
			}
			f.mu.Unlock()
			return out
		}
		f.mu.Unlock()
		select {
		case <-f.notify:
		case <-done:
			return nil
		case <-f.done:
			return nil
		}
	}
}

// ack maps delivery ids back to the gates' ids, by gate; unknown ids,
// and those not handed out yet, are ignored.
func (f *fanin) ack(ids []uint64) map[string][]uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]uint64{}
	for _, id := range ids {
		if id > f.taken {
			continue
		}
		if o, ok := f.origin[id]; ok {
			f.forget(id, o)
			out[o.gate] = append(out[o.gate], o.id)
		}
	}
	for g := range out {
		f.compactOrder(g)
	}
	return out
}

func (f *fanin) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.closed = true
		close(f.done)
	}
}

// NewLocalHub returns a hub for a router alone: subscriptions take only
// what this node's devices publish (a single node, and tests).
func NewLocalHub(r *Router) *Hub {
	h := NewHub(r, localTransport{}, nil)
	h.SetMembers([]string{localAddress}, []GateRef{{Address: localAddress, Instance: localAddress}})
	return h
}

const localAddress = "local"

type localTransport struct{}

func (localTransport) Self() string               { return localAddress }
func (localTransport) Send(string, proto.Message) {}
