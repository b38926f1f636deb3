package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/courier-im/courier/cmd/courier-bench/internal/bench"
	"github.com/courier-im/courier/cmd/courier-bench/internal/chaos"
	"github.com/courier-im/courier/testkit/workload"
)

func chaosCmd() *cobra.Command {
	cfg := chaos.Config{Load: workload.DefaultConfig()}
	var faults, sources, secret, out string
	var devices int
	cmd := &cobra.Command{
		Use:   "chaos",
		Short: "faults under load against `make cluster`, one at a time, then the exact ledger (exit 3 if the run is not clean)",
		Long: `chaos runs devices (reconnecting through gate discovery), app-servers
(retrying with idempotency keys), C2C and C2S at steady rates against the
cluster make cluster runs, applies random faults to its processes one at a
time (kill, pause, term, drain, consul, postgres; --faults picks, "kill:node2"
targets a node), waits after each until the cluster is whole again, then
stops the traffic, waits for what is in flight and prints the ledger:
accepted, delivered, lost, stored twice, redelivered, out of order per
identity, and each fault's interruption. The run is clean (exit 0) only if
a fault ran, every fault applied and the cluster was whole after each,
everything accepted arrived but C2S held by a killed node's gate, and no
device saw anything unexpected; otherwise it says why and exits 3.
Loopback clusters only.`,
		Example: `  make cluster STORE=postgres &                       # in another terminal
  courier-bench chaos --duration 10m                   # the soak
  courier-bench chaos --faults kill:node1 --count 1 --devices 10000 --start-on node1   # a gate dies under 10,000 devices
  courier-bench chaos --faults drain:node1 --count 1 --devices 10000 --start-on node1  # the drain's peak reconnect rate`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if faults != "" {
				cfg.Faults = strings.Split(faults, ",")
			}
			cfg.Load.Secret = []byte(secret)
			cfg.Load.Devices = devices
			if sources != "" {
				addrs, err := bench.ParseSources(sources)
				if err != nil {
					return err
				}
				for _, a := range addrs {
					if !net.IP(a.AsSlice()).IsLoopback() {
						return fmt.Errorf("--sources %s: loopback addresses only", a)
					}
					cfg.Load.Sources = append(cfg.Load.Sources, a.String())
				}
			}
			cfg.Out = cmd.OutOrStdout()
			rep, err := chaos.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "\n%d faults:\n", len(rep.Faults))
			for i, f := range rep.Faults {
				fmt.Fprintf(w, "  %2d  %-22s whole again after %v %s\n", i+1, f.Name, f.Healed.Round(time.Millisecond), f.Err)
			}
			fmt.Fprintf(w, "\nledger:\n%s", rep.Ledger.String())
			if out != "" {
				b, _ := json.MarshalIndent(rep, "", "  ")
				if err := os.WriteFile(out, b, 0o644); err != nil {
					return err
				}
			}
			if !rep.Clean {
				fmt.Fprintln(w, "\nnot clean:")
				for _, why := range rep.Why {
					fmt.Fprintf(w, "  %s\n", why)
				}
				return errUnclean{}
			}
			fmt.Fprintf(w, "clean: %d faults applied, each followed by a whole cluster; nothing accepted was lost (C2S only by a killed node), stored twice or delivered out of order\n", len(rep.Faults))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Dir, "cluster", ".cluster", "make cluster's directory (addrs.json, the process ids, pg_ctl)")
	f.DurationVar(&cfg.Duration, "duration", 10*time.Minute, "how long faults are applied (at most 24h)")
	f.StringVar(&faults, "faults", "", "fault kinds to draw from, comma-separated, each optionally :NODE (default: all the cluster allows): kill, pause, term, drain, consul, postgres")
	f.IntVar(&cfg.Count, "count", 0, "stop after this many faults (0: until --duration)")
	f.DurationVar(&cfg.Every, "every", 20*time.Second, "mean pause between the cluster being whole again and the next fault")
	f.DurationVar(&cfg.PauseFor, "pause", 10*time.Second, "how long a paused node stays stopped")
	f.DurationVar(&cfg.Down, "down", 10*time.Second, "how long a killed node stays down before it is started again (past the TTL its identities fail over; 0: at once)")
	f.DurationVar(&cfg.Heal, "heal", 2*time.Minute, "longest wait for the cluster to be whole again after a fault")
	f.DurationVar(&cfg.Settle, "settle", 2*time.Minute, "longest wait at the end for what was accepted to arrive")
	f.Uint64Var(&cfg.Seed, "seed", 0, "seed of the faults' draw (0: random; printed)")
	f.StringVar(&cfg.OperatorKey, "op-key", "courier-dev-operator-key", "operator API key (Drain, Members)")
	f.StringVar(&cfg.Load.APIKey, "api-key", "courier-dev-api-key-0001", "the app-server's API key")
	f.StringVar(&secret, "secret", "courier-dev-secret-app-1", "HS256 secret of the app's device tokens")
	f.Uint16Var(&cfg.Load.App, "app", 1, "appcode")
	f.IntVar(&devices, "devices", 200, "simulated devices (pairs chat C2C)")
	f.Float64Var(&cfg.Load.LoginRate, "login-rate", 500, "logins/s at the start")
	f.Float64Var(&cfg.Load.PushRate, "push-rate", 200, "stored pushes/s")
	f.Float64Var(&cfg.Load.FireAndForgetRate, "ff-rate", 20, "fire-and-forget pushes/s")
	f.Float64Var(&cfg.Load.C2CRate, "c2c-rate", 50, "C2C messages/s")
	f.Float64Var(&cfg.Load.C2SRate, "c2s-rate", 50, "C2S messages/s")
	f.StringVar(&sources, "sources", "127.0.10.1-127.0.10.250", "loopback source addresses the devices dial from (the gate limits new connections per address)")
	f.StringVar(&cfg.StartOn, "start-on", "", "connect every device to this node's gate first (then through discovery)")
	f.StringVar(&out, "out", "", "write the report as JSON to this file")
	return cmd
}
