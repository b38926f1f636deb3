package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

func TestCommandLineErrors(t *testing.T) {
	tests := []struct {
		args []string
		code int
		err  string // in stderr
		out  string // in stdout
	}{
		{[]string{"bogus"}, 2, `unknown command "bogus"`, ""},
		{[]string{"push", "--nope"}, 2, "unknown flag: --nope", ""},
		{[]string{"push", "--app", "x"}, 2, `invalid argument "x" for "--app"`, ""},
		{[]string{"push", "alice"}, 2, `takes no arguments, got ["alice"]`, ""},
		{[]string{"lists", "add"}, 2, "needs at least 1 argument", ""},
		{[]string{"device", "--gate"}, 2, "flag needs an argument", ""},
		// Nothing listens there: a later try may get through (exit 3).
		{[]string{"push", "--api", "127.0.0.1:1", "--key", "0123456789abcdef", "--uid", "a", "--payload", "x"}, 3, "Unavailable", ""},
		{[]string{"token", "--uid", "u", "--secret", "0123456789abcdef"}, 0, "", "eyJ"},
		{[]string{"version"}, 0, "", "courierctl "},
		{[]string{"--help"}, 0, "", "Usage:"},
		{[]string{"push", "--help"}, 0, "", "--idempotency-key"},
		{[]string{"drain"}, 2, "drain takes one node name (or instance id), got 0 arguments", ""},
		{[]string{"drain", "node1", "node2"}, 2, "got 2 arguments", ""},
		{[]string{"drain", "--help"}, 0, "", "--window"},
		{[]string{"token", "--uid", "u", "--secret", "0123456789abcdef", "--app", "65537"}, 2, "--app 65537: an appcode is at most 65535", ""},
		{[]string{"device", "--uid", "u", "--secret", "0123456789abcdef", "--app", "0"}, 2, "--app 0: must be in [1, 65535]", ""},
		{[]string{"push", "--key", "0123456789abcdef", "--payload", "x"}, 2, "--uid is required", ""},
		{[]string{"token", "--secret", "0123456789abcdef"}, 2, "--uid is required", ""},
		{[]string{"lists", "add", "x", "--key", "0123456789abcdef", "--list", "bogus"}, 2, `--list "bogus"`, ""},
		// Cut to 32 bits it was msgtype 1.
		{[]string{"stats", "--key", "0123456789abcdef", "--msgtype", "4294967297"}, 2, "--msgtype 4294967297: out of range", ""},
		{[]string{"stats", "--key", "0123456789abcdef", "--window", "500ms"}, 2, "--window 500ms: at least 1s", ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Setenv("COURIERCTL_KEY", "")
			t.Setenv("COURIER_API_KEY", "")
			var out, errw bytes.Buffer
			code := run(tt.args, strings.NewReader(""), &out, &errw)
			if code != tt.code || !strings.Contains(errw.String(), tt.err) || !strings.Contains(out.String(), tt.out) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tt.code, out.String(), errw.String())
			}
			if tt.code == 2 && !strings.Contains(errw.String(), "Usage:") {
				t.Fatalf("usage error without the usage:\n%s", errw.String())
			}
			if tt.code == 0 && errw.Len() != 0 {
				t.Fatalf("stderr on success: %s", errw.String())
			}
		})
	}
}

// TestUsageMistakesExit2: a flag missing, a value out of its range, flags
// that go together given alone are mistakes on the command line, not
// failures of the command: exit 2 with the usage (they exited 1, or
// dialled the node first), and nothing is done.
func TestUsageMistakesExit2(t *testing.T) {
	for _, name := range []string{"COURIERCTL_KEY", "COURIERCTL_KEY_FILE", "COURIER_API_KEY", "COURIER_API_KEY_FILE", "COURIERCTL_SECRET", "COURIER_APP_SECRET",
		"COURIERCTL_API_TLS_CERT", "COURIERCTL_API_TLS_KEY", "COURIERCTL_GATE_TLS_CERT", "COURIERCTL_GATE_TLS_KEY"} {
		t.Setenv(name, "")
	}
	dir := t.TempDir()
	// Nothing listens there: a command that dials before it checks its
	// flags fails with exit 3 instead.
	api := []string{"--api", "127.0.0.1:1", "--key", "0123456789abcdef"}
	tests := []struct {
		name string
		args []string
		err  string
	}{
		{"no key", []string{"push", "--uid", "a", "--api", "127.0.0.1:1", "--key", ""}, "--key, --key-file or COURIERCTL_KEY is required"},
		{"no secret for a token", []string{"token", "--uid", "u"}, "--secret, --secret-file or COURIERCTL_SECRET is required"},
		{"no secret nor token for a device", []string{"device", "--uid", "u", "--gate", "127.0.0.1:1"}, "--token, --secret, --secret-file or COURIERCTL_SECRET is required"},
		{"client certificate without its key", append([]string{"presence", "--uid", "u", "--tls-cert", dir + "/c.pem"}, api...), "--tls-cert and --tls-key go together"},
		{"device key without its certificate", []string{"device", "--uid", "u", "--secret", "0123456789abcdef", "--gate", "127.0.0.1:1", "--tls-key", dir + "/k.pem"}, "--tls-cert and --tls-key go together"},
		{"kick without a uid", append([]string{"kick"}, api...), "--uid is required"},
		{"appcode beyond 16 bits", append([]string{"push", "--uid", "a", "--payload", "x", "--app", "65537"}, api...), "--app 65537: an appcode is at most 65535"},
		{"list appcode beyond 16 bits", append([]string{"lists", "add", "--list", "uid-blacklist", "--app", "70000", "u"}, api...), "--app 70000: an appcode is at most 65535"},
		{"presence without a uid", append([]string{"presence"}, api...), "--uid is required"},
		{"drain window too long", append([]string{"drain", "node1", "--window", "11m"}, api...), "--window 11m0s: must be in [0, 10m0s]"},
		{"drain negative wait", append([]string{"drain", "node1", "--wait", "-1s"}, api...), "--wait -1s: must not be negative"},
		{"stats window too long", append([]string{"stats", "--window", "2h"}, api...), "--window 2h0m0s: at most 1h0m0s"},
		{"certs for no node", []string{"certs", "--dir", dir, "--nodes", " , "}, "--nodes: name at least one node"},
		{"certs for no host", []string{"certs", "--dir", dir, "--hosts", ""}, "--hosts: name at least one host"},
		{"certs for a path", []string{"certs", "--dir", dir, "--nodes", "node1,../node2"}, `--nodes: "../node2" is not a file name`},
		{"certs valid for no time", []string{"certs", "--dir", dir, "--validity", "0s"}, "--validity 0s: must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errw bytes.Buffer
			code := run(tt.args, strings.NewReader(""), &out, &errw)
			if code != 2 || !strings.Contains(errw.String(), "courierctl: "+tt.err) || !strings.Contains(errw.String(), "Usage:") {
				t.Fatalf("exit %d (want 2 with the usage)\nstdout: %s\nstderr: %s", code, out.String(), errw.String())
			}
		})
	}
	// certs checked every flag before it wrote anything.
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("certs wrote %v after a mistake on its command line", left)
	}
}

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

// device runs `courierctl device` with a pipe as its input.
type device struct {
	in   *io.PipeWriter
	out  syncBuffer
	errw syncBuffer
	code chan int
}

func startDevice(t *testing.T, args ...string) *device {
	d := &device{code: make(chan int, 1)}
	r, w := io.Pipe()
	d.in = w
	go func() { d.code <- run(append([]string{"device"}, args...), r, &d.out, &d.errw) }()
	t.Cleanup(func() { w.Close() })
	return d
}

func (d *device) waitFor(t *testing.T, s string) {
	t.Helper()
	testkit.Eventually(t, 20*time.Second, func() bool { return strings.Contains(d.out.String(), s) },
		"device output never showed %q:\n%s\nstderr:\n%s", s, &d.out, &d.errw)
}

func (d *device) exit(t *testing.T) int {
	t.Helper()
	select {
	case c := <-d.code:
		return c
	case <-time.After(20 * time.Second):
		t.Fatalf("the device did not exit:\n%s", d.out.String())
		return -1
	}
}

func TestDeviceVerboseAndEndOfInput(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	d := startDevice(t, "--gate", n.GateAddr, "--uid", "alice", "--secret", testkit.App1Secret, "-v")
	d.waitFor(t, "logged in as 1/alice")
	r, err := n.API(t).Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: "alice", Msgtype: 4, Payload: []byte("order 17")})
	if err != nil {
		t.Fatal(err)
	}
	// The push is labelled with its inbox seq, the ack it sends with its
	// own frame seq.
	d.waitFor(t, fmt.Sprintf("← S2C              inbox-seq=%-5d msgtype=4    msg_id=%s payload=\"order 17\"", r.Seq, r.MsgId))
	d.waitFor(t, `→ S2C_ACK          seq=`)
	d.waitFor(t, fmt.Sprintf(`{"msgId":"%s"}`, r.MsgId))
	fmt.Fprintln(d.in, "c2c bob hello bob")
	d.waitFor(t, "← C2C_ACK OK msg_id=")
	d.in.Close() // end of input: log out and exit
	if c := d.exit(t); c != 0 {
		t.Fatalf("exit %d:\n%s\n%s", c, d.out.String(), d.errw.String())
	}
	if out := d.out.String(); !strings.Contains(out, "→ LOGOUT") || !strings.Contains(out, "logged out") {
		t.Fatalf("no logout:\n%s", out)
	}
	// What it showed was acknowledged: nothing waits for the next run.
	pr, err := n.API(t).Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{"alice"}})
	if err != nil || pr.Entries[0].Pending != 0 {
		t.Fatalf("presence after the run: %v %v", pr, err)
	}
}

func TestDeviceReconnectsAfterShutdown(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	var gate atomic.Value
	gate.Store(n.GateAddr)
	disc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, `{"gates":[{"addr":%q}]}`, gate.Load())
	}))
	defer disc.Close()
	d := startDevice(t, "--discover", disc.URL+"/v1/gates", "--backoff-max", "500ms", "--uid", "bob", "--secret", testkit.App1Secret)
	d.waitFor(t, "logged in as 1/bob")
	n.Stop(syscall.SIGTERM)
	d.waitFor(t, "kicked out: SERVER_SHUTDOWN")
	n.Restart()
	gate.Store(n.GateAddr)
	r, err := n.API(t).Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: "bob", Payload: []byte("after restart")})
	if err != nil {
		t.Fatal(err)
	}
	d.waitFor(t, "msg_id="+r.MsgId)
	d.in.Close()
	if c := d.exit(t); c != 0 {
		t.Fatalf("exit %d:\n%s\n%s", c, d.out.String(), d.errw.String())
	}
}

func TestDeviceKickedExits(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	d := startDevice(t, "--gate", n.GateAddr, "--uid", "carol", "--secret", testkit.App1Secret)
	d.waitFor(t, "logged in as 1/carol")
	n.Device(t, 1, "carol")
	if c := d.exit(t); c != 1 || !strings.Contains(d.errw.String(), "LOGGED_IN_ELSEWHERE") {
		t.Fatalf("exit %d:\n%s\n%s", c, d.out.String(), d.errw.String())
	}
}

func TestDeviceGivesUpOnAWrongGate(t *testing.T) {
	// A listener that is closed at once: its port refuses connections.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	start := time.Now()
	d := startDevice(t, "--gate", addr, "--uid", "dave", "--secret", testkit.App1Secret, "--connect-timeout", "1500ms")
	if c := d.exit(t); c != 1 || !strings.Contains(d.errw.String(), "not logged in within --connect-timeout 1.5s") ||
		!strings.Contains(d.errw.String(), "connection refused") {
		t.Fatalf("exit %d:\n%s\n%s", c, d.out.String(), d.errw.String())
	}
	if took := time.Since(start); took < 1500*time.Millisecond || took > 10*time.Second {
		t.Fatalf("gave up after %v, want about 1.5s", took)
	}
}

func TestAPIOverTLS(t *testing.T) {
	files := testkit.NewTLSFiles(t)
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--api.tls-cert", files.ServerCert, "--api.tls-key", files.ServerKey,
		"--api.tls-client-ca", files.CA}})
	keyFile := t.TempDir() + "/key"
	if err := os.WriteFile(keyFile, []byte(testkit.App1Key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"presence", "--api", n.APIAddr, "--key-file", keyFile, "--uid", "alice", "--tls-ca", files.CA}
	var out, errw bytes.Buffer
	if code := run(append(base, "--tls-cert", files.ClientCert, "--tls-key", files.ClientKey), nil, &out, &errw); code != 0 || !strings.Contains(out.String(), `"uid": "alice"`) {
		t.Fatalf("presence over mutual TLS: exit %d\n%s\n%s", code, out.String(), errw.String())
	}
	out.Reset()
	errw.Reset()
	// Refused at the handshake, gRPC says UNAVAILABLE, as for a node that
	// is down: exit 3 (docs/operating.md).
	if code := run(base, nil, &out, &errw); code != 3 || !strings.Contains(errw.String(), "Unavailable") {
		t.Fatalf("presence without a client certificate: exit %d\n%s\n%s", code, out.String(), errw.String())
	}
}

func TestStatsTable(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	c := n.Client(t, 1, "alice", nil)
	api := n.API(t)
	for _, mt := range []uint32{3, 3, 9} {
		if _, err := api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: "alice", Msgtype: mt, Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		m, err := c.Recv(testkit.Ctx(t, ""))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Ack(testkit.Ctx(t, ""), m); err != nil { // handled
			t.Fatal(err)
		}
	}
	args := []string{"stats", "--api", n.APIAddr, "--key", testkit.App1Key}
	var out, errw bytes.Buffer
	testkit.Eventually(t, 10*time.Second, func() bool {
		out.Reset()
		return run(args, nil, &out, &errw) == 0 && regexp.MustCompile(`(?m)^\s+all\s+3\s+3\s+3\s`).MatchString(out.String())
	}, "stats never counted the 3 acks:\n%s%s", &out, &errw)
	table := out.String()
	// The counts cover the minute and the current 10-second slot's
	// elapsed part, and the table says how long.
	if !regexp.MustCompile(`app 1, last 1m[0-9]+s:`).MatchString(table) {
		t.Fatalf("no window of 1m0s to 1m10s in\n%s", table)
	}
	for _, want := range []string{"RATE (msg/s)", "ARRIVAL", "ACK p50", "since the node started:", "100.0%"} {
		if !strings.Contains(table, want) {
			t.Fatalf("no %q in\n%s", want, table)
		}
	}
	if !regexp.MustCompile(`(?m)^\s+3\s+2\s+2\s+2\s+0\s+0\s+0\s+0\.03\s+100\.0%\s+\d+(\.\d)?(µs|ms)`).MatchString(table) {
		t.Fatalf("msgtype 3's row:\n%s", table)
	}
	out.Reset()
	if code := run(append(args, "--json"), nil, &out, &errw); code != 0 || !strings.Contains(out.String(), `"arrivalRateTotal": 1`) {
		t.Fatalf("--json: %d\n%s", code, out.String())
	}
}

// TestEnvironment: courierctl reads COURIERCTL_* variables; the old
// COURIER_* names work with a warning where they cannot be the node's
// settings, and the node's own values (COURIER_API_KEY=KEY=APPCODE, set
// for a node in the same shell) are left alone.
func TestEnvironment(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	for _, name := range []string{"COURIERCTL_API", "COURIERCTL_KEY", "COURIERCTL_KEY_FILE", "COURIER_API", "COURIER_API_KEY", "COURIER_API_KEY_FILE"} {
		t.Setenv(name, "")
	}
	presence := func(args ...string) (int, string, string) {
		t.Helper()
		var out, errw bytes.Buffer
		code := run(append([]string{"presence", "--uid", "alice"}, args...), nil, &out, &errw)
		return code, out.String(), errw.String()
	}

	t.Setenv("COURIERCTL_API", n.APIAddr)
	t.Setenv("COURIERCTL_KEY", testkit.App1Key)
	t.Setenv("COURIER_API_KEY", "another-key-of-the-node-0001=2") // the node's, in the same shell
	if code, out, errw := presence(); code != 0 || !strings.Contains(out, `"uid": "alice"`) || errw != "" {
		t.Fatalf("with COURIERCTL_API and COURIERCTL_KEY: exit %d\n%s\n%s", code, out, errw)
	}
	// --help does not print the key as the flag's default.
	if code, out, _ := presence("--help"); code != 0 || strings.Contains(out, testkit.App1Key) {
		t.Fatalf("--help shows the key:\n%s", out)
	}

	t.Setenv("COURIERCTL_KEY", "")
	if code, _, errw := presence(); code != 2 || !strings.Contains(errw, "COURIERCTL_KEY is required") || strings.Contains(errw, "deprecated") {
		t.Fatalf("with only the node's COURIER_API_KEY: exit %d\n%s", code, errw)
	}

	// The old names, with values only courierctl can mean.
	t.Setenv("COURIERCTL_API", "")
	t.Setenv("COURIER_API", n.APIAddr)
	t.Setenv("COURIER_API_KEY", testkit.App1Key)
	code, out, errw := presence()
	if code != 0 || !strings.Contains(out, `"uid": "alice"`) {
		t.Fatalf("with the old names: exit %d\n%s\n%s", code, out, errw)
	}
	for _, w := range []string{"COURIER_API is deprecated (COURIER_* variables are the node's settings): set COURIERCTL_API instead",
		"COURIER_API_KEY is deprecated (COURIER_* variables are the node's settings): set COURIERCTL_KEY instead"} {
		if !strings.Contains(errw, w) {
			t.Fatalf("no warning %q:\n%s", w, errw)
		}
	}
	// No warning for a variable the command line overrides.
	if code, _, errw := presence("--key", testkit.App1Key); code != 0 || strings.Contains(errw, "COURIER_API_KEY is deprecated") {
		t.Fatalf("--key given: exit %d\n%s", code, errw)
	}

	// The node's api.tls-cert is never courierctl's client certificate.
	t.Setenv("COURIER_API_TLS_CERT", "/nonexistent/server.pem")
	t.Setenv("COURIER_API_TLS_KEY", "/nonexistent/server.key")
	if code, _, errw := presence(); code != 0 {
		t.Fatalf("with the node's TLS settings in the environment: exit %d\n%s", code, errw)
	}
}

func TestLegacyValueIsOurs(t *testing.T) {
	key, secret := notNodeMap(false), notNodeMap(true)
	tests := []struct {
		f    func(string) bool
		v    string
		ours bool
	}{
		{key, "courier-dev-api-key-0001", true},
		{key, "Y291cmllci1rZXk=", true}, // base64 with padding: "=" is no appcode
		{key, "Y291cmllci1rZXk==", true},
		{key, "courier-dev-api-key-0001=1", false},
		{key, "k1-0123456789abcdef=2,k2-0123456789abcdef=*", false},
		{key, "k1-0123456789abcdef=2,bare", true},
		{key, "/run/secrets/key", true},
		{key, "/run/secrets/key=3", false},
		{secret, "courier-dev-secret-app-1", true},
		{secret, "1=courier-dev-secret-app-1", false},
		{secret, "1=a,2=b", false},
		{secret, "x=courier-dev-secret", true},
	}
	for _, tt := range tests {
		if got := tt.f(tt.v); got != tt.ours {
			t.Errorf("%q: courierctl's %v, want %v", tt.v, got, tt.ours)
		}
	}
}

// TestPushRefusalReason: a push the node refuses prints, after the
// message, the refusal's reason and setting (its google.rpc.ErrorInfo).
func TestPushRefusalReason(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--actors.inbox-max-messages", "1"}})
	args := []string{"push", "--api", n.APIAddr, "--key", testkit.App1Key, "--uid", "offline", "--payload", "x"}
	var out, errw bytes.Buffer
	if code := run(args, nil, &out, &errw); code != 0 {
		t.Fatalf("first push: exit %d\n%s", code, errw.String())
	}
	out.Reset()
	if code := run(args, nil, &out, &errw); code != 1 ||
		!strings.Contains(errw.String(), "courierctl: reason INBOX_FULL (setting actors.inbox-max-messages)") {
		t.Fatalf("a push to a full inbox: exit %d\n%s", code, errw.String())
	}
	// Several uids are one PushMany: an item refused fails the command as
	// a single push does, after the results are printed.
	out.Reset()
	errw.Reset()
	if code := run(append(args, "--uid", "another"), nil, &out, &errw); code != 1 ||
		!strings.Contains(errw.String(), "1 of 2 pushes failed") || !strings.Contains(out.String(), "INBOX_FULL") {
		t.Fatalf("a PushMany with one item refused: exit %d\nstdout: %s\nstderr: %s", code, out.String(), errw.String())
	}
}

// TestDrainWaitThroughTheDrainedNode: `drain --wait` asked through the
// node it drains (its own API address) waits through another member and
// reports success once the node has left, rather than failing when the
// node it asked exits as told.
func TestDrainWaitThroughTheDrainedNode(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"", ""}})
	c.WaitConverged()
	n2 := c.Node("node2")
	var out, errw bytes.Buffer
	code := run([]string{"drain", "node2", "--api", n2.APIAddr, "--key", testkit.OperatorKey, "--window", "100ms", "--wait", "60s"},
		nil, &out, &errw)
	if code != 0 || !strings.Contains(out.String(), "drained: the node has left the cluster") {
		t.Fatalf("drain --wait through node2: exit %d\nstdout: %s\nstderr: %s", code, out.String(), errw.String())
	}
	n2.WaitExit(30 * time.Second)
}

// TestKeySources: a flag wins over either variable; two sources at one
// level are refused, naming both, rather than one chosen silently.
func TestKeySources(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	for _, name := range []string{"COURIERCTL_KEY", "COURIERCTL_KEY_FILE", "COURIER_API_KEY", "COURIER_API_KEY_FILE"} {
		t.Setenv(name, "")
	}
	wrong := t.TempDir() + "/wrong-key"
	if err := os.WriteFile(wrong, []byte("not-a-key-of-this-node-0001\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	presence := func(args ...string) (int, string) {
		t.Helper()
		var out, errw bytes.Buffer
		code := run(append([]string{"presence", "--api", n.APIAddr, "--uid", "alice"}, args...), nil, &out, &errw)
		return code, errw.String()
	}
	t.Setenv("COURIERCTL_KEY_FILE", wrong)
	if code, errw := presence("--key", testkit.App1Key); code != 0 {
		t.Fatalf("--key with COURIERCTL_KEY_FILE set: exit %d\n%s", code, errw)
	}
	if code, errw := presence("--key", testkit.App1Key, "--key-file", wrong); code != 2 || !strings.Contains(errw, "--key and --key-file: give one") {
		t.Fatalf("--key and --key-file: exit %d\n%s", code, errw)
	}
	t.Setenv("COURIERCTL_KEY", testkit.App1Key)
	if code, errw := presence(); code != 2 || !strings.Contains(errw, "COURIERCTL_KEY and COURIERCTL_KEY_FILE are both set") {
		t.Fatalf("both variables: exit %d\n%s", code, errw)
	}
}

// TestStatsNamesMissingNodes: counts without some nodes say so above the
// tables, not only in --json.
func TestStatsNamesMissingNodes(t *testing.T) {
	var out bytes.Buffer
	printStats(&out, &apipb.StatsResponse{AppCode: 1, WindowSeconds: 60, NodesMissing: []string{"node2", "node3"}})
	if !strings.HasPrefix(out.String(), "incomplete: node2, node3 did not answer") {
		t.Fatalf("stats with nodes missing:\n%s", out.String())
	}
}

// TestUpstreamLinesCannotBeForged: a device chooses its C2S's
// client_msg_id (and its uid is the token's); printed bare, a newline in
// one wrote a line of the device's own into the app-server's log.
func TestUpstreamLinesCannotBeForged(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	var out, errw syncBuffer
	go run([]string{"upstream", "--api", n.APIAddr, "--key", testkit.App1Key, "--app", "1"}, strings.NewReader(""), &out, &errw)
	testkit.Eventually(t, 20*time.Second, func() bool { return strings.Contains(errw.String(), "subscribing") },
		"upstream never subscribed: %s", &errw)
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	if ack := d.Login("mallory", testkit.Token(t, 1, "mallory"), false); ack.Code != devicepb.Code_OK {
		t.Fatalf("login: %v", ack)
	}
	const forged = "x\n12:00:00.000 C2S app=1 msgtype=0 uid=admin"
	d.Send(messages.CmdC2S, d.NextSeq(), &devicepb.C2S{ClientMsgId: forged, Payload: []byte("p")})
	testkit.Eventually(t, 20*time.Second, func() bool { return strings.Contains(out.String(), "C2S app=1") },
		"no C2S printed: %s %s", &out, &errw)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], `client_msg_id="x\n12:00`) || !strings.Contains(lines[0], `uid="mallory"`) {
		t.Fatalf("the device's C2S printed as:\n%s", out.String())
	}
}

// TestCertsReportsOnItsOutput: certs says what it made on the command's
// output (it printed to the process's stdout, past a caller's writer),
// and reuses the CA the second time.
func TestCertsReportsOnItsOutput(t *testing.T) {
	dir := t.TempDir()
	for i, want := range []string{"made a CA: " + dir + "/ca.pem", "using the CA in " + dir + "/ca.pem"} {
		var out, errw bytes.Buffer
		if code := run([]string{"certs", "--dir", dir, "--nodes", "node1"}, nil, &out, &errw); code != 0 ||
			!strings.Contains(out.String(), want) || !strings.Contains(out.String(), "node1: --cluster.tls-ca "+dir+"/ca.pem") {
			t.Fatalf("run %d: exit %d\n%s\n%s", i, code, out.String(), errw.String())
		}
	}
}
