package gate_test

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

const (
	app1 uint16 = 1
	app2 uint16 = 2
	wait        = 5 * time.Second // upper bound of every poll
)

var (
	secret1 = []byte("secret-of-app-one-0123456789abcd")
	secret2 = []byte("secret-of-app-two-0123456789abcd")
)

// fakeHandler plays the node: it answers Login through Deliver (with a
// LoginOutcome and the LOGIN_ACK), records everything, and can hold or
// reject logins.
type fakeHandler struct {
	g    atomic.Pointer[gate.Gate]
	hold atomic.Bool // leave logins pending
	// ackC2S: answer each C2S at once from Frame (C2S_ACK OK through
	// Deliver), as the node's bridge does.
	ackC2S atomic.Bool
	reject atomic.Bool // answer logins with a failure
	epoch  atomic.Uint64

	mu     sync.Mutex
	logins []gate.ConnInfo
	frames []frameCall
	closed []closedCall
}

type frameCall struct {
	info gate.ConnInfo
	h    messages.Header
	body []byte
}

type closedCall struct {
	info   gate.ConnInfo
	reason gate.CloseReason
}

func (h *fakeHandler) Login(c gate.ConnInfo, seq uint32, l *devicepb.Login) {
	h.mu.Lock()
	h.logins = append(h.logins, c)
	h.mu.Unlock()
	if h.hold.Load() {
		return
	}
	h.answer(c, seq, l.Zstd, !h.reject.Load())
}

// answer delivers the node's answer to a login.
func (h *fakeHandler) answer(c gate.ConnInfo, seq uint32, zstd, ok bool) error {
	g := h.g.Load()
	epoch := 100 + h.epoch.Add(1)
	ack := &devicepb.LoginAck{Code: devicepb.Code_OK, Epoch: epoch, Zstd: zstd,
		HeartbeatSeconds: uint32(g.HeartbeatInterval() / time.Second), ServerTimeMs: time.Now().UnixMilli()}
	if !ok {
		ack = &devicepb.LoginAck{Code: devicepb.Code_UNAVAILABLE, Reason: "node says no"}
	}
	body, _ := proto.Marshal(ack)
	return g.Deliver(&actorpb.ToConn{
		ConnId: uint64(c.ID), Epoch: epoch,
		Frames: []*actorpb.OutFrame{{Cmd: uint32(messages.CmdLoginAck), Seq: seq, Body: body}},
		Login:  &actorpb.LoginOutcome{Ok: ok, AppCode: uint32(c.AppCode), Uid: c.UID, Epoch: epoch, Zstd: zstd},
	})
}

func (h *fakeHandler) Frame(c gate.ConnInfo, hd messages.Header, body []byte) {
	h.mu.Lock()
	h.frames = append(h.frames, frameCall{c, hd, append([]byte(nil), body...)})
	h.mu.Unlock()
	if hd.Cmd == messages.CmdC2S && h.ackC2S.Load() {
		ack, _ := proto.Marshal(&devicepb.C2SAck{Code: devicepb.Code_OK, MsgId: "up-1"})
		_ = h.g.Load().Deliver(&actorpb.ToConn{ConnId: uint64(c.ID), Epoch: c.Epoch,
			Frames: []*actorpb.OutFrame{{Cmd: uint32(messages.CmdC2SAck), Seq: hd.Seq, Body: ack}}})
	}
}

func (h *fakeHandler) Closed(c gate.ConnInfo, reason gate.CloseReason) {
	h.mu.Lock()
	h.closed = append(h.closed, closedCall{c, reason})
	h.mu.Unlock()
}

func (h *fakeHandler) Logins() []gate.ConnInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]gate.ConnInfo(nil), h.logins...)
}

func (h *fakeHandler) Frames() []frameCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]frameCall(nil), h.frames...)
}

func (h *fakeHandler) Closes() []closedCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]closedCall(nil), h.closed...)
}

// closedFor returns the Closed calls for uid.
func (h *fakeHandler) closedFor(uid string) []closedCall {
	var out []closedCall
	for _, c := range h.Closes() {
		if c.info.UID == uid {
			out = append(out, c)
		}
	}
	return out
}

// testGate is a started gate with its fake node and metrics registry.
type testGate struct {
	*gate.Gate
	h    *fakeHandler
	reg  *prometheus.Registry
	addr string
}

// testConfig is a fast configuration: short ticks and timeouts, the
// per-IP limit off (every test dials from 127.0.0.1).
func testConfig() gate.Config {
	cfg := gate.DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.Loops = 2
	cfg.TickInterval = 10 * time.Millisecond
	cfg.LoginTimeout = 3 * time.Second
	cfg.HeartbeatInterval = time.Second
	cfg.IdleTimeout = 3 * time.Second
	cfg.NewConnsPerIP = 0
	cfg.AppSecrets = map[uint16][]byte{app1: secret1, app2: secret2}
	return cfg
}

func testLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("GATE_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// startGate starts a gate with testConfig changed by mutate; it is shut
// down at the end of the test.
func startGate(t testing.TB, mutate func(*gate.Config)) *testGate {
	t.Helper()
	cfg := testConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	h := &fakeHandler{}
	reg := prometheus.NewRegistry()
	g, err := gate.New(cfg, h, reg, testLogger())
	if err != nil {
		t.Fatalf("gate.New: %v", err)
	}
	h.g.Store(g)
	if err := g.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := g.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return &testGate{Gate: g, h: h, reg: reg, addr: g.Addr().String()}
}

func token(t testing.TB, app uint16, uid string) string {
	t.Helper()
	secret := secret1
	if app == app2 {
		secret = secret2
	}
	tok, err := gate.MintToken(secret, app, uid, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// dial connects a device of app1.
func (tg *testGate) dial(t testing.TB) *testkit.Device {
	t.Helper()
	return testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: app1})
}

// login dials and logs uid in (app1), failing unless LOGIN_ACK is OK.
func (tg *testGate) login(t testing.TB, uid string, zstd bool) (*testkit.Device, *devicepb.LoginAck) {
	t.Helper()
	d := tg.dial(t)
	ack := d.Login(uid, token(t, app1, uid), zstd)
	if ack.Code != devicepb.Code_OK {
		t.Fatalf("login %s: %v %q", uid, ack.Code, ack.Reason)
	}
	return d, ack
}

// connOf returns the ConnInfo the handler got at uid's login.
func (tg *testGate) connOf(t testing.TB, uid string) gate.ConnInfo {
	t.Helper()
	for _, c := range tg.h.Logins() {
		if c.UID == uid {
			return c
		}
	}
	t.Fatalf("no login for %s", uid)
	return gate.ConnInfo{}
}

// metric returns the sum of the samples of metric name whose labels
// include the given name/value pairs.
func (tg *testGate) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := tg.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == kv[i] && lp.GetValue() == kv[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// waitMetric polls until metric name (with labels) reaches at least want.
func (tg *testGate) waitMetric(t testing.TB, want float64, name string, labels ...string) {
	t.Helper()
	testkit.Eventually(t, wait, func() bool { return tg.metric(t, name, labels...) >= want },
		"%s%v >= %v (now %v)", name, labels, want, tg.metric(t, name, labels...))
}

// frame builds raw frame bytes.
func frame(h messages.Header, body []byte) []byte { return messages.AppendFrame(nil, h, body) }

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}
