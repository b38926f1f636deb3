package faults

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/courier-im/courier/cluster/discovery"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
	"github.com/courier-im/courier/testkit/workload"
)

// drainCase drains node3 (a gate) of a cluster whose 60 devices all start
// on it, while pushes, C2C and C2S flow, by drain (the API call of
// courierctl drain, with a window) or by SIGTERM (the node's
// drain-window). The gate leaves discovery at once, the devices move to
// node1's gate spread over the window (the peak reconnect rate node1 sees
// is logged and bounded), the node exits by itself, nothing is lost.
func drainCase(t *testing.T, window time.Duration, drain func(c *testkit.Cluster)) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", "gate"},
		Args: []string{"--drain-window", window.String(), "--shutdown-grace", (window + 5*time.Second).String()}})
	dumpOnFailure(t, c, "drain", "level=WARN", "level=ERROR")
	n1, n3 := c.Node("node1"), c.Node("node3")
	cfg := load(c, 60)
	cfg.Gates = []string{n3.GateAddr}
	cfg.NoShutdownDelay = true // the worst client: reconnects at once; the spreading is the server's
	cfg.PushRate, cfg.C2CRate, cfg.C2SRate = 60, 20, 20
	w := startLoad(t, cfg)
	time.Sleep(2 * time.Second)

	at := w.Fault("drain gate node3")
	drain(c)
	// Out of discovery at once (the others see the registration change
	// within a blocking query's round trip).
	testkit.Eventually(t, 2*time.Second, func() bool {
		gates, err := discovery.Fetch(context.Background(), "http://"+n1.HTTPAddr, 1)
		return err == nil && len(gates) == 1 && gates[0].Addr == n1.GateAddr
	}, "node3's gate left discovery")
	left := time.Since(at)
	// A load balancer's readiness check says the same from the start.
	if code, body := readyz(t, n3); code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Errorf("node3's /readyz while it drains: %d %q, want 503 draining", code, body)
	}
	testkit.Eventually(t, window+15*time.Second, func() bool { return w.OnlineGate(n1.GateAddr) == cfg.Devices },
		"every device moved to node1's gate")
	moved := time.Since(at)
	n3.WaitExit(window + 15*time.Second)
	time.Sleep(time.Second)

	l := finish(t, w)
	if !l.Clean(false) {
		t.Error("the ledger is not clean")
	}
	var ups []time.Time
	first, last := time.Time{}, time.Time{}
	for _, s := range w.Sessions() {
		if s.Gate == n1.GateAddr && s.Up.After(at) {
			ups = append(ups, s.Up)
			if first.IsZero() {
				first = s.Up
			}
			last = s.Up
		}
	}
	peak := workload.PeakRate(ups, time.Second)
	t.Logf("drain over %v: out of discovery after %v; %d devices moved in %v (first %v, last %v after the drain); peak %d reconnects/s on the other gate; pushes interrupted %v",
		window, left.Round(time.Millisecond), len(ups), moved.Round(time.Millisecond), first.Sub(at).Round(time.Millisecond),
		last.Sub(at).Round(time.Millisecond), peak, l.Faults[0].Interruption.Round(time.Millisecond))
	if len(ups) != cfg.Devices {
		t.Errorf("%d reconnects on node1, want %d", len(ups), cfg.Devices)
	}
	// Spread: the moves span most of the window, and no second holds much
	// more than its share (60 over 3 s: 20/s).
	if last.Sub(first) < window/2 || peak > 2*cfg.Devices*int(time.Second)/int(window)+5 {
		t.Errorf("reconnects not spread over the %v window: %v from first to last, peak %d/s", window, last.Sub(first), peak)
	}
}

// TestDrainThroughAPI: courierctl drain (the Drain call, operator key)
// through another node's API, with a 3 s window.
func TestDrainThroughAPI(t *testing.T) {
	drainCase(t, 3*time.Second, func(c *testkit.Cluster) {
		api := c.Node("node1").API(t)
		if _, err := api.Drain(testkit.Ctx(t, testkit.App1Key), &apipb.DrainRequest{Node: "node3"}); err == nil {
			t.Fatal("Drain with an app's key succeeded")
		}
		r, err := api.Drain(testkit.Ctx(t, testkit.OperatorKey), &apipb.DrainRequest{Node: "node3", WindowMs: 3000})
		if err != nil || len(r.Members) != 1 || r.Members[0].Name != "node3" || r.Members[0].Conns != 60 || r.WindowMs != 3000 {
			t.Fatalf("Drain: %v %v", r, err)
		}
		// Asked again while it drains, the node goes on with its first
		// window and says so (it answered the one asked for).
		r, err = api.Drain(testkit.Ctx(t, testkit.OperatorKey), &apipb.DrainRequest{Node: "node3", WindowMs: 9000})
		if err != nil || len(r.Members) != 1 || r.WindowMs != 3000 {
			t.Fatalf("Drain of a node already draining: %v %v, want the window in force (3000 ms)", r, err)
		}
	})
}

// TestDrainOnSIGTERM: SIGTERM drains the node over its drain-window.
func TestDrainOnSIGTERM(t *testing.T) {
	drainCase(t, 3*time.Second, func(c *testkit.Cluster) {
		c.Node("node3").Signal(syscall.SIGTERM)
	})
}

// readyz is n's /readyz answer.
func readyz(t *testing.T, n *testkit.Node) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + n.HTTPAddr + "/readyz")
	if err != nil {
		t.Fatalf("/readyz of %s: %v", n.Name(), err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestDrainOfTheLastActorNode: the only node that hosts identities is
// drained while another gate remains: it keeps its identities until it
// stops (nobody could take them over), so pushes to its devices go on
// through the drain window. Its identities used to be placed on nobody
// as soon as it published that it drained: every push and login of the
// cluster refused for the whole window.
func TestDrainOfTheLastActorNode(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api,actors", "gate"}})
	n1, n2 := c.Node("node1"), c.Node("node2")
	d := n2.Device(t, 1, "on-the-other-gate")
	for i := range 30 { // node1's own devices keep it up over the window
		n1.Device(t, 1, fmt.Sprint("on-node1-", i))
	}
	api := n1.API(t)
	ctx := testkit.Ctx(t, testkit.App1Key)
	if _, err := api.Push(ctx, &apipb.PushRequest{AppCode: 1, Uid: "on-the-other-gate", Payload: []byte("before")}); err != nil {
		t.Fatalf("push before the drain: %v", err)
	}
	ack := func(f testkit.Frame) {
		d.Send(messages.CmdS2CAck, d.NextSeq(), &devicepb.S2CAck{MsgId: f.Msg.(*devicepb.S2C).MsgId})
	}
	ack(d.Expect(messages.CmdS2C))
	if _, err := api.Drain(testkit.Ctx(t, testkit.OperatorKey), &apipb.DrainRequest{Node: "node1", WindowMs: 10_000}); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	// The drain did begin (a Drain that did nothing would pass the rest).
	testkit.Eventually(t, 5*time.Second, func() bool {
		code, body := readyz(t, n1)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "draining")
	}, "node1 does not say it drains")
	time.Sleep(time.Second) // the others have the view with node1 draining
	for i := range 3 {
		if _, err := api.Push(ctx, &apipb.PushRequest{AppCode: 1, Uid: "on-the-other-gate", Payload: []byte(fmt.Sprint("during ", i))}); err != nil {
			t.Fatalf("push %d while the last actor node drains: %v", i, err)
		}
		f := d.Expect(messages.CmdS2C)
		if string(f.Msg.(*devicepb.S2C).Payload) != fmt.Sprint("during ", i) {
			t.Fatalf("delivery %d: %v", i, f.Msg)
		}
		ack(f)
		time.Sleep(500 * time.Millisecond)
	}
}
