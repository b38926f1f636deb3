package node

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/courier-im/courier/actors"
	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/cluster"
	"github.com/courier-im/courier/cluster/api"
	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/cluster/upstream"
	"github.com/courier-im/courier/gate"
)

// Config is everything a node runs with. Each field is also a setting of
// `courier` (flag, environment variable, config file key): see Settings.
type Config struct {
	// Name identifies the node in logs and presence (default: host name).
	Name string
	// Roles are what the node runs: any of "gate", "actors", "api",
	// comma-separated (default all three).
	Roles string
	// DataDir holds the embedded store (default "./data").
	DataDir string
	// APIAddr is the gRPC API's listen address (default ":7001").
	APIAddr string
	// HTTPAddr serves /metrics and /healthz (default ":7002"; "" disables).
	HTTPAddr string
	// APITLSCert and APITLSKey are PEM files of the API's certificate and
	// key: set, the API speaks only TLS (default: plaintext).
	APITLSCert string
	APITLSKey  string
	// APITLSClientCA is a PEM file of the CAs whose client certificates
	// the API requires (default: no client certificate asked).
	APITLSClientCA string
	// GatePublicAddr is the gate address presence reports (default: the
	// gate's listen address).
	GatePublicAddr string
	// Store is the inbox store: "pebble" (default: embedded, in DataDir)
	// or "postgres" (StoreDSN: every node of a cluster shares it).
	Store string
	// StoreDSN is the PostgreSQL connection string (libpq keyword/value
	// or URL). StoreDSNFile names a file holding it instead, so that the
	// password is neither in argv nor in the environment.
	StoreDSN     string
	StoreDSNFile string
	// StoreMaxConns bounds the connections to PostgreSQL (default 16).
	StoreMaxConns int
	// StoreLanes is the number of group commits in flight at once
	// (default: 1 for Pebble, 4 for PostgreSQL).
	StoreLanes int
	// StoreMinSyncInterval is the shortest time between two syncs of
	// Pebble's log (default 1 ms; 0: sync as soon as the last one ends).
	StoreMinSyncInterval time.Duration
	// StoreReaders is the most reads (loads, idempotency lookups) in
	// flight at once (default 4): PostgreSQL round trips, the reads that
	// arrive meanwhile going together in the next ones; Pebble's reader
	// goroutines.
	StoreReaders int
	// StoreReadQueue bounds the reads waiting for a reader (default
	// 4096); beyond, a read is refused at once and the caller told to
	// retry.
	StoreReadQueue int
	// StoreTimeout bounds one PostgreSQL transaction, load or lookup
	// (default 5 s): beyond it the operation fails as unavailable.
	StoreTimeout time.Duration
	// ConsulTokenFile names a file holding the Consul ACL token
	// (cluster.consul-token), kept out of argv and the environment.
	ConsulTokenFile string
	// ClusterLocalStore lets a cluster node (Consul) with the actors role
	// keep its own Pebble inbox: identities that move lose what was
	// stored for them (trials, --dev, tests that need no shared store).
	ClusterLocalStore bool
	// StoreStallAfter is how long a Pebble commit may wait for the disk
	// before the node refuses new writes at once and /readyz says so,
	// until the commit completes (0: never).
	StoreStallAfter time.Duration
	// StoreNoSync skips the store's fsync (benchmarks only: a crash may
	// lose the last accepted messages). With PostgreSQL:
	// synchronous_commit off.
	StoreNoSync bool
	// AppSecrets maps an appcode to the HS256 secret of its device tokens.
	AppSecrets map[string]string
	// APIKeys maps an API key to the appcode it acts for, or "*" for an
	// operator key.
	APIKeys map[string]string
	// AppSecretFiles maps an appcode to a file holding its secret, and
	// APIKeyFiles a file holding an API key to the appcode it acts for
	// (or "*"): secrets outside argv and the environment. A file's
	// content, trailing newlines removed, is the secret.
	AppSecretFiles map[string]string
	APIKeyFiles    map[string]string
	// ShutdownGrace bounds the graceful shutdown, the drain included
	// (default 30 s).
	ShutdownGrace time.Duration
	// DrainWindow spreads a drain's kickouts (SIGTERM, courierctl drain)
	// over this long, so that the other gates are not hit by a reconnect
	// storm (default 10 s; 0 kicks every device at once; less than
	// ShutdownGrace).
	DrainWindow time.Duration
	// IdleMemoryRelease is how often the node checks whether it has been
	// idle (used under 5% of a core and allocated under 1 MiB/s since the
	// last check) and, if so, returns the memory its heap holds free to
	// the operating system (default 250 ms; 0: never). After a burst the
	// Go runtime otherwise keeps up to the GC target (three times the live
	// heap at the default gc-percent, and at least courier's gc-min-heap)
	// resident until the next burst.
	IdleMemoryRelease time.Duration

	Gate     gate.Config
	Cluster  cluster.Config
	Actors   actors.Config
	API      api.Limits
	Upstream upstream.Config
}

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "courier"
	}
	g := gate.DefaultConfig()
	a := actors.DefaultConfig()
	a.Heartbeat = g.HeartbeatInterval
	return Config{
		Name:              host,
		Roles:             "gate,actors,api",
		DataDir:           "./data",
		APIAddr:           ":7001",
		HTTPAddr:          ":7002",
		ShutdownGrace:     30 * time.Second,
		DrainWindow:       10 * time.Second,
		IdleMemoryRelease: 250 * time.Millisecond,
		Store:             "pebble",
		StoreMaxConns:     16,
		StoreReaders:      4,
		StoreReadQueue:    4096,
		StoreTimeout:      5 * time.Second,
		StoreStallAfter:   10 * time.Second,
		// Measured (BENCHMARKS.md): at 18,000 stored pushes/s in calls of
		// 10, 1 ms between syncs took 10% less CPU per message than
		// syncing back to back (about 1,500 fdatasyncs/s at 100-130 µs of
		// CPU each), for 0.9 ms more at the median; at the maximum rate
		// it changed nothing (the syncs are further apart by themselves).
		StoreMinSyncInterval: time.Millisecond,
		AppSecrets:           map[string]string{},
		APIKeys:              map[string]string{},
		Gate:                 g,
		Cluster:              cluster.DefaultConfig(),
		Actors:               a,
		API:                  api.DefaultLimits(),
		Upstream:             upstream.DefaultConfig(),
	}
}

// resolve derives component settings from the node's and checks what the
// components do not.
// roles parses the node's roles.
func (c *Config) roles() (membership.Roles, error) {
	r, err := membership.ParseRoles(c.Roles)
	if err != nil {
		return 0, fmt.Errorf("node: roles: %v", err)
	}
	return r, nil
}

func (c *Config) resolve() (secrets map[uint16][]byte, keys api.Keys, err error) {
	if c.IdleMemoryRelease < 0 || (c.IdleMemoryRelease > 0 && c.IdleMemoryRelease < 10*time.Millisecond) {
		return nil, nil, fmt.Errorf("node: idle-memory-release %v: must be 0 (never) or at least 10ms (a shorter one is a busy loop)", c.IdleMemoryRelease)
	}
	if c.ShutdownGrace < time.Second {
		return nil, nil, fmt.Errorf("node: shutdown-grace %v: must be at least 1s (a SIGTERM would skip the drain and exit at once)", c.ShutdownGrace)
	}
	if c.DataDir == "" {
		return nil, nil, fmt.Errorf("node: data-dir: must not be empty")
	}
	if c.APIAddr == "" {
		return nil, nil, fmt.Errorf("node: api-addr: must not be empty")
	}
	// Listen addresses are checked here, so that a mistake is a settings
	// error (exit 2, which systemd does not restart on), not a failed
	// listen at start.
	for _, a := range []struct{ name, addr string }{{"api-addr", c.APIAddr}, {"http-addr", c.HTTPAddr}, {"gate.addr", c.Gate.Addr}} {
		if a.addr == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(a.addr); err != nil {
			return nil, nil, fmt.Errorf("node: %s %q: want host:port or :port: %v", a.name, a.addr, err)
		} else if n, err := strconv.ParseUint(port, 10, 16); err != nil && port != "" {
			return nil, nil, fmt.Errorf("node: %s %q: port %q is not a number in [0, 65535]", a.name, a.addr, port)
		} else if n == 0 && port != "0" {
			return nil, nil, fmt.Errorf("node: %s %q: no port", a.name, a.addr)
		}
	}
	if _, port, _ := net.SplitHostPort(c.HTTPAddr); c.HTTPAddr != "" && c.HTTPAddr == c.APIAddr && port != "0" {
		return nil, nil, fmt.Errorf("node: http-addr %q: the same as api-addr", c.HTTPAddr)
	}
	// What follows the drain in a shutdown (the C2S left for the
	// app-servers, the API's last calls, leaving the cluster) needs its
	// share of the grace: a quarter of it, at most 5 s.
	if margin := min(5*time.Second, c.ShutdownGrace/4); c.DrainWindow < 0 || c.DrainWindow > api.MaxDrainWindow || c.DrainWindow > c.ShutdownGrace-margin {
		return nil, nil, fmt.Errorf("node: drain-window %v: must be in [0, %v] and leave shutdown-grace %v at least %v after it (a quarter of it, at most 5 s)",
			c.DrainWindow, api.MaxDrainWindow, c.ShutdownGrace, margin)
	}
	if err := c.resolveStore(); err != nil {
		return nil, nil, err
	}
	if c.ConsulTokenFile != "" {
		if c.Cluster.ConsulToken != "" {
			return nil, nil, errors.New("node: cluster.consul-token and cluster.consul-token-file: set only one")
		}
		tok, err := readSecret(c.ConsulTokenFile)
		if err != nil {
			return nil, nil, fmt.Errorf("node: cluster.consul-token-file %s: %w", c.ConsulTokenFile, err)
		}
		c.Cluster.ConsulToken, c.ConsulTokenFile = strings.TrimSpace(tok), ""
	}
	if roles, err := c.roles(); err == nil && roles.Has(membership.RoleActors) && c.Store == "pebble" &&
		c.Cluster.Provider == membership.ProviderConsul && !c.ClusterLocalStore {
		return nil, nil, errors.New("node: store pebble: a cluster node (cluster.provider consul) with the actors role needs the store every node shares " +
			"(--store postgres --store.dsn-file FILE): with its own Pebble inbox, an identity that moves to another node (a join, a drain, a crash) " +
			"does not find what was stored for it, and its seqs start over; --cluster.local-store allows it for trials")
	}
	// The commit queues are allocated at start, each lane holding the
	// actors' whole write budget (openStore): 64 lanes of a million
	// would be gigabytes before the first write.
	lanes := cmp.Or(c.StoreLanes, pebbleLanes)
	if c.Store == "postgres" {
		lanes = cmp.Or(c.StoreLanes, postgresLanes)
	}
	if slots := lanes * (c.Actors.MaxPendingWrites + 256); slots > maxCommitSlots {
		return nil, nil, fmt.Errorf("node: store.lanes %d × (actors.max-pending-writes %d + 256) = %d commit queue slots: at most %d (about 100 MiB)",
			lanes, c.Actors.MaxPendingWrites, slots, maxCommitSlots)
	}
	if err := c.checkFDReserve(); err != nil {
		return nil, nil, err
	}
	// The node, not the gate, watches the lists file (lists.go).
	if c.Gate.ListsFile != "" && c.Gate.ListsPollInterval < 10*time.Millisecond {
		return nil, nil, fmt.Errorf("node: gate.lists-poll-interval %v: at least 10ms", c.Gate.ListsPollInterval)
	}
	appSecrets, apiKeys, err := c.withFiles()
	if err != nil {
		return nil, nil, err
	}
	secrets = make(map[uint16][]byte, len(appSecrets))
	for app, secret := range appSecrets {
		n, err := strconv.ParseUint(app, 10, 16)
		if err != nil || n == 0 {
			return nil, nil, fmt.Errorf("node: app-secret %q: the appcode must be in [1, 65535]", app)
		}
		if len(secret) < 16 {
			return nil, nil, fmt.Errorf("node: app-secret for app %s: at least 16 bytes, got %d", app, len(secret))
		}
		secrets[uint16(n)] = []byte(secret)
	}
	keys = make(api.Keys, len(apiKeys))
	for key, app := range apiKeys {
		if len(key) < 16 {
			return nil, nil, fmt.Errorf("node: api-key %q...: at least 16 bytes", key[:min(4, len(key))])
		}
		if strings.TrimSpace(app) == "*" {
			keys[key] = api.AllApps
			continue
		}
		n, err := strconv.ParseUint(app, 10, 16)
		if err != nil || n == 0 {
			return nil, nil, fmt.Errorf("node: api-key %s...: appcode %q must be in [1, 65535] or \"*\"", key[:4], app)
		}
		keys[key] = int(n)
	}
	// The actors announce the gate's heartbeat in LOGIN_ACK, and keep
	// what they send within its frame limit.
	c.Actors.Heartbeat = c.Gate.HeartbeatInterval
	c.Actors.MaxFrameSize = int(c.Gate.MaxFrameSize)
	if err := c.Actors.Validate(); err != nil {
		// The heartbeat is the gate's setting.
		return nil, nil, errors.New(strings.NewReplacer("actors.heartbeat", "gate.heartbeat-interval",
			"actors.max-frame-size", "gate.max-frame-size").Replace(err.Error()))
	}
	// The login burst (LOGIN_ACK and a window of messages) and one
	// PULL_ACK or round of redeliveries must fit the gate's queues for a
	// connection together, whatever the messages contain: a window counts
	// whole entries, and one message above the window still goes out (up
	// to a frame, plus its ids and times).
	if burst := c.Actors.WindowBytes + int(c.Gate.MaxFrameSize) + 4096; 2*burst > c.Gate.OutQueueBytes || 2*burst > c.Gate.MaxOutboundBuffered {
		return nil, nil, fmt.Errorf("node: actors.window-bytes %d: two windows and a frame each (%d bytes with gate.max-frame-size %d) must fit gate.out-queue-bytes (%d) and gate.max-outbound-buffered (%d)",
			c.Actors.WindowBytes, 2*burst, c.Gate.MaxFrameSize, c.Gate.OutQueueBytes, c.Gate.MaxOutboundBuffered)
	}
	if 2*(c.Actors.Window+1) > c.Gate.OutQueueFrames {
		return nil, nil, fmt.Errorf("node: actors.window %d: two windows and their LOGIN_ACK (%d frames) must fit gate.out-queue-frames (%d)",
			c.Actors.Window, 2*(c.Actors.Window+1), c.Gate.OutQueueFrames)
	}
	if c.API.DefaultTTL < time.Second {
		// 0 is not "none": every push without ttl_ms would be accepted and
		// expire at once, undelivered.
		return nil, nil, fmt.Errorf("node: api.default-ttl %v: must be at least 1s", c.API.DefaultTTL)
	}
	if c.API.DefaultTTL > c.API.MaxTTL {
		return nil, nil, fmt.Errorf("node: api.default-ttl %v: more than api.max-ttl %v", c.API.DefaultTTL, c.API.MaxTTL)
	}
	if c.API.MaxPayload < 1 || c.API.MaxPayload+1024 > int(c.Gate.MaxFrameSize) {
		return nil, nil, fmt.Errorf("node: api.max-payload %d: must be positive and leave 1 KiB of the %d-byte frame limit for the envelope",
			c.API.MaxPayload, c.Gate.MaxFrameSize)
	}
	if err := checkAPILimits(&c.API); err != nil {
		return nil, nil, err
	}
	u := c.Upstream
	switch {
	case u.QueueLen < 1:
		return nil, nil, fmt.Errorf("node: upstream.queue-len %d: must be at least 1", u.QueueLen)
	case u.MaxAge < time.Second:
		return nil, nil, fmt.Errorf("node: upstream.max-age %v: must be at least 1s", u.MaxAge)
	case u.ResendAfter != 0 && u.ResendAfter < time.Second:
		return nil, nil, fmt.Errorf("node: upstream.resend-after %v: must be at least 1s, or 0 for never", u.ResendAfter)
	case u.DefaultInFlight < 1 || u.MaxInFlight < u.DefaultInFlight:
		return nil, nil, fmt.Errorf("node: upstream.default-in-flight %d: must be in [1, upstream.max-in-flight %d]", u.DefaultInFlight, u.MaxInFlight)
	case u.MaxBatch < 1:
		return nil, nil, fmt.Errorf("node: upstream.max-batch %d: must be at least 1", u.MaxBatch)
	case u.MaxBatchBytes < 1:
		return nil, nil, fmt.Errorf("node: upstream.max-batch-bytes %d: must be at least 1", u.MaxBatchBytes)
	case u.AppMaxBytes < int64(c.Gate.MaxFrameSize)+upstream.MessageOverhead+1024:
		return nil, nil, fmt.Errorf("node: upstream.app-max-bytes %d: must hold one message of the %d-byte frame limit (at least %d)",
			u.AppMaxBytes, c.Gate.MaxFrameSize, int64(c.Gate.MaxFrameSize)+upstream.MessageOverhead+1024)
	case u.MaxBytes < u.AppMaxBytes:
		return nil, nil, fmt.Errorf("node: upstream.max-bytes %d: must be at least upstream.app-max-bytes %d", u.MaxBytes, u.AppMaxBytes)
	case u.UIDMaxBytes < 0:
		return nil, nil, fmt.Errorf("node: upstream.uid-max-bytes %d: must not be negative (0: no bound of its own)", u.UIDMaxBytes)
	}
	return secrets, keys, nil
}

// fdOther is what a node holds open besides its listeners' connections
// and its store: Consul, the members' remoting, logs, pprof.
const fdOther = 256

// checkFDReserve checks that the descriptors the gate leaves to the rest
// of the node (gate.fd-reserve) hold everything else it may open at once:
// a gate whose accept fails for lack of descriptors stops, closing every
// device's connection.
func (c *Config) checkFDReserve() error {
	roles, err := c.roles()
	if err != nil || !roles.Has(membership.RoleGate) {
		return err
	}
	need, parts := fdOther, []string{fmt.Sprintf("%d for Consul, the members and logs", fdOther)}
	if roles.Has(membership.RoleAPI) {
		need += c.API.MaxConnections + 16
		parts = append(parts, fmt.Sprintf("api.max-connections %d + 16", c.API.MaxConnections))
	}
	if c.HTTPAddr != "" {
		need += HTTPMaxConns
		parts = append(parts, fmt.Sprintf("%d HTTP connections", HTTPMaxConns))
	}
	switch {
	case c.Store == "postgres":
		need += c.StoreMaxConns
		parts = append(parts, fmt.Sprintf("store.max-conns %d", c.StoreMaxConns))
	case roles.Has(membership.RoleActors) || roles.Has(membership.RoleGate):
		// Pebble: the actors' inbox, and a gate's stored access lists.
		need += store.PebbleMaxOpenFiles
		parts = append(parts, fmt.Sprintf("%d Pebble files", store.PebbleMaxOpenFiles))
	}
	if c.Gate.FDReserve < need {
		return fmt.Errorf("node: gate.fd-reserve %d: less than the rest of the node may hold open at once (%s: %d); raise it, or lower api.max-connections",
			c.Gate.FDReserve, strings.Join(parts, ", "), need)
	}
	return nil
}

// resolveStore checks the store settings and reads store.dsn-file.
func (c *Config) resolveStore() error {
	switch c.Store {
	case "pebble":
		if c.StoreDSN != "" || c.StoreDSNFile != "" {
			return errors.New("node: store.dsn/store.dsn-file: set, but store is pebble (use --store postgres)")
		}
	case "postgres":
		if c.StoreDSN != "" && c.StoreDSNFile != "" {
			return errors.New("node: store.dsn and store.dsn-file: set only one")
		}
		field := "store.dsn"
		if c.StoreDSNFile != "" {
			dsn, err := readSecret(c.StoreDSNFile)
			if err != nil {
				return fmt.Errorf("node: store.dsn-file %s: %w", c.StoreDSNFile, err)
			}
			field = "store.dsn-file " + c.StoreDSNFile
			c.StoreDSN, c.StoreDSNFile = strings.TrimSpace(dsn), ""
		}
		if c.StoreDSN == "" {
			return errors.New("node: store.dsn: required with store postgres (or store.dsn-file)")
		}
		// A DSN that cannot parse is a settings mistake (exit 2, no
		// restart), not a database that is down.
		if err := store.CheckDSN(c.StoreDSN); err != nil {
			return fmt.Errorf("node: %s: %w", field, err)
		}
		if c.StoreMaxConns < 2 {
			return fmt.Errorf("node: store.max-conns %d: at least 2", c.StoreMaxConns)
		}
		if c.StoreLanes >= c.StoreMaxConns {
			return fmt.Errorf("node: store.lanes %d: must be below store.max-conns %d", c.StoreLanes, c.StoreMaxConns)
		}
		if lanes := cmp.Or(c.StoreLanes, postgresLanes); lanes+c.StoreReaders > c.StoreMaxConns {
			return fmt.Errorf("node: store.readers %d: with store.lanes %d must fit in store.max-conns %d", c.StoreReaders, lanes, c.StoreMaxConns)
		}
	default:
		return fmt.Errorf("node: store %q: must be pebble or postgres", c.Store)
	}
	if c.StoreReaders < 1 || c.StoreReaders > 64 {
		return fmt.Errorf("node: store.readers %d: must be in [1, 64]", c.StoreReaders)
	}
	if c.StoreReadQueue < 1 || c.StoreReadQueue > 1<<20 {
		return fmt.Errorf("node: store.read-queue %d: must be in [1, 1048576]", c.StoreReadQueue)
	}
	if c.StoreLanes < 0 || c.StoreLanes > 64 {
		return fmt.Errorf("node: store.lanes %d: must be in [0, 64] (0: the store's default)", c.StoreLanes)
	}
	if c.StoreMinSyncInterval < 0 || c.StoreMinSyncInterval > 10*time.Millisecond {
		return fmt.Errorf("node: store.min-sync-interval %v: must be in [0, 10ms]", c.StoreMinSyncInterval)
	}
	if c.StoreTimeout < 100*time.Millisecond {
		return fmt.Errorf("node: store.timeout %v: at least 100ms", c.StoreTimeout)
	}
	if c.StoreStallAfter != 0 && c.StoreStallAfter < time.Second {
		return fmt.Errorf("node: store.stall-after %v: 0 (never) or at least 1s", c.StoreStallAfter)
	}
	return nil
}

// maxCommitSlots bounds the store's commit queues, all lanes together.
const maxCommitSlots = 1 << 21

// withFiles returns the app secrets and API keys given inline and in
// files, together.
func (c *Config) withFiles() (appSecrets, apiKeys map[string]string, err error) {
	appSecrets, apiKeys = maps.Clone(c.AppSecrets), maps.Clone(c.APIKeys)
	if appSecrets == nil {
		appSecrets = map[string]string{}
	}
	if apiKeys == nil {
		apiKeys = map[string]string{}
	}
	for app, path := range c.AppSecretFiles {
		s, err := readSecret(path)
		if err != nil {
			return nil, nil, fmt.Errorf("node: app-secret-file %s=%s: %w", app, path, err)
		}
		if _, dup := appSecrets[app]; dup {
			return nil, nil, fmt.Errorf("node: app-secret-file %s=%s: app %s also has an app-secret", app, path, app)
		}
		appSecrets[app] = s
	}
	for path, app := range c.APIKeyFiles {
		k, err := readSecret(path)
		if err != nil {
			return nil, nil, fmt.Errorf("node: api-key-file %s=%s: %w", path, app, err)
		}
		if _, dup := apiKeys[k]; dup {
			return nil, nil, fmt.Errorf("node: api-key-file %s: the same key is given twice", path)
		}
		apiKeys[k] = app
	}
	return appSecrets, apiKeys, nil
}

// readSecret reads a secret file: its content without trailing newlines.
func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", errors.New("the file is empty")
	}
	return s, nil
}

// gateFields names the gate's Config fields as the node's settings, so
// that a gate configuration error names what the operator set (a test
// checks every setting exists). Longer field names come first: the
// replacer tries them in order.
var gateFields = [][2]string{
	{"Config.NewConnsPerIPBurst", "gate.new-conns-per-ip-burst"},
	{"Config.MaxTokenLifetime", "gate.max-token-lifetime"},
	{"Config.NewConnsPerIP", "gate.new-conns-per-ip"},
	{"Config.MaxOutboundBuffered", "gate.max-outbound-buffered"},
	{"Config.ListsPollInterval", "gate.lists-poll-interval"},
	{"Config.ProxyProtocol", "gate.proxy-protocol"},
	{"Config.HeartbeatInterval", "gate.heartbeat-interval"},
	{"Config.CompressThreshold", "gate.compress-threshold"},
	{"Config.FramesPerSecond", "gate.frames-per-second"},
	{"Config.C2CPerSecond", "gate.c2c-per-second"},
	{"Config.C2CBurst", "gate.c2c-burst"},
	{"Config.BytesPerSecond", "gate.bytes-per-second"},
	{"Config.OutQueueFrames", "gate.out-queue-frames"},
	{"Config.OutQueueBytes", "gate.out-queue-bytes"},
	{"Config.IPLimiterSize", "gate.ip-limiter-size"},
	{"Config.MaxFrameSize", "gate.max-frame-size"},
	{"Config.LoginTimeout", "gate.login-timeout"},
	{"Config.TickInterval", "gate.tick-interval"},
	{"Config.IdleTimeout", "gate.idle-timeout"},
	{"Config.AppSecrets", "app-secret"},
	{"Config.FrameBurst", "gate.frame-burst"},
	{"Config.ByteBurst", "gate.byte-burst"},
	{"Config.FDReserve", "gate.fd-reserve"},
	{"Config.ListsFile", "gate.lists-file"},
	{"Config.ProxyFrom", "gate.proxy-from"},
	{"Config.MaxConns", "gate.max-conns"},
	{"Config.Lists", "gate.lists-file"},
	{"Config.Loops", "gate.loops"},
	{"Config.Addr", "gate.addr"},
}

var gateSettings = func() *strings.Replacer {
	var pairs []string
	for _, f := range gateFields {
		pairs = append(pairs, f[0], f[1])
	}
	return strings.NewReplacer(pairs...)
}()

// gateError rewrites a gate configuration error in the node's terms.
func gateError(err error) error {
	if !errors.Is(err, gate.ErrInvalidConfig) {
		return err
	}
	msg := strings.Replace(err.Error(), "Config.AppSecrets: empty and no Config.Authenticator",
		"app-secret: none set (a node with the gate role needs the token secret of at least one app)", 1)
	return configError{errors.New("node: " + gateSettings.Replace(msg))}
}

// checkAPILimits checks the gRPC server's connection limits.
func checkAPILimits(l *api.Limits) error {
	switch {
	case l.MaxBatch < 1:
		return fmt.Errorf("node: api.max-batch %d: must be at least 1", l.MaxBatch)
	case l.MaxIdempotencyKey < 1 || l.MaxIdempotencyKey > 1024:
		return fmt.Errorf("node: api.max-idempotency-key %d: must be in [1, 1024]", l.MaxIdempotencyKey)
	case l.MaxRequestBytes < l.MaxPayload+4096 || l.MaxRequestBytes > 1<<30:
		return fmt.Errorf("node: api.max-request-bytes %d: must hold one push of api.max-payload (at least %d) and be at most 1 GiB",
			l.MaxRequestBytes, l.MaxPayload+4096)
	case l.MaxConcurrentStreams < 1:
		return fmt.Errorf("node: api.max-concurrent-streams %d: must be at least 1", l.MaxConcurrentStreams)
	case l.KeepaliveMinTime < time.Second:
		return fmt.Errorf("node: api.keepalive-min-time %v: must be at least 1s", l.KeepaliveMinTime)
	case l.KeepaliveTime < time.Second:
		return fmt.Errorf("node: api.keepalive-time %v: must be at least 1s", l.KeepaliveTime)
	case l.KeepaliveTimeout < time.Second:
		return fmt.Errorf("node: api.keepalive-timeout %v: must be at least 1s", l.KeepaliveTimeout)
	case l.MaxConnectionIdle < time.Second:
		return fmt.Errorf("node: api.max-connection-idle %v: must be at least 1s", l.MaxConnectionIdle)
	case l.MaxPushesInFlight < l.MaxBatch:
		return fmt.Errorf("node: api.max-pushes-in-flight %d: must hold one PushMany of api.max-batch (%d)", l.MaxPushesInFlight, l.MaxBatch)
	case l.MaxGateBacklog < 0:
		return fmt.Errorf("node: api.max-gate-backlog %v: must not be negative (0: never refuse)", l.MaxGateBacklog)
	case l.MaxPushDelay < 0:
		return fmt.Errorf("node: api.max-push-delay %v: must not be negative (0: never refuse)", l.MaxPushDelay)
	case l.MaxConnections < 1:
		return fmt.Errorf("node: api.max-connections %d: must be at least 1", l.MaxConnections)
	case l.MaxUnauthenticatedCalls < 1:
		return fmt.Errorf("node: api.max-unauthenticated-calls %d: must be at least 1 (health checks need one)", l.MaxUnauthenticatedCalls)
	case l.MaxCallsInFlight < 1:
		return fmt.Errorf("node: api.max-calls-in-flight %d: must be at least 1", l.MaxCallsInFlight)
	case l.MaxUpstreamStreams < 1:
		return fmt.Errorf("node: api.max-upstream-streams %d: must be at least 1", l.MaxUpstreamStreams)
	case l.MaxAppCallsInFlight < 0 || l.MaxAppCallsInFlight > l.MaxCallsInFlight:
		return fmt.Errorf("node: api.max-app-calls-in-flight %d: must be in [1, api.max-calls-in-flight %d], or 0 for three quarters of it", l.MaxAppCallsInFlight, l.MaxCallsInFlight)
	case l.MaxAppUpstreamStreams < 0 || l.MaxAppUpstreamStreams > l.MaxUpstreamStreams:
		return fmt.Errorf("node: api.max-app-upstream-streams %d: must be in [1, api.max-upstream-streams %d], or 0 for three quarters of it", l.MaxAppUpstreamStreams, l.MaxUpstreamStreams)
	case l.MaxUnreadAnswerBytes != 0 && l.MaxUnreadAnswerBytes < int64(l.MaxRequestBytes):
		return fmt.Errorf("node: api.max-unread-answer-bytes %d: must be at least api.max-request-bytes (%d), or 0 for no bound", l.MaxUnreadAnswerBytes, l.MaxRequestBytes)
	case l.MaxAppPushesInFlight != 0 && (l.MaxAppPushesInFlight < l.MaxBatch || l.MaxAppPushesInFlight > l.MaxPushesInFlight):
		return fmt.Errorf("node: api.max-app-pushes-in-flight %d: must hold one PushMany of api.max-batch (%d) and be at most api.max-pushes-in-flight (%d), or 0 for three quarters of it", l.MaxAppPushesInFlight, l.MaxBatch, l.MaxPushesInFlight)
	}
	return nil
}
