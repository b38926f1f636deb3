package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/courier-im/courier/client"
	"github.com/courier-im/courier/cluster/node"
	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/testkit"
)

// courier runs the real binary with args and env and returns its exit
// code, standard output and standard error.
func courier(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testkit.CourierBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errw bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errw
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errw.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errw.String()
	}
	t.Fatalf("courier %v: %v", args, err)
	return -1, "", ""
}

// loopback are flags that keep a node that does start on free local ports.
func loopback(t *testing.T) []string {
	return []string{"--data-dir", t.TempDir(), "--gate.addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0",
		"--http-addr", "127.0.0.1:0", "--cluster.bind", "127.0.0.1:0"}
}

func TestCommandLineErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		err  string // in stderr
		out  string // in stdout
	}{
		{"unknown flag", []string{"--nope"}, 2, "courier: unknown flag: --nope", ""},
		{"malformed value", []string{"--gate.max-conns", "many"}, 2, `invalid argument "many" for "--gate.max-conns"`, ""},
		{"malformed duration", []string{"--shutdown-grace=10"}, 2, `invalid argument "10" for "--shutdown-grace"`, ""},
		{"positional argument", []string{"stop", "--dev"}, 2, `unexpected argument "stop"`, ""},
		{"dev on a public address", []string{"--dev", "--gate.addr", ":7000"}, 2, `--dev publishes known keys, so it listens on loopback only: gate.addr ":7000"`, ""},
		{"short secret", []string{"--app-secret", "1=short"}, 2, "node: app-secret for app 1: at least 16 bytes", ""},
		{"missing secret file", []string{"--app-secret-file", "1=/nonexistent/secret"}, 2, "node: app-secret-file 1=/nonexistent/secret: open /nonexistent/secret", ""},
		{"bad log level", []string{"--log-level", "loud"}, 2, `--log-level "loud"`, ""},
		{"negative GC floor", []string{"--gc-min-heap=-1"}, 2, "--gc-min-heap -1: must be 0 (none) or a number of bytes", ""},
		{"GC off by a negative percent", []string{"--gc-percent=-1"}, 2, "--gc-percent -1: must be in [10, 10000]", ""},
		// The cluster's settings are mistakes too (exit 2: systemd does
		// not restart), not failures to join.
		{"cluster shards", []string{"--cluster.shards", "0"}, 2, "cluster.shards 0: must be in [1, 256]", ""},
		{"public remoting without TLS", []string{"--cluster.bind", "0.0.0.0:7003"}, 2, `cluster.bind "0.0.0.0:7003": must be a loopback address`, ""},
		{"missing lists file", []string{"--app-secret", "1=0123456789abcdef", "--gate.lists-file", "/nonexistent/lists.json"}, 2, "node: gate.lists-file: open /nonexistent/lists.json", ""},
		{"dev cluster node refused its own store as asked", []string{"--dev", "--cluster.provider", "consul", "--cluster.local-store=false"}, 2, "--cluster.local-store allows it", ""},
		{"cluster on its own pebble", []string{"--app-secret", "1=0123456789abcdef", "--cluster.provider", "consul"}, 2, "--cluster.local-store allows it", ""},
		{"api address without a port", []string{"--app-secret", "1=0123456789abcdef", "--api-addr", "7001"}, 2, `node: api-addr "7001": want host:port`, ""},
		{"http address not a port", []string{"--app-secret", "1=0123456789abcdef", "--http-addr", "127.0.0.1:http"}, 2, `node: http-addr "127.0.0.1:http": port "http"`, ""},
		{"http on the api address", []string{"--app-secret", "1=0123456789abcdef", "--api-addr", "127.0.0.1:17001", "--http-addr", "127.0.0.1:17001"}, 2, "the same as api-addr", ""},
		{"drain window leaving no grace", []string{"--app-secret", "1=0123456789abcdef", "--drain-window", "29s", "--shutdown-grace", "30s"}, 2, "leave shutdown-grace 30s at least 5s after it", ""},
		{"version", []string{"version"}, 0, "", "courier "},
		{"help", []string{"--help"}, 0, "", "Usage: courier [flags]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.code != 0 && !strings.HasPrefix(tt.name, "dev") {
				args = append(loopback(t), args...)
			}
			if tt.code != 0 && strings.HasPrefix(tt.name, "dev") {
				// --dev picks its addresses, not its data directory: a
				// case that got past its check left a store in ./data.
				args = append([]string{"--data-dir", t.TempDir()}, args...)
			}
			code, out, errw := courier(t, nil, args...)
			if code != tt.code || !strings.Contains(errw, tt.err) || !strings.Contains(out, tt.out) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tt.code, out, errw)
			}
			if code == 0 && errw != "" {
				t.Fatalf("stderr on success: %s", errw)
			}
			// Mistakes in the command line show the usage; the node never
			// started.
			if strings.Contains(tt.err, "flag") || strings.Contains(tt.err, "argument") {
				if !strings.Contains(errw, "Usage: courier") || !strings.Contains(errw, "--gate.addr") {
					t.Fatalf("no usage after the error:\n%s", errw)
				}
			}
			if strings.Contains(errw, "node: started") {
				t.Fatalf("a node started:\n%s", errw)
			}
		})
	}
}

// TestShadowedEnvironmentVariableWarned: a variable for a setting the
// command line sets too is ignored, with a warning (a key added in a
// unit's env file behind its --api-key-file used to vanish silently).
func TestShadowedEnvironmentVariableWarned(t *testing.T) {
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errw := courier(t, []string{"COURIER_DATA_DIR=/elsewhere"}, append(loopback(t), "--data-dir", file)...)
	if code != 1 || !strings.Contains(errw, "environment variable ignored: the command line sets the same setting") ||
		!strings.Contains(errw, "name=COURIER_DATA_DIR") {
		t.Fatalf("exit %d:\n%s", code, errw)
	}
}

func TestUnknownEnvironmentVariableWarned(t *testing.T) {
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// The node fails on its data dir after warning about the misspelling;
	// courierctl's variables are not warned about.
	code, _, errw := courier(t, []string{"COURIER_GATE_ADR=:7000", "COURIER_API=127.0.0.1:7001"},
		append(loopback(t), "--data-dir", file)...)
	if code != 1 || !strings.Contains(errw, `msg="courier: unknown environment variable, ignored" name=COURIER_GATE_ADR`) ||
		strings.Contains(errw, "name=COURIER_API\n") {
		t.Fatalf("exit %d:\n%s", code, errw)
	}
}

// TestCourierctlVariablesInTheSameShell: courierctl's variables
// (COURIERCTL_*, and its old COURIER_API and COURIER_GATE) do not disturb
// a node started in the same shell; a bare key in COURIER_API_KEY, as
// courierctl once read it, stops the node with a hint at COURIERCTL_KEY.
func TestCourierctlVariablesInTheSameShell(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Env: []string{"COURIERCTL_KEY=" + testkit.App1Key, "COURIERCTL_API=127.0.0.1:1",
		"COURIERCTL_SECRET=" + testkit.App1Secret, "COURIERCTL_GATE=127.0.0.1:1", "COURIERCTL_API_TLS_CA=/x", "COURIER_API=127.0.0.1:1",
		"COURIER_GATE=127.0.0.1:1"}})
	n.Device(t, 1, "alice") // it serves
	if strings.Contains(n.Logs(), "unknown environment variable") {
		t.Fatalf("courierctl's variables were warned about:\n%s", n.Logs())
	}
	code, _, errw := courier(t, []string{"COURIER_API_KEY=" + testkit.App1Key}, loopback(t)...)
	if code != 2 || !strings.Contains(errw, "COURIER_API_KEY is the node's setting (--api-key, a map); a value for courierctl goes in COURIERCTL_KEY") {
		t.Fatalf("a bare key in COURIER_API_KEY: exit %d\n%s", code, errw)
	}
}

// TestConfigFileFromEnvironment: COURIER_CONFIG names the settings file
// like --config (it used to be applied after the file was read, so the
// file was silently ignored).
func TestConfigFileFromEnvironment(t *testing.T) {
	file := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(file, []byte("gate:\n  adr: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errw := courier(t, []string{"COURIER_CONFIG=" + file}, loopback(t)...)
	if code != 2 || !strings.Contains(errw, `unknown setting "gate.adr"`) {
		t.Fatalf("COURIER_CONFIG with an unknown key: exit %d\n%s", code, errw)
	}
}

func TestUnknownEnv(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	cfg := node.DefaultConfig()
	node.BindSettings(fs, &cfg)
	got := unknownEnv(fs, []string{"COURIER_GATE_ADDR=1", "COURIER_GATE_ADR=1", "COURIER_APP_SECRET_FILE=1=x", "COURIER_GATE=x", "HOME=/", "COURIER_ZZ=1"})
	if strings.Join(got, ",") != "COURIER_GATE_ADR,COURIER_ZZ" {
		t.Fatalf("unknown: %v", got)
	}
}

func TestDevLoopback(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	cfg := node.DefaultConfig()
	node.BindSettings(fs, &cfg)
	if err := fs.Parse([]string{"--api-addr", "localhost:9001"}); err != nil {
		t.Fatal(err)
	}
	if err := devLoopback(fs, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Gate.Addr != "127.0.0.1:7000" || cfg.APIAddr != "localhost:9001" || cfg.HTTPAddr != "127.0.0.1:7002" {
		t.Fatalf("addresses %q %q %q", cfg.Gate.Addr, cfg.APIAddr, cfg.HTTPAddr)
	}
}

func TestDataDirInUse(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	args := loopback(t)
	args[1] = n.DataDir()
	code, _, errw := courier(t, nil, args...)
	if code != 1 || !strings.Contains(errw, "data directory in use by another process") || !strings.Contains(errw, "is another courier running on it?") {
		t.Fatalf("exit %d:\n%s", code, errw)
	}
}

// TestSecretsFromFiles starts a node whose app secret and API keys come
// from files, one of them through the environment's map syntax, and uses
// them.
func TestSecretsFromFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secret := write("app3.secret", "secret-of-app-3-from-a-file")
	key := write("app3.key", "api-key-of-app-3-from-a-file")
	opKey := write("ops.key", "operator-key-from-a-file")
	n := testkit.StartNode(t, testkit.NodeOptions{
		Args: []string{"--app-secret-file", "3=" + secret},
		// The map syntax of the environment: KEY=VALUE,KEY=VALUE.
		Env: []string{"COURIER_API_KEY_FILE=" + key + "=3," + opKey + "=*"},
	})
	// The file's secret (without its newline) signs tokens the gate takes.
	cfg := client.Config{Addr: n.GateAddr, AppCode: 3, UID: "u1", TokenSource: func(context.Context) (string, error) {
		return gateToken(t, "secret-of-app-3-from-a-file", 3, "u1"), nil
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("login with the file's secret: %v", err)
	}
	defer c.Close()
	api := n.API(t)
	for _, k := range []string{"api-key-of-app-3-from-a-file", "operator-key-from-a-file"} {
		if _, err := api.Presence(testkit.Ctx(t, k), &apipb.PresenceRequest{AppCode: 3, Uids: []string{"u1"}}); err != nil {
			t.Fatalf("presence with key %s: %v", k, err)
		}
	}
}

// TestReadyAndQuietShutdown checks /readyz, that Proto.Actor's routine
// lines stay below the info level, and that an idle node stops at once
// with a final "stopped" line (it used to sleep two seconds in the actor
// library and up to a tick in the gate).
func TestReadyAndQuietShutdown(t *testing.T) {
	dir := t.TempDir()
	addrFile := filepath.Join(dir, "addrs.json")
	args := append(loopback(t), "--addr-file", addrFile, "--app-secret", "1=0123456789abcdef")
	cmd := exec.Command(testkit.CourierBinary(t), args...)
	var errw safeBuffer
	cmd.Stderr = &errw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	var httpAddr string
	testkit.Eventually(t, 60*time.Second, func() bool {
		b, err := os.ReadFile(addrFile)
		if m := regexp.MustCompile(`"http":"([^"]+)"`).FindSubmatch(b); err == nil && m != nil {
			httpAddr = string(m[1])
			return true
		}
		return false
	}, "the node did not start:\n%s", &errw)
	resp, err := http.Get("http://" + httpAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ready\n" {
		t.Fatalf("/readyz: %d %q", resp.StatusCode, body)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, errw.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit after SIGTERM:\n%s", errw.String())
	}
	logs := errw.String()
	if strings.Contains(logs, "component=protoactor") {
		t.Fatalf("Proto.Actor's lines at the info level:\n%s", logs)
	}
	stamps := regexp.MustCompile(`time=(\S+) level=INFO msg="courier: (shutting down|stopped)"`).FindAllStringSubmatch(logs, -1)
	if len(stamps) != 2 || stamps[1][2] != "stopped" {
		t.Fatalf("no shutting down / stopped lines:\n%s", logs)
	}
	from, _ := time.Parse(time.RFC3339Nano, stamps[0][1])
	to, _ := time.Parse(time.RFC3339Nano, stamps[1][1])
	if took := to.Sub(from); took > 5*time.Second { // well under the drain window (10 s) it must not wait for
		t.Fatalf("an idle node took %v to stop:\n%s", took, logs)
	}
}

// safeBuffer collects a process's output while the test reads it.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func gateToken(t *testing.T, secret string, app uint16, uid string) string {
	t.Helper()
	tok, err := gate.MintToken([]byte(secret), app, uid, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestMalformedSecretsAreNotEchoed: a malformed value of a setting that
// holds secrets is refused naming the setting, not repeating the value
// (the error goes to the logs), from the environment and the command
// line alike.
func TestMalformedSecretsAreNotEchoed(t *testing.T) {
	const secret = "s3cr3t-0123456789abcdef"
	for _, tc := range []struct {
		env  []string
		args []string
	}{
		{env: []string{"COURIER_APP_SECRET=1=" + secret + ",2=x,oops"}},
		{env: []string{"COURIER_API_KEY=" + secret + "=1,k=2,oops"}},
		{args: []string{"--app-secret", "1=" + secret + ",2=x,oops"}},
	} {
		code, _, errw := courier(t, tc.env, append(loopback(t), tc.args...)...)
		if code != 2 || strings.Contains(errw, secret) || !strings.Contains(errw, "the value is not shown") {
			t.Errorf("%v %v: exit %d:\n%s", tc.env, tc.args, code, errw)
		}
	}
}

// TestAddrFileOfAPreviousRunIsRemoved: --addr-file is removed at start,
// so a tool waiting for it never reads a previous run's addresses (here
// the run fails on a setting).
func TestAddrFileOfAPreviousRunIsRemoved(t *testing.T) {
	f := filepath.Join(t.TempDir(), "addrs.json")
	if err := os.WriteFile(f, []byte(`{"gate":"127.0.0.1:1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append(loopback(t), "--app-secret", "1=short", "--addr-file", f)
	if code, _, errw := courier(t, nil, args...); code != 2 {
		t.Fatalf("exit %d: %s", code, errw)
	}
	if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the previous run's --addr-file is still there (%v)", err)
	}
}

// TestDevBannerShowsOnlyCredentialsInForce: --dev adds its demo secret
// and keys only when none of their kind is configured, and its banner
// names only those it added. It printed all three whatever was
// configured: credentials the node refuses, printed beside the
// operator's own (which it must never show).
func TestDevBannerShowsOnlyCredentialsInForce(t *testing.T) {
	const ownSecret, ownKey = "operators-own-secret-0001", "operators-own-api-key-0001"
	tests := []struct {
		name      string
		configure func(*node.Config)
		shown     []string // in the banner
		hidden    []string // not in it
	}{
		{"nothing configured", func(*node.Config) {},
			[]string{devSecret, devKey, devOpKey, "--app 1 --uid alice --secret " + devSecret, "--key " + devKey + " --app 1"}, nil},
		{"an app secret", func(c *node.Config) { c.AppSecrets["2"] = ownSecret },
			[]string{devKey, devOpKey, "token secrets as configured", "--secret-file FILE_OF_ITS_SECRET", "--key " + devOpKey + " --app APPCODE"}, []string{devSecret, ownSecret}},
		{"an app secret file", func(c *node.Config) { c.AppSecretFiles = map[string]string{"1": "/run/secrets/app1"} },
			[]string{devKey, "token secrets as configured"}, []string{devSecret, "/run/secrets/app1"}},
		{"an API key", func(c *node.Config) { c.APIKeys[ownKey] = "*" },
			[]string{devSecret, "API keys as configured", "--key-file FILE_OF_AN_API_KEY"}, []string{devKey, devOpKey, ownKey}},
		{"both", func(c *node.Config) {
			c.AppSecrets["1"] = ownSecret
			c.APIKeyFiles = map[string]string{"/run/secrets/ops": "*"}
		},
			[]string{"token secrets as configured", "API keys as configured"}, []string{devSecret, devKey, devOpKey, ownSecret, "/run/secrets/ops"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := node.DefaultConfig()
			tt.configure(&cfg)
			devCredentials(&cfg)
			var b bytes.Buffer
			printDevHelp(&b, cfg, "127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002")
			for _, s := range tt.shown {
				if !strings.Contains(b.String(), s) {
					t.Errorf("no %q in the banner:\n%s", s, b.String())
				}
			}
			for _, s := range tt.hidden {
				if strings.Contains(b.String(), s) {
					t.Errorf("%q in the banner:\n%s", s, b.String())
				}
			}
		})
	}
}

// TestLoopbackGateAddressIsWarned: a gate listening on every interface
// (":7000") whose address is not set publishes the cluster address's
// host, 127.0.0.1 on a single node, in presence and /v1/gates: devices on
// other machines that use discovery could not dial it. The node says so
// at start, and not once gate-public-addr is set.
func TestLoopbackGateAddressIsWarned(t *testing.T) {
	const warning = "give devices a loopback gate address"
	// The node's output reaches Logs through a pipe: waited for.
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--gate.addr", ":0"}})
	testkit.Eventually(t, 10*time.Second, func() bool { return strings.Contains(n.Logs(), warning) }, "no warning of the loopback gate address")
	n = testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--gate.addr", ":0", "--gate-public-addr", "gate.example.com:7000"}})
	// "node: started" is logged after the point of the warning.
	testkit.Eventually(t, 10*time.Second, func() bool { return strings.Contains(n.Logs(), "node: started") }, "the node never said it started")
	if strings.Contains(n.Logs(), warning) {
		t.Fatalf("warned with gate-public-addr set:\n%s", n.Logs())
	}
}
