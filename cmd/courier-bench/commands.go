package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/courier-im/courier/cmd/courier-bench/internal/bench"
	"github.com/courier-im/courier/cmd/courier-bench/internal/procstat"
)

// errUnclean is returned when a chaos run is not clean (exit status 3):
// a fault did not apply or the cluster did not heal, or the ledger is
// not clean (something accepted was lost, stored twice or delivered out
// of order, or a device saw what it should not).
type errUnclean struct{}

func (errUnclean) Error() string {
	return "the chaos run is not clean (the reasons are above)"
}

// errFailed is returned when a run lost messages or failed another
// check (exit status 3); it names each.
type errFailed struct{ why []string }

func (e errFailed) Error() string {
	return "the run failed: " + strings.Join(e.why, "; ")
}

// common are the flags every scenario shares.
type common struct {
	cfg          bench.Config
	sources      string
	out          string
	quiet        bool
	allowLoss    bool
	profile      string
	profileDelay time.Duration
	profileFor   time.Duration
}

func (c *common) bind(cmd *cobra.Command) {
	d := bench.DefaultConfig()
	c.cfg = d
	f := cmd.Flags()
	f.StringVar(&c.cfg.Gate, "gate", d.Gate, "the node's device gate (IPv4:port)")
	f.StringVar(&c.cfg.Discover, "discover", "", "an api node's HTTP address (http://HOST:PORT): take the gates from its gate discovery instead of --gate, workers spread over them")
	f.StringVar(&c.cfg.API, "api", d.API, "the node's gRPC API")
	f.StringVar(&c.cfg.Metrics, "node-metrics", d.Metrics, `the node's /metrics host:port, for its CPU and memory ("" : none)`)
	f.StringVar(&c.cfg.Pprof, "node-pprof", "", "the node's pprof host:port (courier --pprof-addr), to force a GC before memory samples and for --profile")
	f.IntVar(&c.cfg.NodePID, "node-pid", 0, "the local node's process id: CPU and RSS from /proc (more precise than /metrics)")
	f.IntSliceVar(&c.cfg.MorePIDs, "more-node-pids", nil, "the other local nodes of a cluster (process ids): their CPU is added to the node's (node CPU is then the cluster's)")
	f.IntVar(&c.cfg.DBPID, "db-pid", 0, "the PostgreSQL server's process id (head -1 PGDATA/postmaster.pid): its CPU and its backends' are reported")
	f.StringVar(&c.cfg.Spawn, "spawn-node", "", "start this courier binary fresh for the run (temp data dir, free ports, gate limits off, pprof on) and stop it after")
	f.StringArrayVar(&c.cfg.SpawnArgs, "node-arg", nil, "extra flag for the spawned node (repeatable), e.g. --node-arg=--store-no-sync")
	f.Uint16Var(&c.cfg.AppCode, "app", d.AppCode, "appcode of the devices and pushes")
	f.StringVar(&c.cfg.Secret, "secret", d.Secret, "HS256 secret of the app's device tokens")
	f.StringVar(&c.cfg.APIKey, "api-key", d.APIKey, "the app-server's API key")
	f.IntVar(&c.cfg.Devices, "devices", d.Devices, "simulated devices")
	f.IntVar(&c.cfg.PerWorker, "per-worker", d.PerWorker, "most devices per worker process (open files are capped per process)")
	f.IntVar(&c.cfg.Workers, "workers", 0, "worker processes (0: as many as --devices needs)")
	f.IntVar(&c.cfg.Loops, "loops", d.Loops, "event loops per worker")
	f.StringVar(&c.sources, "sources", "", `source addresses to dial from: "127.0.0.2-127.0.0.40,127.0.1.7" (default: 32 in a random 127.x.y.0/24)`)
	f.StringVar(&c.cfg.UIDPrefix, "uid-prefix", "", `prefix of device uids (default "b<run id>-": fresh identities per run)`)
	f.Float64Var(&c.cfg.LoginRate, "login-rate", 0, "logins/s while setting up (0: as fast as --login-inflight allows)")
	f.IntVar(&c.cfg.LoginInflight, "login-inflight", d.LoginInflight, "most logins in progress at once")
	f.DurationVar(&c.cfg.Keepalive, "keepalive", 0, "keepalive interval of the devices (0: as LOGIN_ACK says)")
	f.Uint16Var(&c.cfg.MsgType, "msgtype", d.MsgType, "msgtype of pushes, C2C and C2S")
	f.IntVar(&c.cfg.PayloadSize, "payload", d.PayloadSize, "payload bytes per message (at least 22)")
	f.DurationVar(&c.cfg.Drain, "drain", d.Drain, "longest wait for messages in flight after sending stops")
	f.DurationVar(&c.cfg.DrainIdle, "drain-idle", d.DrainIdle, "end the drain when nothing arrived for this long")
	f.StringVar(&c.out, "out", "", "write the result as JSON to this file")
	f.BoolVar(&c.quiet, "quiet", false, "no progress lines")
	f.BoolVar(&c.allowLoss, "allow-loss", false, "do not fail the run for lost messages alone (otherwise exit status 3; other failed checks still exit 3)")
	f.StringVar(&c.profile, "profile", "", "write a CPU profile of the node (needs its pprof) taken during the measured phase to this file")
	f.DurationVar(&c.profileDelay, "profile-delay", 2*time.Second, "start --profile this long into the measured phase")
	f.DurationVar(&c.profileFor, "profile-seconds", 5*time.Second, "length of --profile")
	f.Uint64Var(&c.cfg.DropEvery, "test.drop-every", 0, "testing the bench: devices ack but do not record pushes whose index is a multiple of this")
	f.DurationVar(&c.cfg.InjectDelay, "test.inject-delay", 0, "testing the bench: wait this long between stamping a push and calling the API")
	_ = f.MarkHidden("test.drop-every")
	_ = f.MarkHidden("test.inject-delay")
}

// prepare completes the config from the flags.
func (c *common) prepare(cmd *cobra.Command) (bench.Config, error) {
	cfg := c.cfg
	if c.sources != "" {
		s, err := bench.ParseSources(c.sources)
		if err != nil {
			return cfg, err
		}
		cfg.Sources = s
	}
	cfg.Command = os.Args
	if !c.quiet {
		cfg.Progress = cmd.ErrOrStderr()
	}
	if c.profile != "" {
		cfg.OnMeasure = func(n procstat.Node) {
			go func() {
				time.Sleep(c.profileDelay)
				f, err := os.Create(c.profile)
				if err == nil {
					err = n.Profile(context.Background(), c.profileFor, f)
					if cerr := f.Close(); err == nil {
						err = cerr
					}
				}
				if err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "courier-bench: profile:", err)
				}
			}()
		}
	}
	return cfg, nil
}

// finish prints and writes the result and turns loss (unless
// --allow-loss) and every other failed check into an error.
func (c *common) finish(cmd *cobra.Command, r *bench.Result, err error) error {
	if r != nil {
		r.WriteSummary(cmd.OutOrStdout())
		if c.out != "" {
			if werr := r.WriteJSON(c.out); werr != nil {
				return werr
			}
			fmt.Fprintf(cmd.OutOrStdout(), "result: %s\n", c.out)
		}
	}
	if err != nil {
		return err
	}
	var why []string
	if r.Lost > 0 && !c.allowLoss {
		why = append(why, fmt.Sprintf("%d messages accepted by the platform were never received", r.Lost))
	}
	why = append(why, r.Failures...)
	if len(why) > 0 {
		return errFailed{why}
	}
	return nil
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "courier-bench",
		Short: "Courier's load generator: simulated devices and an app-server against a node",
		Long: `courier-bench plays many devices and an app-server against a Courier node and
counts every message: rates, latency percentiles (HDR histograms), exact loss,
the CPU the node and the generator used, and how busy the whole machine was
(its cores' busy, kernel and hypervisor-stolen shares, from /proc/stat: on a
machine the node shares with the generator, a latency figure taken while it
was nearly full measures the machine, not the code).

Every scenario is bounded in time and count and stops by itself. It prints a
progress line a second, then a summary; --out writes the result as JSON, and
'courier-bench report' compares result files.

Exit status: 0 ok; 1 error (nothing measured, or not every device came
online); 3 the run failed a check: messages were lost, received with another
seq, msg id or device than answered, received again as another message,
received though not accepted or refused, or never answered; pushes failed
with another status than RESOURCE_EXHAUSTED (the overload refusal, expected
at the highest rate); stored messages were still pending on the node after
the drain, or that check could not be made; latency samples could not be
recorded (the summary's FAILED lines say which); 4 the node lacks an API the
scenario needs.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(connectCmd(), pushCmd(), c2cCmd(), upstreamCmd(), reconnectCmd(), reportCmd(), chaosCmd(), apiFloodCmd())
	return root
}

func connectCmd() *cobra.Command {
	var c common
	var cc bench.ConnectConfig
	var memAt string
	cmd := &cobra.Command{
		Use:   "connect",
		Short: "log in --devices devices at --rate; logins/s, failures, node memory per device",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.prepare(cmd)
			if err != nil {
				return err
			}
			for s := range strings.SplitSeq(memAt, ",") {
				if s = strings.TrimSpace(s); s == "" {
					continue
				}
				n, err := strconv.Atoi(s)
				if err != nil {
					return fmt.Errorf("--mem-at %q: %w", s, err)
				}
				cc.MemAt = append(cc.MemAt, n)
			}
			r, err := bench.Connect(cmd.Context(), cfg, cc)
			return c.finish(cmd, r, err)
		},
	}
	c.bind(cmd)
	cmd.Flags().Float64Var(&cc.Rate, "rate", 0, "logins per second (0: as fast as --login-inflight allows)")
	cmd.Flags().StringVar(&memAt, "mem-at", "", "device counts at which to sample the idle node's memory, e.g. 5000,15000 (slope per device between the first and last)")
	cmd.Flags().DurationVar(&cc.MemWait, "mem-wait", 0, "extra wait before each memory sample (e.g. for idle actors to passivate)")
	cmd.Flags().StringVar(&cc.HeapProfile, "heap-profile", "", "write the node's heap profile at the last sample to this file (needs its pprof)")
	return cmd
}

func pushCmd() *cobra.Command {
	var c common
	var pc bench.PushConfig
	cmd := &cobra.Command{
		Use:   "push",
		Short: "an app-server pushing to --devices devices over gRPC; rates, latency API→device, exact loss",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.prepare(cmd)
			if err != nil {
				return err
			}
			r, err := bench.Push(cmd.Context(), cfg, pc)
			return c.finish(cmd, r, err)
		},
	}
	c.bind(cmd)
	f := cmd.Flags()
	f.Float64Var(&pc.Rate, "rate", 0, "pushes per second (0: as fast as --concurrency calls go)")
	f.DurationVar(&pc.Duration, "duration", 10*time.Second, "how long to push")
	f.Int64Var(&pc.Count, "count", 0, "most pushes (0: no limit)")
	f.IntVar(&pc.Batch, "batch", 1, "1: Push calls; more: PushMany calls of this many items")
	f.IntVar(&pc.Concurrency, "concurrency", 0, "most API calls in flight (0: 64 for Push, 8 for PushMany; with --rate, at least rate x 100 ms / batch)")
	f.IntVar(&pc.GRPCConns, "grpc-conns", 2, "gRPC connections to the API")
	f.BoolVar(&pc.FireAndForget, "ff", false, "fire-and-forget pushes (default: stored)")
	f.IntVar(&pc.Ghosts, "ghosts", 0, "extra uids that never log in, pushed to round-robin with the devices")
	f.DurationVar(&pc.TTL, "ttl", 0, "time to live of stored pushes (0: the node's default)")
	f.BoolVar(&pc.VerifyPending, "verify-pending", true, "after the drain, ask the node (Presence) how many stored messages are unacknowledged")
	f.BoolVar(&pc.IdempotencyKeys, "idempotency-keys", false, "give every stored push an idempotency key of its own (the node looks each up in its store)")
	return cmd
}

func trafficFlags(cmd *cobra.Command, tc *bench.TrafficConfig) {
	f := cmd.Flags()
	f.Float64Var(&tc.Rate, "rate", 1000, "messages per second over all devices")
	f.DurationVar(&tc.Duration, "duration", 10*time.Second, "how long to send")
	f.Int64Var(&tc.Count, "count", 0, "most messages (0: no limit)")
}

func c2cCmd() *cobra.Command {
	var c common
	var tc bench.TrafficConfig
	cmd := &cobra.Command{
		Use:   "c2c",
		Short: "pairs of devices chatting (C2C); sender-ack and delivery latency, exact loss",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.prepare(cmd)
			if err != nil {
				return err
			}
			r, err := bench.C2C(cmd.Context(), cfg, tc)
			return c.finish(cmd, r, err)
		},
	}
	c.bind(cmd)
	trafficFlags(cmd, &tc)
	return cmd
}

func upstreamCmd() *cobra.Command {
	var c common
	var tc bench.TrafficConfig
	var maxInFlight uint
	cmd := &cobra.Command{
		Use:   "upstream",
		Short: "devices sending C2S to the bench's app-server subscribed over the Upstream stream; throughput, latency, loss",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.prepare(cmd)
			if err != nil {
				return err
			}
			tc.MaxInFlight = uint32(maxInFlight)
			r, err := bench.Upstream(cmd.Context(), cfg, tc)
			return c.finish(cmd, r, err)
		},
	}
	c.bind(cmd)
	trafficFlags(cmd, &tc)
	cmd.Flags().IntVar(&tc.Subscribers, "subscribers", 1, "Upstream streams of the app-server (they share the load)")
	cmd.Flags().UintVar(&maxInFlight, "max-in-flight", 0, "unacknowledged deliveries per stream (0: the node's default)")
	return cmd
}

func reconnectCmd() *cobra.Command {
	var c common
	var rc bench.ReconnectConfig
	cmd := &cobra.Command{
		Use:   "reconnect",
		Short: "drop --count devices at once (RST) and log them in again; time until all are back",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.prepare(cmd)
			if err != nil {
				return err
			}
			r, err := bench.Reconnect(cmd.Context(), cfg, rc)
			return c.finish(cmd, r, err)
		},
	}
	c.bind(cmd)
	cmd.Flags().IntVar(&rc.Count, "count", 0, "devices dropped at once (0: all)")
	return cmd
}

func reportCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "report RESULT.json...",
		Short: "print result files side by side",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var rs []*bench.Result
			var names []string
			for _, a := range args {
				r, err := bench.ReadResult(a)
				if err != nil {
					return err
				}
				rs = append(rs, r)
				names = append(names, strings.TrimSuffix(filepath.Base(a), ".json"))
			}
			bench.Compare(cmd.OutOrStdout(), names, rs)
			return nil
		},
	}
}
