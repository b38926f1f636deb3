// Command courier runs a Courier node: the devices' gate, their actors and
// inbox, and the gRPC API of app-servers.
//
//	courier --dev                       # one node, demo app and keys, ./data
//	courier --config node.yaml          # settings from a file
//	courier --gate.addr :7000 --app-secret 1=... --api-key KEY=1
//
// Every setting is a flag, a COURIER_* environment variable and a key of
// the YAML config file; `courier --help` lists them with their defaults.
// Precedence: flags, then environment, then file, then defaults.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/courier-im/courier/cluster/node"
)

// Demo credentials of --dev: printed at start, never for production.
const (
	devSecret = "courier-dev-secret-app-1"
	devKey    = "courier-dev-api-key-0001"
	devOpKey  = "courier-dev-operator-key"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg := node.DefaultConfig()
	fs := pflag.NewFlagSet("courier", pflag.ContinueOnError)
	fs.SortFlags = false
	configPath := fs.String("config", "", "YAML config file (keys are the flag names; nested maps allowed)")
	dev := fs.Bool("dev", false, "development mode: a demo app (appcode 1) with a known token secret and API keys")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logJSON := fs.Bool("log-json", false, "log as JSON lines")
	gcPercent := fs.Int("gc-percent", 200, "Go GC target percentage (the GOGC environment variable wins); higher trades memory under load for CPU")
	addrFile := fs.String("addr-file", "", "write the bound addresses as JSON to this file once started (for tools and tests)")
	pprofAddr := fs.String("pprof-addr", "", "serve net/http/pprof on this address (\"\" disables; for profiling only)")
	node.BindSettings(fs, &cfg)
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: courier [flags]\n\nEvery flag is also an environment variable (COURIER_GATE_ADDR for --gate.addr)\nand a config file key.\n\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if err == pflag.ErrHelp {
			return 0
		}
		return 2
	}
	if err := node.ApplyFileAndEnv(fs, *configPath, os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "courier:", err)
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "courier: --log-level %q: %v\n", *logLevel, err)
		return 2
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	if *logJSON {
		h = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	}
	log := slog.New(h)
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(*gcPercent)
	}
	if *dev {
		if len(cfg.AppSecrets) == 0 {
			cfg.AppSecrets["1"] = devSecret
		}
		if len(cfg.APIKeys) == 0 {
			cfg.APIKeys[devKey] = "1"
			cfg.APIKeys[devOpKey] = "*"
		}
	}
	if len(cfg.AppSecrets) == 0 {
		log.Warn("no --app-secret configured: every device login will fail")
	}

	n, err := node.Start(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "courier:", err)
		return 1
	}
	addrs := map[string]string{"name": cfg.Name, "roles": n.Roles(), "gate": n.GateAddr(), "api": n.APIAddr(),
		"http": n.HTTPAddr(), "cluster": n.ClusterAddr()}
	if *pprofAddr != "" {
		if addrs["pprof"], err = startPprof(*pprofAddr, log); err != nil {
			log.Error("courier: --pprof-addr", "err", err)
		}
	}
	if *addrFile != "" {
		b, _ := json.Marshal(addrs)
		err := os.WriteFile(*addrFile+".tmp", b, 0o644)
		if err == nil {
			err = os.Rename(*addrFile+".tmp", *addrFile)
		}
		if err != nil {
			log.Error("courier: --addr-file", "err", err)
		}
	}
	if *dev {
		printDevHelp(n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	failed := false
	select {
	case <-ctx.Done():
	case <-n.Failed():
		// Only a gate that died by itself gets here before a signal.
		if err := n.Err(); err != nil {
			log.Error("courier: the gate stopped; shutting down", "err", err)
			failed = true
		}
	}
	stop()
	log.Info("courier: shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	if err := n.Shutdown(sctx); err != nil {
		log.Error("courier: shutdown", "err", err)
		return 1
	}
	if failed {
		return 1
	}
	return 0
}

// dialable turns a listen address such as ":7000" or "[::]:7001" into one
// a client can dial on this machine.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func printDevHelp(n *node.Node) {
	gate, api := dialable(n.GateAddr()), dialable(n.APIAddr())
	fmt.Fprintf(os.Stderr, `
Courier is running (development mode).
  devices connect to  %s   (appcode 1, token secret %q)
  app-servers call    %s   (API key %q; operator key %q)
  metrics             http://%s/metrics

Try it, in another terminal:
  bin/courierctl device --gate %s --app 1 --uid alice --secret %s
  bin/courierctl push   --api %s --key %s --app 1 --uid alice --payload 'hello alice'
`, gate, devSecret, api, devKey, devOpKey, dialable(n.HTTPAddr()), gate, devSecret, api, devKey)
}
