package cluster

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"github.com/prometheus/client_golang/prometheus/testutil"

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
	answer := func(address string, rtt, backlog time.Duration) {
		s.probeAnswered(&actorpb.GateProbeAnswer{SentAtNs: s.nanos() - int64(rtt), Address: address, BacklogUs: backlog.Microseconds()})
	}

	s.path("gate:1")
	answer("gate:1", 30*time.Millisecond, 10*time.Millisecond)
	if d := s.GateBehind(far, "api:1"); d != 0 {
		t.Fatalf("no guard set: %v", d)
	}
	s.guard.Store(&gateGuard{max: 20 * time.Millisecond, expiry: 50 * time.Millisecond, localCovered: true})

	// A way measured 40 ms late (30 of round trip, 10 in the gate).
	if d := s.GateBehind(far, "api:1"); d < 40*time.Millisecond || d > 45*time.Millisecond {
		t.Fatalf("remote gate 40 ms behind: GateBehind %v", d)
	}
	if got := testutil.ToFloat64(s.metrics.gateBehind); got != 1 {
		t.Fatalf("refusals counted: %v", got)
	}
	// While refusing, the way stays probed though nothing is sent on it.
	if !s.path("gate:1").used.Load() {
		t.Fatal("a refused way is not probed again")
	}
	// Caught up: the next answer ends the refusals.
	answer("gate:1", time.Millisecond, 2*time.Millisecond)
	if d := s.GateBehind(far, "api:1"); d != 0 {
		t.Fatalf("remote gate caught up: GateBehind %v", d)
	}
	// A measurement older than the expiry no longer counts.
	answer("gate:1", 100*time.Millisecond, 0)
	s.path("gate:1").at.Store(s.nanos() - int64(60*time.Millisecond))
	if d := s.GateBehind(far, "api:1"); d != 0 {
		t.Fatalf("stale measurement: GateBehind %v", d)
	}
	// A probe unanswered for longer than the bound is a gate that far
	// behind, whatever was measured before.
	answer("gate:1", time.Millisecond, 0)
	p := s.path("gate:1")
	p.probeAt.Store(s.nanos() - int64(10*time.Millisecond))
	if d := s.GateBehind(far, "api:1"); d != 0 {
		t.Fatalf("probe out 10 ms: GateBehind %v", d)
	}
	p.probeAt.Store(s.nanos() - int64(25*time.Millisecond))
	if d := s.GateBehind(far, "api:1"); d < 25*time.Millisecond {
		t.Fatalf("probe out 25 ms: GateBehind %v", d)
	}
	// A broken connection to the node loses the probe: it no longer
	// counts (the next one goes on a new connection).
	s.deadLetter(&remote.EndpointTerminatedEvent{Address: "gate:1"})
	if p.probeAt.Load() != 0 {
		t.Fatal("a probe lost with its connection still counts")
	}
	p.probeAt.Store(s.nanos() - int64(25*time.Millisecond))
	// Its answer, late, clears it; a late answer to an earlier probe
	// counts as a measurement but leaves the newer probe out.
	sent := p.probeAt.Load()
	s.probeAnswered(&actorpb.GateProbeAnswer{SentAtNs: sent - int64(time.Second), Address: "gate:1"})
	if p.probeAt.Load() != sent {
		t.Fatal("an earlier probe's answer cleared the newer probe")
	}
	s.probeAnswered(&actorpb.GateProbeAnswer{SentAtNs: sent, Address: "gate:1"})
	if p.probeAt.Load() != 0 {
		t.Fatal("the probe's answer did not clear it")
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
	lp.delay.Store(int64(50 * time.Millisecond))
	lp.at.Store(s.nanos())
	if d := s.GateBehind(local, "self:1"); d != 0 {
		t.Fatalf("local gate, pushed through the local API: GateBehind %v", d)
	}
	if d := s.GateBehind(local, "api:1"); d != 50*time.Millisecond {
		t.Fatalf("local gate, pushed through another node's API: GateBehind %v", d)
	}
	s.guard.Store(&gateGuard{max: 20 * time.Millisecond, expiry: 50 * time.Millisecond})
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
	defer close(s.quit)
	s.probes.Store(&map[string]bool{"new:1": true})
	old, cur := s.path("old:1"), s.path("new:1")
	old.used.Store(true)
	cur.used.Store(true)
	go s.probeGates(time.Millisecond)
	testkit.Eventually(t, 5*time.Second, func() bool { return cur.probeAt.Load() != 0 }, "the way to a node that answers was not probed")
	time.Sleep(20 * time.Millisecond)
	if old.probeAt.Load() != 0 || old.used.Load() {
		t.Fatal("a node of an earlier version was probed")
	}
}
