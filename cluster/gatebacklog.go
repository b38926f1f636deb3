package cluster

import (
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

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
// alone) plus that backlog is the delay of that way. While it, or the age
// of a probe not answered yet, is over the bound, the actors refuse pushes
// to that gate's connections with RESOURCE_EXHAUSTED before they accept
// anything (GateBehind): only that gate's devices are refused, and a slow
// gate does not stop pushes to the others. A way nothing is sent on is not
// probed, so an idle cluster sends no probes.

// GateProbeTick is how often a node probes the gates it has been writing
// to: a quarter of bound, from 1 to 50 ms. A measurement counts for ten
// ticks.
func GateProbeTick(bound time.Duration) time.Duration {
	return min(max(bound/4, time.Millisecond), 50*time.Millisecond)
}

// probeTimeout is how long a probe may go unanswered before another is
// sent (its answer still counts if it comes): a probe lost with a node
// that restarted at the same address must not refuse the new one's
// devices for good.
const probeTimeout = time.Second

type gateGuard struct {
	max, expiry time.Duration
	// localCovered: this node's API holds and refuses calls while its own
	// gate is behind, so its actors need not check that gate again for
	// pushes that came through it.
	localCovered bool
}

// gatePath is what this node knows of the way to one node's gate.
type gatePath struct {
	pid     *actor.PID   // that node's gate sink (nil: this node's own gate)
	used    atomic.Bool  // a ToConn went that way since the last probe
	probeAt atomic.Int64 // when the probe not answered yet was sent (System.nanos; 0: none)
	delay   atomic.Int64 // the last measurement: round trip plus the gate's backlog (ns)
	at      atomic.Int64 // when it was taken (System.nanos)
	idle    int          // ticks in a row nothing went that way (probeGates only)
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
	tick := GateProbeTick(bound)
	s.guard.Store(&gateGuard{max: bound, expiry: 10 * tick, localCovered: localCovered})
	go s.probeGates(tick)
}

// probeGates probes, every tick, each gate node this node has written to
// since the last probe and is not waiting for an answer from, if it
// answers probes (membership.Member.GateProbes), and samples its own
// gate's backlog.
func (s *System) probeGates(tick time.Duration) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		now := s.nanos()
		s.paths.Range(func(k, v any) bool {
			p := v.(*gatePath)
			if p.used.Load() || p.pid == nil {
				p.idle = 0
			} else if p.idle++; p.idle > pathIdleTicks {
				s.paths.Delete(k)
				return true
			}
			if p.pid == nil {
				if p.used.Swap(false) || p.delay.Load() != 0 {
					p.delay.Store(int64(s.localBacklog()))
					p.at.Store(now)
				}
				return true
			}
			if since := p.probeAt.Load(); since != 0 && now-since < int64(probeTimeout) {
				return true
			}
			if probes := s.probes.Load(); probes == nil || !(*probes)[k.(string)] {
				// Not (or no longer) a live gate node that answers probes
				// (an earlier version): its way goes unmeasured.
				p.used.Store(false)
				p.probeAt.Store(0)
				return true
			}
			if !p.used.Swap(false) {
				p.probeAt.Store(0)
				return true
			}
			p.probeAt.Store(now)
			s.actors.Root.Send(p.pid, &actorpb.GateProbe{SentAtNs: now, ReplyAddress: s.address})
			return true
		})
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
	p.delay.Store(now - m.SentAtNs + m.BacklogUs*int64(time.Microsecond))
	p.at.Store(now)
	p.probeAt.CompareAndSwap(m.SentAtNs, 0)
}

// GateBehind returns how far behind the gate holding conn is, if that is
// over the bound, else 0 (actors.Gates): a push from requester (the
// address of the node whose API took it) to conn is then refused. The
// delay is the last measurement of the way, if recent, or the age of the
// probe not answered yet, whichever is more. A push that came through
// this node's API to this node's gate is not checked again: the API held
// it while the gate was behind.
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
	if now-p.at.Load() <= int64(g.expiry) {
		d = p.delay.Load()
	}
	if since := p.probeAt.Load(); since != 0 {
		d = max(d, now-since)
	}
	if d <= int64(g.max) {
		return 0
	}
	// Keep probing while refusing, though nothing goes that way: the
	// refusals end with the first answer that finds the gate caught up,
	// not when the measurement expires (a gate idle meanwhile is capacity
	// lost).
	if !p.used.Load() {
		p.used.Store(true)
	}
	s.metrics.gateBehind.Inc()
	return time.Duration(d)
}
