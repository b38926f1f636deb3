package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
)

// maxInFlight bounds the pushes being tried at once; beyond, the pacing
// loop waits (the app-server falls behind rather than piling up).
const maxInFlight = 4096

// Workload is a running workload. Its methods are safe for concurrent
// use.
type Workload struct {
	cfg     Config
	rec     *recorder
	devs    []*device
	conns   []*grpc.ClientConn
	clients []apipb.CourierClient
	http    *http.Client

	api      atomic.Uint32 // the API node calls go to first
	disc     atomic.Uint32 // the discovery node asked first
	pushN    atomic.Uint64
	sem      chan struct{}
	quit     chan struct{} // Stop: everything ends
	traffic  chan struct{} // StopTraffic: the pacing loops end
	stopOnce sync.Once
	trOnce   sync.Once
	runOnce  sync.Once
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup // devices, subscribers, maintenance
	trWG     sync.WaitGroup // pacing loops
	pushWG   sync.WaitGroup // pushes in flight
}

// Start connects the devices (paced by LoginRate) and the upstream
// subscriber; traffic starts with Run.
func Start(cfg Config) (*Workload, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	w := &Workload{cfg: cfg, rec: newRecorder(), http: &http.Client{Timeout: 2 * time.Second},
		sem: make(chan struct{}, maxInFlight), quit: make(chan struct{}), traffic: make(chan struct{})}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	for _, a := range cfg.APIs {
		c, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			w.closeConns()
			return nil, fmt.Errorf("workload: api %s: %w", a, err)
		}
		w.conns = append(w.conns, c)
		w.clients = append(w.clients, apipb.NewCourierClient(c))
	}
	for i := range cfg.Devices {
		uid := fmt.Sprintf("%s%d", cfg.UIDPrefix, i)
		tok, err := gate.MintToken(cfg.Secret, cfg.App, uid, 48*time.Hour)
		if err != nil {
			w.closeConns()
			return nil, fmt.Errorf("workload: token: %w", err)
		}
		w.devs = append(w.devs, &device{w: w, i: i, uid: uid, token: tok,
			partner: fmt.Sprintf("%s%d", cfg.UIDPrefix, i^1)})
	}
	t0 := time.Now()
	for i, d := range w.devs {
		at := t0
		if cfg.LoginRate > 0 {
			at = t0.Add(time.Duration(float64(i) / cfg.LoginRate * float64(time.Second)))
		}
		w.wg.Add(1)
		go d.run(at)
	}
	if cfg.C2SRate > 0 {
		w.wg.Add(1)
		go w.subscribe()
	}
	w.wg.Add(1)
	go w.maintain()
	return w, nil
}

func (w *Workload) closeConns() {
	for _, c := range w.conns {
		c.Close()
	}
}

// UID returns the uid of device i.
func (w *Workload) UID(i int) string { return w.devs[i].uid }

// Online returns how many devices are logged in now.
func (w *Workload) Online() int {
	n := 0
	for _, d := range w.devs {
		if d.online() {
			n++
		}
	}
	return n
}

// OnlineGate returns how many devices are logged in through gate addr.
func (w *Workload) OnlineGate(addr string) int {
	n := 0
	for _, d := range w.devs {
		d.mu.Lock()
		if d.conn != nil && d.gate == addr {
			n++
		}
		d.mu.Unlock()
	}
	return n
}

// WaitOnline waits until every device is logged in.
func (w *Workload) WaitOnline(ctx context.Context) error {
	for {
		if n := w.Online(); n == len(w.devs) {
			return nil
		} else if ctx.Err() != nil {
			return fmt.Errorf("workload: %d of %d devices online: %w", n, len(w.devs), ctx.Err())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Run starts the traffic: pushes, fire-and-forget, C2C, C2S at their
// rates, until StopTraffic or Stop.
func (w *Workload) Run() {
	w.runOnce.Do(func() {
		c := &w.cfg
		if c.PushRate > 0 {
			w.pace(c.PushRate, func() { w.startPush(true) })
		}
		if c.FireAndForgetRate > 0 {
			w.pace(c.FireAndForgetRate, func() { w.startPush(false) })
		}
		if c.C2CRate > 0 {
			w.pace(c.C2CRate, func() { w.randomOnline().newMessage(messages.CmdC2C) })
		}
		if c.C2SRate > 0 {
			w.pace(c.C2SRate, func() { w.randomOnline().newMessage(messages.CmdC2S) })
		}
	})
}

// pace calls fn rate times per second until the traffic stops.
func (w *Workload) pace(rate float64, fn func()) {
	w.trWG.Add(1)
	go func() {
		defer w.trWG.Done()
		every := time.Duration(float64(time.Second) / rate)
		next := time.Now()
		t := time.NewTimer(0)
		defer t.Stop()
		for {
			select {
			case <-w.traffic:
				return
			case <-w.quit:
				return
			case <-t.C:
			}
			for now := time.Now(); !next.After(now); next = next.Add(every) {
				fn()
			}
			t.Reset(time.Until(next))
		}
	}()
}

// randomOnline picks a random device, online if one of a few tries is.
func (w *Workload) randomOnline() *device {
	var d *device
	for range 8 {
		d = w.devs[rand.IntN(len(w.devs))]
		if d.online() {
			break
		}
	}
	return d
}

// startPush starts one push (stored or fire-and-forget) to the next
// identity in turn.
func (w *Workload) startPush(stored bool) {
	n := w.pushN.Add(1) - 1
	d := w.devs[n%uint64(len(w.devs))]
	kind := "f"
	if stored {
		kind = "k"
	}
	key := fmt.Sprintf("%s%s%d", w.cfg.UIDPrefix, kind, n)
	select {
	case w.sem <- struct{}{}:
	case <-w.quit:
		return
	}
	w.pushWG.Add(1)
	go func() {
		defer w.pushWG.Done()
		defer func() { <-w.sem }()
		w.push(d.uid, key, stored)
	}()
}

// retryable reports whether a failed call may be tried again.
func retryable(c codes.Code) bool {
	switch c {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted:
		return true
	}
	return false
}

// push calls Push until it is accepted, fails for good, or GiveUp passes;
// a retryable failure moves every later call to the next API node.
func (w *Workload) push(uid, key string, stored bool) {
	req := &apipb.PushRequest{AppCode: uint32(w.cfg.App), Uid: uid, Msgtype: w.cfg.Msgtype, Payload: []byte(key)}
	if stored {
		req.IdempotencyKey = key
	} else {
		req.Delivery = apipb.Delivery_DELIVERY_FIRE_AND_FORGET
	}
	start := time.Now()
	backoff := 50 * time.Millisecond
	for {
		i := w.api.Load()
		ctx, cancel := context.WithTimeout(w.authCtx(), w.cfg.CallTimeout)
		resp, err := w.clients[int(i)%len(w.clients)].Push(ctx, req)
		cancel()
		if err == nil {
			w.rec.callOK(resp.Duplicate)
			if stored {
				w.rec.accepted(accept{kind: KindPush, key: key, uid: uid, msgID: resp.MsgId, seq: resp.Seq, start: start, at: time.Now()})
			} else {
				w.rec.ffSent(resp.Online)
			}
			return
		}
		code := status.Code(err)
		if w.ctx.Err() != nil {
			return
		}
		switch {
		case !retryable(code):
			w.rec.callFailed(code, false)
			w.rec.unexpected(fmt.Sprintf("push %s to %s: %v", key, uid, err))
			return
		case !stored:
			w.rec.ffFailed(code) // fire-and-forget is not retried
			return
		}
		w.rec.callFailed(code, true)
		w.api.CompareAndSwap(i, i+1)
		if time.Since(start) > w.cfg.GiveUp {
			w.rec.abandoned()
			w.cfg.Log.Warn("workload: push abandoned", "key", key, "err", err)
			return
		}
		if !w.sleep(jitter(backoff)) {
			return
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (w *Workload) authCtx() context.Context {
	return metadata.AppendToOutgoingContext(w.ctx, "authorization", "Bearer "+w.cfg.APIKey)
}

// subscribe keeps one upstream subscription open, on the API nodes in
// turn, and acks everything.
func (w *Workload) subscribe() {
	defer w.wg.Done()
	backoff := w.cfg.Backoff
	for !w.stopped() {
		i := w.api.Load()
		err := w.subscribeOnce(w.clients[int(i)%len(w.clients)])
		if w.stopped() {
			return
		}
		w.cfg.Log.Debug("workload: upstream subscription ended", "err", err)
		w.api.CompareAndSwap(i, i+1)
		if !w.sleep(jitter(backoff)) {
			return
		}
		backoff = min(2*backoff, w.cfg.MaxBackoff)
	}
}

func (w *Workload) subscribeOnce(c apipb.CourierClient) error {
	ctx, cancel := context.WithCancel(w.authCtx())
	defer cancel()
	st, err := c.Upstream(ctx)
	if err != nil {
		return err
	}
	err = st.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Subscribe{Subscribe: &apipb.Subscribe{
		AppCode: uint32(w.cfg.App), Msgtypes: []uint32{w.cfg.Msgtype}}}})
	if err != nil {
		return err
	}
	for {
		d, err := st.Recv()
		if err != nil {
			return err
		}
		ack := &apipb.UpstreamAck{}
		for _, m := range d.Messages {
			w.rec.c2sReceived(m.ClientMsgId)
			ack.DeliveryIds = append(ack.DeliveryIds, m.DeliveryId)
		}
		if err := st.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Ack{Ack: ack}}); err != nil {
			return err
		}
	}
}

// maintain sends keepalives and resends unanswered C2C and C2S.
func (w *Workload) maintain() {
	defer w.wg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-w.quit:
			return
		case now := <-t.C:
			for _, d := range w.devs {
				d.resend(now)
			}
		}
	}
}

// gates returns gate addresses to try, from discovery or the config.
func (w *Workload) gates(first bool) ([]string, error) {
	if len(w.cfg.Discover) == 0 || (first && len(w.cfg.Gates) > 0) {
		out := append([]string(nil), w.cfg.Gates...)
		rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
		return out, nil
	}
	var last error
	for range w.cfg.Discover {
		i := w.disc.Load()
		addr := w.cfg.Discover[int(i)%len(w.cfg.Discover)]
		gates, err := w.discover(addr)
		if err == nil {
			return gates, nil
		}
		last = err
		w.disc.CompareAndSwap(i, i+1)
	}
	return nil, last
}

func (w *Workload) discover(addr string) ([]string, error) {
	resp, err := w.http.Get(fmt.Sprintf("http://%s/v1/gates?app=%d", addr, w.cfg.App))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("discovery at %s: %s %s", addr, resp.Status, body)
	}
	var r struct {
		Gates []struct {
			Addr string `json:"addr"`
		} `json:"gates"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("discovery at %s: %w", addr, err)
	}
	var out []string
	for _, g := range r.Gates {
		out = append(out, g.Addr)
	}
	if len(out) == 0 {
		return nil, errors.New("discovery: no gate")
	}
	return out, nil
}

// Fault marks that a fault is applied now (for the ledger's
// interruption times) and returns the moment.
func (w *Workload) Fault(name string) time.Time { return w.rec.mark(name) }

// Sessions returns every session so far, in order of login.
func (w *Workload) Sessions() []Session {
	s := w.rec.sessionsCopy()
	sortSessions(s)
	return s
}

// StopTraffic stops sending new messages and waits until the pushes in
// flight have an outcome. Devices stay connected.
func (w *Workload) StopTraffic() {
	w.trOnce.Do(func() { close(w.traffic) })
	w.trWG.Wait()
	w.pushWG.Wait()
}

// Settle waits, after StopTraffic, until every accepted stored message
// and C2S has been received and no C2C or C2S waits for its answer, or
// ctx ends; it returns what is still missing then.
func (w *Workload) Settle(ctx context.Context) error { return w.settle(ctx, -1) }

// SettleStored is Settle for runs in which a node crashed: C2S is held
// in the accepting node's memory until an app-server acknowledges it
// (docs/protocol.md §11), so a crash may lose some by contract. Once only
// C2S deliveries are missing, it waits at most c2sGrace more for them and
// returns nil; the ledger reports those never received as lost.
func (w *Workload) SettleStored(ctx context.Context, c2sGrace time.Duration) error {
	return w.settle(ctx, c2sGrace)
}

// settleQuiet is how long nothing may arrive before Settle returns.
const settleQuiet = time.Second

// settle waits as Settle does; with c2sGrace >= 0, missing C2S
// deliveries alone end the wait after c2sGrace.
func (w *Workload) settle(ctx context.Context, c2sGrace time.Duration) error {
	var onlyC2S time.Time // since when only C2S deliveries are missing
	// done ends the wait once nothing more arrives for settleQuiet: a
	// second copy, a reused seq or a late out-of-order delivery right
	// after the last missing message must still reach the ledger.
	var quietSince time.Time
	quietAt := -1
	done := func() bool {
		if n := w.rec.activity(); n != quietAt {
			quietAt, quietSince = n, time.Now()
		}
		return time.Since(quietSince) >= settleQuiet
	}
	for {
		stored, up := w.rec.pendingDeliveries()
		unanswered := 0
		for _, d := range w.devs {
			d.mu.Lock()
			unanswered += len(d.pending)
			d.mu.Unlock()
		}
		if stored == 0 && up == 0 && unanswered == 0 {
			if done() {
				return nil
			}
		} else if c2sGrace >= 0 && stored == 0 && unanswered == 0 {
			if onlyC2S.IsZero() {
				onlyC2S = time.Now()
			}
			if time.Since(onlyC2S) >= c2sGrace && done() {
				return nil
			}
		} else {
			onlyC2S = time.Time{}
		}
		select {
		case <-ctx.Done():
			if stored == 0 && up == 0 && unanswered == 0 {
				return nil // all there; ctx ended during the quiet second
			}
			return fmt.Errorf("workload: still missing after %v: %d stored messages undelivered, %d C2S undelivered, %d C2C/C2S unanswered",
				ctx.Err(), stored, up, unanswered)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop ends everything: traffic, pushes in flight, devices and
// subscriptions. Safe to call twice.
func (w *Workload) Stop() {
	w.stopOnce.Do(func() {
		w.trOnce.Do(func() { close(w.traffic) })
		close(w.quit)
		w.cancel()
		for _, d := range w.devs {
			d.closeConn()
		}
		w.trWG.Wait()
		w.pushWG.Wait()
		w.wg.Wait()
		w.closeConns()
	})
}

// Ledger returns the account of the run so far (call it after Settle or
// Stop for the final one).
func (w *Workload) Ledger() Ledger { return w.rec.ledger(len(w.devs)) }

// stopped reports whether Stop was called.
func (w *Workload) stopped() bool {
	select {
	case <-w.quit:
		return true
	default:
		return false
	}
}

// sleep waits d, or less if Stop is called; it returns false then.
func (w *Workload) sleep(d time.Duration) bool {
	if d <= 0 {
		return !w.stopped()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.quit:
		return false
	case <-t.C:
		return true
	}
}
