package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/actors"
	"github.com/courier-im/courier/actors/stats"
	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/cluster"
	"github.com/courier-im/courier/cluster/api"
	"github.com/courier-im/courier/cluster/discovery"
	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/cluster/upstream"
	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
)

// Node is a running Courier node.
type Node struct {
	cfg   Config
	log   *slog.Logger
	reg   *prometheus.Registry
	sys   *cluster.System
	store store.Store
	lists *durableLists
	stats *stats.Recorder
	up    *upstream.Router
	hub   *upstream.Hub
	gate  *gate.Gate
	grpc  *grpc.Server
	apiLn net.Listener
	http  *http.Server
	httpL net.Listener

	health   *health.Server // grpc.health.v1 on the API port
	stopping atomic.Bool    // Shutdown has begun: not ready
	joined   atomic.Bool    // Start joined the cluster and synced the lists: the gate may open
	leaseGen atomic.Uint64  // counts leaseChanged calls (changed under drainMu)
	drain    *drainState    // drain.go
	drainMu  sync.Mutex

	roles membership.Roles
	quit  chan struct{} // stops the expiry sweep, the load publisher and the idle memory release
	never chan struct{} // Failed of a node without a gate

	memReleases prometheus.Counter
	wg          sync.WaitGroup
	once        sync.Once
}

// Version is the node's version, published to the other members (the
// courier command sets it to its own, which `make build` and `make
// release` stamp).
var Version = "dev"

// Start builds and starts a node with the components of its roles and
// joins the cluster. On error everything already started is stopped
// again.
func Start(cfg Config, log *slog.Logger) (_ *Node, err error) {
	if log == nil {
		log = slog.Default()
	}
	roles, err := cfg.roles()
	if err != nil {
		return nil, asConfigError(err)
	}
	secrets, keys, err := cfg.resolve()
	if err != nil {
		return nil, asConfigError(err)
	}
	// The cluster's settings too: cluster.Start fails alike on a wrong
	// setting and on a Consul it cannot reach, and only the second is
	// worth a restart.
	if err := cfg.Cluster.Validate(); err != nil {
		return nil, asConfigError(err)
	}
	n := &Node{cfg: cfg, log: log, roles: roles, reg: prometheus.NewRegistry(), quit: make(chan struct{}), never: make(chan struct{}),
		drain: newDrainState()}
	n.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	certExpiry(cfg, n.reg, log)
	defer func() {
		if err != nil {
			n.Shutdown(context.Background())
		}
	}()

	var newChild cluster.ChildFactory
	ids := actors.NewIDGen()
	n.stats = stats.New()
	n.reg.MustRegister(n.stats)
	var deps *actors.Deps
	if roles.Has(membership.RoleActors) || roles.Has(membership.RoleGate) {
		// The actors' inbox, and the gate's stored access lists.
		commitSeconds := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "courier_store_commit_seconds",
			Help: "Time of one group commit of the inbox store (write and sync).", Buckets: prometheus.ExponentialBuckets(50e-6, 2, 14)})
		batchWrites := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "courier_store_commit_writes",
			Help: "Writes (one per identity) in one group commit.", Buckets: prometheus.ExponentialBuckets(1, 2, 12)})
		commitErrors := prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_store_commit_errors_total",
			Help: "Group commits that failed (their writes were refused)."})
		swept := prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_store_swept_records_total",
			Help: "Expired idempotency and C2C-dedup records deleted by the store's sweep."})
		readSeconds := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "courier_store_read_seconds",
			Help: "Time of one read round trip of the PostgreSQL store (loads and idempotency lookups of many identities).", Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18)})
		batchReads := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "courier_store_read_reads",
			Help: "Reads (loads and idempotency lookups) in one read round trip of the PostgreSQL store.", Buckets: prometheus.ExponentialBuckets(1, 2, 10)})
		readErrors := prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_store_read_errors_total",
			Help: "Read round trips of the PostgreSQL store that failed (their reads were refused)."})
		diskEvents := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "courier_store_disk_events_total",
			Help: "Trouble of the Pebble store's disk, by event: disk_slow (an operation pending over 5 s, counted every 2 s while it lasts), write_stall and write_stall_end, background_error (a flush or compaction failed: a full disk?), low_disk_space (under 10, 5, 3, 2, 1 % free)."}, []string{"event"})
		stalled := prometheus.NewGauge(prometheus.GaugeOpts{Name: "courier_store_write_stalled",
			Help: "1 while the Pebble store's writes are stalled waiting for the disk (flushes, compactions)."})
		n.reg.MustRegister(commitSeconds, batchWrites, commitErrors, swept, readSeconds, batchReads, readErrors, diskEvents, stalled)
		var stallMu sync.Mutex
		stalledWriters := 0 // Pebble tells each writer that waits
		diskEvent := func(event string) {
			diskEvents.WithLabelValues(event).Inc()
			if event != "write_stall" && event != "write_stall_end" {
				return
			}
			stallMu.Lock()
			defer stallMu.Unlock()
			if event == "write_stall" {
				stalledWriters++
			} else {
				stalledWriters = max(stalledWriters-1, 0)
			}
			stalled.Set(float64(min(stalledWriters, 1)))
		}
		observe := func(writes int, d time.Duration, err error) {
			commitSeconds.Observe(d.Seconds())
			batchWrites.Observe(float64(writes))
			if err != nil {
				commitErrors.Inc()
			}
		}
		observeRead := func(reads int, d time.Duration, err error) {
			readSeconds.Observe(d.Seconds())
			batchReads.Observe(float64(reads))
			if err != nil {
				readErrors.Inc()
			}
		}
		if n.store, err = openStore(cfg, log, observe, observeRead, func(k int) { swept.Add(float64(k)) }, diskEvent); err != nil {
			return nil, err
		}
		s := n.store
		n.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "courier_store_commit_wait_seconds",
			Help: "How long the inbox store's oldest commit in progress has waited for the disk or the database (0: none in progress). Past store.stall-after, new writes are refused and /readyz fails."},
			func() float64 { return s.CommitWait().Seconds() }))
	}
	if roles.Has(membership.RoleActors) {
		fenced := prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_store_fenced_writes_total",
			Help: "Writes refused because another activation had claimed their identity since (ownership fencing)."})
		refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "courier_actors_refused_total",
			Help: "Requests (stored pushes, C2C, logins, ...) refused at once for the store's pressure, by why: pending_writes (actors.max-pending-writes), store_stalled (store.stall-after), stash_full (actors.max-stashed), read_queue (store.read-queue), answers_waiting (answers behind an identity's write that does not complete, about 4 × actors.window-bytes)."}, []string{"why"})
		for _, why := range []string{"pending_writes", "store_stalled", "stash_full", "read_queue", "answers_waiting"} {
			refused.WithLabelValues(why)
		}
		n.reg.MustRegister(fenced, refused)
		deps = actors.NewDeps(actors.Deps{Config: &n.cfg.Actors, Store: n.store, IDs: ids, Log: log, Stats: n.stats, Fenced: fenced.Inc,
			Refused: func(why string) { refused.WithLabelValues(why).Inc() }})
		newChild = deps.NewActor
	}
	n.up = upstream.New(cfg.Upstream, n.stats)
	n.up.SetLog(log)
	up := n.up
	n.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "courier_upstream_queued_messages",
		Help: "Devices' C2S messages this node's gate holds waiting for an app-server's subscription to take them (upstream.queue-len per appcode and msgtype)."},
		func() float64 { return float64(up.Queued()) }))
	n.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "courier_upstream_held_bytes",
		Help: "Bytes of the C2S messages this node's gate holds, queued or sent and not yet acknowledged by an app-server (bounded by upstream.max-bytes)."},
		func() float64 { return float64(up.Bytes()) }))
	upRefused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "courier_upstream_refused_total",
		Help: "C2S messages refused to the device, by why: no_subscriber (C2S_ACK NO_SUBSCRIBER), queue_full (upstream.queue-len), over_budget (upstream.app-max-bytes or upstream.max-bytes), device_over_budget (upstream.uid-max-bytes; all three UPSTREAM_BUSY), too_large (MESSAGE_TOO_LARGE), closed (the node is stopping)."},
		[]string{"why"})
	n.reg.MustRegister(upRefused)
	for _, why := range []string{"no_subscriber", "queue_full", "over_budget", "device_over_budget", "too_large", "closed"} {
		upRefused.WithLabelValues(why) // a series from the start: an alert's increase() sees the first refusal
	}
	// The cluster member starts before any other gRPC in the process.
	n.sys, err = cluster.Start(cfg.Cluster, newChild, n.reg, log)
	if err != nil {
		return nil, err
	}
	if deps != nil {
		deps.Router, deps.Gates = n.sys, n.sys
	}
	n.sys.OnUndeliverable(n.undeliverable)
	n.sys.OnLeaseless(actors.Leaseless)
	n.hub = upstream.NewHub(n.up, upTransport{n.sys}, log)
	if err := n.sys.Serve(upstreamName, n.hub.Receive); err != nil {
		return nil, fmt.Errorf("node: upstream actor: %w", err)
	}
	n.sys.OnView(func(v *membership.View) {
		var live []string
		for _, m := range v.Live(0) {
			live = append(live, m.Address)
		}
		var gates []upstream.GateRef
		for _, m := range v.Live(membership.RoleGate) {
			gates = append(gates, upstream.GateRef{Address: m.Address, Instance: m.ID})
		}
		n.hub.SetMembers(live, gates)
	})

	self := membership.Member{Name: cfg.Name, Roles: roles, Version: Version, GateProbes: true}
	if roles.Has(membership.RoleGate) {
		gcfg := cfg.Gate
		gcfg.AppSecrets = secrets
		// The node keeps the lists in the store and applies them (and the
		// lists file) to the gate itself.
		gcfg.ListsFile = ""
		br := &bridge{sys: n.sys, gateID: newInstanceID(), node: cfg.Name, up: n.up, ids: ids, maxFrame: int(cfg.Gate.MaxFrameSize),
			loginTimeout: cfg.Gate.LoginTimeout, upRefused: func(why string) { upRefused.WithLabelValues(why).Inc() },
			heartbeatSeconds: uint32(cfg.Gate.HeartbeatInterval / time.Second)}
		n.gate, err = gate.New(gcfg, br, n.reg, log)
		if err != nil {
			return nil, gateError(err)
		}
		br.g = n.gate
		n.sys.SetGate(sink{n.gate, br.gateID})
		public := cfg.GatePublicAddr
		br.gateAddr.Store(&public)
		// The stored lists are in force before the first device connects.
		n.lists = &durableLists{st: n.store, gate: n.gate.Lists(), log: log, file: cfg.Gate.ListsFile}
		if !n.listsShared() {
			n.lists.Record() // edits reach it from its join on (syncLists)
		}
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = n.lists.start(sctx, cfg.Gate.Lists)
		cancel()
		if err != nil {
			return nil, err
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.lists.run(n.quit, cfg.Gate.ListsPollInterval)
		}()
		// Closed to devices (ERROR SERVER_BUSY at connect: they retry)
		// until the node has joined and has the cluster's lists: a login
		// before would be refused for want of a placement, and a
		// blacklisted device let in by stale lists.
		n.gate.Refuse(true)
		if err := n.gate.Start(); err != nil {
			return nil, err
		}
		if public == "" {
			public = reachable(n.gate.Addr().String(), n.sys.Address())
			br.gateAddr.Store(&public)
			if loopbackOnly(public) && !loopbackOnly(n.gate.Addr().String()) {
				log.Warn("node: presence and /v1/gates give devices a loopback gate address (the host of the cluster address): set gate-public-addr to the address devices dial",
					"gate", public, "gate.addr", cfg.Gate.Addr)
			}
		}
		self.GateID, self.GateAddr = br.gateID, public
		self.Apps = gateApps(secrets)
	}

	if roles.Has(membership.RoleAPI) {
		if len(keys) == 0 {
			log.Warn("node: the api role has no api-key (api-key, api-key-file): every call will be refused UNAUTHENTICATED")
		}
		deps := api.Deps{Keys: keys, Req: n.sys, Limits: cfg.API, Stats: n.stats, Upstream: n.hub,
			Members: n.sys.View, Provider: cfg.Cluster.Provider, ClusterStats: n.clusterStats, Lists: clusterLists{n},
			Drain: n.drainMember}
		if n.gate != nil {
			deps.Backlog = n.gate.Backlog
		}
		apiTLS, err := cfg.apiTLS()
		if err != nil {
			return nil, asConfigError(err)
		}
		srv := api.New(deps)
		opts := srv.ServerOptions()
		if apiTLS != nil {
			opts = append(opts, grpc.Creds(credentials.NewTLS(apiTLS)))
		}
		n.grpc = grpc.NewServer(opts...)
		apipb.RegisterCourierServer(n.grpc, srv)
		// grpc.health.v1 (for load balancers; no API key needed) and server
		// reflection (grpcurl works without the .proto files).
		n.health = health.NewServer()
		n.health.SetServingStatus(apipb.Courier_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
		n.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
		healthpb.RegisterHealthServer(n.grpc, n.health)
		reflection.Register(n.grpc)
		n.reg.MustRegister(srv.Collectors()...)
		if n.apiLn, err = net.Listen("tcp", cfg.APIAddr); err != nil {
			return nil, fmt.Errorf("node: api-addr %s: %w", cfg.APIAddr, err)
		}
		n.apiLn = srv.Listener(n.apiLn) // api.max-connections
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := n.grpc.Serve(n.apiLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				log.Error("node: gRPC API stopped", "err", err)
			}
		}()
		self.APIAddr = reachable(n.apiLn.Addr().String(), n.sys.Address())
	}

	// Pushes to devices on a gate that is behind are refused by their
	// actors, wherever the API that took them is (the local API also
	// holds calls while the local gate is behind).
	n.sys.SetGateGuard(cfg.API.MaxGateBacklog, n.gate != nil && roles.Has(membership.RoleAPI))

	n.memReleases = prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_node_idle_memory_releases_total",
		Help: "Times the node, idle, returned its heap's free memory to the operating system (idle-memory-release)."})
	n.reg.MustRegister(n.memReleases)
	if cfg.IdleMemoryRelease > 0 {
		n.wg.Add(1)
		go n.releaseIdleMemory(cfg.IdleMemoryRelease)
	}
	if roles.Has(membership.RoleActors) && cfg.Actors.ExpirySweep > 0 {
		n.wg.Add(1)
		go n.sweepExpired(cfg.Actors.ExpirySweep)
	}

	if cfg.HTTPAddr != "" {
		if n.httpL, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return nil, fmt.Errorf("node: http-addr %s: %w", cfg.HTTPAddr, err)
		}
		// Within the descriptors the gate leaves to the rest of the node
		// (a gate that cannot accept stops): connections beyond wait in
		// the kernel's queue.
		n.httpL = netutil.LimitListener(n.httpL, HTTPMaxConns)
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{MaxRequestsInFlight: 4, Timeout: 20 * time.Second}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		if roles.Has(membership.RoleAPI) {
			mux.Handle(discovery.Path, discovery.Handler(n.discoveryView))
		}
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			if err := n.Ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ready")
		})
		n.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := n.http.Serve(n.httpL); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("node: HTTP stopped", "err", err)
			}
		}()
		self.HTTPAddr = reachable(n.httpL.Addr().String(), n.sys.Address())
	}

	self.Load = n.load()
	// Requests from other nodes (statistics, list edits, drains) are
	// answered from here on: before, the gate, the lists and the health
	// server they use were not set yet (a process restarted at the same
	// address gets those meant for its old instance).
	n.sys.SetNodeHandler(n.answerNode)
	n.sys.OnLease(n.leaseChanged)
	if err := n.sys.Join(context.Background(), self, n.rejoined); err != nil {
		return nil, err
	}
	gen0 := n.leaseGen.Load()
	if n.lists != nil {
		n.syncLists(gen0, n.lists.Recording())
	}
	n.drainMu.Lock()
	n.joined.Store(true)
	switch {
	case !n.sys.LeaseValid():
		// Lost meanwhile: the regain opens the gate.
	case n.leaseGen.Load() == gen0:
		n.openGateLocked(gen0)
	default:
		// Lost and regained during the copy (which was dropped), while
		// the regain could not open the gate: a regain's copy now.
		n.regainLocked(n.leaseGen.Load())
	}
	n.drainMu.Unlock()
	n.wg.Add(1)
	go n.publishLoad(cfg.Cluster.LoadInterval)
	// SERVING, unless the lease was lost since the join (leaseChanged ran).
	n.setHealth(n.sys.LeaseValid())
	log.Info("node: started", "name", cfg.Name, "roles", roles.String(), "gate", n.GateAddr(), "api", n.APIAddr(),
		"http", n.HTTPAddr(), "cluster", n.sys.Address(), "store", cfg.Store, "data", cfg.DataDir)
	if cfg.Cluster.Provider == membership.ProviderConsul && cfg.Store == "pebble" && roles.Has(membership.RoleActors) {
		log.Warn("node: a cluster node with its own Pebble inbox (cluster.local-store): an identity that moves to another node (a join, a drain, a crash) " +
			"does not find what was stored for it here, and its seqs start over; a cluster shares PostgreSQL (--store postgres)")
	}
	return n, nil
}

// HTTPMaxConns bounds the connections the HTTP endpoint (metrics,
// health, gate discovery) holds at once.
const HTTPMaxConns = 128

// upstreamName is the well-known actor of every node's upstream hub.
const upstreamName = "courier-upstream"

// upTransport carries the upstream hubs' messages over remoting.
type upTransport struct{ sys *cluster.System }

func (t upTransport) Self() string { return t.sys.Address() }

func (t upTransport) Send(address string, m proto.Message) { t.sys.SendNode(address, upstreamName, m) }

// postgresLanes is the default of store.lanes with PostgreSQL: round
// trips and WAL flushes overlap.
const postgresLanes = 4

// pebbleLanes is the default of store.lanes with Pebble (the store's own
// default too; the node needs the number for the queue's length below).
// Pebble's log syncs one after another whatever the number of lanes, so
// a second lane only splits each sync's writes in two. BENCHMARKS.md,
// round 7, has the A/Bs: at 26,450 stored pushes/s a third lower p99 and
// 2-4% less CPU per message; at 20,000/s mixed.
const pebbleLanes = 1

// openStore opens the configured inbox store.
func openStore(cfg Config, log *slog.Logger, observe, observeRead func(int, time.Duration, error), swept func(int), diskEvent func(string)) (store.Store, error) {
	lanes := cfg.StoreLanes
	if lanes == 0 {
		lanes = pebbleLanes
		if cfg.Store == "postgres" {
			lanes = postgresLanes
		}
	}
	// Every lane of the commit queue holds the actors' whole write budget,
	// so that submitting a write never waits (actors.WriteBudget), plus
	// room for the sweep's rounds (one per lane).
	queue := lanes * (cfg.Actors.MaxPendingWrites + 256)
	if cfg.Store == "postgres" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		s, err := store.OpenPostgres(ctx, store.PostgresConfig{DSN: cfg.StoreDSN, MaxConns: cfg.StoreMaxConns, Lanes: lanes,
			QueueLen: queue, Readers: cfg.StoreReaders, ReadQueueLen: cfg.StoreReadQueue, Timeout: cfg.StoreTimeout,
			NoSync: cfg.StoreNoSync, Observe: observe, ObserveRead: observeRead, Swept: swept}, log)
		if err != nil {
			return nil, fmt.Errorf("node: store postgres: %w", err)
		}
		return s, nil
	}
	s, err := store.OpenPebble(store.PebbleConfig{Dir: filepath.Join(cfg.DataDir, "inbox"), Lanes: lanes, QueueLen: queue,
		MinSyncInterval: cfg.StoreMinSyncInterval, NoSync: cfg.StoreNoSync, StallAfter: cfg.StoreStallAfter, Observe: observe, Swept: swept, DiskEvent: diskEvent,
		Readers: cfg.StoreReaders, ReadQueueLen: cfg.StoreReadQueue, ObserveRead: observeRead}, log)
	if err != nil {
		return nil, storeOpenError(cfg.DataDir, err)
	}
	return s, nil
}

// load is what the node publishes about how busy it is.
func (n *Node) load() membership.Load {
	var l membership.Load
	if n.gate != nil {
		l.Conns, l.MaxConns = n.gate.Conns(), n.gate.MaxConns()
	}
	if n.sys != nil {
		l.Actors = n.sys.Active()
	}
	return l
}

// publishLoad hands the node's load to the membership, which publishes
// it when it changed.
func (n *Node) publishLoad(every time.Duration) {
	defer n.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-n.quit:
			return
		case <-t.C:
			n.sys.SetLoad(n.load())
		}
	}
}

// rejoined is called when the node had to rejoin the cluster as a new
// instance. Its devices were told to reconnect when it lost its lease
// (leaseChanged), before it rejoined.
func (n *Node) rejoined() {
	n.log.Warn("node: rejoined the cluster as a new instance")
}

// leaseChanged is called when the node loses its membership lease
// (false) and holds one again (true). Without it, the other members may
// have taken it for gone and ended the sessions on its gate: its devices
// are told to reconnect (to another gate, through discovery) and new
// connections are refused until the node holds a lease again.
func (n *Node) leaseChanged(valid bool) {
	n.setHealth(valid)
	if n.gate == nil {
		return
	}
	// Under drainMu: a regain's opening (openGateLocked) checks the
	// generation under it too, so that one begun before this loss cannot
	// open the gate after it.
	n.drainMu.Lock()
	gen := n.leaseGen.Add(1)
	if !valid {
		n.gate.Refuse(true)
		if !n.listsShared() {
			n.lists.Record() // edits reach it again from its rejoin on
		}
		n.drainMu.Unlock()
		n.log.Warn("node: no membership lease; devices on this gate are told to reconnect elsewhere")
		n.gate.KickAll()
		return
	}
	defer n.drainMu.Unlock()
	if n.stopping.Load() || !n.joined.Load() {
		return // not yet open (Start opens it once joined)
	}
	n.regainLocked(gen)
}

// regainLocked opens the gate for lease generation gen, a regain: once
// the lists are copied from the other gates, for a gate with lists of its
// own. Called under drainMu.
func (n *Node) regainLocked(gen uint64) {
	if n.listsShared() {
		n.openGateLocked(gen)
		return
	}
	// Edits made while this node was out of the cluster did not reach its
	// own lists: copy the other gates' before opening, off the
	// membership's goroutine (a call of up to listsWait).
	rec := n.lists.Recording()
	if rec == 0 {
		// Ended already (a start's copy ran while the lease was lost):
		// what reaches the gate from now on is kept over this copy.
		rec = n.lists.Record()
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.syncLists(gen, rec)
		n.drainMu.Lock()
		defer n.drainMu.Unlock()
		n.openGateLocked(gen)
	}()
}

// openGateLocked lets devices in, for lease generation gen, unless the
// lease changed since (lost, or regained again: that regain opens it),
// the node stops, or a drain refuses them. Called under drainMu.
func (n *Node) openGateLocked(gen uint64) {
	if n.gate == nil || n.stopping.Load() || n.leaseGen.Load() != gen {
		return
	}
	select {
	case <-n.drain.started:
		return // a drain's refusal holds: the devices belong elsewhere
	default:
	}
	n.gate.Refuse(false)
}

// setHealth sets gRPC health to SERVING or NOT_SERVING with the lease, as
// /readyz says; a draining or stopping node stays NOT_SERVING (its
// health server was shut down, which ignores later changes).
func (n *Node) setHealth(serving bool) {
	if n.health == nil {
		return
	}
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	n.health.SetServingStatus(apipb.Courier_ServiceDesc.ServiceName, st)
	n.health.SetServingStatus("", st)
}

// discoveryView is the membership as gate discovery answers from it:
// nothing while this node holds no lease (its view may be stale), so
// that devices ask another node.
func (n *Node) discoveryView() *membership.View {
	if !n.sys.LeaseValid() {
		return &membership.View{}
	}
	return n.sys.View()
}

// gateApps lists the apps whose devices the gate accepts, for gate
// discovery. Beyond 80 apps the list would not fit the membership's
// metadata and none is published, meaning every app.
func gateApps(secrets map[uint16][]byte) []uint16 {
	if len(secrets) > 80 {
		return nil
	}
	apps := make([]uint16, 0, len(secrets))
	for app := range secrets {
		apps = append(apps, app)
	}
	slices.Sort(apps)
	return apps
}

// reachable turns a listen address such as ":7001" or "0.0.0.0:7001" into
// one other machines can dial, with the host of the node's remoting
// address (which other members reach).
func reachable(listen, remoting string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if h, _, err := net.SplitHostPort(remoting); err == nil {
			host = h
		}
	}
	return net.JoinHostPort(host, port)
}

// loopbackOnly reports whether addr's host is a loopback address
// (127.0.0.1, ::1, localhost).
func loopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	return host == "localhost"
}

// sweepExpired periodically has the actors of identities with expired
// messages drop them, so that devices that never come back do not keep
// their messages on disk forever. An identity found is sent a Sweep; its
// actor expires what is due (counted as expired) and passivates again.
// Rounds take at most sweepRound identities, sent sweepChunk at a time
// spaced by sweepPause (each Sweep loads an identity, in the read queue
// logins and pushes use); a full round is followed by another at once,
// so that a backlog is worked off at up to sweepChunk/sweepPause
// identities a second instead of one round per interval.
func (n *Node) sweepExpired(every time.Duration) {
	defer n.wg.Done()
	wait := every
	for {
		select {
		case <-n.quit:
			return
		case <-time.After(wait):
		}
		var ids []store.Identity
		ctx, cancel := context.WithCancel(context.Background())
		go func() { // the store's call ends at quit
			select {
			case <-n.quit:
				cancel()
			case <-ctx.Done():
			}
		}()
		err := n.store.Expired(ctx, time.Now(), sweepRound, func(id store.Identity) {
			ids = append(ids, id)
		})
		cancel()
		if err != nil {
			select {
			case <-n.quit:
				return // cut short by the shutdown
			default:
			}
			n.log.Warn("node: expiry sweep", "err", err)
		} else if len(ids) > 0 {
			n.log.Debug("node: expiry sweep", "identities", len(ids))
		}
		for i, id := range ids {
			if i%sweepChunk == 0 {
				pause := sweepPause
				if i == 0 {
					pause = 0
				}
				select {
				case <-n.quit:
					return
				case <-time.After(pause):
				}
			}
			n.sys.Send(&actorpb.Envelope{AppCode: uint32(id.App), Uid: id.UID, Body: &actorpb.Envelope_Sweep{Sweep: &actorpb.Sweep{}}})
		}
		wait = every
		if len(ids) == sweepRound {
			wait = sweepPause // more are due: go on
		}
	}
}

// The expiry sweep's pace (sweepExpired).
const (
	sweepRound = 10_000
	sweepChunk = 500
	sweepPause = 100 * time.Millisecond
)

func newInstanceID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Ready returns nil when the node serves: the parts of its roles run (the
// store open, the gate listening) and it is a live member of the cluster;
// otherwise an error saying what is missing. A node that has begun to shut down is
// not ready.
func (n *Node) Ready() error {
	var missing []string
	if n.stopping.Load() {
		missing = append(missing, "shutting down")
	} else {
		select {
		case <-n.drain.started:
			// Load balancers stop sending devices and calls here from the
			// drain's start, as gRPC health and gate discovery do.
			missing = append(missing, "draining")
		default:
		}
	}
	if n.store == nil && (n.roles.Has(membership.RoleActors) || n.roles.Has(membership.RoleGate)) {
		missing = append(missing, "store not open")
	} else if n.store != nil && n.store.Stalled() {
		// New writes are refused meanwhile (a hung disk): devices and
		// calls are better served elsewhere. (Pebble only: a PostgreSQL
		// commit is bounded by store.timeout, and a stall of the
		// database, every node's, would take them all out of the
		// balancers at once.)
		missing = append(missing, fmt.Sprintf("a store commit has waited %v (store.stall-after %v)", n.store.CommitWait().Round(time.Second), n.cfg.StoreStallAfter))
	}
	if n.gate == nil {
		if n.roles.Has(membership.RoleGate) {
			missing = append(missing, "no gate")
		}
	} else {
		select {
		case <-n.gate.Done():
			missing = append(missing, "gate stopped")
		default:
		}
	}
	if n.sys == nil || !n.sys.Joined() {
		missing = append(missing, "not a member of the cluster")
	} else if !n.sys.LeaseValid() {
		// Its gate refuses devices and its identities are refused: a load
		// balancer must not send here until it rejoined.
		missing = append(missing, "no membership lease")
	}
	if len(missing) > 0 {
		return errors.New(strings.Join(missing, "; "))
	}
	return nil
}

// Failed is closed when a part the node cannot live without stopped by
// itself (the gate's event engine); Err says why. The process should exit
// rather than go on as a node that serves no device.
func (n *Node) Failed() <-chan struct{} {
	if n.gate == nil {
		return n.never
	}
	return n.gate.Done()
}

// Err returns why the node failed, or nil.
func (n *Node) Err() error {
	if n.gate == nil {
		return nil
	}
	return n.gate.Err()
}

// Roles returns the node's roles ("gate,actors,api").
func (n *Node) Roles() string { return n.roles.String() }

// ClusterAddr is the node's actor remoting address.
func (n *Node) ClusterAddr() string { return n.sys.Address() }

// GateAddr is the gate's listen address ("" without the gate role).
func (n *Node) GateAddr() string {
	if n.gate == nil {
		return ""
	}
	return n.gate.Addr().String()
}

// APIAddr is the gRPC API's listen address ("" without the api role).
func (n *Node) APIAddr() string {
	if n.apiLn == nil {
		return ""
	}
	return n.apiLn.Addr().String()
}

// HTTPAddr is the metrics endpoint's address ("" if disabled).
func (n *Node) HTTPAddr() string {
	if n.httpL == nil {
		return ""
	}
	return n.httpL.Addr().String()
}

// finalContext is ctx for the last steps of a shutdown: at least 5 s
// from now, whatever is left of ctx.
func finalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	d := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		d = max(time.Until(dl), d)
	} else {
		return context.WithCancel(context.WithoutCancel(ctx))
	}
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// within runs fn and reports whether it returned before ctx ended (it
// goes on in the background otherwise).
func within(ctx context.Context, fn func()) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// settleContext is the part of ctx's time the upstream router gets to
// empty at shutdown: half of what is left (10 s without a deadline).
func settleContext(ctx context.Context) (context.Context, context.CancelFunc) {
	d := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		d = time.Until(dl) / 2
	}
	return context.WithTimeout(ctx, d)
}

// Shutdown stops the node gracefully within ctx. Safe to call twice.
func (n *Node) Shutdown(ctx context.Context) error {
	var errs []error
	n.once.Do(func() {
		start := time.Now()
		step := func(what string) { n.log.Debug("node: shutdown: "+what, "after", time.Since(start)) }
		n.drainMu.Lock() // a drain asked now sees it (startDrain)
		n.stopping.Store(true)
		n.drainMu.Unlock()
		close(n.quit)
		if n.health != nil {
			n.health.Shutdown() // NOT_SERVING: load balancers stop sending calls
		}
		if n.gate != nil {
			if err := n.gate.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("gate: %w", err))
			}
			step("gate stopped")
		}
		if n.up != nil && n.gate != nil {
			// The gate took no C2S since it stopped; what it took waits in
			// the router for the app-servers. Give them half of what is
			// left of the grace to take and acknowledge it, the
			// subscriptions of this node's API and of the other nodes'
			// still open: Close drops (and counts) whatever is left.
			sctx, cancel := settleContext(ctx)
			if !n.up.Settle(sctx) {
				n.log.Warn("node: shutdown: C2S messages still wait for app-servers", "bytes", n.up.Bytes())
			}
			cancel()
			step("upstream settled")
		}
		if n.hub != nil {
			// Upstream streams end so that GracefulStop does not wait for
			// them; this node's subscriptions leave the other gates.
			n.hub.Close()
		}
		if n.up != nil {
			n.up.Close()
		}
		if n.grpc != nil {
			if !within(ctx, n.grpc.GracefulStop) {
				n.grpc.Stop()
			}
			step("API stopped")
		}
		if n.http != nil {
			_ = n.http.Shutdown(ctx)
		}
		// Actors stop before the store closes. Every accepted message is
		// already durable; what an actor has not written yet is at most a
		// session going offline, which the next activation corrects.
		// Both wait for the store's writes in flight: a disk that hangs
		// would hold them past the grace (the store's synced writes are
		// safe; a restart replays them). They get a few seconds even when
		// the steps before used the grace up: leaving the cluster and
		// closing the store cleanly matter more than the last seconds.
		fctx, fcancel := finalContext(ctx)
		defer fcancel()
		// The node's goroutines end at quit, but one may be inside a
		// store call that waits for the disk (the expiry sweep's commit):
		// a hung disk must not hold the stop for ever. The wait takes at
		// most half of what is left, so that the steps after keep theirs.
		wctx, wcancel := fctx, context.CancelFunc(func() {})
		if dl, ok := fctx.Deadline(); ok {
			wctx, wcancel = context.WithTimeout(fctx, time.Until(dl)/2)
		}
		background := within(wctx, n.wg.Wait)
		wcancel()
		if !background {
			errs = append(errs, errors.New("node: background work not stopped within shutdown-grace (is the store's disk hung?)"))
		}
		step("HTTP stopped")
		actorsStopped := true
		if n.sys != nil {
			if actorsStopped = within(fctx, n.sys.Shutdown); !actorsStopped {
				errs = append(errs, errors.New("actors: not stopped within shutdown-grace (is the store's disk hung?)"))
			}
			step("actors stopped")
		}
		if n.store != nil && (!background || !actorsStopped) {
			// A goroutine or an actor may still be inside the store:
			// closing it under that call is not safe. Its synced writes
			// are on disk.
			errs = append(errs, errors.New("store: not closed: work is still inside it"))
		} else if n.store != nil {
			closed := make(chan error, 1)
			var err error
			if within(fctx, func() { closed <- n.store.Close() }) {
				err = <-closed
			} else {
				err = errors.New("not closed within shutdown-grace (is its disk hung?)")
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("store: %w", err))
			}
			step("store closed")
		}
	})
	return errors.Join(errs...)
}
