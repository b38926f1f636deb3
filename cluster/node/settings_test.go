package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/courier-im/courier/gate"
)

func TestSettingsPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "node.yaml")
	err := os.WriteFile(file, []byte(`
name: from-file
data-dir: /file/data
gate:
  addr: ":9000"
  heartbeat-interval: 45s
  proxy-from: [10.0.0.0/8, 192.168.1.7]
actors.window: 8
app-secret:
  "1": file-secret-0123456789
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	BindSettings(fs, &cfg)
	if err := fs.Parse([]string{"--name", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"COURIER_DATA_DIR": "/env/data", "COURIER_NAME": "from-env", "COURIER_ACTORS_WINDOW": "16"}
	if err := ApplyFileAndEnv(fs, file, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	switch {
	case cfg.Name != "from-flag":
		t.Errorf("name %q: the flag must win", cfg.Name)
	case cfg.DataDir != "/env/data":
		t.Errorf("data-dir %q: the environment must win over the file", cfg.DataDir)
	case cfg.Gate.Addr != ":9000" || cfg.Gate.HeartbeatInterval != 45*time.Second:
		t.Errorf("gate from file: %q %v", cfg.Gate.Addr, cfg.Gate.HeartbeatInterval)
	case cfg.Actors.Window != 16:
		t.Errorf("window %d", cfg.Actors.Window)
	case cfg.AppSecrets["1"] != "file-secret-0123456789":
		t.Errorf("secrets %v", cfg.AppSecrets)
	case len(cfg.Gate.ProxyFrom) != 2 || cfg.Gate.ProxyFrom[0] != "10.0.0.0/8" || cfg.Gate.ProxyFrom[1] != "192.168.1.7":
		t.Errorf("gate.proxy-from from a YAML list: %q", cfg.Gate.ProxyFrom)
	}
	if _, _, err := cfg.resolve(); err != nil {
		t.Fatalf("resolve: %v", err)
	}
	if cfg.Actors.Heartbeat != 45*time.Second {
		t.Errorf("actors announce heartbeat %v, gate uses 45s", cfg.Actors.Heartbeat)
	}
}

func TestSettingsErrorsNameTheField(t *testing.T) {
	file := filepath.Join(t.TempDir(), "bad.yaml")
	_ = os.WriteFile(file, []byte("gate:\n  adr: x\n"), 0o644)
	cfg := DefaultConfig()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	BindSettings(fs, &cfg)
	if err := ApplyFileAndEnv(fs, file, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), `"gate.adr"`) {
		t.Fatalf("unknown key: %v", err)
	}
	bad := func(mut func(*Config), field string) {
		t.Helper()
		c := DefaultConfig()
		mut(&c)
		if _, _, err := c.resolve(); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("want an error naming %s, got %v", field, err)
		}
	}
	bad(func(c *Config) { c.AppSecrets = map[string]string{"0": "0123456789abcdef"} }, "app-secret")
	bad(func(c *Config) { c.AppSecrets = map[string]string{"1": "short"} }, "app-secret")
	bad(func(c *Config) { c.APIKeys = map[string]string{"0123456789abcdef": "x"} }, "api-key")
	bad(func(c *Config) { c.Actors.Window = 0 }, "actors.window")
	bad(func(c *Config) { c.ShutdownGrace, c.DrainWindow = 0, 0 }, "shutdown-grace")
	bad(func(c *Config) { c.IdleMemoryRelease = time.Microsecond }, "idle-memory-release")
	bad(func(c *Config) { c.Gate.Addr = ":70000" }, "gate.addr")
	bad(func(c *Config) { c.Upstream.QueueLen = 0 }, "upstream.queue-len")
	bad(func(c *Config) { c.Upstream.ResendAfter = time.Millisecond }, "upstream.resend-after")
	bad(func(c *Config) { c.Upstream.AppMaxBytes = 1000 }, "upstream.app-max-bytes")
	bad(func(c *Config) { c.Upstream.MaxBytes = c.Upstream.AppMaxBytes - 1 }, "upstream.max-bytes")
	bad(func(c *Config) { c.API.MaxPayload = 1 << 20 }, "api.max-payload")
	bad(func(c *Config) { c.Store = "mysql" }, `store "mysql"`)
	bad(func(c *Config) { c.Store = "postgres" }, "store.dsn")
	bad(func(c *Config) { c.StoreDSN = "postgres://x" }, "store.dsn")
	bad(func(c *Config) { c.Store, c.StoreDSN, c.StoreDSNFile = "postgres", "a", "b" }, "store.dsn-file")
	bad(func(c *Config) { c.Store, c.StoreDSNFile = "postgres", "/nonexistent/dsn" }, "store.dsn-file")
	bad(func(c *Config) { c.Store, c.StoreDSN, c.StoreLanes = "postgres", "host=db", 16 }, "store.lanes")
	// A DSN that does not parse is a settings mistake (exit 2), named,
	// its password not shown.
	bad(func(c *Config) { c.Store, c.StoreDSN = "postgres", "postgres://u:hunter2@db:port/x" }, "store.dsn: store: postgres DSN does not parse")
	dsnFile := filepath.Join(t.TempDir(), "dsn")
	_ = os.WriteFile(dsnFile, []byte("host=db port=notaport password=hunter2\n"), 0o600)
	bad(func(c *Config) { c.Store, c.StoreDSNFile = "postgres", dsnFile }, "store.dsn-file "+dsnFile+": store: postgres DSN does not parse")
	// A certificate the DSN names that is not there yet (mounted after
	// boot) is the connection's failure (exit 1, retried), not the
	// settings'.
	ok := DefaultConfig()
	ok.AppSecrets = map[string]string{"1": "0123456789abcdef"}
	ok.Store, ok.StoreDSN = "postgres", "host=db sslmode=verify-full sslrootcert=/nonexistent/ca.pem"
	if _, _, err := ok.resolve(); err != nil {
		t.Errorf("a DSN naming a certificate not there yet: %v", err)
	}
	for _, dsn := range []string{"postgres://u:hunter2@db:port/x", "host=db port=notaport password=hunter2"} {
		c := DefaultConfig()
		c.Store, c.StoreDSN = "postgres", dsn
		if _, _, err := c.resolve(); err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("DSN %q: %v (want an error without the password)", dsn, err)
		}
	}
	bad(func(c *Config) { c.StoreTimeout = time.Millisecond }, "store.timeout")
	bad(func(c *Config) { c.Cluster.Provider = "consul" }, "cluster.local-store")
	bad(func(c *Config) { c.ConsulTokenFile = "/nonexistent/token" }, "cluster.consul-token-file")
	bad(func(c *Config) { c.ConsulTokenFile, c.Cluster.ConsulToken = "/nonexistent/token", "t" }, "set only one")
	for _, ok := range []func(*Config){
		func(c *Config) { c.Cluster.Provider, c.ClusterLocalStore = "consul", true },
		func(c *Config) { c.Cluster.Provider, c.Roles = "consul", "gate,api" },
	} {
		c := DefaultConfig()
		c.AppSecrets = map[string]string{"1": "0123456789abcdef"}
		ok(&c)
		if _, _, err := c.resolve(); err != nil {
			t.Errorf("a Consul node allowed its own Pebble store: %v", err)
		}
	}
	bad(func(c *Config) { c.StoreStallAfter = time.Millisecond }, "store.stall-after")
	bad(func(c *Config) { c.StoreLanes, c.Actors.MaxPendingWrites = 64, 1<<20 }, "commit queue slots")
	bad(func(c *Config) { c.StoreMinSyncInterval = -time.Millisecond }, "store.min-sync-interval")
	bad(func(c *Config) { c.StoreMinSyncInterval = time.Second }, "store.min-sync-interval")
	bad(func(c *Config) { c.Store, c.StoreDSN, c.StoreReaders = "postgres", "host=db", 0 }, "store.readers")
	bad(func(c *Config) { c.Store, c.StoreDSN, c.StoreReaders = "postgres", "host=db", 13 }, "store.readers")
	bad(func(c *Config) { c.Store, c.StoreDSN, c.StoreReadQueue = "postgres", "host=db", 0 }, "store.read-queue")
	bad(func(c *Config) { c.Actors.MaxStashed = 0 }, "actors.max-stashed")
	bad(func(c *Config) { c.Gate.ListsFile, c.Gate.ListsPollInterval = "x", 0 }, "gate.lists-poll-interval")
	bad(func(c *Config) { c.Actors.C2CSenderMaxMessages = c.Actors.C2CMaxMessages + 1 }, "actors.c2c-sender-max-messages")
	bad(func(c *Config) { c.Actors.MaxPendingWrites = 0 }, "actors.max-pending-writes")
	// The login burst and a PULL_ACK must fit the gate's queue for a
	// connection, whatever the messages contain.
	bad(func(c *Config) { c.Actors.WindowBytes = 512 << 10 }, "actors.window-bytes")
	bad(func(c *Config) { c.Actors.Window = 600 }, "actors.window")
	bad(func(c *Config) { c.API.MaxRequestBytes = 1 << 10 }, "api.max-request-bytes")
	bad(func(c *Config) { c.API.MaxConcurrentStreams = 0 }, "api.max-concurrent-streams")
	bad(func(c *Config) { c.API.KeepaliveMinTime = 0 }, "api.keepalive-min-time")
	bad(func(c *Config) { c.API.MaxConnectionIdle = time.Millisecond }, "api.max-connection-idle")
	bad(func(c *Config) { c.API.MaxPushesInFlight = c.API.MaxBatch - 1 }, "api.max-pushes-in-flight")
	bad(func(c *Config) { c.API.MaxGateBacklog = -time.Millisecond }, "api.max-gate-backlog")
	bad(func(c *Config) { c.API.MaxPushDelay = -time.Millisecond }, "api.max-push-delay")
	bad(func(c *Config) { c.IdleMemoryRelease = -time.Second }, "idle-memory-release")
	bad(func(c *Config) { c.API.MaxConnections = 0 }, "api.max-connections")
	// The gate stops when an accept fails for lack of descriptors: what
	// it leaves to the rest of the node must hold all of it.
	bad(func(c *Config) { c.API.MaxConnections = c.Gate.FDReserve }, "gate.fd-reserve")
	bad(func(c *Config) { c.Gate.FDReserve = 1024 }, "gate.fd-reserve")
	bad(func(c *Config) { c.API.MaxUnauthenticatedCalls = 0 }, "api.max-unauthenticated-calls")
	bad(func(c *Config) { c.API.MaxCallsInFlight = 0 }, "api.max-calls-in-flight")
	bad(func(c *Config) { c.API.MaxUpstreamStreams = 0 }, "api.max-upstream-streams")
	bad(func(c *Config) { c.API.MaxAppCallsInFlight = c.API.MaxCallsInFlight + 1 }, "api.max-app-calls-in-flight")
	bad(func(c *Config) { c.API.MaxAppUpstreamStreams = -1 }, "api.max-app-upstream-streams")
	bad(func(c *Config) { c.API.MaxAppPushesInFlight = c.API.MaxBatch - 1 }, "api.max-app-pushes-in-flight")
	bad(func(c *Config) { c.API.DefaultTTL = 0 }, "api.default-ttl")
	bad(func(c *Config) { c.API.MaxTTL = -time.Hour }, "api.default-ttl")
	bad(func(c *Config) { c.API.MaxBatch = 0 }, "api.max-batch")
	bad(func(c *Config) { c.API.MaxIdempotencyKey = 0 }, "api.max-idempotency-key")
	bad(func(c *Config) { c.API.MaxIdempotencyKey = 1025 }, "api.max-idempotency-key")
}

// TestStoreDSNFromFileAndEnv: the DSN comes from store.dsn-file (its
// whitespace trimmed) or from COURIER_STORE_DSN, never needing argv.
func TestStoreDSNFromFileAndEnv(t *testing.T) {
	file := filepath.Join(t.TempDir(), "dsn")
	if err := os.WriteFile(file, []byte("postgres://courier:pw@db/courier\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.Store, c.StoreDSNFile = "postgres", file
	if _, _, err := c.resolve(); err != nil || c.StoreDSN != "postgres://courier:pw@db/courier" {
		t.Fatalf("dsn from file: %q %v", c.StoreDSN, err)
	}
	cfg := DefaultConfig()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	BindSettings(fs, &cfg)
	_ = fs.Parse([]string{"--store", "postgres"})
	env := map[string]string{"COURIER_STORE_DSN": "host=db user=courier"}
	if err := ApplyFileAndEnv(fs, "", func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cfg.resolve(); err != nil || cfg.StoreDSN != "host=db user=courier" {
		t.Fatalf("dsn from the environment: %q %v", cfg.StoreDSN, err)
	}
	// In the config file, the store and its settings are dotted keys.
	yml := filepath.Join(t.TempDir(), "node.yaml")
	_ = os.WriteFile(yml, []byte("store: postgres\nstore.dsn-file: "+file+"\n"), 0o644)
	cfg = DefaultConfig()
	fs = pflag.NewFlagSet("t", pflag.ContinueOnError)
	BindSettings(fs, &cfg)
	if err := ApplyFileAndEnv(fs, yml, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cfg.resolve(); err != nil || cfg.StoreDSN != "postgres://courier:pw@db/courier" {
		t.Fatalf("dsn from the config file's dsn-file: %q %v", cfg.StoreDSN, err)
	}
}

// TestGateFieldsAreSettings: every name a gate error is rewritten to is a
// setting, and no gate field is shadowed by a shorter one listed first.
func TestGateFieldsAreSettings(t *testing.T) {
	cfg := DefaultConfig()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	BindSettings(fs, &cfg)
	for i, f := range gateFields {
		if fs.Lookup(f[1]) == nil {
			t.Errorf("%s maps to %q, which is not a setting", f[0], f[1])
		}
		for _, g := range gateFields[:i] {
			if strings.HasPrefix(f[0], g[0]) {
				t.Errorf("%s is shadowed by %s listed before it", f[0], g[0])
			}
		}
	}
	err := gateError(fmt.Errorf("%w: Config.NewConnsPerIPBurst 0: bad", gate.ErrInvalidConfig))
	if !strings.Contains(err.Error(), "gate.new-conns-per-ip-burst 0") {
		t.Fatalf("rewritten: %v", err)
	}
}

// TestNodeRefusesExposedRemoting: a node whose actor remoting would listen
// beyond loopback does not start, and says which setting to change.
func TestNodeRefusesExposedRemoting(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir, cfg.APIAddr, cfg.HTTPAddr, cfg.Gate.Addr = t.TempDir(), "127.0.0.1:0", "", "127.0.0.1:0"
	cfg.AppSecrets = map[string]string{"1": "0123456789abcdef"}
	cfg.Cluster.Bind, cfg.Cluster.Advertise = "0.0.0.0:0", "10.0.0.1:7100"
	n, err := Start(cfg, nil)
	if err == nil {
		n.Shutdown(context.Background())
		t.Fatal("the node started with remoting on 0.0.0.0")
	}
	if !strings.Contains(err.Error(), "cluster.bind") || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("error %q does not name cluster.bind and loopback", err)
	}
}

func TestAPITLSSettings(t *testing.T) {
	tests := []struct {
		cert, key, ca string
		want          string
	}{
		{"", "", "", ""},
		{"cert.pem", "", "", "api.tls-cert and api.tls-key: set both or neither"},
		{"", "", "ca.pem", "api.tls-cert and api.tls-key: set both or neither"},
		{"/nonexistent/cert.pem", "/nonexistent/key.pem", "", "api.tls-cert/api.tls-key: open /nonexistent/cert.pem"},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		c.APITLSCert, c.APITLSKey, c.APITLSClientCA = tt.cert, tt.key, tt.ca
		cfg, err := c.apiTLS()
		switch {
		case tt.want == "" && (err != nil || cfg != nil):
			t.Errorf("no TLS settings: %v %v", cfg, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%+v: error %v, want %q", tt, err, tt.want)
		}
	}
}

// TestSettingsErrorsUseTheNodesNames: errors found by the gate's and the
// actors' own checks name the node's settings, not their Go fields.
func TestSettingsErrorsUseTheNodesNames(t *testing.T) {
	c := DefaultConfig()
	c.AppSecrets = map[string]string{"1": "0123456789abcdef"}
	c.Gate.MaxFrameSize = 100
	if _, _, err := c.resolve(); err == nil || !strings.Contains(err.Error(), "gate.max-frame-size") || strings.Contains(err.Error(), "actors.") {
		t.Errorf("a frame limit of 100: %v", err)
	}
	err := gateError(fmt.Errorf("%w: Config.AppSecrets: empty and no Config.Authenticator", gate.ErrInvalidConfig))
	if !strings.Contains(err.Error(), "app-secret: none set") || strings.Contains(err.Error(), "Config.") {
		t.Errorf("no app secret: %v", err)
	}
}

// TestConsulTokenFromAFile: the token file's content (trimmed) is the
// token.
func TestConsulTokenFromAFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(f, []byte("  s3cr3t-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.AppSecrets = map[string]string{"1": "0123456789abcdef"}
	c.ConsulTokenFile = f
	if _, _, err := c.resolve(); err != nil || c.Cluster.ConsulToken != "s3cr3t-token" {
		t.Fatalf("token %q, %v", c.Cluster.ConsulToken, err)
	}
}

// TestEnvironmentReplacesTheFilesListsAndMaps: a list or map setting in
// both the file and the environment takes the environment's value alone
// (it was added to the file's: a key revoked through the environment
// still worked, a proxy range removed was still trusted). A key given
// with no value is empty, not "<nil>".
func TestEnvironmentReplacesTheFilesListsAndMaps(t *testing.T) {
	file := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(file, []byte(`
api-key:
  old-key-0123456789abcdef: "1"
gate:
  proxy-from: [10.0.0.0/8]
gate-public-addr:
`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	BindSettings(fs, &cfg)
	env := map[string]string{"COURIER_API_KEY": "new-key-0123456789abcdef=1", "COURIER_GATE_PROXY_FROM": "192.168.0.0/16"}
	if err := ApplyFileAndEnv(fs, file, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if len(cfg.APIKeys) != 1 || cfg.APIKeys["new-key-0123456789abcdef"] != "1" {
		t.Errorf("api keys %v, want the environment's alone", cfg.APIKeys)
	}
	if len(cfg.Gate.ProxyFrom) != 1 || cfg.Gate.ProxyFrom[0] != "192.168.0.0/16" {
		t.Errorf("gate.proxy-from %q, want the environment's alone", cfg.Gate.ProxyFrom)
	}
	if cfg.GatePublicAddr != "" {
		t.Errorf("gate-public-addr %q from a key with no value, want empty", cfg.GatePublicAddr)
	}
}

// TestYAMLShapes: an unquoted appcode is a YAML integer key, which the
// file reader took for no map at all (the app's secret then failed to
// parse, its message unclear); a nested "store:" map, whose key is a
// setting of its own, was reported as an unknown setting "store".
func TestYAMLShapes(t *testing.T) {
	load := func(yaml string) (Config, error) {
		t.Helper()
		file := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		BindSettings(fs, &cfg)
		err := ApplyFileAndEnv(fs, file, func(string) string { return "" })
		return cfg, err
	}
	cfg, err := load("app-secret:\n  1: a-secret-of-at-least-16-bytes\n  2: another-secret-of-16-bytes\napi-key:\n  key-of-the-dispatch-service: 2\n")
	if err != nil || cfg.AppSecrets["1"] != "a-secret-of-at-least-16-bytes" || cfg.AppSecrets["2"] != "another-secret-of-16-bytes" ||
		cfg.APIKeys["key-of-the-dispatch-service"] != "2" {
		t.Fatalf("unquoted appcodes: %v %v %v", err, cfg.AppSecrets, cfg.APIKeys)
	}
	// Keys and values as written: YAML would make numbers of them, and
	// print them back as other strings.
	cfg, err = load("app-secret:\n  3: 0123456789012345\napi-key:\n  0123456789012345678: 3\n")
	if err != nil || cfg.AppSecrets["3"] != "0123456789012345" || cfg.APIKeys["0123456789012345678"] != "3" {
		t.Fatalf("all-digit secrets and keys: %v %v %v", err, cfg.AppSecrets, cfg.APIKeys)
	}
	for _, y := range []string{"store:\n  dsn-file: /run/secrets/dsn\n", "store: {}\n"} {
		_, err = load(y)
		if err == nil || !strings.Contains(err.Error(), `setting "store" takes one value, not a map`) || !strings.Contains(err.Error(), "dotted") {
			t.Fatalf("%q: %v", y, err)
		}
	}
	if _, err = load("store:\n  dsn-file: /run/secrets/dsn\n"); err == nil || !strings.Contains(err.Error(), `"store.dsn-file"`) {
		t.Fatalf("the hint does not name the setting under store: %v", err)
	}
	cfg, err = load("store: postgres\nstore.dsn-file: /run/secrets/dsn\n")
	if err != nil || cfg.Store != "postgres" || cfg.StoreDSNFile != "/run/secrets/dsn" {
		t.Fatalf("dotted store settings: %v %+v", err, cfg.Store)
	}
}
