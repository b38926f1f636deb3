package cluster

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/testkit"
)

// TestGateBehind: what an identity's actor is told of the gate holding a
// device's connection, from the probes' answers (the probing itself, over
// real remoting, is TestStoppedGateRefusesPushes in cluster/faults).
func TestGateBehind(t *testing.T) {
	s := &System{address: "self:1", started: time.Now().Add(-time.Minute), metrics: newMetrics(nil)}
	far := &actorpb.ConnRef{GateAddress: "gate:1", GateId: "g1", ConnId: 1}
	local := &actorpb.ConnRef{GateAddress: "self:1", GateId: "g0", ConnId: 2}
	ms := int64(time.Millisecond)
	const L = 20 * time.Millisecond // the bound, and the windows' length
	// window gives p a whole window, ended ago (and a little) before now,
	// whose delays were d (and 5 ms more) for work pushes in all.
	window := func(p *gatePath, d time.Duration, work int, ago time.Duration) {
		end := time.Now().Add(-ago)
		p.win = gate.DelayWindow{Length: L}
		p.win.ObserveN(d+5*time.Millisecond, work/2, end.Add(-5*L/2))
		p.win.ObserveN(d, work-work/2, end.Add(-7*L/4))
		p.win.ObserveN(time.Millisecond, 1, end.Add(-7*L/5)) // the next window begins
		p.lateUntil.Store(s.nanos() + int64(time.Hour))      // as observe does for a late delay
	}

	p := s.path("gate:1")
	window(p, 40*time.Millisecond, 20, 0)
	if d := s.GateBehind(far, "api:1"); d != 0 {
		t.Fatalf("no guard set: %v", d)
	}
	s.guard.Store(&gateGuard{max: 20 * time.Millisecond, localCovered: true})

	// A window of 20 pushes that all waited 40 ms or more.
	if d := s.GateBehind(far, "api:1"); d != 40*time.Millisecond {
		t.Fatalf("remote way 40 ms late: GateBehind %v", d)
	}
	if got := testutil.ToFloat64(s.metrics.gateBehind); got != 1 {
		t.Fatalf("refusals counted: %v", got)
	}
	// A refused push is work on that way: it stays probed though nothing
	// is sent on it.
	if p.work.Load() != 1 {
		t.Fatalf("work after a refusal: %d", p.work.Load())
	}
	// Counted up to what a window needs, not per delivery beyond it.
	for range 3 * probeMinWork {
		s.addWork(p)
	}
	if p.work.Load() != probeMinWork {
		t.Fatalf("work after many deliveries: %d, want %d", p.work.Load(), probeMinWork)
	}
	p.work.Store(1) // back to the one refusal
	// One slow probe, standing for little work, is not a queue.
	window(p, 40*time.Millisecond, probeMinWork-1, 0)
	if d := s.GateBehind(far, "api:1"); d != 0 {
		t.Fatalf("a slow probe for %d pushes: GateBehind %v", probeMinWork-1, d)
	}
	// Caught up: the smallest delay of the window is what counts, and
	// one probe that found the way fast ends the refusals.
	now := time.Now()
	p.win = gate.DelayWindow{Length: L}
	p.win.ObserveN(40*time.Millisecond, 10, now.Add(-5*L/2))
	p.win.ObserveN(2*time.Millisecond, 10, now.Add(-7*L/4))
	p.win.ObserveN(40*time.Millisecond, 1, now.Add(-7*L/5))
	p.lateUntil.Store(s.nanos() + int64(time.Hour))
	if d := s.GateBehind(far, "api:1"); d != 0 {
		t.Fatalf("a window with a 2 ms probe: GateBehind %v", d)
	}
	// A way whose delays were never over the bound is not looked at.
	window(p, 40*time.Millisecond, 20, 0)
	p.lateUntil.Store(0)
	if d := s.GateBehind(far, "api:1"); d != 0 {
		t.Fatalf("a way never seen late: GateBehind %v", d)
	}
	s.observe(p, 30*time.Millisecond, 1)
	if p.lateUntil.Load() <= s.nanos() {
		t.Fatal("a delay over the bound did not make the way worth looking at")
	}
	// A window older than two windows no longer counts.
	window(p, 40*time.Millisecond, 20, 3*L)
	if d := s.GateBehind(far, "api:1"); d != 0 {
		t.Fatalf("stale window: GateBehind %v", d)
	}
	// A probe unanswered for longer than the window counts as that late;
	// a shorter wait does not (a descheduled node, a collection).
	p.win = gate.DelayWindow{Length: L}
	p.probeAt.Store(s.nanos() - 10*ms)
	if d := s.GateBehind(far, "api:1"); d != 0 {
		t.Fatalf("probe out 10 ms: GateBehind %v", d)
	}
	p.probeAt.Store(s.nanos() - 150*ms)
	p.probeN.Store(1)
	if d := s.GateBehind(far, "api:1"); d != 0 {
		t.Fatalf("probe out 150 ms for one push: GateBehind %v", d)
	}
	p.work.Store(probeMinWork - 1)
	if d := s.GateBehind(far, "api:1"); d < 150*time.Millisecond {
		t.Fatalf("probe out 150 ms with %d pushes waiting: GateBehind %v", probeMinWork, d)
	}
	// A broken connection to the node loses the probe: it no longer
	// counts (the next one goes on a new connection).
	s.deadLetter(&remote.EndpointTerminatedEvent{Address: "gate:1"})
	if p.probeAt.Load() != 0 {
		t.Fatal("a probe lost with its connection still counts")
	}
	// The answer to the probe out stands for the work it was sent for; a
	// late answer to an earlier one for one push, and leaves the newer
	// probe out. (The window is closed by hand, ahead of the clock, to
	// see what it counted: its delay stands only with probeMinWork.)
	p.win = gate.DelayWindow{Length: L}
	sent := s.nanos() - 10*ms
	p.probeAt.Store(sent)
	p.probeN.Store(12)
	s.probeAnswered(&actorpb.GateProbeAnswer{SentAtNs: sent - int64(time.Second), Address: "gate:1"})
	at := time.Now().Add(L)
	p.win.ObserveN(time.Second, 1, at)
	if p.probeAt.Load() != sent || p.win.Standing(at) != 0 {
		t.Fatalf("an earlier probe's answer: probe out %v, standing %v (want none: one push)", p.probeAt.Load() != 0, p.win.Standing(at))
	}
	s.probeAnswered(&actorpb.GateProbeAnswer{SentAtNs: sent, Address: "gate:1", BacklogUs: 5000})
	at = at.Add(L + time.Millisecond)
	p.win.ObserveN(time.Second, 1, at)
	if d := p.win.Standing(at); p.probeAt.Load() != 0 || d == 0 || d > 16*time.Millisecond {
		t.Fatalf("the probe's answer: probe out %v, standing %v (want its 15 ms, for 13 pushes)", p.probeAt.Load() != 0, d)
	}
	// Answers not of this run, or from a node never written to, are
	// ignored.
	s.probeAnswered(&actorpb.GateProbeAnswer{SentAtNs: s.nanos() + int64(time.Hour), Address: "gate:1", BacklogUs: 1e6})
	s.probeAnswered(&actorpb.GateProbeAnswer{SentAtNs: 1, Address: "stranger:1", BacklogUs: 1e6})
	if _, ok := s.paths.Load("stranger:1"); ok {
		t.Fatal("an answer from a node never probed made a way")
	}
	if d := s.GateBehind(&actorpb.ConnRef{GateAddress: "stranger:1"}, "api:1"); d != 0 {
		t.Fatalf("gate never written to: GateBehind %v", d)
	}

	// The local gate: pushes through this node's API are its to hold;
	// pushes through another node's API are refused here.
	lp := s.path("self:1")
	if lp.pid != nil {
		t.Fatal("the way to the local gate goes through remoting")
	}
	window(lp, 50*time.Millisecond, 20, 0)
	if d := s.GateBehind(local, "self:1"); d != 0 {
		t.Fatalf("local gate, pushed through the local API: GateBehind %v", d)
	}
	if d := s.GateBehind(local, "api:1"); d != 50*time.Millisecond {
		t.Fatalf("local gate, pushed through another node's API: GateBehind %v", d)
	}
	s.guard.Store(&gateGuard{max: 20 * time.Millisecond})
	if d := s.GateBehind(local, "self:1"); d != 50*time.Millisecond {
		t.Fatalf("local gate, no API guard here: GateBehind %v", d)
	}
}

func TestGateProbeTick(t *testing.T) {
	for _, c := range []struct{ bound, tick time.Duration }{
		{20 * time.Millisecond, 5 * time.Millisecond},
		{time.Millisecond, time.Millisecond},
		{time.Second, 50 * time.Millisecond},
	} {
		if got := GateProbeTick(c.bound); got != c.tick {
			t.Errorf("GateProbeTick(%v) = %v, want %v", c.bound, got, c.tick)
		}
	}
}

// TestProbesOnlyToNodesThatAnswer: a way to a gate node of an earlier
// version (no GateProbes in its registration) is never probed: its
// remoting would not know the message and would drop the connection
// deliveries go on. A way to one that answers is probed once used.
func TestProbesOnlyToNodesThatAnswer(t *testing.T) {
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}))
	defer sys.Shutdown()
	s := &System{address: "self:1", started: time.Now(), metrics: newMetrics(nil), quit: make(chan struct{}), actors: sys}
	s.guard.Store(&gateGuard{max: 20 * time.Millisecond})
	defer close(s.quit)
	s.probes.Store(&map[string]bool{"new:1": true})
	old, cur := s.path("old:1"), s.path("new:1")
	old.work.Store(3)
	cur.work.Store(3)
	go s.probeGates(time.Millisecond)
	testkit.Eventually(t, 5*time.Second, func() bool { return cur.probeAt.Load() != 0 }, "the way to a node that answers was not probed")
	time.Sleep(20 * time.Millisecond)
	if old.probeAt.Load() != 0 || old.work.Load() != 0 {
		t.Fatal("a node of an earlier version was probed")
	}
}

// TestProberSleepsWhenIdle: with nothing sent and no probe out, the
// prober stops waking every tick; the next delivery wakes it, and the way
// is probed again.
func TestProberSleepsWhenIdle(t *testing.T) {
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}))
	defer sys.Shutdown()
	s := &System{address: "self:1", started: time.Now(), metrics: newMetrics(nil), quit: make(chan struct{}),
		wake: make(chan struct{}, 1), actors: sys}
	defer close(s.quit)
	s.guard.Store(&gateGuard{max: 20 * time.Millisecond})
	s.probes.Store(&map[string]bool{"gate:1": true})
	conn := &actorpb.ConnRef{GateAddress: "gate:1", GateId: "g1", ConnId: 1}
	p := s.path("gate:1")
	answer := func() {
		t.Helper()
		testkit.Eventually(t, 5*time.Second, func() bool { return p.probeAt.Load() != 0 }, "the way was not probed")
		s.probeAnswered(&actorpb.GateProbeAnswer{SentAtNs: p.probeAt.Load(), Address: "gate:1"})
	}

	go s.probeGates(time.Millisecond)
	s.sendToConn(conn, &actorpb.ToConn{ConnId: 1})
	answer()
	time.Sleep(20 * time.Millisecond) // a tick finds nothing to do, and the prober sleeps
	before := s.probeTicks.Load()
	time.Sleep(50 * time.Millisecond)
	if n := s.probeTicks.Load() - before; n != 0 {
		t.Fatalf("the prober woke %d times in 50 ms with nothing sent", n)
	}
	s.sendToConn(conn, &actorpb.ToConn{ConnId: 1})
	answer()
	if s.probeTicks.Load() == before {
		t.Fatal("a delivery did not wake the prober")
	}
}
