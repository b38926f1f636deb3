package cluster

import (
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages/actorpb"
)

// How far behind a device's gate is, as the identities' actors that write
// to it see it. The API node that takes a push holds or refuses it while
// its own gate is behind (api.max-gate-backlog), but the device's
// connection may be on another node's gate (an API-only node has no gate
// at all), and frames to another node wait first in the remoting: in the
// sending node's queue to that node, on the wire and in the receiving
// node's sink, where no gate counts them. So a node that hosts identities
// probes each gate node it has been writing to, every GateProbeTick: a
// GateProbe sent behind its ToConn messages comes back when the sink got
// to it, with the gate's own backlog; the round trip (on this node's clock
// alone) plus that backlog is the delay of that way. What counts is the
// standing delay, as for the local gate (a gate.DelayWindow): the smallest
// over a window as long as the bound in which at least probeMinWork
// pushes went that way, so that a slow probe standing for a few pushes (a
// descheduled node, a garbage collection) refuses nothing; a probe
// unanswered for longer than the window, with probeMinWork pushes sent
// before or after it, counts as that late. While the delay is over the bound, the actors refuse
// pushes to that gate's connections with RESOURCE_EXHAUSTED before they
// accept anything (GateBehind): only that gate's devices are refused, and
// a slow gate does not stop pushes to the others. A way nothing is sent on
// is not probed, so an idle cluster sends no probes.

// GateProbeTick is how often a node probes the gates it has been writing
// to: a quarter of bound, from 1 to 50 ms.
func GateProbeTick(bound time.Duration) time.Duration {
	return min(max(bound/4, time.Millisecond), 50*time.Millisecond)
}

// probeTimeout is how long a probe may go unanswered before another is
// sent (its answer still counts if it comes): a probe lost with a node
// that restarted at the same address must not refuse the new one's
// devices for good.
const probeTimeout = time.Second

// probeMinWork is the pushes that must have gone a way (sent or refused)
// in a window for its smallest delay to count as a standing queue, as
// for the local gate. (Measured with a gate node held to 40% of a core,
// a window of the bound kept the delivery p99 where probes taken one by
// one did, 240–260 ms; one of 100 ms let it reach 560–700 ms.)
const probeMinWork = gate.DelayWindowMinWork

type gateGuard struct {
	// max is the bound, and the length of the windows of the ways'
	// delays (ns).
	max time.Duration
	// localCovered: this node's API holds and refuses calls while its own
	// gate is behind, so its actors need not check that gate again for
	// pushes that came through it.
	localCovered bool
}

// gatePath is what this node knows of the way to one node's gate.
type gatePath struct {
	pid *actor.PID // that node's gate sink (nil: this node's own gate)
	// work counts the pushes sent or refused that way since the last
	// probe, up to probeMinWork (more would tell nothing, and each
	// delivery would write the shared counter).
	work    atomic.Int64
	probeAt atomic.Int64     // when the probe not answered yet was sent (System.nanos; 0: none)
	probeN  atomic.Int64     // the work it stands for
	win     gate.DelayWindow // its delays: round trip plus the gate's backlog; Length the bound
	// lateUntil: until then (System.nanos) win may stand over the bound,
	// for a delay over it was seen; after it, GateBehind does not take
	// win's lock, once per push.
	lateUntil atomic.Int64
	idle      int // ticks in a row nothing went that way (probeGates only)
}

// addWork counts a push on the way, and wakes the prober for the first
// since the last probe.
func (s *System) addWork(p *gatePath) {
	if p.work.Load() >= probeMinWork {
		return
	}
	if p.work.Add(1) == 1 {
		s.wakeProber()
	}
}

// pathIdleTicks is how many ticks in a row a way may go unused before it
// is forgotten (at 5 ms, a minute): nodes come and go at new addresses.
const pathIdleTicks = 12000

// path returns the way to the gate of the node at address.
func (s *System) path(address string) *gatePath {
	if s.localPath != nil && address == s.address {
		return s.localPath
	}
	if p, ok := s.paths.Load(address); ok {
		return p.(*gatePath)
	}
	p := &gatePath{}
	if g := s.guard.Load(); g != nil {
		p.win.Length = g.max
	}
	if address != s.address {
		p.pid = actor.NewPID(address, gateSinkName)
	}
	v, _ := s.paths.LoadOrStore(address, p)
	return v.(*gatePath)
}

// nanos is a monotonic clock for the probes.
func (s *System) nanos() int64 { return int64(time.Since(s.started)) }

// SetGateGuard makes this node's actors refuse pushes to connections on
// gates more than bound behind (0: never), and starts probing the gates
// it writes to. localCovered says this node's API already holds calls
// while its own gate is behind. Call it once, before Join.
func (s *System) SetGateGuard(bound time.Duration, localCovered bool) {
	if bound <= 0 || s.newChild == nil {
		return
	}
	s.guard.Store(&gateGuard{max: bound, localCovered: localCovered})
	if s.localPath != nil {
		s.localPath.win.Length = bound // before anything uses it
	}
	go s.probeGates(GateProbeTick(bound))
}

// probeGates probes, every tick, each gate node this node has written to
// since the last probe and is not waiting for an answer from, if it
// answers probes (membership.Member.GateProbes), and samples its own
// gate's backlog.
func (s *System) probeGates(tick time.Duration) {
	if s.guard.Load() == nil {
		return
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		s.probeTicks.Add(1)
		now := s.nanos()
		busy := false
		s.paths.Range(func(k, v any) bool {
			p := v.(*gatePath)
			if p.work.Load() != 0 || p.pid == nil {
				p.idle = 0
			} else if p.idle++; p.idle > pathIdleTicks {
				s.paths.Delete(k)
				return true
			}
			if p.pid == nil {
				if n := p.work.Swap(0); n > 0 {
					busy = true
					s.observe(p, s.localBacklog(), n)
				}
				return true
			}
			if since := p.probeAt.Load(); since != 0 && now-since < int64(probeTimeout) {
				busy = true
				return true
			}
			if probes := s.probes.Load(); probes == nil || !(*probes)[k.(string)] {
				// Not (or no longer) a live gate node that answers probes
				// (an earlier version): its way goes unmeasured.
				p.work.Store(0)
				p.probeAt.Store(0)
				return true
			}
			n := p.work.Swap(0)
			if n == 0 {
				p.probeAt.Store(0)
				return true
			}
			busy = true
			p.probeN.Store(n)
			p.probeAt.Store(now)
			s.actors.Root.Send(p.pid, &actorpb.GateProbe{SentAtNs: now, ReplyAddress: s.address})
			return true
		})
		if busy {
			continue
		}
		// Nothing went anywhere since the last tick and no probe is out:
		// sleep until something is sent (wakeProber), instead of waking
		// every tick on an idle node. Ways are forgotten only while
		// awake, which is soon enough.
		t.Stop()
		select {
		case <-s.quit:
			return
		case <-s.wake:
		}
		t.Reset(tick)
	}
}

// wakeProber wakes the prober if it sleeps: the first push on a way since
// its last probe calls it.
func (s *System) wakeProber() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// observe records a delay of the way p that stands for n pushes. A
// window's smallest delay can be over the bound only if all of its delays
// were, and it counts for two windows after it ends: so a delay over the
// bound makes the way worth looking at for three windows.
func (s *System) observe(p *gatePath, d time.Duration, n int64) {
	p.win.ObserveN(d, int(n), time.Now())
	if g := s.guard.Load(); g != nil && d > g.max {
		p.lateUntil.Store(s.nanos() + 3*int64(g.max))
	}
}

func (s *System) localBacklog() time.Duration {
	if h := s.gate.Load(); h != nil {
		return h.g.Backlog()
	}
	return 0
}

// answerProbe answers a probe that reached this node's gate sink behind
// the ToConn messages sent before it.
func (s *System) answerProbe(m *actorpb.GateProbe) {
	s.actors.Root.Send(actor.NewPID(m.ReplyAddress, gateSinkName), &actorpb.GateProbeAnswer{
		SentAtNs: m.SentAtNs, Address: s.address, BacklogUs: s.localBacklog().Microseconds()})
}

// probeAnswered records the delay of the way to the answering node's gate.
func (s *System) probeAnswered(m *actorpb.GateProbeAnswer) {
	v, ok := s.paths.Load(m.Address)
	if !ok {
		return
	}
	p := v.(*gatePath)
	now := s.nanos()
	if m.SentAtNs <= 0 || m.SentAtNs > now {
		return // not one of this run's
	}
	n := int64(1) // an earlier probe's late answer
	if p.probeAt.Load() == m.SentAtNs {
		n = p.probeN.Load()
	}
	s.observe(p, time.Duration(now-m.SentAtNs)+time.Duration(m.BacklogUs)*time.Microsecond, n)
	p.probeAt.CompareAndSwap(m.SentAtNs, 0)
}

// GateBehind returns how far behind the gate holding conn is, if that is
// over the bound, else 0 (actors.Gates): a push from requester (the
// address of the node whose API took it) to conn is then refused. The
// delay is the way's standing delay, or the age of the probe not answered
// yet once that is longer than the window and probeMinWork pushes wait on
// it, whichever is more. A push that
// came through this node's API to this node's gate is not checked again:
// the API held it while the gate was behind.
func (s *System) GateBehind(conn *actorpb.ConnRef, requester string) time.Duration {
	g := s.guard.Load()
	if g == nil {
		return 0
	}
	address := conn.GetGateAddress()
	if g.localCovered && requester == s.address && address == s.address {
		return 0
	}
	v, ok := s.paths.Load(address)
	if !ok {
		return 0
	}
	p := v.(*gatePath)
	now := s.nanos()
	var d int64
	if now < p.lateUntil.Load() {
		d = int64(p.win.Standing(time.Now()))
	}
	if since := p.probeAt.Load(); since != 0 && now-since > int64(g.max) && p.probeN.Load()+p.work.Load() >= probeMinWork {
		d = max(d, now-since)
	}
	if d <= int64(g.max) {
		return 0
	}
	// A refused push is work on that way too: the probing goes on while
	// nothing is sent, and the refusals end with the first window that
	// finds the gate caught up.
	s.addWork(p)
	s.metrics.gateBehind.Inc()
	return time.Duration(d)
}
