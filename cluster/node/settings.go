package node

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// BindSettings declares every setting of cfg on fs, with cfg's current
// values as defaults. Flags are named like the config file's keys
// ("gate.heartbeat-interval"); the environment variable of a setting is
// COURIER_ followed by its name in upper case with '.' and '-' as '_'
// (COURIER_GATE_HEARTBEAT_INTERVAL).
func BindSettings(fs *pflag.FlagSet, c *Config) {
	fs.StringVar(&c.Name, "name", c.Name, "node name in logs, presence and the cluster's member list")
	fs.StringVar(&c.Roles, "roles", c.Roles, "what the node runs: any of gate, actors, api, comma-separated")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory of the embedded inbox store")
	fs.StringVar(&c.APIAddr, "api-addr", c.APIAddr, "gRPC API listen address")
	fs.StringVar(&c.APITLSCert, "api.tls-cert", c.APITLSCert, "PEM certificate of the gRPC API; with api.tls-key the API speaks only TLS")
	fs.StringVar(&c.APITLSKey, "api.tls-key", c.APITLSKey, "PEM private key of api.tls-cert")
	fs.StringVar(&c.APITLSClientCA, "api.tls-client-ca", c.APITLSClientCA, "PEM file of CAs; set, the API requires client certificates signed by one of them")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, `listen address of /metrics, /healthz, /readyz and (api role) /v1/gates, without authentication ("" disables)`)
	fs.StringVar(&c.GatePublicAddr, "gate-public-addr", c.GatePublicAddr, "gate address reported by presence (default: the gate's listen address)")
	fs.StringVar(&c.Store, "store", c.Store, `inbox store: "pebble" (embedded, in data-dir) or "postgres" (shared by a cluster's nodes)`)
	fs.StringVar(&c.StoreDSN, "store.dsn", c.StoreDSN, "PostgreSQL connection string (prefer store.dsn-file or COURIER_STORE_DSN: argv is visible to every local user)")
	fs.StringVar(&c.StoreDSNFile, "store.dsn-file", c.StoreDSNFile, "file holding the PostgreSQL connection string")
	fs.IntVar(&c.StoreMaxConns, "store.max-conns", c.StoreMaxConns, "most connections to PostgreSQL")
	fs.IntVar(&c.StoreLanes, "store.lanes", c.StoreLanes, "group commits in flight at once (0: 1 for pebble, 4 for postgres)")
	fs.DurationVar(&c.StoreMinSyncInterval, "store.min-sync-interval", c.StoreMinSyncInterval, "pebble: shortest time between two syncs of the log; the writes that arrive meanwhile share the next sync")
	fs.IntVar(&c.StoreReaders, "store.readers", c.StoreReaders, "reads (loads, idempotency lookups) in flight at once: PostgreSQL round trips (reads arriving meanwhile go together in the next), Pebble goroutines")
	fs.IntVar(&c.StoreReadQueue, "store.read-queue", c.StoreReadQueue, "reads waiting for a reader; beyond, new work that needs a read is refused (retry)")
	fs.DurationVar(&c.StoreTimeout, "store.timeout", c.StoreTimeout, "bound on one PostgreSQL transaction, load or lookup, the wait for it included")
	fs.DurationVar(&c.StoreStallAfter, "store.stall-after", c.StoreStallAfter, "pebble: a store commit waiting this long for the disk makes the node refuse new writes at once and /readyz fail, until it completes (0: never)")
	fs.BoolVar(&c.StoreNoSync, "store-no-sync", c.StoreNoSync, "skip the store's fsync, or commit with synchronous_commit off (benchmarks only: a crash may lose accepted messages)")
	fs.StringToStringVar(&c.AppSecrets, "app-secret", c.AppSecrets, "APPCODE=SECRET: HS256 secret of an app's device tokens (repeatable, at least 16 bytes)")
	fs.StringToStringVar(&c.APIKeys, "api-key", c.APIKeys, `KEY=APPCODE: an app-server API key and the appcode it acts for, "*" for an operator key (repeatable)`)
	fs.StringToStringVar(&c.AppSecretFiles, "app-secret-file", c.AppSecretFiles, "APPCODE=FILE: an app's token secret read from FILE (repeatable; keeps it out of argv)")
	fs.StringToStringVar(&c.APIKeyFiles, "api-key-file", c.APIKeyFiles, `FILE=APPCODE: an API key read from FILE and the appcode it acts for, "*" for an operator key (repeatable)`)
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", c.ShutdownGrace, "bound on graceful shutdown, the drain included")
	fs.DurationVar(&c.DrainWindow, "drain-window", c.DrainWindow, "spread a drain's kickouts (SIGTERM, courierctl drain) over this long (0: all at once; at most shutdown-grace less a quarter of it, at most 5s less)")
	fs.DurationVar(&c.IdleMemoryRelease, "idle-memory-release", c.IdleMemoryRelease, "how often to check for idleness and then return free heap memory to the OS (0: never)")

	g := &c.Gate
	fs.StringVar(&g.Addr, "gate.addr", g.Addr, "device TCP listen address")
	fs.IntVar(&g.Loops, "gate.loops", g.Loops, "event loops (0: one per CPU)")
	fs.Uint32Var(&g.MaxFrameSize, "gate.max-frame-size", g.MaxFrameSize, "largest frame body accepted, cap on a decompressed body, and bound on the bodies the node sends")
	fs.IntVar(&g.MaxConns, "gate.max-conns", g.MaxConns, "connection cap (0: open-files limit minus gate.fd-reserve)")
	fs.IntVar(&g.FDReserve, "gate.fd-reserve", g.FDReserve, "file descriptors kept free for everything but device connections")
	fs.DurationVar(&g.LoginTimeout, "gate.login-timeout", g.LoginTimeout, "close connections not logged in after this")
	fs.DurationVar(&g.HeartbeatInterval, "gate.heartbeat-interval", g.HeartbeatInterval, "keepalive interval announced in LOGIN_ACK")
	fs.DurationVar(&g.IdleTimeout, "gate.idle-timeout", g.IdleTimeout, "close connections silent for this long (0: 3 heartbeats)")
	fs.DurationVar(&g.TickInterval, "gate.tick-interval", g.TickInterval, "granularity of the login and idle timers")
	fs.IntVar(&g.CompressThreshold, "gate.compress-threshold", g.CompressThreshold, "compress bodies to zstd clients from this size")
	fs.IntVar(&g.OutQueueFrames, "gate.out-queue-frames", g.OutQueueFrames, "frames waiting per connection before it counts as a slow client")
	fs.IntVar(&g.OutQueueBytes, "gate.out-queue-bytes", g.OutQueueBytes, "bytes waiting per connection before it counts as a slow client")
	fs.IntVar(&g.MaxOutboundBuffered, "gate.max-outbound-buffered", g.MaxOutboundBuffered, "bytes buffered for a peer that does not read before it is disconnected")
	fs.IntVar(&g.FramesPerSecond, "gate.frames-per-second", g.FramesPerSecond, "frames a connection may send per second (0: no limit)")
	fs.IntVar(&g.FrameBurst, "gate.frame-burst", g.FrameBurst, "burst of gate.frames-per-second")
	fs.IntVar(&g.C2CPerSecond, "gate.c2c-per-second", g.C2CPerSecond, "C2C messages a connection may send per second; beyond, C2C_ACK RATE_LIMITED (0: no limit)")
	fs.IntVar(&g.C2CBurst, "gate.c2c-burst", g.C2CBurst, "burst of gate.c2c-per-second")
	fs.IntVar(&g.BytesPerSecond, "gate.bytes-per-second", g.BytesPerSecond, "bytes a connection may send per second (0: no limit)")
	fs.IntVar(&g.ByteBurst, "gate.byte-burst", g.ByteBurst, "burst of gate.bytes-per-second")
	fs.Float64Var(&g.NewConnsPerIP, "gate.new-conns-per-ip", g.NewConnsPerIP, "new connections per second per source IP (0: no limit)")
	fs.IntVar(&g.NewConnsPerIPBurst, "gate.new-conns-per-ip-burst", g.NewConnsPerIPBurst, "burst of gate.new-conns-per-ip")
	fs.IntVar(&g.IPLimiterSize, "gate.ip-limiter-size", g.IPLimiterSize, "source addresses remembered by the connection rate limit")
	fs.BoolVar(&g.ProxyProtocol, "gate.proxy-protocol", g.ProxyProtocol, "connections from gate.proxy-from must start with a PROXY protocol header (v2 or v1) naming the client")
	fs.StringSliceVar(&g.ProxyFrom, "gate.proxy-from", g.ProxyFrom, "addresses or CIDRs of the load balancers trusted to send PROXY headers (comma-separated or repeated)")
	fs.StringVar(&g.ListsFile, "gate.lists-file", g.ListsFile, "JSON file of the black/white lists, reloaded when it changes")
	fs.DurationVar(&g.ListsPollInterval, "gate.lists-poll-interval", g.ListsPollInterval, "how often gate.lists-file is checked")
	fs.DurationVar(&g.MaxTokenLifetime, "gate.max-token-lifetime", g.MaxTokenLifetime, "refuse device tokens without iat or whose exp - iat is longer (0: any lifetime)")

	cl := &c.Cluster
	fs.StringVar(&cl.Name, "cluster.name", cl.Name, "cluster name")
	fs.StringVar(&cl.Bind, "cluster.bind", cl.Bind, "actor remoting listen address")
	fs.StringVar(&cl.Advertise, "cluster.advertise", cl.Advertise, "actor remoting address other nodes use (default: the bound address)")
	fs.BoolVar(&c.ClusterLocalStore, "cluster.local-store", c.ClusterLocalStore, "let a cluster node with the actors role keep its own Pebble inbox (trials only: an identity that moves loses what was stored for it)")
	fs.StringVar(&cl.Provider, "cluster.provider", cl.Provider, `membership provider: "memory" (a single node) or "consul"`)
	fs.StringVar(&cl.Consul, "cluster.consul", cl.Consul, "HTTP address of the Consul agent (provider consul)")
	fs.StringVar(&cl.ConsulToken, "cluster.consul-token", cl.ConsulToken, "ACL token for the Consul agent, if it needs one (prefer cluster.consul-token-file; unset, Consul's CONSUL_HTTP_TOKEN is used)")
	fs.StringVar(&c.ConsulTokenFile, "cluster.consul-token-file", c.ConsulTokenFile, "file holding the Consul ACL token")
	fs.DurationVar(&cl.TTL, "cluster.ttl", cl.TTL, "a member not refreshing its Consul check for this long is out (and rejoins as a new instance)")
	fs.DurationVar(&cl.DeregisterAfter, "cluster.deregister-after", cl.DeregisterAfter, "Consul removes a member critical for this long (at least 1m)")
	fs.DurationVar(&cl.LoadInterval, "cluster.load-interval", cl.LoadInterval, "most often the node publishes its load (connections, actors) to the cluster")
	fs.DurationVar(&cl.JoinTimeout, "cluster.join-timeout", cl.JoinTimeout, "bound on joining the cluster at start")
	fs.StringVar(&cl.TLS.CA, "cluster.tls-ca", cl.TLS.CA, "PEM file of the cluster CA: remoting peers must present a certificate it signed (mutual TLS)")
	fs.StringVar(&cl.TLS.Cert, "cluster.tls-cert", cl.TLS.Cert, "PEM file of this node's certificate, signed by cluster.tls-ca")
	fs.StringVar(&cl.TLS.Key, "cluster.tls-key", cl.TLS.Key, "PEM file of this node's private key")
	fs.IntVar(&cl.Shards, "cluster.shards", cl.Shards, "host actors per node (each node publishes its own; the others route by it)")
	fs.DurationVar(&cl.RequestTimeout, "cluster.request-timeout", cl.RequestTimeout, "bound on a request to an identity's actor")
	fs.IntVar(&cl.MaxHops, "cluster.max-hops", cl.MaxHops, "forwards allowed while nodes disagree about ownership")

	a := &c.Actors
	fs.DurationVar(&a.RetryInitial, "actors.retry-initial", a.RetryInitial, "wait before the first redelivery of an unacknowledged message")
	fs.DurationVar(&a.RetryMax, "actors.retry-max", a.RetryMax, "cap of the doubling wait between redeliveries")
	fs.IntVar(&a.Window, "actors.window", a.Window, "messages delivered and not yet acknowledged per device")
	fs.IntVar(&a.WindowBytes, "actors.window-bytes", a.WindowBytes, "bytes of whole messages delivered and not yet acknowledged per device, and per PULL_ACK")
	fs.DurationVar(&a.C2CTTL, "actors.c2c-ttl", a.C2CTTL, "expiry of C2C messages")
	fs.IntVar(&a.InboxMaxMessages, "actors.inbox-max-messages", a.InboxMaxMessages, "stored pushes from app-servers per identity; beyond, new ones are refused")
	fs.IntVar(&a.InboxMaxBytes, "actors.inbox-max-bytes", a.InboxMaxBytes, "bytes of stored pushes from app-servers per identity; beyond, new ones are refused")
	fs.IntVar(&a.C2CMaxMessages, "actors.c2c-max-messages", a.C2CMaxMessages, "C2C messages waiting per receiver; beyond, new ones get INBOX_FULL")
	fs.IntVar(&a.C2CMaxBytes, "actors.c2c-max-bytes", a.C2CMaxBytes, "bytes of C2C messages waiting per receiver; beyond, new ones get INBOX_FULL")
	fs.IntVar(&a.C2CSenderMaxMessages, "actors.c2c-sender-max-messages", a.C2CSenderMaxMessages, "C2C messages one sender may have waiting per receiver")
	fs.IntVar(&a.C2CSenderMaxBytes, "actors.c2c-sender-max-bytes", a.C2CSenderMaxBytes, "bytes of C2C messages one sender may have waiting per receiver")
	fs.DurationVar(&a.IdempotencyTTL, "actors.idempotency-ttl", a.IdempotencyTTL, "how long idempotency keys and C2C client ids are remembered")
	fs.IntVar(&a.PullPage, "actors.pull-page", a.PullPage, "most messages in one PULL_ACK")
	fs.Float64Var(&a.LoginsPerSecond, "actors.logins-per-second", a.LoginsPerSecond, "LOGINs of one identity allowed per second; beyond, LOGIN_ACK RATE_LIMITED (0: no bound)")
	fs.IntVar(&a.LoginBurst, "actors.login-burst", a.LoginBurst, "burst of actors.logins-per-second")
	fs.DurationVar(&a.PassivateAfter, "actors.passivate-after", a.PassivateAfter, "idle time after which an identity leaves memory")
	fs.DurationVar(&a.ExpirySweep, "actors.expiry-sweep", a.ExpirySweep, "how often expired messages of identities not in memory are dropped (0: only when they come back)")
	fs.IntVar(&a.MaxPendingWrites, "actors.max-pending-writes", a.MaxPendingWrites, "store writes in flight on the node; beyond, new stored messages and logins are refused (retry)")
	fs.DurationVar(&a.StoreTimeout, "actors.store-timeout", a.StoreTimeout, "bound on one read of the inbox store (loading an identity, an idempotency lookup)")
	fs.IntVar(&a.MaxStashed, "actors.max-stashed", a.MaxStashed, "envelopes one identity holds while it waits for a store read; beyond, they are refused (retry)")

	l := &c.API
	fs.IntVar(&l.MaxPayload, "api.max-payload", l.MaxPayload, "largest push payload in bytes")
	fs.IntVar(&l.MaxBatch, "api.max-batch", l.MaxBatch, "most items in a PushMany or uids in a Presence")
	fs.DurationVar(&l.DefaultTTL, "api.default-ttl", l.DefaultTTL, "expiry of a push without ttl_ms")
	fs.DurationVar(&l.MaxTTL, "api.max-ttl", l.MaxTTL, "largest ttl_ms a push may ask for")
	fs.IntVar(&l.MaxIdempotencyKey, "api.max-idempotency-key", l.MaxIdempotencyKey, "longest idempotency key in bytes")
	fs.IntVar(&l.MaxRequestBytes, "api.max-request-bytes", l.MaxRequestBytes, "largest gRPC request in bytes (a whole PushMany); larger ones get RESOURCE_EXHAUSTED")
	fs.Uint32Var(&l.MaxConcurrentStreams, "api.max-concurrent-streams", l.MaxConcurrentStreams, "calls open at once per API connection; more wait")
	fs.DurationVar(&l.KeepaliveMinTime, "api.keepalive-min-time", l.KeepaliveMinTime, "shortest ping interval allowed to API clients; faster ones are disconnected")
	fs.DurationVar(&l.KeepaliveTime, "api.keepalive-time", l.KeepaliveTime, "ping an API connection quiet for this long")
	fs.DurationVar(&l.KeepaliveTimeout, "api.keepalive-timeout", l.KeepaliveTimeout, "close an API connection whose ping is not answered within this")
	fs.DurationVar(&l.MaxConnectionIdle, "api.max-connection-idle", l.MaxConnectionIdle, "close an API connection with no call open for this long")
	fs.IntVar(&l.MaxPushesInFlight, "api.max-pushes-in-flight", l.MaxPushesInFlight, "pushes accepted and not yet answered, all callers together; a call beyond gets RESOURCE_EXHAUSTED at once")
	fs.DurationVar(&l.MaxGateBacklog, "api.max-gate-backlog", l.MaxGateBacklog, "refuse new pushes (RESOURCE_EXHAUSTED) while the gate's frames wait longer than this for its event loops (0: never)")
	fs.DurationVar(&l.MaxPushDelay, "api.max-push-delay", l.MaxPushDelay, "refuse new pushes (RESOURCE_EXHAUSTED) while push calls take longer than this and api.max-batch or more pushes are in flight (0: never)")
	fs.IntVar(&l.MaxConnections, "api.max-connections", l.MaxConnections, "API connections open at once; calls on further ones get RESOURCE_EXHAUSTED and they are closed")
	fs.IntVar(&l.MaxUnauthenticatedCalls, "api.max-unauthenticated-calls", l.MaxUnauthenticatedCalls, "calls without an API key (health checks, reflection) open at once; more get RESOURCE_EXHAUSTED")
	fs.IntVar(&l.MaxCallsInFlight, "api.max-calls-in-flight", l.MaxCallsInFlight, "API calls with a key open at once on the node, upstream streams apart; more get RESOURCE_EXHAUSTED before their request is read")
	fs.IntVar(&l.MaxUpstreamStreams, "api.max-upstream-streams", l.MaxUpstreamStreams, "upstream streams open at once on the node; more get RESOURCE_EXHAUSTED")
	fs.IntVar(&l.MaxAppCallsInFlight, "api.max-app-calls-in-flight", l.MaxAppCallsInFlight, "one app's share of api.max-calls-in-flight (its keys' calls; operator keys together are one app); 0: three quarters")
	fs.IntVar(&l.MaxAppUpstreamStreams, "api.max-app-upstream-streams", l.MaxAppUpstreamStreams, "one app's share of api.max-upstream-streams; 0: three quarters")
	fs.IntVar(&l.MaxAppPushesInFlight, "api.max-app-pushes-in-flight", l.MaxAppPushesInFlight, "one app's share of api.max-pushes-in-flight, at least api.max-batch; 0: three quarters")
	fs.Int64Var(&l.MaxUnreadAnswerBytes, "api.max-unread-answer-bytes", l.MaxUnreadAnswerBytes, "bytes of API answers (over 1 KiB each) not yet written to callers that do not read them; past it, calls with a key get RESOURCE_EXHAUSTED (0: no bound)")

	u := &c.Upstream
	fs.IntVar(&u.QueueLen, "upstream.queue-len", u.QueueLen, "C2S messages queued per appcode and msgtype for a subscriber with room; beyond, UPSTREAM_BUSY")
	fs.DurationVar(&u.MaxAge, "upstream.max-age", u.MaxAge, "queued C2S messages no subscriber took for this long are dropped (and counted)")
	fs.DurationVar(&u.ResendAfter, "upstream.resend-after", u.ResendAfter, "a delivery to an app-server on another node not acknowledged this long is sent again, to any subscriber (a batch lost between nodes); 0: never")
	fs.IntVar(&u.DefaultInFlight, "upstream.default-in-flight", u.DefaultInFlight, "unacknowledged deliveries per subscriber that asks for no limit")
	fs.IntVar(&u.MaxInFlight, "upstream.max-in-flight", u.MaxInFlight, "most unacknowledged deliveries a subscriber may ask for")
	fs.IntVar(&u.MaxBatch, "upstream.max-batch", u.MaxBatch, "most messages in one delivery to a subscriber")
	fs.Int64Var(&u.MaxBatchBytes, "upstream.max-batch-bytes", u.MaxBatchBytes, "most bytes in one delivery to a subscriber (keep under its gRPC receive limit, 4 MiB by default)")
	fs.Int64Var(&u.UIDMaxBytes, "upstream.uid-max-bytes", u.UIDMaxBytes, "bytes of C2S messages held per device (appcode and uid), queued or in flight; beyond, UPSTREAM_BUSY to that device (0: only the app's bound)")
	fs.Int64Var(&u.AppMaxBytes, "upstream.app-max-bytes", u.AppMaxBytes, "bytes of C2S messages held per appcode, queued or in flight; beyond, UPSTREAM_BUSY")
	fs.Int64Var(&u.MaxBytes, "upstream.max-bytes", u.MaxBytes, "bytes of C2S messages held for all apps, queued or in flight; beyond, UPSTREAM_BUSY")
}

// EnvName returns the environment variable of a setting.
func EnvName(setting string) string {
	return "COURIER_" + strings.NewReplacer(".", "_", "-", "_").Replace(strings.ToUpper(setting))
}

// ApplyFileAndEnv sets, for every setting not given on the command line,
// its value from the environment, or else from the config file (if path
// is not empty): the environment wins over the file, and replaces a list
// or map setting whole. Unknown keys in the file are an error that names
// them.
func ApplyFileAndEnv(fs *pflag.FlagSet, path string, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { given[f.Name] = true })
	// The environment first, and the file only for what neither it nor
	// the command line gave: each setting is set by one source. (Set
	// after the file, a list or map setting would have the environment's
	// value added to the file's, not replace it: a key revoked through
	// the environment would still work.)
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || given[f.Name] {
			return
		}
		if v := getenv(EnvName(f.Name)); v != "" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s: %w", EnvName(f.Name), RedactSecret(e))
			}
			given[f.Name] = true
		}
	})
	if err != nil {
		return err
	}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("config file: %w", err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return fmt.Errorf("config file %s: %w", path, err)
		}
		tree, err := yamlTree(&doc)
		if err != nil {
			return fmt.Errorf("config file %s: %w", path, err)
		}
		flat := map[string]string{}
		if err := flatten(fs, "", tree, flat); err != nil {
			return fmt.Errorf("config file %s: %w", path, err)
		}
		keys := make([]string, 0, len(flat))
		for k := range flat {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if given[k] {
				continue
			}
			if err := fs.Set(k, flat[k]); err != nil {
				return fmt.Errorf("config file %s: %s: %w", path, k, RedactSecret(err))
			}
		}
	}
	return nil
}

// secretSettings hold secrets: an error about one of their values does
// not repeat the value (it would end up in logs).
var secretSettings = map[string]bool{"app-secret": true, "api-key": true, "store.dsn": true}

// RedactSecret returns err, or, for an invalid value of a setting that
// holds secrets, an error that names the setting without the value.
func RedactSecret(err error) error {
	var iv *pflag.InvalidValueError
	if !errors.As(err, &iv) || !secretSettings[iv.GetFlag().Name] {
		return err
	}
	what := "not a comma-separated list of KEY=VALUE pairs"
	if iv.GetFlag().Name == "store.dsn" {
		what = "not a valid value"
	}
	return fmt.Errorf("invalid value for --%s: %s (the value is not shown: it holds secrets)", iv.GetFlag().Name, what)
}

// yamlTree turns a YAML document into maps, lists and strings: every key
// and scalar as written, not as YAML would type it (an unquoted appcode
// or an all-digit secret such as 0123456789012345 is a number to YAML,
// printed back as another string; 010 would be 8).
func yamlTree(doc *yaml.Node) (map[string]any, error) {
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil // an empty file
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the file must be a map of settings", root.Line)
	}
	v, err := yamlValue(root)
	if err != nil {
		return nil, err
	}
	return v.(map[string]any), nil
}

func yamlValue(n *yaml.Node) (any, error) {
	switch n.Kind {
	case yaml.AliasNode:
		return yamlValue(n.Alias)
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return nil, nil
		}
		return n.Value, nil
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			v, err := yamlValue(c)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case yaml.MappingNode:
		out := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: a key must be a plain value", k.Line)
			}
			v, err := yamlValue(n.Content[i+1])
			if err != nil {
				return nil, err
			}
			out[k.Value] = v
		}
		return out, nil
	}
	return nil, fmt.Errorf("line %d: unexpected YAML", n.Line)
}

// flatten turns nested maps into "a.b" keys. A map under a key that is a
// map-valued setting (app-secret, api-key) becomes "k=v,k=v".
func flatten(fs *pflag.FlagSet, prefix string, tree map[string]any, out map[string]string) error {
	for k, v := range tree {
		name := k
		if prefix != "" {
			name = prefix + "." + k
		}
		f := fs.Lookup(name)
		m, isMap := v.(map[string]any)
		list, isList := v.([]any)
		switch {
		case f != nil && isList && strings.HasSuffix(f.Value.Type(), "Slice"):
			// A YAML list under a list setting (gate.proxy-from).
			parts := make([]string, len(list))
			for i, e := range list {
				parts[i] = fmt.Sprint(e)
			}
			out[name] = strings.Join(parts, ",")
		case f != nil && isList:
			return fmt.Errorf("setting %q takes one value, not a list", name)
		case f != nil && isMap && f.Value.Type() == "stringToString":
			parts := make([]string, 0, len(m))
			for mk, mv := range m {
				parts = append(parts, fmt.Sprintf("%s=%v", mk, mv))
			}
			sort.Strings(parts)
			out[name] = strings.Join(parts, ",")
		case f != nil && isMap:
			// store is a setting and the prefix of store.dsn and the
			// others: a YAML key cannot be both a value and a map.
			keys := make([]string, 0, len(m))
			for mk := range m {
				keys = append(keys, mk)
			}
			sort.Strings(keys)
			under := name + ".NAME"
			if len(keys) > 0 {
				under = name + "." + keys[0]
			}
			return fmt.Errorf("setting %q takes one value, not a map: write %q: VALUE, and the settings under it dotted at the top level (%q: ...)",
				name, name, under)
		case f != nil && v == nil:
			out[name] = "" // "key:" with no value: empty, not "<nil>"
		case f != nil && !isMap:
			out[name] = fmt.Sprint(v)
		case f == nil && isMap:
			if err := flatten(fs, name, m, out); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown setting %q", name)
		}
	}
	return nil
}
