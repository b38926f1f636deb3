package testkit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/courier-im/courier/client"
	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages/apipb"
)

// Credentials every test node is started with.
const (
	// App1Secret signs device tokens of appcode 1; App2Secret of appcode 2.
	App1Secret = "testkit-secret-of-app-1"
	App2Secret = "testkit-secret-of-app-2"
	// App1Key and App2Key are API keys acting for appcode 1 and 2;
	// OperatorKey acts for all.
	App1Key     = "testkit-api-key-app-1"
	App2Key     = "testkit-api-key-app-2"
	OperatorKey = "testkit-api-key-operator"
)

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// moduleRoot finds the repository from this source file.
func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// CourierBinary builds cmd/courier once per test process (with the race
// detector when the tests run with it) and returns its path.
func CourierBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := processTempDir("courier-testkit-")
		if err != nil {
			buildErr = err
			return
		}
		buildBin = filepath.Join(dir, "courier")
		args := []string{"build", "-o", buildBin}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "./cmd/courier")
		cmd := exec.Command("go", args...)
		cmd.Dir = moduleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build cmd/courier: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("testkit: %v", buildErr)
	}
	return buildBin
}

// NodeOptions tunes StartNode.
type NodeOptions struct {
	// DataDir is the node's data directory (default: a new temp dir).
	DataDir string
	// Name is the node's name (default "test-node").
	Name string
	// Roles are the node's roles ("gate,api"; default all).
	Roles string
	// Args are extra flags, after the testkit's defaults (so they win).
	Args []string
	// Env are extra environment variables ("COURIER_X=v").
	Env []string
	// Network, if set, runs the node in a namespace of its own on it
	// (Network.AddHost(Name)): gate, API and HTTP listen on its public
	// address, remoting on its cluster address (not loopback: Args must
	// carry the mutual TLS flags).
	Network *Network
	// PostgresDSN, if set, runs the node on the PostgreSQL store of that
	// database. If empty and the environment has COURIER_TEST_STORE=postgres,
	// the node gets a new database of the shared test server (so a whole
	// end-to-end suite runs on PostgreSQL: make test does it).
	PostgresDSN string
	// Pebble keeps the node on the embedded store whatever
	// COURIER_TEST_STORE says (tests of the node's own disk).
	Pebble bool
}

// TestStore returns the store the end-to-end tests run on by default:
// "postgres" if COURIER_TEST_STORE says so, else "pebble".
func TestStore() string {
	if os.Getenv("COURIER_TEST_STORE") == "postgres" {
		return "postgres"
	}
	return "pebble"
}

// Node is a courier node running as a separate process, as in production.
type Node struct {
	t    testing.TB
	opts NodeOptions
	cmd  *exec.Cmd
	logs *syncBuffer
	// before holds what the node's earlier processes (before Restart)
	// wrote, so that a data race one of them reported fails the test.
	before  strings.Builder
	exited  chan struct{}
	stopped bool // by Stop, not by itself
	// The node's addresses in its current run (empty for a component
	// its roles do not include).
	GateAddr string
	APIAddr  string
	HTTPAddr string
	// ClusterAddr is the node's actor remoting address.
	ClusterAddr string
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// StartNode starts a node on 127.0.0.1 with free ports, fast timers for
// tests, and the testkit's credentials. It is stopped (SIGKILL) at the end
// of the test, and the test fails if the node reported a data race.
func StartNode(t testing.TB, opts NodeOptions) *Node {
	t.Helper()
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	if opts.PostgresDSN == "" && !opts.Pebble && TestStore() == "postgres" {
		opts.PostgresDSN = PostgresDB(t)
	}
	n := &Node{t: t, opts: opts}
	n.start()
	t.Cleanup(func() {
		exited := !n.kill() && !n.stopped
		switch logs := n.before.String() + n.logs.String(); {
		case strings.Contains(logs, "WARNING: DATA RACE"):
			t.Errorf("testkit: the node reported a data race:\n%s", logs)
		case exited:
			// A node that died by itself explains the failures it caused.
			t.Errorf("testkit: the node exited by itself (%v):\n%s", n.cmd.ProcessState, tail([]byte(logs)))
		case t.Failed():
			t.Logf("testkit: the node's last logs:\n%s", tail([]byte(logs)))
		}
	})
	return n
}

func (n *Node) start() {
	t := n.t
	t.Helper()
	bin := CourierBinary(t)
	addrFile := filepath.Join(n.opts.DataDir, "addrs.json")
	_ = os.Remove(addrFile)
	name := n.opts.Name
	if name == "" {
		name = "test-node"
	}
	public, cluster := "127.0.0.1", "127.0.0.1"
	if n.opts.Network != nil {
		cluster, public = n.opts.Network.AddHost(name)
	}
	args := []string{
		"--name", name,
		"--data-dir", n.opts.DataDir,
		"--addr-file", addrFile,
		"--gate.addr", public + ":0",
		"--api-addr", public + ":0",
		"--http-addr", public + ":0",
		"--cluster.bind", cluster + ":0",
		"--app-secret", "1=" + App1Secret,
		"--app-secret", "2=" + App2Secret,
		"--api-key", App1Key + "=1",
		"--api-key", App2Key + "=2",
		"--api-key", OperatorKey + "=*",
		"--gate.tick-interval", "50ms",
		"--gate.new-conns-per-ip", "0",
		"--gate.frames-per-second", "0",
		"--gate.c2c-per-second", "0",
		"--actors.logins-per-second", "0",
		"--gate.bytes-per-second", "0",
		"--actors.retry-initial", "300ms",
		"--actors.retry-max", "1s",
		"--shutdown-grace", "5s",
		"--drain-window", "1s",
		"--log-level", "debug",
	}
	if n.opts.Roles != "" {
		args = append(args, "--roles", n.opts.Roles)
	}
	if n.opts.PostgresDSN != "" {
		args = append(args, "--store", "postgres", "--store.timeout", "3s")
	}
	args = append(args, n.opts.Args...)
	n.cmd = exec.Command(bin, args...)
	if n.opts.Network != nil {
		n.cmd = n.opts.Network.Command(name, bin, args...)
	}
	if n.logs != nil {
		n.before.WriteString(n.logs.String())
	}
	n.logs = &syncBuffer{}
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	n.cmd.Env = append(append(nodeEnv(os.Environ()), "GORACE=halt_on_error=1 exitcode=66"), n.opts.Env...)
	n.cmd.SysProcAttr = childProcAttr()
	if n.opts.PostgresDSN != "" {
		// The environment, not argv: as an operator should pass it.
		n.cmd.Env = append(n.cmd.Env, "COURIER_STORE_DSN="+n.opts.PostgresDSN)
	}
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("testkit: start courier: %v", err)
	}
	n.exited, n.stopped = make(chan struct{}), false
	go func() { _ = n.cmd.Wait(); close(n.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if b, err := os.ReadFile(addrFile); err == nil && len(b) > 0 {
			var a struct{ Gate, API, HTTP, Cluster string }
			if json.Unmarshal(b, &a) == nil && a.Cluster != "" {
				n.GateAddr, n.APIAddr, n.HTTPAddr, n.ClusterAddr = a.Gate, a.API, a.HTTP, a.Cluster
				return
			}
		}
		select {
		case <-n.exited:
			t.Fatalf("testkit: courier exited at start (%v):\n%s", n.cmd.ProcessState, n.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			n.kill()
			t.Fatalf("testkit: courier did not start within 60s:\n%s", n.logs.String())
		}
	}
}

// kill stops the process and reports whether it was still running.
func (n *Node) kill() bool {
	select {
	case <-n.exited:
		return false
	default:
	}
	_ = n.cmd.Process.Kill()
	<-n.exited
	return true
}

// DataDir returns the node's data directory.
func (n *Node) DataDir() string { return n.opts.DataDir }

// Logs returns what the node has written so far.
func (n *Node) Logs() string { return n.logs.String() }

// Stop stops the node with sig (SIGTERM: graceful; SIGKILL: a crash) and
// waits for the process to end.
func (n *Node) Stop(sig syscall.Signal) {
	n.t.Helper()
	select {
	case <-n.exited:
		if !n.stopped {
			// Died by itself (a data race halts it too): the kill the test
			// meant to apply would hide it.
			n.t.Fatalf("testkit: courier had exited by itself (%v) before it was stopped:\n%s", n.cmd.ProcessState, tail([]byte(n.logs.String())))
		}
	default:
	}
	n.stopped = true
	_ = n.cmd.Process.Signal(sig)
	select {
	case <-n.exited:
	case <-time.After(30 * time.Second):
		n.t.Fatalf("testkit: courier did not exit after %v:\n%s", sig, n.logs.String())
	}
	if sig == syscall.SIGTERM && !n.cmd.ProcessState.Success() {
		n.t.Fatalf("testkit: courier exited with %v after SIGTERM:\n%s", n.cmd.ProcessState, n.logs.String())
	}
}

// Signal sends sig to the node's process and returns at once.
func (n *Node) Signal(sig syscall.Signal) {
	n.t.Helper()
	if err := n.cmd.Process.Signal(sig); err != nil {
		n.t.Fatalf("testkit: signal %v: %v", sig, err)
	}
}

// WaitExit waits up to d for the node's process to end by itself and
// fails the test unless it did, with exit status 0.
func (n *Node) WaitExit(d time.Duration) {
	n.t.Helper()
	n.stopped = true // an exit the test asked for
	select {
	case <-n.exited:
	case <-time.After(d):
		n.t.Fatalf("testkit: courier did not exit within %v:\n%s", d, n.logs.String())
	}
	if !n.cmd.ProcessState.Success() {
		n.t.Fatalf("testkit: courier exited with %v:\n%s", n.cmd.ProcessState, n.logs.String())
	}
}

// Restart starts the node again on the same data directory (with new
// ports). The node must have been stopped.
func (n *Node) Restart() {
	n.t.Helper()
	n.start()
}

// Token mints a device token for uid of app (1 or 2).
func Token(t testing.TB, app uint16, uid string) string {
	t.Helper()
	secret := App1Secret
	if app == 2 {
		secret = App2Secret
	}
	tok, err := gate.MintToken([]byte(secret), app, uid, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// Device dials the node's gate and logs uid in on app, failing the test
// unless the login succeeds.
func (n *Node) Device(t testing.TB, app uint16, uid string) *Device {
	t.Helper()
	d := Dial(t, n.GateAddr, DeviceConfig{AppCode: app})
	if ack := d.Login(uid, Token(t, app, uid), false); ack.Code != 0 {
		t.Fatalf("testkit: login of %d/%s: %v %s", app, uid, ack.Code, ack.Reason)
	}
	return d
}

// API returns a client of the node's gRPC API (plaintext); Ctx adds an
// API key to a call's context.
func (n *Node) API(t testing.TB) apipb.CourierClient {
	t.Helper()
	return apipb.NewCourierClient(n.GRPC(t, grpc.WithTransportCredentials(insecure.NewCredentials())))
}

// GRPC returns a connection to the node's API port made with opts (which
// must say how to secure it), closed at the end of the test.
func (n *Node) GRPC(t testing.TB, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(n.APIAddr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Ctx returns a context carrying key, cancelled at the end of the test.
func Ctx(t testing.TB, key string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

// Name returns the node's name.
func (n *Node) Name() string {
	if n.opts.Name == "" {
		return "test-node"
	}
	return n.opts.Name
}

// Roles returns the node's roles as given ("gate,actors,api" if none
// were).
func (n *Node) Roles() string {
	if n.opts.Roles == "" {
		return "gate,actors,api"
	}
	return n.opts.Roles
}

// Running reports whether the node's process runs.
func (n *Node) Running() bool {
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// Pause stops the node's process (SIGSTOP) without killing it, as a
// long GC pause, a frozen VM or a partition would; Resume continues it.
func (n *Node) Pause() {
	n.t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		n.t.Fatalf("testkit: pause: %v", err)
	}
}

// Resume continues a paused node (SIGCONT).
func (n *Node) Resume() {
	n.t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		n.t.Fatalf("testkit: resume: %v", err)
	}
}

// Client logs uid of app in through a client.Client (the library's
// device: keepalive, acks, reconnects) with fast reconnect settings for
// tests; mut, if not nil, adjusts the configuration first. The client is
// closed at the end of the test.
func (n *Node) Client(t testing.TB, app uint16, uid string, mut func(*client.Config)) *client.Client {
	t.Helper()
	cfg := client.Config{Addr: n.GateAddr, AppCode: app, UID: uid, Token: Token(t, app, uid), DeviceID: "client-" + uid,
		BackoffInitial: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond, ShutdownJitter: 200 * time.Millisecond}
	if mut != nil {
		mut(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("testkit: client login of %d/%s: %v", app, uid, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// nodeEnv is the environment a test node inherits: the test's, without
// the node's and courierctl's own settings (COURIER_*, COURIERCTL_*),
// which a developer may have exported for a node of their own: a test
// node takes only what its test gives it.
func nodeEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if (strings.HasPrefix(kv, "COURIER_") || strings.HasPrefix(kv, "COURIERCTL_")) && !strings.HasPrefix(kv, "COURIER_TEST_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}
