package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/cmd/courier-bench/internal/farm"
	"github.com/courier-im/courier/cmd/courier-bench/internal/ipc"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// The scenarios re-execute this test binary as their workers.
func TestMain(m *testing.M) {
	if os.Getenv(ipc.EnvWorker) != "" {
		os.Exit(ipc.WorkerMain())
	}
	os.Exit(m.Run())
}

func testConfig(n *testkit.Node, devices int) Config {
	return Config{
		Gate: n.GateAddr, API: n.APIAddr, Metrics: n.HTTPAddr,
		Secret: testkit.App1Secret, APIKey: testkit.App1Key,
		Devices: devices, DrainIdle: time.Second, Drain: 20 * time.Second,
	}
}

func fig(t *testing.T, r *Result, name string) int64 {
	t.Helper()
	v, ok := r.Figure(name)
	if !ok {
		t.Fatalf("no figure %q in %+v", name, r.Figures)
	}
	return int64(v)
}

// lostIndex reads the index out of a lost-sample line "push 42 to ...".
func lostIndex(t *testing.T, s string) int64 {
	var i int64
	if _, err := fmt.Sscanf(s, "push %d to", &i); err != nil {
		t.Fatalf("lost sample %q: %v", s, err)
	}
	return i
}

// TestAgainstNode runs every scenario small against one real node
// process, and checks the bench's own accounting where the answer is
// known in advance.
func TestAgainstNode(t *testing.T) {
	// The accounting is checked exactly, so the node must not refuse
	// pushes as overloaded (its admission has tests of its own): under the
	// race detector on a busy machine the gate can fall behind.
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--api.max-gate-backlog=0", "--api.max-push-delay=0"}})
	// The node's actors.Deps.Producer sets shared fields on its first
	// call, which races when two of its shards make that call at once:
	// one identity first.
	n.Device(t, 1, "warm-up")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Devices discard (ack without recording) every push whose index is a
	// multiple of 7, and 3 of 43 targets never log in: exactly those
	// pushes must be reported lost, and nothing else.
	t.Run("stored loss is exact", func(t *testing.T) {
		const devices, ghosts, count, every = 40, 3, 700, 7
		cfg := testConfig(n, devices)
		cfg.DropEvery = every
		r, err := Push(ctx, cfg, PushConfig{Count: count, Duration: time.Minute, Ghosts: ghosts, Concurrency: 8, VerifyPending: true})
		if err != nil {
			t.Fatal(err)
		}
		lost := func(i int64) bool { return i%every == 0 || i%(devices+ghosts) >= devices }
		var want, discarded int64
		for i := range int64(count) {
			if lost(i) {
				want++
			}
			if i%every == 0 && i%(devices+ghosts) < devices {
				discarded++
			}
		}
		if r.Lost != want || fig(t, r, "lost") != want {
			t.Fatalf("lost %d, want %d\n%+v", r.Lost, want, r.Figures)
		}
		if got := fig(t, r, "delivered"); got != count-want {
			t.Fatalf("delivered %d, want %d", got, count-want)
		}
		if fig(t, r, "accepted") != count || fig(t, r, "mismatched (seq, msg id or device)") != 0 || fig(t, r, "failed") != 0 {
			t.Fatalf("figures %+v", r.Figures)
		}
		if len(r.LostSample) == 0 {
			t.Fatal("no lost sample")
		}
		for _, s := range r.LostSample {
			if i := lostIndex(t, s); !lost(i) {
				t.Fatalf("push %d reported lost: %s", i, s)
			}
		}
		// The discarded pushes were acknowledged: only the ghosts' are
		// pending on the node (Presence counts devices only).
		if p := fig(t, r, "pending on the node after drain (Presence)"); p != 0 {
			t.Fatalf("pending %d", p)
		}
		if r.Devices.Discarded < discarded { // more if a discarded push was redelivered
			t.Fatalf("discarded %d, want %d", r.Devices.Discarded, discarded)
		}
		if len(r.Failures) != 0 { // the loss is the only defect
			t.Fatalf("failures %q", r.Failures)
		}
	})

	// Fire-and-forget to uids that never log in is dropped by the node,
	// which says so: dropped, not lost. Discarded pushes are lost.
	t.Run("fire-and-forget drops and loss are told apart", func(t *testing.T) {
		const devices, ghosts, count, every = 30, 5, 350, 4
		cfg := testConfig(n, devices)
		cfg.DropEvery = every
		r, err := Push(ctx, cfg, PushConfig{Count: count, Duration: time.Minute, Ghosts: ghosts, Batch: 10, FireAndForget: true})
		if err != nil {
			t.Fatal(err)
		}
		var wantLost, wantDropped int64
		for i := range int64(count) {
			switch {
			case i%(devices+ghosts) >= devices:
				wantDropped++
			case i%every == 0:
				wantLost++
			}
		}
		if r.Lost != wantLost || fig(t, r, "dropped (offline, as the API said)") != wantDropped {
			t.Fatalf("lost %d (want %d), figures %+v", r.Lost, wantLost, r.Figures)
		}
		if len(r.Failures) != 0 { // drops the API announced are no failure
			t.Fatalf("failures %q", r.Failures)
		}
	})

	// The app-server waits 150 ms between stamping a push and calling the
	// API: the API→device latency must include exactly that.
	t.Run("injected delay is measured", func(t *testing.T) {
		const delay = 150 * time.Millisecond
		cfg := testConfig(n, 10)
		cfg.InjectDelay = delay
		r, err := Push(ctx, cfg, PushConfig{Count: 60, Duration: time.Minute, Concurrency: 4})
		if err != nil {
			t.Fatal(err)
		}
		dev, _ := r.LatencyOf("API call → device receipt")
		api, _ := r.LatencyOf("API call → API answer")
		if dev.Count != 60 || api.Count != 60 {
			t.Fatalf("counts %d %d", dev.Count, api.Count)
		}
		lo := delay.Microseconds()
		// Never before the delay; after it by about an API answer (a loaded
		// machine running a race-built node: 250 ms of margin).
		if dev.P50 < lo || dev.P50 > lo+api.P99+250_000 {
			t.Fatalf("p50 %dµs with a %v delay (API answers p99 %dµs)", dev.P50, delay, api.P99)
		}
		if api.P50 >= lo {
			t.Fatalf("the delay leaked into the API call latency: %dµs", api.P50)
		}
	})

	t.Run("c2c", func(t *testing.T) {
		r, err := C2C(ctx, testConfig(n, 20), TrafficConfig{Rate: 2000, Count: 200, Duration: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if r.Lost != 0 || fig(t, r, "sent") != 200 || fig(t, r, "delivered") != 200 || fig(t, r, "acked OK (stored)") != 200 ||
			fig(t, r, "mismatched (receiver or msg id)") != 0 {
			t.Fatalf("figures %+v notes %v", r.Figures, r.Notes)
		}
		if l, ok := r.LatencyOf("C2C → C2C_PUSH (receiver)"); !ok || l.Count != 200 {
			t.Fatalf("latencies %+v", r.Latencies)
		}
		if len(r.Failures) != 0 {
			t.Fatalf("failures %q", r.Failures)
		}
	})

	t.Run("upstream", func(t *testing.T) {
		r, err := Upstream(ctx, testConfig(n, 20), TrafficConfig{Rate: 2000, Count: 200, Duration: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if r.Lost != 0 || fig(t, r, "sent") != 200 || fig(t, r, "received by the app-server") != 200 ||
			fig(t, r, "mismatched (uid or msg id)") != 0 || len(r.Failures) != 0 {
			t.Fatalf("figures %+v notes %v failures %q", r.Figures, r.Notes, r.Failures)
		}
	})

	t.Run("reconnect", func(t *testing.T) {
		r, err := Reconnect(ctx, testConfig(n, 30), ReconnectConfig{Count: 20})
		if err != nil {
			t.Fatal(err)
		}
		if fig(t, r, "relogins") != 20 || fig(t, r, "online at the end") != 30 {
			t.Fatalf("figures %+v notes %v", r.Figures, r.Notes)
		}
	})

	t.Run("connect", func(t *testing.T) {
		r, err := Connect(ctx, testConfig(n, 40), ConnectConfig{MemAt: []int{10, 40}, Settle: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if fig(t, r, "logins") != 40 || fig(t, r, "login failures") != 0 {
			t.Fatalf("figures %+v notes %v", r.Figures, r.Notes)
		}
		if _, ok := r.Figure("node RSS per device (10→40)"); !ok {
			t.Fatalf("no memory slope: %+v", r.Figures)
		}
	})

	// Logins the node refuses: no figure of logins/s or memory per device
	// is produced from a run in which the devices did not come online.
	t.Run("connect with refused logins fails", func(t *testing.T) {
		cfg := testConfig(n, 10)
		cfg.Secret = "not-the-secret-of-app-1"
		r, err := Connect(ctx, cfg, ConnectConfig{MemAt: []int{5, 10}, Settle: 2 * time.Second})
		if err == nil || r != nil || !strings.Contains(err.Error(), "0 of 5 devices online") {
			t.Fatalf("connect with tokens the node refuses: %v %+v", err, r)
		}
	})
}

// A node without the Upstream API makes the scenario fail with a clear
// error before any device connects.
func TestUpstreamUnimplemented(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	apipb.RegisterCourierServer(srv, apipb.UnimplementedCourierServer{})
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()
	cfg := Config{Gate: "127.0.0.1:1", API: l.Addr().String(), Secret: "s", APIKey: "k", Devices: 2}
	_, err = Upstream(context.Background(), cfg, TrafficConfig{Count: 1})
	if !errors.Is(err, ErrUpstreamUnimplemented) || !strings.Contains(err.Error(), "Upstream API") {
		t.Fatalf("err = %v", err)
	}
}

// TestRefusedAmongFailed: pushes of calls refused with
// RESOURCE_EXHAUSTED (the node overloaded), and items refused because
// their device's gate is behind, are counted apart, among the failed
// ones; other errors, and an item's own RESOURCE_EXHAUSTED (one
// identity's limit), are not.
func TestRefusedAmongFailed(t *testing.T) {
	st := &pushStats{errors: map[string]int64{}}
	st.fail(status.Error(codes.ResourceExhausted, "node overloaded: 4096 pushes in flight"), 100)
	st.fail(status.Error(codes.Unavailable, "node gone"), 10)
	st.fail(errors.New("no status"), 1)
	if st.failItem(status.Error(codes.ResourceExhausted, "inbox of 1/u is full: 1000 pushes waiting for acknowledgement"), apipb.ReasonInboxFull) {
		t.Fatal("an item's full inbox taken for the node's overload")
	}
	if !st.failItem(status.Error(codes.ResourceExhausted, "node overloaded: deliveries to the gate holding 1/u's connection are 31ms late"), apipb.ReasonNodeOverloaded) {
		t.Fatal("an item refused because its gate is behind not taken for the node's overload")
	}
	// A node of a version without reasons: the message says it.
	if !st.failItem(status.Error(codes.ResourceExhausted, "node overloaded: deliveries to the gate holding 1/v's connection are 31ms late"), "") {
		t.Fatal("an item refused by an older node because its gate is behind not taken for the node's overload")
	}
	if f, r := st.failed.Load(), st.refused.Load(); f != 114 || r != 102 {
		t.Fatalf("failed %d, refused %d: want 114 and 102", f, r)
	}
}

// TestChecks: what fails a push, C2C or C2S run besides loss, and what
// does not (overload refusals, fire-and-forget drops the API announced,
// redeliveries of the same stored message).
func TestChecks(t *testing.T) {
	ok := pushTotals{Pushed: 100, Accepted: 80, Dropped: 0, Failed: 20, Delivered: 80, Dups: 3}
	if f := ok.failures(false, pendingCheck{asked: true}); len(f) != 0 {
		t.Fatalf("refusals and redeliveries failed the run: %q", f)
	}
	lost := pushTotals{Pushed: 10, Accepted: 10, Delivered: 8, Lost: 2}
	if f := lost.failures(false, pendingCheck{asked: true, n: 2}); len(f) != 0 {
		t.Fatalf("the lost pushes, still pending, failed the run again (loss has its own rule, --allow-loss): %q", f)
	}
	ff := pushTotals{Pushed: 100, Accepted: 60, Dropped: 40, Delivered: 60}
	if f := ff.failures(true, pendingCheck{}); len(f) != 0 {
		t.Fatalf("fire-and-forget drops failed the run: %q", f)
	}
	pushCases := []struct {
		name    string
		t       pushTotals
		ff      bool
		pending pendingCheck
		want    string
	}{
		{"mismatched", pushTotals{Mismatched: 2}, false, pendingCheck{}, "2 pushes delivered with another seq"},
		{"received again as another message", pushTotals{Dups: 5, DupsOther: 1}, false, pendingCheck{}, "1 pushes received again as another message"},
		{"fire-and-forget delivered twice", pushTotals{Dups: 1}, true, pendingCheck{}, "1 fire-and-forget pushes delivered again"},
		{"received though the call failed", pushTotals{Unexpected: 1, Unknown: 1}, false, pendingCheck{}, "2 pushes received though not accepted"},
		{"failed otherwise", pushTotals{Failed: 7, FailedOther: 4}, false, pendingCheck{}, "4 pushes failed with another status"},
		{"pending after the drain", pushTotals{}, false, pendingCheck{asked: true, n: 9}, "9 stored messages still unacknowledged"},
		{"pending beyond the lost", pushTotals{Lost: 2}, false, pendingCheck{asked: true, n: 5}, "3 stored messages still unacknowledged"},
		{"pending unknown", pushTotals{}, false, pendingCheck{asked: true, err: errors.New("bench: presence: Unavailable")}, "check of what is pending on the node failed"},
	}
	for _, tc := range pushCases {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.t.failures(tc.ff, tc.pending)
			if len(f) != 1 || !strings.Contains(f[0], tc.want) {
				t.Fatalf("failures %q, want one with %q", f, tc.want)
			}
		})
	}
	msg := msgTotals{Sent: 10, AckOK: 8, Refused: 2, Delivered: 8, Dups: 2}
	if f := msg.failures("C2C"); len(f) != 0 {
		t.Fatalf("refusals and redeliveries failed the run: %q", f)
	}
	for _, bad := range []msgTotals{{NoAck: 1}, {Mismatched: 1}, {DupsOther: 1}, {Unexpected: 1}} {
		if f := bad.failures("C2S"); len(f) != 1 || !strings.Contains(f[0], "1 C2S") {
			t.Fatalf("%+v: failures %q", bad, f)
		}
	}
}

// TestOnlyOverloadRefusalsAreNotFailures: a push failed with any status
// but RESOURCE_EXHAUSTED, or UNAVAILABLE with reason STORE_BUSY (the
// store's admission, nothing accepted), counts among the failures of the
// run.
func TestOnlyOverloadRefusalsAreNotFailures(t *testing.T) {
	st := &pushStats{errors: map[string]int64{}}
	st.fail(status.Error(codes.ResourceExhausted, "node overloaded: 4096 pushes in flight"), 100)
	st.failItem(status.Error(codes.ResourceExhausted, "inbox of 1/u is full"), apipb.ReasonInboxFull)
	st.failItem(status.Error(codes.Unavailable, "the inbox store is overloaded"), apipb.ReasonStoreBusy)
	busy, _ := status.New(codes.Unavailable, "the inbox store has not completed a commit").WithDetails(
		&errdetails.ErrorInfo{Reason: apipb.ReasonStoreBusy, Domain: apipb.ErrorDomain})
	st.fail(busy.Err(), 10)
	if n := st.other.Load(); n != 0 {
		t.Fatalf("%d overload refusals counted as failures", n)
	}
	st.fail(status.Error(codes.Unavailable, "node gone"), 10)
	st.fail(errors.New("PushMany answered 3 results for 4 items"), 4)
	st.failItem(status.Error(codes.InvalidArgument, "payload too large"), "")
	if n := st.other.Load(); n != 15 {
		t.Fatalf("%d failures, want 15", n)
	}
}

// TestLatencyOutOfRange: a latency the histograms cannot hold (negative,
// or over histMax) is counted and fails the run rather than vanishing
// from the percentiles; one of over 10 minutes (the old bound) is
// recorded.
func TestLatencyOutOfRange(t *testing.T) {
	h := newHist()
	if !recordNs(h, 500) || !recordNs(h, (11*time.Minute).Nanoseconds()) || h.TotalCount() != 2 {
		t.Fatalf("in-range samples: %d recorded", h.TotalCount())
	}
	if recordNs(h, -1) || recordNs(h, 2*histMax*1000) || h.TotalCount() != 2 {
		t.Fatalf("out-of-range samples taken: %d recorded", h.TotalCount())
	}

	a := newAccountant(2, "p-")
	first := a.reserve(2, 1_000_000_000, func(i int64) int32 { return int32(i) })
	a.answered(first, pushAccepted, true, 1, 7, 1000)
	a.answered(first+1, pushAccepted, true, 1, 8, 1000)
	a.records([]farm.Record{
		{Kind: farm.LoginDone, Idx: 2_000_000_000, T: 1_000_000_000}, // answered before it was dialled
		{Kind: farm.RecvS2C, Idx: uint64(first), Dev: 0, Seq: 1, Hash: 7, T: 2_000_000_000},
		{Kind: farm.RecvS2C, Idx: uint64(first + 1), Dev: 1, Seq: 1, Hash: 8, T: 500_000_000}, // before it was sent
		{Kind: farm.SentC2C, Idx: 1, Dev: 0, T: 3_000_000_000},
		{Kind: farm.AckC2C, Idx: 1, Dev: 0, Hash: 9, T: 3_000_100_000},
		{Kind: farm.RecvC2C, Idx: 1, Dev: 1, Hash: 9, T: 2_999_000_000}, // before it was sent
	})
	if n := a.latenciesOutOfRange(); n != 2 {
		t.Fatalf("%d login and push latencies out of range, want 2", n)
	}
	pt := a.pushTotals(func(g int32) string { return "p-" + string(rune('0'+g)) })
	if f := pt.failures(false, pendingCheck{}); len(f) != 1 || !strings.Contains(f[0], "2 latency samples could not be recorded") {
		t.Fatalf("push failures %q", f)
	}
	if ct := a.c2cTotals(); ct.OutOfRange != 3 || ct.Delivered != 1 {
		t.Fatalf("c2c totals %+v", ct)
	}
}

// TestRefusedButMaybeStored: a C2C answered STORE_UNAVAILABLE or INTERNAL
// may have been stored all the same (docs/protocol.md), so its delivery
// is no defect; one refused outright (INBOX_FULL) and delivered is.
func TestRefusedButMaybeStored(t *testing.T) {
	tally := func(code devicepb.Code) msgTotals {
		m := msgTotals{RefusedBy: map[string]int64{}, AckLat: newHist(), DeliverLat: newHist()}
		m.tally(&msgRec{sentNs: 1, ackNs: 2, recvNs: 3, code: uint8(code), sent: true, acked: true, recvs: 1}, false, func() string { return "" })
		return m
	}
	for _, c := range []devicepb.Code{devicepb.Code_STORE_UNAVAILABLE, devicepb.Code_INTERNAL} {
		if m := tally(c); m.Unexpected != 0 || len(m.failures("C2C")) != 0 {
			t.Fatalf("a C2C answered %v and delivered: %v", c, m.failures("C2C"))
		}
	}
	if m := tally(devicepb.Code_INBOX_FULL); m.Unexpected != 1 {
		t.Fatal("a C2C refused INBOX_FULL and delivered is not counted")
	}
}
