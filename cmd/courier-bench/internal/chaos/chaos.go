package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/testkit/workload"
)

// Fault kinds.
const (
	Kill     = "kill"
	Pause    = "pause"
	Term     = "term"
	Drain    = "drain"
	Consul   = "consul"
	Postgres = "postgres"
)

// Kinds lists every fault kind, in the order of the help.
var Kinds = []string{Kill, Pause, Term, Drain, Consul, Postgres}

// Bounds on a run.
const (
	MaxDuration = 24 * time.Hour
	MaxFaults   = 10_000
)

// Config describes a chaos run.
type Config struct {
	// Dir is make cluster's directory (.cluster).
	Dir string
	// Duration of the faults phase (the workload runs as long, plus the
	// settling at the end).
	Duration time.Duration
	// Faults are the kinds to draw from, each optionally with a target
	// node ("kill:node2"); empty: every kind the cluster allows.
	Faults []string
	// Count stops the faults after this many (0: until Duration).
	Count int
	// Every is the mean pause between one fault's end (the cluster whole
	// again) and the next fault; each pause is drawn in [Every/2, 3/2
	// Every].
	Every time.Duration
	// PauseFor is how long a paused node stays stopped (default 10 s:
	// beyond the default membership TTL of 3 s, so it comes back a
	// zombie).
	PauseFor time.Duration
	// Down is how long a killed node stays down before make cluster's
	// supervisor may start it again (default 10 s: beyond the TTL, so
	// that its identities fail over to another node; 0: at once).
	Down time.Duration
	// Heal bounds the wait for the cluster to be whole after a fault.
	Heal time.Duration
	// Settle bounds the wait, after the traffic stops, for what was
	// accepted to arrive.
	Settle time.Duration
	// Seed makes the faults' draw repeatable (0: random).
	Seed uint64
	// StartOn, if set, is the node whose gate every device connects to
	// first (to measure what its gate's failure or drain moves); later
	// connections go through discovery.
	StartOn string
	// OperatorKey calls Drain and Members.
	OperatorKey string
	// Load is the workload; its Discover and APIs are filled from the
	// cluster.
	Load workload.Config
	// Out receives progress lines.
	Out io.Writer
}

// Applied is one fault as it was applied.
type Applied struct {
	Name string `json:"name"`
	// Healed: from the fault until the cluster was whole again (every node
	// live, not draining).
	Healed time.Duration `json:"healed"`
	Err    string        `json:"err,omitempty"`
}

// Report is the outcome of a run.
type Report struct {
	Faults []Applied       `json:"faults"`
	Ledger workload.Ledger `json:"ledger"`
	// Clean: at least one fault ran, every one applied and was followed
	// by a whole cluster, what was accepted settled, nothing accepted was
	// lost, stored twice or out of order, and no C2S was lost but what
	// the gate of a node killed held. Why lists what is not so.
	Clean bool     `json:"clean"`
	Why   []string `json:"why,omitempty"`
}

// Run runs the workload and the faults until Duration (or Count faults),
// then lets the traffic settle, and returns the report. ctx ends it
// early (the report then covers what happened so far).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	c, err := readCluster(cfg.Dir)
	if err != nil {
		return nil, err
	}
	if cfg.Duration <= 0 || cfg.Duration > MaxDuration {
		return nil, fmt.Errorf("chaos: --duration %v: must be in (0, %v]", cfg.Duration, MaxDuration)
	}
	if cfg.Count < 0 || cfg.Count > MaxFaults {
		return nil, fmt.Errorf("chaos: --count %d: must be in [0, %d]", cfg.Count, MaxFaults)
	}
	plan, err := c.plan(cfg.Faults)
	if err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		if n.API != "" {
			cfg.Load.APIs = append(cfg.Load.APIs, n.API)
			cfg.Load.Discover = append(cfg.Load.Discover, n.HTTP)
		}
	}
	if len(cfg.Load.APIs) == 0 {
		return nil, errors.New("chaos: the cluster has no node with the api role")
	}
	if cfg.StartOn != "" {
		n, ok := c.node(cfg.StartOn)
		if !ok || n.Gate == "" {
			return nil, fmt.Errorf("chaos: --start-on %q: no node of that name with a gate", cfg.StartOn)
		}
		cfg.Load.Gates = []string{n.Gate}
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	rng := rand.New(rand.NewPCG(seed, seed>>1|1))
	// Fresh identities and idempotency keys for every run: the store
	// remembers keys for a day, and an earlier run's would answer as
	// duplicates of messages delivered then.
	cfg.Load.UIDPrefix = fmt.Sprintf("c%x-", rand.Uint32())
	logf := func(format string, args ...any) {
		fmt.Fprintf(cfg.Out, time.Now().Format("15:04:05 ")+format+"\n", args...)
	}
	logf("chaos: %d nodes, faults drawn from %v (seed %d), for %v, one at a time", len(c.Nodes), plan, seed, cfg.Duration)

	ops, err := newOps(c, cfg.OperatorKey)
	if err != nil {
		return nil, err
	}
	defer ops.close()
	if err := ops.whole(ctx, cfg.Heal, "", nil); err != nil {
		return nil, fmt.Errorf("chaos: the cluster is not whole before the run: %w", err)
	}
	w, err := workload.Start(cfg.Load)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = w.WaitOnline(wctx)
	cancel()
	if err != nil {
		return nil, err
	}
	logf("chaos: %d devices online; traffic starts", cfg.Load.Devices)
	w.Run()

	rep := &Report{}
	var crashed []string // the gates of the nodes killed
	end := time.Now().Add(cfg.Duration)
	for i := 0; time.Now().Before(end) && (cfg.Count == 0 || i < cfg.Count) && ctx.Err() == nil; i++ {
		gap := cfg.Every/2 + time.Duration(rng.Int64N(int64(cfg.Every)+1))
		if i == 0 {
			gap = min(gap, 5*time.Second) // a few seconds of steady traffic first
		}
		if !sleep(ctx, min(gap, time.Until(end))) || !time.Now().Before(end) {
			break
		}
		f := plan[rng.IntN(len(plan))]
		target := f.target
		if target == "" && f.kind != Consul && f.kind != Postgres {
			target = c.Nodes[rng.IntN(len(c.Nodes))].Name
		}
		name := strings.TrimSpace(f.kind + " " + target)
		logf("fault %d: %s", i+1, name)
		var old []string
		if target != "" {
			old, _ = ops.instances(ctx, target)
		}
		at := w.Fault(name)
		a := Applied{Name: name}
		if err := ops.apply(ctx, f.kind, target, cfg.PauseFor, cfg.Down); err != nil {
			a.Err = err.Error()
			logf("  %v", err)
		} else if n, _ := c.node(target); f.kind == Kill && n.Gate != "" {
			// SIGKILL reached it: what its gate held is lost by contract.
			crashed = append(crashed, n.Gate)
		}
		if err := ops.whole(ctx, cfg.Heal, target, old); err != nil {
			a.Err = strings.TrimSpace(a.Err + "; " + err.Error())
			logf("  the cluster is not whole again: %v", err)
		}
		a.Healed = time.Since(at)
		rep.Faults = append(rep.Faults, a)
		logf("  whole again after %v", a.Healed.Round(time.Millisecond))
	}

	logf("chaos: faults over; stopping the traffic and waiting for what is in flight (at most %v)", cfg.Settle)
	w.StopTraffic()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Settle)
	// Kills may lose C2S the dead node held (by contract; the ledger counts
	// them and the verdict allows them): they are not waited for long.
	serr := w.SettleStored(sctx, 10*time.Second)
	cancel()
	if serr != nil {
		logf("chaos: %v", serr)
	}
	rep.Ledger = w.Ledger()
	rep.Why = verdict(rep.Faults, crashed, &rep.Ledger, serr)
	rep.Clean = len(rep.Why) == 0
	return rep, nil
}

// verdict says why a run is not clean (nothing if it is): no fault ran,
// a fault failed to apply or the cluster was not whole again after it,
// what was accepted did not settle, or the ledger is not clean but for
// C2S accepted by crashed, the gates of the nodes killed (only a crash
// may lose C2S: the node held them in memory, docs/protocol.md §11).
func verdict(faults []Applied, crashed []string, l *workload.Ledger, settleErr error) []string {
	var why []string
	if len(faults) == 0 {
		why = append(why, "no fault ran (the run ended or was stopped before the first)")
	}
	for i, f := range faults {
		if f.Err != "" {
			why = append(why, fmt.Sprintf("fault %d (%s) failed or the cluster was not whole after it: %s", i+1, f.Name, f.Err))
		}
	}
	if settleErr != nil {
		why = append(why, fmt.Sprintf("not everything accepted arrived: %v", settleErr))
	}
	return append(why, l.Problems(crashed...)...)
}

// planned is one entry of the faults' draw.
type planned struct{ kind, target string }

func (p planned) String() string {
	if p.target == "" {
		return p.kind
	}
	return p.kind + ":" + p.target
}

// plan parses the --faults list against the cluster.
func (c *cluster) plan(specs []string) ([]planned, error) {
	if len(specs) == 0 {
		for _, k := range Kinds {
			if k == Postgres && c.pgCtl() == "" {
				continue
			}
			specs = append(specs, k)
		}
	}
	var out []planned
	for _, s := range specs {
		kind, target, _ := strings.Cut(strings.TrimSpace(s), ":")
		if !slices.Contains(Kinds, kind) {
			return nil, fmt.Errorf("chaos: fault %q: want one of %s, optionally :NODE", s, strings.Join(Kinds, ", "))
		}
		if target != "" {
			if kind == Consul || kind == Postgres {
				return nil, fmt.Errorf("chaos: fault %q: %s takes no node", s, kind)
			}
			if _, ok := c.node(target); !ok {
				return nil, fmt.Errorf("chaos: fault %q: no node %q in %s/addrs.json", s, target, c.dir)
			}
		}
		if kind == Postgres && c.pgCtl() == "" {
			return nil, fmt.Errorf("chaos: fault %q: the cluster has no PostgreSQL (make cluster STORE=postgres)", s)
		}
		out = append(out, planned{kind, target})
	}
	return out, nil
}

// ops applies faults and watches the cluster through its API.
type ops struct {
	c     *cluster
	key   string
	conns []*grpc.ClientConn
	apis  []apipb.CourierClient
	names []string // nodes with an API, in the order of apis
}

func newOps(c *cluster, key string) (*ops, error) {
	o := &ops{c: c, key: key}
	for _, n := range c.Nodes {
		if n.API == "" {
			continue
		}
		conn, err := grpc.NewClient(n.API, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			o.close()
			return nil, err
		}
		o.conns = append(o.conns, conn)
		o.apis = append(o.apis, apipb.NewCourierClient(conn))
		o.names = append(o.names, n.Name)
	}
	return o, nil
}

func (o *ops) close() {
	for _, c := range o.conns {
		c.Close()
	}
}

func (o *ops) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+o.key), cancel
}

// apply applies one fault.
func (o *ops) apply(ctx context.Context, kind, target string, pause, down time.Duration) error {
	switch kind {
	case Kill:
		if down <= 0 {
			_, err := o.c.signal(target, syscall.SIGKILL)
			return err
		}
		release, err := o.c.hold(target)
		if err != nil {
			return err
		}
		defer release()
		if _, err := o.c.signal(target, syscall.SIGKILL); err != nil {
			return err
		}
		sleep(ctx, down)
		return nil
	case Term:
		_, err := o.c.signal(target, syscall.SIGTERM)
		return err
	case Pause:
		pid, err := o.c.signal(target, syscall.SIGSTOP)
		if err != nil {
			return err
		}
		sleep(ctx, pause)
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			return fmt.Errorf("chaos: SIGCONT to %s (pid %d): %w", target, pid, err)
		}
		return nil
	case Drain:
		var last error
		for i, api := range o.apis {
			if o.names[i] == target && len(o.apis) > 1 {
				continue // through another node, as an operator would
			}
			cctx, cancel := o.ctx(ctx)
			_, err := api.Drain(cctx, &apipb.DrainRequest{Node: target})
			cancel()
			if err == nil {
				return nil
			}
			last = err
		}
		return fmt.Errorf("chaos: drain %s: %w", target, last)
	case Consul:
		_, err := o.c.signal("consul", syscall.SIGKILL)
		return err
	case Postgres:
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		out, err := exec.CommandContext(cctx, o.c.pgCtl(), "restart", "-m", "fast", "-w").CombinedOutput()
		if err != nil {
			return fmt.Errorf("chaos: pg_ctl restart: %v: %s", err, out)
		}
		return nil
	}
	return fmt.Errorf("chaos: unknown fault %q", kind)
}

// whole waits until Consul has a leader and some node's API says every
// node of the cluster is live and not draining (and target, a node a
// fault hit, live as an instance other than old ones: restarted or
// rejoined), or limit passes.
func (o *ops) whole(ctx context.Context, limit time.Duration, target string, old []string) error {
	deadline := time.Now().Add(limit)
	var last string
	for {
		missing, err := o.missing(ctx, target, old)
		if err == nil && len(missing) == 0 {
			if err = o.consulLeader(); err == nil {
				return nil
			}
		}
		if err != nil {
			last = err.Error()
		} else {
			last = "not live: " + strings.Join(missing, ", ")
		}
		if time.Now().After(deadline) || !sleep(ctx, 200*time.Millisecond) {
			return fmt.Errorf("after %v: %s", limit, last)
		}
	}
}

// members returns the member list of the first API to answer.
func (o *ops) members(ctx context.Context) ([]*apipb.Member, error) {
	var last error
	for _, api := range o.apis {
		cctx, cancel := o.ctx(ctx)
		r, err := api.Members(cctx, &apipb.MembersRequest{})
		cancel()
		if err == nil {
			return r.Members, nil
		}
		last = err
	}
	return nil, fmt.Errorf("no API answered Members: %w", last)
}

// missing returns the nodes that the first API to answer does not list
// live and serving (for target, as an instance other than old).
func (o *ops) missing(ctx context.Context, target string, old []string) ([]string, error) {
	members, err := o.members(ctx)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, n := range o.c.Nodes {
		ok := false
		for _, m := range members {
			if m.Name == n.Name && m.Live && !m.Draining && (n.Name != target || !slices.Contains(old, m.Id)) {
				ok = true
			}
		}
		if !ok {
			missing = append(missing, n.Name)
		}
	}
	return missing, nil
}

// instances returns the ids of node name's live instances.
func (o *ops) instances(ctx context.Context, name string) ([]string, error) {
	members, err := o.members(ctx)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, m := range members {
		if m.Name == name && m.Live {
			ids = append(ids, m.Id)
		}
	}
	return ids, nil
}

// consulLeader checks that the cluster's Consul answers with a leader.
func (o *ops) consulLeader() error {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get("http://" + o.c.Consul + "/v1/status/leader")
	if err != nil {
		return fmt.Errorf("consul: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK || len(strings.Trim(string(b), "\"\n ")) == 0 {
		return fmt.Errorf("consul has no leader (%s %q)", resp.Status, b)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
