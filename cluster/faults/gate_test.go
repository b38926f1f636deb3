package faults

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// TestGateKilled: SIGKILL of a gate-only node while pushes, C2C and C2S
// flow. Its sessions end cluster-wide (a device that does not come back
// is offline within the TTL + 1 s); the others reconnect through gate
// discovery to the remaining gate and receive what waited for them:
// nothing accepted and stored is lost. C2S the dead node held for the
// app-servers is lost by contract (docs/protocol.md §11) and only
// reported.
func TestGateKilled(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", "gate"}})
	n1, n3 := c.Node("node1"), c.Node("node3")
	api := n1.API(t)

	cfg := load(c, 40)
	cfg.Gates = []string{n3.GateAddr} // every device starts on the gate that dies
	cfg.PushRate, cfg.C2CRate, cfg.C2SRate = 80, 20, 20
	w := startLoad(t, cfg)
	// One more device that will not come back.
	stray := n3.Device(t, 1, "stray")
	time.Sleep(2 * time.Second)

	at := w.Fault("SIGKILL gate node3")
	n3.Stop(syscall.SIGKILL)
	testkit.Eventually(t, 30*time.Second, func() bool { return w.OnlineGate(n1.GateAddr) == cfg.Devices },
		"every device back, on node1's gate")
	back := time.Since(at)
	testkit.Eventually(t, 5*time.Second, func() bool { on, _ := presence(t, api, "stray"); return !on },
		"the session of a device that did not come back ended")
	offline := time.Since(at)
	stray.Close()
	time.Sleep(2 * time.Second)

	l := finishCrashed(t, w)
	if !l.CleanButC2SOf(n3.GateAddr) { // only what node3 held may be lost
		t.Fatal("the ledger is not clean")
	}
	if l.Pushes.Accepted == 0 || l.C2C.Accepted == 0 {
		t.Fatal("no traffic")
	}
	f := l.Faults[0]
	t.Logf("%d devices back on the other gate %v after the kill (ledger: %v); the stray session offline after %v; pushes interrupted %v",
		cfg.Devices, back.Round(time.Millisecond), f.DevicesBack.Round(time.Millisecond), offline.Round(time.Millisecond),
		f.Interruption.Round(time.Millisecond))
	// Measured once every device is back (up to a few seconds on a loaded
	// machine); what it rules out is the session waiting for Consul's
	// deregistration (a minute) or for ever.
	if offline > 5*time.Second { // TTL 1 s, the devices' return, the polling
		t.Errorf("a session on the dead gate lasted %v", offline)
	}
}

// TestGateAndActorNodeKilled: SIGKILL of a node that holds both the
// devices' connections and some of their identities' actors. The devices
// reconnect to the other gate at once; those whose identities lived on
// the dead node cannot log in until the cluster takes it for gone (the
// TTL), and are told so at once (LOGIN_ACK STORE_UNAVAILABLE: retry)
// rather than left waiting for the login timeout.
func TestGateAndActorNodeKilled(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", "gate,actors"}, Store: "postgres"})
	n1, n3 := c.Node("node1"), c.Node("node3")
	cfg := load(c, 40)
	cfg.Gates = []string{n3.GateAddr}
	cfg.PushRate, cfg.C2CRate = 80, 20
	w := startLoad(t, cfg)
	time.Sleep(2 * time.Second)

	w.Fault("SIGKILL gate and actor node3")
	n3.Stop(syscall.SIGKILL)
	testkit.Eventually(t, 30*time.Second, func() bool { return w.OnlineGate(n1.GateAddr) == cfg.Devices },
		"every device back, on node1's gate")
	time.Sleep(2 * time.Second)

	l := finishCrashed(t, w)
	if !l.Clean(true) {
		t.Fatal("the ledger is not clean")
	}
	f := l.Faults[0]
	t.Logf("devices back %v after the kill (TTL 1 s); pushes interrupted %v; %s", f.DevicesBack.Round(time.Millisecond),
		f.Interruption.Round(time.Millisecond), f.Worst)
	if f.DevicesBack > 6*time.Second {
		t.Errorf("the last device came back only %v after the kill", f.DevicesBack)
	}
}

// TestStoppedGateRefusesPushes: a gate-only node stops (SIGSTOP) while
// pushes to its devices come through another node's API, their actors on
// a third. The actors' node finds the way to that gate behind (its probe
// goes unanswered) and refuses further pushes to its devices at once with
// RESOURCE_EXHAUSTED ("node overloaded: deliveries to the gate holding ..."), instead of
// queueing them behind the stopped node for as long as it is stopped;
// pushes to a device on the other gate are served all along. Once the
// gate is back its devices' pushes are served again, and every push
// accepted for them meanwhile arrives, in order.
func TestStoppedGateRefusesPushes(t *testing.T) {
	// A TTL of 3 s, so that the gate can stay stopped long enough for
	// bounds a loaded machine keeps, and still be a member.
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate", "actors", "gate,api"}, Args: []string{"--cluster.ttl", "3s"}})
	dumpOnFailure(t, c, "level=WARN", "level=ERROR")
	n1, n2, n3 := c.Node("node1"), c.Node("node2"), c.Node("node3")
	api := n3.API(t)
	ctx := testkit.Ctx(t, testkit.App1Key)
	slow, fine := n1.Device(t, 1, "on-stopped-gate"), n3.Device(t, 1, "on-other-gate")

	next := 0 // the payload of the next push to slow: its number
	var accepted []int
	// pushSlow pushes the next payload to slow and reports whether it was
	// refused because its gate is behind (any other failure fails).
	pushSlow := func() (refused bool, took time.Duration) {
		t.Helper()
		start := time.Now()
		_, err := api.Push(ctx, &apipb.PushRequest{AppCode: 1, Uid: "on-stopped-gate", Payload: []byte(strconv.Itoa(next)),
			Delivery: apipb.Delivery_DELIVERY_FIRE_AND_FORGET})
		took = time.Since(start)
		next++
		if err == nil {
			accepted = append(accepted, next-1)
			return false, took
		}
		if status.Code(err) != codes.ResourceExhausted || !strings.HasPrefix(status.Convert(err).Message(), "node overloaded: deliveries to the gate holding") {
			t.Fatalf("push %d to a device on the stopped gate: %v", next-1, err)
		}
		return true, took
	}
	pushFine := func(payload string) {
		t.Helper()
		if _, err := api.Push(ctx, &apipb.PushRequest{AppCode: 1, Uid: "on-other-gate", Payload: []byte(payload),
			Delivery: apipb.Delivery_DELIVERY_FIRE_AND_FORGET}); err != nil {
			t.Fatalf("push to the device on the working gate: %v", err)
		}
		if f := fine.Expect(messages.CmdS2C); string(f.Msg.(*devicepb.S2C).Payload) != payload {
			t.Fatalf("the device on the working gate got %q, want %q", f.Msg.(*devicepb.S2C).Payload, payload)
		}
	}
	for range 20 { // both ways in use, and probed
		if refused, _ := pushSlow(); refused {
			t.Fatal("a push refused while every gate keeps up")
		}
		pushFine("before")
		time.Sleep(10 * time.Millisecond)
	}

	// Stopped for less than this cluster's membership TTL (3 s): node1
	// stays a member, and its sessions live.
	const stop = 1500 * time.Millisecond
	before, _ := n2.Metric("courier_cluster_pushes_refused_gate_backlog_total")
	n1.Pause()
	stopped := time.Now()
	var firstRefusal time.Duration
	refusals, pushedWhileStopped := 0, 0
	for time.Since(stopped) < stop {
		refused, took := pushSlow()
		pushedWhileStopped++
		if refused {
			if refusals == 0 {
				firstRefusal = time.Since(stopped)
			}
			refusals++
			if took > time.Second {
				t.Errorf("a refusal took %v: not fast", took)
			}
		}
		pushFine("while stopped")
		time.Sleep(5 * time.Millisecond)
	}
	n1.Resume()
	resumed := time.Now()
	if refusals == 0 {
		t.Fatalf("none of %d pushes to the stopped gate's device was refused", pushedWhileStopped)
	}
	acceptedWhileStopped := len(accepted) - 20
	// Served again once the gate answers.
	testkit.Eventually(t, 10*time.Second, func() bool {
		refused, _ := pushSlow()
		return !refused
	}, "pushes to the gate's devices still refused after it came back")
	back := time.Since(resumed)
	for i, want := range accepted {
		f := slow.Expect(messages.CmdS2C)
		if got := string(f.Msg.(*devicepb.S2C).Payload); got != strconv.Itoa(want) {
			t.Fatalf("delivery %d to the device on the stopped gate: payload %s, want %d (accepted in this order: %v)", i, got, want, accepted)
		}
	}
	after, _ := n2.Metric("courier_cluster_pushes_refused_gate_backlog_total")
	t.Logf("gate stopped %v: first refusal after %v; %d of %d pushes to its device refused, %d accepted (and delivered once it was back); served again %v after it came back",
		stop, firstRefusal.Round(time.Millisecond), refusals, pushedWhileStopped, acceptedWhileStopped, back.Round(time.Millisecond))
	if after-before < float64(refusals) {
		t.Errorf("courier_cluster_pushes_refused_gate_backlog_total on the actors' node rose by %v, want %d", after-before, refusals)
	}
	// Refusals begin once 8 pushes have waited on an unanswered probe
	// (api.max-gate-backlog's rule): at this loop's pace, one push and
	// one to the other gate every 5 ms plus their calls, that is 100-200
	// ms, more on a loaded machine (a CI run saw 202 ms). Within three
	// quarters of the stop, most of its pushes are refused.
	if firstRefusal > 3*stop/4 {
		t.Errorf("the first refusal came %v after the gate stopped", firstRefusal)
	}
}
