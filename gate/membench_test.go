package gate_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
	"google.golang.org/protobuf/proto"
)

// The memory benchmark runs the gate in a child process (this test binary
// re-executed with benchChildEnv set), because a process may hold at most
// 20,000 descriptors here and the clients need their own. The child
// serves a gate with an auto-accepting handler and answers "stats" lines
// on stdin (after runtime.GC and debug.FreeOSMemory) with its RSS and heap.
const (
	benchChildEnv  = "COURIER_GATE_BENCH_CHILD"
	childNofileEnv = "COURIER_GATE_CHILD_NOFILE" // RLIMIT_NOFILE of the child
)

func TestMain(m *testing.M) {
	if os.Getenv(benchChildEnv) == "1" {
		os.Exit(benchChild())
	}
	os.Exit(m.Run())
}

// acceptAll is the child's handler: every verified login succeeds.
type acceptAll struct {
	g     atomic.Pointer[gate.Gate]
	epoch atomic.Uint64
}

func (h *acceptAll) Login(c gate.ConnInfo, seq uint32, l *devicepb.Login) {
	g := h.g.Load()
	epoch := h.epoch.Add(1)
	body, _ := proto.Marshal(&devicepb.LoginAck{Code: devicepb.Code_OK, Epoch: epoch, Zstd: l.Zstd,
		HeartbeatSeconds: uint32(g.HeartbeatInterval() / time.Second), ServerTimeMs: time.Now().UnixMilli()})
	_ = g.Deliver(&actorpb.ToConn{ConnId: uint64(c.ID), Epoch: epoch,
		Frames: []*actorpb.OutFrame{{Cmd: uint32(messages.CmdLoginAck), Seq: seq, Body: body}},
		Login:  &actorpb.LoginOutcome{Ok: true, AppCode: uint32(c.AppCode), Uid: c.UID, Epoch: epoch, Zstd: l.Zstd}})
}

func (*acceptAll) Frame(gate.ConnInfo, messages.Header, []byte) {}
func (*acceptAll) Closed(gate.ConnInfo, gate.CloseReason)       {}

func benchChild() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := gate.DefaultConfig()
	if s := os.Getenv(childNofileEnv); s != "" {
		// A low open-files limit, to show the cap keeps accept from EMFILE.
		n, _ := strconv.ParseUint(s, 10, 64)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
			log.Error("child: setrlimit", "err", err)
			return 1
		}
		cfg.FDReserve = 64
	}
	cfg.Addr = "127.0.0.1:0"
	cfg.AppSecrets = map[uint16][]byte{app1: secret1}
	cfg.NewConnsPerIP = 0
	cfg.LoginTimeout = time.Minute
	cfg.HeartbeatInterval = 5 * time.Minute // idle connections must outlive the run
	h := &acceptAll{}
	g, err := gate.New(cfg, h, nil, log)
	if err != nil {
		log.Error("child", "err", err)
		return 1
	}
	h.g.Store(g)
	if err := g.Start(); err != nil {
		log.Error("child", "err", err)
		return 1
	}
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "ADDR %s\n", g.Addr())
	out.Flush()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() != "stats" {
			break
		}
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Fprintf(out, "STATS rss=%d heap_inuse=%d stack_inuse=%d sys=%d conns=%d goroutines=%d\n",
			rssBytes(), ms.HeapInuse, ms.StackInuse, ms.Sys, g.Conns(), runtime.NumGoroutine())
		out.Flush()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = g.Shutdown(ctx)
	return 0
}

func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return -1
}

type childStats struct{ rss, heap, stack, sys, conns int64 }

// BenchmarkGateMemory measures the gate's memory per idle logged-in
// connection and its login rate, once whatever b.N (it is a measurement of
// sizes, not of a repeated operation):
//
//	go test -run '^$' -bench GateMemory -benchtime 1x -v -timeout 10m ./gate/
//
// COURIER_GATE_MEMBENCH_CONNS sets the sizes (default "5000,15000"). It
// reports rss-B/conn and heap-B/conn between the first and last size.
func BenchmarkGateMemory(t *testing.B) {
	sizes := []int{5000, 15000}
	if s := os.Getenv("COURIER_GATE_MEMBENCH_CONNS"); s != "" {
		sizes = sizes[:0]
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				t.Fatal(err)
			}
			sizes = append(sizes, n)
		}
	}

	ch := startChild(t)
	addr, stats := ch.addr, ch.stats

	// Source addresses differ per run, so TIME_WAIT of earlier runs does
	// not get in the way: 127.<rotating>.<n>.1, 4,000 connections each.
	octet := byte(20 + (time.Now().Unix()/60)%200)
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	base := stats()
	t.Logf("empty gate: rss %.1f MiB, heap %.1f MiB", mib(base.rss), mib(base.heap))
	var points []childStats
	for _, size := range sizes {
		start := time.Now()
		more, err := loginMany(addr, len(conns), size-len(conns), octet)
		conns = append(conns, more...)
		if err != nil {
			t.Fatalf("after %d connections: %v", len(conns), err)
		}
		el := time.Since(start)
		s := stats()
		if s.conns != int64(size) {
			t.Fatalf("child holds %d connections, want %d", s.conns, size)
		}
		t.Logf("%6d conns: logins %.0f/s (%d in %v); rss %.1f MiB, heap %.1f MiB, stacks %.1f MiB",
			size, float64(len(more))/el.Seconds(), len(more), el.Round(time.Millisecond), mib(s.rss), mib(s.heap), mib(s.stack))
		points = append(points, s)
	}
	for i := 1; i < len(points); i++ {
		a, b := points[i-1], points[i]
		n := float64(b.conns - a.conns)
		t.Logf("per connection between %d and %d: rss %.0f B, heap %.0f B",
			a.conns, b.conns, float64(b.rss-a.rss)/n, float64(b.heap-a.heap)/n)
	}
	if len(points) > 1 {
		a, b := points[0], points[len(points)-1]
		n := float64(b.conns - a.conns)
		t.ReportMetric(float64(b.rss-a.rss)/n, "rss-B/conn")
		t.ReportMetric(float64(b.heap-a.heap)/n, "heap-B/conn")
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// child is a gate in a child process.
type child struct {
	addr  string
	stats func() childStats
}

// startChild re-executes the test binary as a gate process with the
// extra environment env ("K=V"); it is stopped at the end of the test.
func startChild(t testing.TB, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), benchChildEnv+"=1"), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	lines := bufio.NewScanner(stdout)
	readLine := func(prefix string) string {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("child: %v (exited?)", lines.Err())
		}
		l := lines.Text()
		if !strings.HasPrefix(l, prefix) {
			t.Fatalf("child said %q, want %s...", l, prefix)
		}
		return strings.TrimPrefix(l, prefix)
	}
	ch := &child{addr: readLine("ADDR ")}
	ch.stats = func() childStats {
		t.Helper()
		if _, err := io.WriteString(stdin, "stats\n"); err != nil {
			t.Fatalf("child: %v", err)
		}
		var s childStats
		var g int64
		_, err := fmt.Sscanf(readLine("STATS "), "rss=%d heap_inuse=%d stack_inuse=%d sys=%d conns=%d goroutines=%d",
			&s.rss, &s.heap, &s.stack, &s.sys, &s.conns, &g)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return ch
}

// loginMany opens n connections (numbered from first) and logs each in,
// 32 at a time, with a minimal client: the load generator must stay light.
func loginMany(addr string, first, n int, octet byte) ([]net.Conn, error) {
	const workers = 32
	out := make([]net.Conn, n)
	var (
		next   atomic.Int64
		wg     sync.WaitGroup
		errMu  sync.Mutex
		errOne error
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				k := first + i
				c, err := loginOne(addr, k, net.IPv4(127, octet, byte(k/4000), 1))
				if err != nil {
					errMu.Lock()
					errOne = fmt.Errorf("connection %d: %w", k, err)
					errMu.Unlock()
					return
				}
				out[i] = c
			}
		}()
	}
	wg.Wait()
	var got []net.Conn
	for _, c := range out {
		if c != nil {
			got = append(got, c)
		}
	}
	return got, errOne
}

func loginOne(addr string, k int, src net.IP) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	uid := "bench-" + strconv.Itoa(k)
	tok, err := gate.MintToken(secret1, app1, uid, time.Hour)
	if err != nil {
		c.Close()
		return nil, err
	}
	frame, _ := messages.AppendMessage(nil, messages.Header{Cmd: messages.CmdLogin, AppCode: app1, Seq: 1},
		&devicepb.Login{Uid: uid, Token: tok, DeviceId: "bench", Platform: devicepb.Platform_ANDROID})
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(frame); err != nil {
		c.Close()
		return nil, err
	}
	var hdr [messages.HeaderSize]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		c.Close()
		return nil, err
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[14:]))
	if _, err := io.ReadFull(c, body); err != nil {
		c.Close()
		return nil, err
	}
	var ack devicepb.LoginAck
	if messages.Cmd(hdr[3]) != messages.CmdLoginAck || proto.Unmarshal(body, &ack) != nil || ack.Code != devicepb.Code_OK {
		c.Close()
		return nil, fmt.Errorf("login answered %v %v", messages.Cmd(hdr[3]), ack.Code)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}
