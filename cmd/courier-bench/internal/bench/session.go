package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/courier-im/courier/cluster/discovery"
	"github.com/courier-im/courier/cmd/courier-bench/internal/farm"
	"github.com/courier-im/courier/cmd/courier-bench/internal/ipc"
	"github.com/courier-im/courier/cmd/courier-bench/internal/nodeproc"
	"github.com/courier-im/courier/cmd/courier-bench/internal/procstat"
)

// session is one run: the node (maybe spawned), the worker processes and
// the accountant that joins their records.
type session struct {
	cfg     Config
	res     *Result
	node    procstat.Node
	spawned *nodeproc.Node
	gates   []string // the workers' gates (--gate, or from --discover)
	acct    *accountant
	workers []*ipc.Worker
	ranges  [][2]int // device indices [from, to) of each worker
}

// open starts the node if asked, then the workers with their devices
// (none logged in yet).
func open(ctx context.Context, cfg Config, scenario string, settings map[string]any) (*session, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &session{cfg: cfg, acct: newAccountant(cfg.Devices, cfg.UIDPrefix)}
	s.res = &Result{Scenario: scenario, Started: time.Now().UTC().Truncate(time.Second), Command: cfg.Command,
		Machine: thisMachine(), Settings: settings, Figures: []Figure{}, Latencies: []Latency{}}
	if cfg.Spawn != "" {
		n, err := nodeproc.Start(ctx, cfg.Spawn, cfg.SpawnArgs)
		if err != nil {
			return nil, err
		}
		s.spawned = n
		s.cfg.Gate, s.cfg.API, s.cfg.Metrics, s.cfg.Pprof, s.cfg.NodePID = n.Gate, n.API, n.HTTP, n.Pprof, n.PID()
		s.cfg.Secret, s.cfg.APIKey, s.cfg.AppCode = nodeproc.DevSecret, nodeproc.DevAPIKey, 1
	}
	s.gates = []string{s.cfg.Gate}
	if s.cfg.Discover != "" {
		gates, err := discovery.Fetch(ctx, s.cfg.Discover, s.cfg.AppCode)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("bench: --discover: %w", err)
		}
		s.gates = s.gates[:0]
		for _, g := range gates {
			s.gates = append(s.gates, g.Addr)
		}
		s.cfg.Gate = strings.Join(s.gates, ",")
		settings["gates"] = len(s.gates)
	}
	s.node = procstat.Node{PID: s.cfg.NodePID, Metrics: s.cfg.Metrics, Pprof: s.cfg.Pprof}
	s.res.Node = NodeInfo{Gate: s.cfg.Gate, API: s.cfg.API, Metrics: s.cfg.Metrics, PID: s.cfg.NodePID, Spawned: s.spawned != nil}
	if s.spawned != nil {
		s.res.Node.Args = s.spawned.Args
	}
	settings["devices"] = s.cfg.Devices
	settings["payload_bytes"] = s.cfg.PayloadSize
	settings["uid_prefix"] = s.cfg.UIDPrefix
	if err := s.startWorkers(ctx); err != nil {
		s.close()
		return nil, err
	}
	settings["workers"] = len(s.workers)
	settings["loops_per_worker"] = s.cfg.Loops
	settings["sources"] = len(s.cfg.Sources)
	return s, nil
}

func (s *session) startWorkers(ctx context.Context) error {
	gates := make([]netip.AddrPort, len(s.gates))
	for i, g := range s.gates {
		var err error
		if gates[i], err = netip.ParseAddrPort(g); err != nil {
			return fmt.Errorf("bench: gate address %q: %w (want IPv4:port)", g, err)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	n := s.cfg.Workers
	if n == 0 {
		n = (s.cfg.Devices + s.cfg.PerWorker - 1) / s.cfg.PerWorker
	}
	n = max(min(n, s.cfg.Devices), 1)
	for w := range n {
		from, to := s.cfg.Devices*w/n, s.cfg.Devices*(w+1)/n
		fc := farm.Config{
			Gate: gates[w%len(gates)], AppCode: s.cfg.AppCode, Secret: []byte(s.cfg.Secret), UIDPrefix: s.cfg.UIDPrefix,
			First: from, Count: to - from, Sources: s.cfg.Sources, Loops: s.cfg.Loops, WorkerID: w,
			RunID: s.cfg.runID, MsgType: s.cfg.MsgType, PayloadSize: s.cfg.PayloadSize,
			Keepalive: s.cfg.Keepalive, DropEvery: s.cfg.DropEvery,
		}
		wk, err := ipc.Spawn(ctx, exe, fc, s.acct.records)
		if err != nil {
			return fmt.Errorf("bench: worker %d: %w", w, err)
		}
		s.workers = append(s.workers, wk)
		s.ranges = append(s.ranges, [2]int{from, to})
	}
	return nil
}

// close stops the workers and the spawned node. It is safe to call twice.
func (s *session) close() {
	for _, w := range s.workers {
		_ = w.Stop(10 * time.Second)
	}
	s.workers = nil
	if s.spawned != nil {
		s.spawned.Stop()
		s.spawned = nil
	}
}

// nodeAlive reports an error if a spawned node has died.
func (s *session) nodeAlive() error {
	if s.spawned != nil && !s.spawned.Alive() {
		return fmt.Errorf("bench: the node exited:\n%s", s.spawned.Log())
	}
	return nil
}

// uid returns device g's uid (ghosts are the indices >= Devices).
func (s *session) uid(g int32) string {
	if int(g) >= s.cfg.Devices {
		return s.cfg.UIDPrefix + "ghost-" + strconv.Itoa(int(g))
	}
	return farm.UID(s.cfg.UIDPrefix, int(g))
}

// parallel runs fn for every worker whose range meets [from, to), with
// that overlap and the share of [from, to) it has.
func (s *session) parallel(from, to int, fn func(w *ipc.Worker, from, to int, share float64) error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(s.workers))
	for i, w := range s.workers {
		lo, hi := max(from, s.ranges[i][0]), min(to, s.ranges[i][1])
		if lo >= hi {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(w, lo, hi, float64(hi-lo)/float64(to-from))
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// login logs in devices [from, to) at rate per second (0: as fast as
// inflight allows) and returns when every one has a result.
func (s *session) login(ctx context.Context, from, to int, rate float64) error {
	return s.parallel(from, to, func(w *ipc.Worker, lo, hi int, share float64) error {
		return w.Login(ctx, lo, hi, rate*share, max(int(float64(s.cfg.LoginInflight)*share), 1))
	})
}

// devStats sums the workers' device counters.
func (s *session) devStats() farm.Stats {
	var st farm.Stats
	for _, w := range s.workers {
		st.Add(w.Stats())
	}
	return st
}

// measuring marks the start of the measured phase: it calls the
// OnMeasure hook and returns the CPU reading the phase starts from.
func (s *session) measuring(ctx context.Context) cpu {
	if s.cfg.OnMeasure != nil {
		s.cfg.OnMeasure(s.node)
	}
	return s.readCPU(ctx)
}

// cpu is a reading of the node's and the generator's CPU time, the
// database's, and the node's store commits so far.
type cpu struct {
	at              time.Time
	node, gen, work time.Duration // work: the device workers' share of gen
	nodeOK          bool
	db              time.Duration
	dbOK            bool
	commits, writes float64
	commitsOK       bool
	// The PostgreSQL store's read round trips and the reads they carried.
	readTrips, reads float64
	readsOK          bool
	// The whole machine's (the generator's; the node's too when local).
	mach   procstat.Machine
	machOK bool
}

func (s *session) readCPU(ctx context.Context) cpu {
	c := cpu{at: time.Now(), gen: procstat.SelfCPU()}
	if m, err := procstat.MachineCPU(); err == nil {
		c.mach, c.machOK = m, true
	}
	for _, w := range s.workers {
		if d, err := procstat.CPU(w.PID()); err == nil {
			c.gen += d
			c.work += d
		}
	}
	if d, err := s.node.CPU(ctx); err == nil {
		c.node, c.nodeOK = d, true
		for _, pid := range s.cfg.MorePIDs {
			d, err := procstat.CPU(pid)
			c.node += d
			c.nodeOK = c.nodeOK && err == nil
		}
	}
	if s.cfg.DBPID > 0 {
		if d, err := procstat.TreeCPU(s.cfg.DBPID); err == nil {
			c.db, c.dbOK = d, true
		}
	}
	if m, err := s.node.Scrape(ctx, "courier_store_commit_writes_count", "courier_store_commit_writes_sum"); err == nil {
		c.commits, c.writes = m["courier_store_commit_writes_count"], m["courier_store_commit_writes_sum"]
		c.commitsOK = len(m) == 2
	}
	if m, err := s.node.Scrape(ctx, "courier_store_read_reads_count", "courier_store_read_reads_sum"); err == nil {
		c.readTrips, c.reads = m["courier_store_read_reads_count"], m["courier_store_read_reads_sum"]
		c.readsOK = len(m) == 2
	}
	return c
}

// cpuFigures adds the CPU used between a and b, and the node's CPU per
// message for msgs messages.
func (s *session) cpuFigures(a, b cpu, msgs int64, what string) {
	wall := b.at.Sub(a.at).Seconds()
	if b.nodeOK && a.nodeOK {
		node := (b.node - a.node).Seconds()
		s.res.fig("node CPU", node, "s")
		s.res.fig("node CPU share", 100*node/wall, "% of a core")
		if msgs > 0 {
			s.res.fig("node CPU per "+what, node*1e6/float64(msgs), "µs")
		}
	} else {
		s.res.note("node CPU unknown: give --node-pid or --node-metrics")
	}
	if a.dbOK && b.dbOK {
		db := (b.db - a.db).Seconds()
		s.res.fig("database CPU", db, "s")
		s.res.fig("database CPU share", 100*db/wall, "% of a core")
		if msgs > 0 {
			s.res.fig("database CPU per "+what, db*1e6/float64(msgs), "µs")
		}
	}
	if a.commitsOK && b.commitsOK && b.commits > a.commits {
		commits := b.commits - a.commits
		s.res.fig("store commits/s", commits/wall, "/s")
		s.res.fig("store writes per commit", (b.writes-a.writes)/commits, "")
		if msgs > 0 {
			s.res.fig("delivered messages per store commit", float64(msgs)/commits, "")
		}
	}
	if a.readsOK && b.readsOK && b.readTrips > a.readTrips {
		trips := b.readTrips - a.readTrips
		s.res.fig("store read round trips/s", trips/wall, "/s")
		s.res.fig("store reads per round trip", (b.reads-a.reads)/trips, "")
	}
	if a.machOK && b.machOK && b.mach.Total > a.mach.Total {
		total := (b.mach.Total - a.mach.Total).Seconds()
		share := func(d time.Duration) float64 { return 100 * d.Seconds() / total }
		s.res.fig("this machine's CPU busy", share(b.mach.Busy-a.mach.Busy), "% of all cores")
		s.res.fig("this machine's CPU in the kernel", share(b.mach.Kernel-a.mach.Kernel), "% of all cores")
		s.res.fig("this machine's CPU stolen by the hypervisor", share(b.mach.Steal-a.mach.Steal), "% of all cores")
	}
	gen := (b.gen - a.gen).Seconds()
	s.res.fig("bench CPU", gen, "s")
	s.res.fig("bench CPU share", 100*gen/wall, "% of a core")
	if work := (b.work - a.work).Seconds(); msgs > 0 && work > 0 {
		s.res.fig("bench device workers' CPU per "+what, work*1e6/float64(msgs), "µs")
	}
	var rss int64
	for _, w := range s.workers {
		if r, err := procstat.RSS(w.PID()); err == nil {
			rss += r
		}
	}
	if rss > 0 {
		s.res.fig("bench device workers' RSS", float64(rss)/(1<<20), "MiB")
	}
}

// progress prints line() every second until stop is closed.
func (s *session) progress(stop <-chan struct{}, name string, line func(dt float64) string) *sync.WaitGroup {
	var wg sync.WaitGroup
	if s.cfg.Progress == nil {
		return &wg
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		start := time.Now()
		prev := s.readCPU(context.Background())
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				c := s.readCPU(context.Background())
				dt := c.at.Sub(prev.at).Seconds()
				cpuText := fmt.Sprintf("bench cpu %3.0f%%", 100*(c.gen-prev.gen).Seconds()/dt)
				if c.nodeOK && prev.nodeOK {
					cpuText = fmt.Sprintf("node cpu %3.0f%%  ", 100*(c.node-prev.node).Seconds()/dt) + cpuText
				}
				fmt.Fprintf(s.cfg.Progress, "[%s %4.0fs] %s  %s\n", name, time.Since(start).Seconds(), line(dt), cpuText)
				prev = c
			}
		}
	}()
	return &wg
}

// waitDrain waits until pending() is 0, or nothing progressed for
// DrainIdle, or Drain passed. progress() is a counter that grows as
// messages arrive.
func (s *session) waitDrain(ctx context.Context, pending func() int64, progress func() int64) {
	deadline := time.Now().Add(s.cfg.Drain)
	last, lastAt := progress(), time.Now()
	for pending() > 0 && time.Now().Before(deadline) && ctx.Err() == nil && s.nodeAlive() == nil {
		time.Sleep(50 * time.Millisecond)
		if p := progress(); p != last {
			last, lastAt = p, time.Now()
		} else if time.Since(lastAt) > s.cfg.DrainIdle {
			return
		}
	}
}

// loginFigures adds the login figures recorded since the last reset.
func (s *session) loginFigures(prefix string) (ok, fail int64) {
	ok, fail, codes, span, lat := s.acct.logins()
	s.res.fig(prefix+"logins", float64(ok), "")
	s.res.fig(prefix+"login failures", float64(fail), "")
	if span > 0 {
		s.res.fig(prefix+"logins/s", float64(ok)/(float64(span)/1e9), "/s")
	}
	for k, v := range codes {
		s.res.note("%d logins failed: %s", v, k)
	}
	s.res.lat(prefix+"login (dial → LOGIN_ACK)", lat)
	return ok, fail
}
