package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/courier-im/courier/cmd/courier-bench/internal/farm"
	"github.com/courier-im/courier/cmd/courier-bench/internal/ipc"
)

// ConnectConfig tunes the connect scenario.
type ConnectConfig struct {
	// Rate of logins per second (0: as fast as LoginInflight allows).
	Rate float64
	// MemAt are device counts at which the node's memory is sampled once
	// it is idle (after a forced GC when it serves pprof); the result
	// has the slope per device between the first and the last.
	MemAt []int
	// Settle bounds the wait for the node to go idle before a sample
	// (default 20 s).
	Settle time.Duration
	// MemWait is an extra wait before each sample, e.g. for idle actors
	// to passivate (--actors.passivate-after).
	MemWait time.Duration
	// HeapProfile, if set, is a file for the node's heap profile taken
	// with the last sample (needs its pprof).
	HeapProfile string
}

// memSample is the node's memory at a number of logged-in devices.
type memSample struct {
	devices   int
	rss, heap int64
}

// Connect logs in Devices devices at a target rate and measures logins/s
// and the node's memory per device.
func Connect(ctx context.Context, cfg Config, cc ConnectConfig) (*Result, error) {
	if cc.Settle <= 0 {
		cc.Settle = 20 * time.Second
	}
	s, err := open(ctx, cfg, "connect", map[string]any{"rate": cc.Rate, "mem_at": cc.MemAt, "inflight": cfg.LoginInflight,
		"mem_wait_s": cc.MemWait.Seconds()})
	if err != nil {
		return nil, err
	}
	defer s.close()
	steps := []int{}
	for _, m := range cc.MemAt {
		if m > 0 && m < s.cfg.Devices {
			steps = append(steps, m)
		}
	}
	steps = append(steps, s.cfg.Devices)
	slices.Sort(steps)
	steps = slices.Compact(steps)
	wantMem := len(cc.MemAt) > 0

	stop := make(chan struct{})
	var lastOK int64
	wg := s.progress(stop, "connect", func(dt float64) string {
		st := s.devStats()
		line := fmt.Sprintf("online %7d  logins %6.0f/s  failed %d", st.Online, float64(st.LoginOK-lastOK)/dt, st.LoginFailed)
		lastOK = st.LoginOK
		return line
	})
	var samples []memSample
	var loginSpan time.Duration
	var totalOK, totalFail int64
	from := 0
	c0 := s.measuring(ctx)
	var cpuLogin, dbLogin time.Duration
	dbOK := true
	for _, to := range steps {
		s.acct.resetLogins()
		a := s.readCPU(ctx)
		err := s.login(ctx, from, to, cc.Rate)
		if err == nil {
			// Figures per login and memory per device hold only for a
			// step that logged every device in.
			err = s.allOnline(to, fmt.Sprintf("logins up to %d devices", to))
		}
		if err != nil {
			close(stop)
			wg.Wait()
			return nil, err
		}
		b := s.readCPU(ctx)
		cpuLogin += b.node - a.node
		dbLogin += b.db - a.db
		dbOK = dbOK && a.dbOK && b.dbOK
		ok, fail, _, span, _ := s.acct.logins()
		totalOK += ok
		totalFail += fail
		loginSpan += time.Duration(span)
		from = to
		if wantMem {
			time.Sleep(cc.MemWait)
			m, err := s.memSample(ctx, to)
			if err != nil {
				s.res.note("memory at %d devices: %v", to, err)
				continue
			}
			// The sample is of to devices only if none left meanwhile.
			if err := s.allOnline(to, fmt.Sprintf("memory sample at %d devices", to)); err != nil {
				close(stop)
				wg.Wait()
				return nil, err
			}
			samples = append(samples, m)
		}
	}
	c1 := s.readCPU(ctx)
	close(stop)
	wg.Wait()
	if err := s.nodeAlive(); err != nil {
		return nil, err
	}
	if cc.HeapProfile != "" {
		if err := s.heapProfile(ctx, cc.HeapProfile); err != nil {
			s.res.note("heap profile: %v", err)
		}
	}
	st := s.devStats()
	s.res.Devices = st
	s.res.fig("devices", float64(s.cfg.Devices), "")
	s.res.fig("logins", float64(totalOK), "")
	s.res.fig("login failures", float64(totalFail), "")
	if loginSpan > 0 {
		s.res.fig("logins/s", float64(totalOK)/loginSpan.Seconds(), "/s")
	}
	if len(steps) == 1 {
		_, _, codes, _, lat := s.acct.logins()
		s.res.lat("login (dial → LOGIN_ACK)", lat)
		for k, v := range codes {
			s.res.note("%d logins failed: %s", v, k)
		}
	}
	if c1.nodeOK && totalOK > 0 {
		s.res.fig("node CPU per login", cpuLogin.Seconds()*1e6/float64(totalOK), "µs")
	}
	if dbOK && c1.dbOK && totalOK > 0 {
		s.res.fig("database CPU per login", dbLogin.Seconds()*1e6/float64(totalOK), "µs")
	}
	s.cpuFigures(c0, c1, 0, "")
	for _, m := range samples {
		s.res.fig(fmt.Sprintf("node RSS at %d devices", m.devices), float64(m.rss)/(1<<20), "MiB")
		if m.heap > 0 {
			s.res.fig(fmt.Sprintf("node heap in use at %d devices", m.devices), float64(m.heap)/(1<<20), "MiB")
		}
	}
	if len(samples) >= 2 {
		a, b := samples[0], samples[len(samples)-1]
		n := float64(b.devices - a.devices)
		s.res.fig(fmt.Sprintf("node RSS per device (%d→%d)", a.devices, b.devices), float64(b.rss-a.rss)/n, "bytes")
		if a.heap > 0 && b.heap > 0 {
			s.res.fig(fmt.Sprintf("node heap per device (%d→%d)", a.devices, b.devices), float64(b.heap-a.heap)/n, "bytes")
		}
		s.res.note("memory excludes the kernel's socket buffers (a few KiB per idle TCP connection, on both ends)")
	}
	s.res.Failures = latencyFailures(s.acct.latenciesOutOfRange())
	return s.res, nil
}

func (s *session) heapProfile(ctx context.Context, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = s.node.Heap(ctx, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// memSample waits for the node to go idle, makes it collect garbage if
// it can, and reads its memory once its RSS has stopped falling.
func (s *session) memSample(ctx context.Context, devices int) (memSample, error) {
	deadline := time.Now().Add(20 * time.Second)
	prev := s.readCPU(ctx)
	for time.Now().Before(deadline) && prev.nodeOK {
		time.Sleep(500 * time.Millisecond)
		c := s.readCPU(ctx)
		busy := (c.node - prev.node).Seconds() / c.at.Sub(prev.at).Seconds()
		prev = c
		if busy < 0.05 {
			break
		}
	}
	gc, err := s.node.GC(ctx)
	if err != nil {
		return memSample{}, err
	}
	if gc {
		time.Sleep(200 * time.Millisecond)
		_, _ = s.node.GC(ctx)
		time.Sleep(300 * time.Millisecond)
	} else if devices == s.cfg.Devices || len(s.res.Notes) == 0 {
		s.res.note("memory read without a forced GC: the node serves no pprof (--node-pprof)")
	}
	m := memSample{devices: devices}
	if m.rss, err = s.node.RSS(ctx); err != nil {
		return m, err
	}
	// The node may still be returning memory to the OS (its idle release
	// follows the GC just forced; the runtime's scavenger works in the
	// background): the sample is the RSS once it has stopped falling
	// (by less than 0.5% over rssSettle), within rssSettleMax.
	settled := time.Now()
	for start := settled; time.Since(settled) < rssSettle && time.Since(start) < rssSettleMax; {
		time.Sleep(rssPoll)
		r, err := s.node.RSS(ctx)
		if err != nil {
			return m, err
		}
		if r < m.rss-m.rss/200 {
			settled = time.Now()
		}
		m.rss = min(m.rss, r)
	}
	m.heap, _ = s.node.HeapInuse(ctx)
	return m, nil
}

// How memSample waits for the node's RSS to settle.
const (
	rssPoll      = 250 * time.Millisecond
	rssSettle    = time.Second
	rssSettleMax = 5 * time.Second
)

// PushConfig tunes the push scenario.
type PushConfig struct {
	// Rate of pushes per second (0: as fast as Concurrency calls go).
	Rate float64
	// Duration of sending (default 10 s) and Count, the most pushes (0:
	// no limit).
	Duration time.Duration
	Count    int64
	// Batch: 1 calls Push; more calls PushMany with that many items.
	Batch int
	// Concurrency is the most calls in flight (default 64 for Push, 8 for
	// PushMany; at a fixed Rate at least enough calls for the rate when
	// each takes 100 ms, so that a fixed-rate run measures the node's
	// latency, not the generator's limit on calls in flight).
	Concurrency int
	// GRPCConns is the number of gRPC connections (default 2).
	GRPCConns int
	// FireAndForget pushes are not stored; stored is the default.
	FireAndForget bool
	// Ghosts are extra uids that never log in; pushes go round-robin over
	// devices and ghosts. Stored pushes to ghosts are accepted and never
	// received (lost, as far as this run can tell); fire-and-forget ones
	// are dropped by the node.
	Ghosts int
	// TTL of stored pushes (0: the node's default).
	TTL time.Duration
	// VerifyPending asks the node (Presence) how many stored messages are
	// unacknowledged after the drain.
	VerifyPending bool
	// IdempotencyKeys gives every stored push an idempotency key of its
	// own (the node looks each up in its store before accepting it).
	IdempotencyKeys bool
}

func (pc *PushConfig) setDefaults() {
	if pc.Duration <= 0 {
		pc.Duration = 10 * time.Second
	}
	if pc.Batch <= 0 {
		pc.Batch = 1
	}
	if pc.Concurrency <= 0 {
		pc.Concurrency = 64
		if pc.Batch > 1 {
			pc.Concurrency = 8
		}
		if pc.Rate > 0 {
			pc.Concurrency = max(pc.Concurrency, int(math.Ceil(pc.Rate*0.1/float64(pc.Batch))))
		}
	}
	if pc.GRPCConns <= 0 {
		pc.GRPCConns = 2
	}
}

// Push logs in Devices devices, then pushes to them over the gRPC API and
// accounts for every push.
func Push(ctx context.Context, cfg Config, pc PushConfig) (*Result, error) {
	pc.setDefaults()
	name := "push-stored"
	if pc.FireAndForget {
		name = "push-fire-and-forget"
	}
	s, err := open(ctx, cfg, name, map[string]any{"rate": pc.Rate, "duration_s": pc.Duration.Seconds(), "count": pc.Count,
		"batch": pc.Batch, "concurrency": pc.Concurrency, "grpc_conns": pc.GRPCConns, "ghosts": pc.Ghosts})
	if err != nil {
		return nil, err
	}
	defer s.close()
	if err := s.setupLogin(ctx); err != nil {
		return nil, err
	}
	st := &pushStats{errors: map[string]int64{}}
	base := s.devStats()
	stop := make(chan struct{})
	var last struct{ acc, del, ack int64 }
	wg := s.progress(stop, name, func(dt float64) string {
		acc := st.accepted.Load()
		del, _, _, _ := s.acct.counts()
		ack := s.devStats().AckedS2C - base.AckedS2C
		line := fmt.Sprintf("accepted %7.0f/s  delivered %7.0f/s  acked %7.0f/s  failed %d",
			float64(acc-last.acc)/dt, float64(del-last.del)/dt, float64(ack-last.ack)/dt, st.failed.Load())
		last.acc, last.del, last.ack = acc, del, ack
		return line
	})
	c0 := s.measuring(ctx)
	loadErr := s.pushLoad(ctx, pc, st)
	sendSecs := time.Since(c0.at).Seconds()
	s.waitDrain(ctx, func() int64 {
		exp, del, ans := s.acct.pushProgress()
		return exp - del + (s.acct.pushed() - ans)
	}, func() int64 { d, _, _, _ := s.acct.counts(); return d })
	// Acks written by the devices a moment ago are still in flight.
	time.Sleep(200 * time.Millisecond)
	c1 := s.readCPU(ctx)
	close(stop)
	wg.Wait()
	if loadErr != nil {
		return nil, loadErr
	}
	if err := s.nodeAlive(); err != nil {
		return nil, err
	}
	t := s.acct.pushTotals(s.uid)
	t.FailedOther = st.other.Load()
	dev := s.devStats()
	s.res.Devices = dev
	acked := dev.AckedS2C - base.AckedS2C
	span := s.deliverySpan(c0, c1)
	r := s.res
	r.fig("devices online", float64(dev.Online), "")
	r.fig("pushes sent", float64(t.Pushed), "")
	r.fig("API calls", float64(st.calls.Load()), "")
	r.fig("accepted", float64(t.Accepted), "")
	if pc.FireAndForget {
		r.fig("dropped (offline, as the API said)", float64(t.Dropped), "")
	}
	r.fig("failed", float64(t.Failed), "")
	r.fig("of which refused as overloaded (RESOURCE_EXHAUSTED)", float64(st.refused.Load()), "")
	r.fig("delivered", float64(t.Delivered), "")
	r.fig("acked by devices", float64(acked), "")
	r.fig("lost", float64(t.Lost), "")
	r.fig("mismatched (seq, msg id or device)", float64(t.Mismatched), "")
	r.fig("duplicates (redeliveries)", float64(t.Dups), "")
	if t.Unexpected+t.Unknown+t.Foreign > 0 {
		r.fig("received though not accepted", float64(t.Unexpected), "")
		r.fig("received, unknown index", float64(t.Unknown), "")
		r.fig("received from other runs", float64(t.Foreign), "")
	}
	if dev.Discarded > 0 {
		r.fig("discarded by devices (--test.drop-every)", float64(dev.Discarded), "")
	}
	r.fig("send time", sendSecs, "s")
	r.fig("accepted/s", float64(t.Accepted)/sendSecs, "/s")
	r.fig("delivered/s", float64(t.Delivered)/span, "/s")
	r.fig("acked/s", float64(acked)/span, "/s")
	s.cpuFigures(c0, c1, t.Delivered, "delivered message")
	toDev, api := s.acct.pushLatencies()
	r.lat("API call → device receipt", toDev)
	r.lat("API call → API answer", api)
	r.Lost, r.LostSample = t.Lost, t.LostSample
	for e, n := range st.errors {
		r.note("%d pushes failed: %s", n, e)
	}
	if pc.Rate > 0 {
		r.note("fixed rate: latency counts from each push's scheduled time (no coordinated omission)")
		if got := float64(t.Pushed) / sendSecs; got < 0.95*pc.Rate {
			r.note("the generator reached only %.0f of %.0f pushes/s", got, pc.Rate)
		}
	}
	var pending pendingCheck
	if pc.VerifyPending && !pc.FireAndForget {
		pending = s.pendingAfterDrain(ctx)
		if pending.err == nil {
			r.fig("pending on the node after drain (Presence)", float64(pending.n), "")
		}
	}
	r.Failures = t.failures(pc.FireAndForget, pending)
	return r, nil
}

// pendingAfterDrain asks the node how many stored messages the devices
// have not acknowledged, again for up to DrainIdle while some are (the
// devices' last acks may still be on their way).
func (s *session) pendingAfterDrain(ctx context.Context) pendingCheck {
	deadline := time.Now().Add(s.cfg.DrainIdle)
	for {
		n, err := s.pendingOnNode(ctx)
		if err != nil || n == 0 || !time.Now().Before(deadline) {
			return pendingCheck{asked: true, n: n, err: err}
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// deliverySpan is the time from the start of sending to the last first
// receipt (or to c1 if nothing arrived), the denominator of delivery rates.
func (s *session) deliverySpan(c0, c1 cpu) float64 {
	if last := s.acct.lastReceipt(); last.After(c0.at) {
		return last.Sub(c0.at).Seconds()
	}
	return c1.at.Sub(c0.at).Seconds()
}

// setupLogin logs every device in as fast as allowed and fails unless all
// are online.
func (s *session) setupLogin(ctx context.Context) error {
	start := time.Now()
	if err := s.login(ctx, 0, s.cfg.Devices, s.cfg.LoginRate); err != nil {
		return err
	}
	if err := s.nodeAlive(); err != nil {
		return err
	}
	if err := s.allOnline(s.cfg.Devices, "setup"); err != nil {
		return err
	}
	s.res.note("setup: %d devices logged in in %.1fs", s.cfg.Devices, time.Since(start).Seconds())
	time.Sleep(300 * time.Millisecond)
	return nil
}

// allOnline fails unless exactly want devices are logged in now (a
// figure per device or of the time until all were in would otherwise be
// of fewer devices than it says), naming why the others are not.
func (s *session) allOnline(want int, what string) error {
	st := s.devStats()
	if st.Online == int64(want) {
		return nil
	}
	_, fail, codes, _, _ := s.acct.logins()
	return fmt.Errorf("bench: %s: %d of %d devices online (%d logins failed since the last count %v; last error: %s)",
		what, st.Online, want, fail, codes, st.LastError)
}

// TrafficConfig tunes the c2c and upstream scenarios.
type TrafficConfig struct {
	// Rate of messages per second over all devices (default 1000).
	Rate float64
	// Duration of sending (default 10 s) and Count, the most messages
	// (0: no limit).
	Duration time.Duration
	Count    int64
	// Subscribers (upstream): Upstream streams of the app-server
	// (default 1), each holding at most MaxInFlight unacknowledged.
	Subscribers int
	MaxInFlight uint32
}

func (tc *TrafficConfig) setDefaults() {
	if tc.Rate <= 0 {
		tc.Rate = 1000
	}
	if tc.Duration <= 0 {
		tc.Duration = 10 * time.Second
	}
	if tc.Subscribers <= 0 {
		tc.Subscribers = 1
	}
}

// traffic makes all devices send kind at tc's rate and returns the count
// sent and the time it took.
func (s *session) traffic(ctx context.Context, kind farm.Kind, tc TrafficConfig) (int64, float64, error) {
	var sent atomic.Int64
	start := time.Now()
	err := s.parallel(0, s.cfg.Devices, func(w *ipc.Worker, _, _ int, share float64) error {
		n, err := w.Traffic(ctx, kind, tc.Rate*share, tc.Duration, int64(float64(tc.Count)*share+0.5))
		sent.Add(n)
		return err
	})
	return sent.Load(), time.Since(start).Seconds(), err
}

// C2C logs in Devices devices as pairs (2k, 2k+1) that send each other
// C2C messages, and accounts for every message.
func C2C(ctx context.Context, cfg Config, tc TrafficConfig) (*Result, error) {
	tc.setDefaults()
	if cfg.Devices%2 != 0 {
		return nil, errors.New("bench: c2c needs an even number of devices (pairs)")
	}
	s, err := open(ctx, cfg, "c2c", map[string]any{"rate": tc.Rate, "duration_s": tc.Duration.Seconds(), "count": tc.Count})
	if err != nil {
		return nil, err
	}
	defer s.close()
	if err := s.setupLogin(ctx); err != nil {
		return nil, err
	}
	base := s.devStats()
	stop := make(chan struct{})
	var last struct{ sent, ack, recv int64 }
	wg := s.progress(stop, "c2c", func(dt float64) string {
		st := s.devStats()
		sent, ack, recv := st.SentC2C-base.SentC2C, st.AckC2C-base.AckC2C, st.RecvC2C-base.RecvC2C
		line := fmt.Sprintf("sent %7.0f/s  acked %7.0f/s  delivered %7.0f/s", float64(sent-last.sent)/dt,
			float64(ack-last.ack)/dt, float64(recv-last.recv)/dt)
		last.sent, last.ack, last.recv = sent, ack, recv
		return line
	})
	c0 := s.measuring(ctx)
	_, sendSecs, terr := s.traffic(ctx, farm.SentC2C, tc)
	s.waitDrain(ctx, s.acct.c2cPending, func() int64 { st := s.devStats(); return st.AckC2C + st.RecvC2C })
	time.Sleep(200 * time.Millisecond)
	c1 := s.readCPU(ctx)
	close(stop)
	wg.Wait()
	if terr != nil {
		return nil, terr
	}
	if err := s.nodeAlive(); err != nil {
		return nil, err
	}
	t := s.acct.c2cTotals()
	dev := s.devStats()
	s.res.Devices = dev
	span := s.deliverySpan(c0, c1)
	r := s.res
	r.fig("pairs", float64(s.cfg.Devices/2), "")
	r.fig("sent", float64(t.Sent), "")
	r.fig("acked OK (stored)", float64(t.AckOK), "")
	r.fig("refused", float64(t.Refused), "")
	r.fig("no C2C_ACK", float64(t.NoAck), "")
	r.fig("delivered", float64(t.Delivered), "")
	r.fig("lost", float64(t.Lost), "")
	r.fig("mismatched (receiver or msg id)", float64(t.Mismatched), "")
	r.fig("duplicates (redeliveries)", float64(t.Dups), "")
	r.fig("push acks confirmed (C2C_PUSH_ACK_ACK)", float64(dev.AckAckC2C-base.AckAckC2C), "")
	r.fig("send time", sendSecs, "s")
	r.fig("sent/s", float64(t.Sent)/sendSecs, "/s")
	r.fig("delivered/s", float64(t.Delivered)/span, "/s")
	s.cpuFigures(c0, c1, t.Delivered, "delivered message")
	r.lat("C2C → C2C_ACK (sender)", t.AckLat)
	r.lat("C2C → C2C_PUSH (receiver)", t.DeliverLat)
	r.Lost, r.LostSample = t.Lost, t.LostSample
	r.Failures = t.failures("C2C")
	for k, v := range t.RefusedBy {
		r.note("%d C2C refused: %s", v, k)
	}
	r.note("latency counts from each message's scheduled time (no coordinated omission)")
	if got := float64(t.Sent) / sendSecs; got < 0.95*tc.Rate && tc.Count == 0 {
		r.note("the devices sent only %.0f of %.0f messages/s", got, tc.Rate)
	}
	return r, nil
}

// Upstream subscribes the bench's app-server to the Upstream API, logs
// in Devices devices that send C2S, and accounts for every message.
func Upstream(ctx context.Context, cfg Config, tc TrafficConfig) (*Result, error) {
	tc.setDefaults()
	s, err := open(ctx, cfg, "upstream", map[string]any{"rate": tc.Rate, "duration_s": tc.Duration.Seconds(), "count": tc.Count,
		"subscribers": tc.Subscribers, "max_in_flight": tc.MaxInFlight})
	if err != nil {
		return nil, err
	}
	defer s.close()
	subs, stopSubs, err := s.subscribe(ctx, tc.Subscribers, tc.MaxInFlight)
	if err != nil {
		return nil, err
	}
	defer stopSubs()
	if err := s.setupLogin(ctx); err != nil {
		return nil, err
	}
	base := s.devStats()
	stop := make(chan struct{})
	var last struct{ sent, ack, recv int64 }
	wg := s.progress(stop, "upstream", func(dt float64) string {
		st := s.devStats()
		_, _, recv, _ := s.acct.counts()
		sent, ack := st.SentC2S-base.SentC2S, st.AckC2S-base.AckC2S
		line := fmt.Sprintf("sent %7.0f/s  C2S_ACK %7.0f/s  at app-server %7.0f/s", float64(sent-last.sent)/dt,
			float64(ack-last.ack)/dt, float64(recv-last.recv)/dt)
		last.sent, last.ack, last.recv = sent, ack, recv
		return line
	})
	c0 := s.measuring(ctx)
	_, sendSecs, terr := s.traffic(ctx, farm.SentC2S, tc)
	s.waitDrain(ctx, s.acct.c2sPending, func() int64 { _, _, n, _ := s.acct.counts(); return n + s.devStats().AckC2S })
	c1 := s.readCPU(ctx)
	close(stop)
	wg.Wait()
	var subErr error
	for _, sub := range subs {
		select {
		case err := <-sub.err:
			subErr = errors.Join(subErr, err)
		default:
		}
	}
	if terr != nil {
		return nil, terr
	}
	if err := s.nodeAlive(); err != nil {
		return nil, err
	}
	t := s.acct.c2sTotals()
	dev := s.devStats()
	s.res.Devices = dev
	span := s.deliverySpan(c0, c1)
	r := s.res
	r.fig("sent", float64(t.Sent), "")
	r.fig("acked OK (C2S_ACK)", float64(t.AckOK), "")
	r.fig("refused", float64(t.Refused), "")
	r.fig("no C2S_ACK", float64(t.NoAck), "")
	r.fig("received by the app-server", float64(t.Delivered), "")
	r.fig("lost", float64(t.Lost), "")
	r.fig("mismatched (uid or msg id)", float64(t.Mismatched), "")
	r.fig("duplicates (redeliveries)", float64(t.Dups), "")
	r.fig("send time", sendSecs, "s")
	r.fig("sent/s", float64(t.Sent)/sendSecs, "/s")
	r.fig("received/s", float64(t.Delivered)/span, "/s")
	s.cpuFigures(c0, c1, t.Delivered, "delivered message")
	r.lat("C2S → C2S_ACK (device)", t.AckLat)
	r.lat("C2S → app-server receipt", t.DeliverLat)
	r.Lost, r.LostSample = t.Lost, t.LostSample
	r.Failures = t.failures("C2S")
	for k, v := range t.RefusedBy {
		r.note("%d C2S refused: %s", v, k)
	}
	r.note("latency counts from each message's scheduled time (no coordinated omission)")
	if subErr != nil {
		r.note("upstream stream: %v", subErr)
	}
	if t.Sent > 0 && t.Refused == t.Sent {
		return r, fmt.Errorf("bench: the node refused every C2S (%v): is the app-server's subscription for appcode %d msgtype %d reaching it?",
			t.RefusedBy, s.cfg.AppCode, s.cfg.MsgType)
	}
	return r, nil
}

// ReconnectConfig tunes the reconnect scenario.
type ReconnectConfig struct {
	// Count of devices dropped at once (default: all).
	Count int
}

// Reconnect logs in Devices devices, then drops Count of them at once
// (RST, as a lost network) and logs them in again as fast as they can.
func Reconnect(ctx context.Context, cfg Config, rc ReconnectConfig) (*Result, error) {
	s, err := open(ctx, cfg, "reconnect", map[string]any{"count": rc.Count, "inflight": cfg.LoginInflight})
	if err != nil {
		return nil, err
	}
	defer s.close()
	if rc.Count <= 0 || rc.Count > s.cfg.Devices {
		rc.Count = s.cfg.Devices
	}
	if err := s.setupLogin(ctx); err != nil {
		return nil, err
	}
	time.Sleep(time.Second)
	s.acct.resetLogins()
	stop := make(chan struct{})
	wg := s.progress(stop, "reconnect", func(float64) string {
		st := s.devStats()
		return fmt.Sprintf("online %7d  failed %d", st.Online, st.LoginFailed)
	})
	c0 := s.measuring(ctx)
	err = s.parallel(0, rc.Count, func(w *ipc.Worker, lo, hi int, share float64) error {
		return w.Reconnect(ctx, lo, hi, max(int(float64(s.cfg.LoginInflight)*share), 1))
	})
	back := time.Since(c0.at)
	c1 := s.readCPU(ctx)
	close(stop)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if err := s.nodeAlive(); err != nil {
		return nil, err
	}
	// "Time until all back" is that only if all came back.
	if err := s.allOnline(s.cfg.Devices, "reconnect"); err != nil {
		return nil, err
	}
	r := s.res
	r.Devices = s.devStats()
	r.fig("devices", float64(s.cfg.Devices), "")
	r.fig("dropped at once", float64(rc.Count), "")
	ok, _ := s.loginFigures("re")
	r.fig("time until all back", back.Seconds(), "s")
	r.fig("online at the end", float64(r.Devices.Online), "")
	s.cpuFigures(c0, c1, ok, "login")
	r.Failures = latencyFailures(s.acct.latenciesOutOfRange())
	return r, nil
}
