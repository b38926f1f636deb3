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
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/courier-im/courier/cluster/node"
)

// Demo credentials of --dev: printed at start, never for production.
const (
	devSecret = "courier-dev-secret-app-1"
	devKey    = "courier-dev-api-key-0001"
	devOpKey  = "courier-dev-operator-key"
)

// version is stamped by `make release` (-ldflags "-X main.version=...").
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// courierctlEnv are the old names of courierctl's variables (it reads
// COURIERCTL_* now, and these with a warning) that are no setting of the
// node: a node ignores them without a warning, as they may be set in the
// same shell.
var courierctlEnv = map[string]bool{"COURIER_API": true, "COURIER_GATE": true,
	"COURIER_API_TLS": true, "COURIER_API_TLS_CA": true, "COURIER_GATE_TLS": true, "COURIER_GATE_TLS_CA": true,
	"COURIER_GATE_TLS_CERT": true, "COURIER_GATE_TLS_KEY": true}

// courierctlHint is added to an error about one of the node's variables
// that courierctl once read with another meaning.
var courierctlHint = map[string]string{
	"COURIER_API_KEY":      "COURIERCTL_KEY",
	"COURIER_API_KEY_FILE": "COURIERCTL_KEY_FILE",
	"COURIER_APP_SECRET":   "COURIERCTL_SECRET",
}

// run runs the node until a signal and returns the exit code: 0 after a
// clean shutdown, 1 when the node failed, 2 for a mistake on the command
// line or in the settings.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	start := time.Now()
	cfg := node.DefaultConfig()
	var cf cmdFlags
	fs := newFlagSet(&cfg, &cf)
	fs.SetOutput(stderr)
	configPath, dev, logLevel, logJSON, gcPercent, addrFile, pprofAddr := &cf.config, &cf.dev, &cf.logLevel, &cf.logJSON, &cf.gcPercent, &cf.addrFile, &cf.pprofAddr
	usage := func(w io.Writer) {
		fmt.Fprintf(w, `Usage: courier [flags]
       courier version

Every flag is also an environment variable (COURIER_GATE_ADDR for
--gate.addr; maps as KEY=VALUE,KEY=VALUE) and a key of the --config file.

%s`, fs.FlagUsages())
	}
	fs.Usage = func() { usage(stdout) } // pflag calls it for --help only
	usageError := func(err error) int {
		fmt.Fprintf(stderr, "courier: %v\n\n", err)
		usage(stderr)
		return 2
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return usageError(node.RedactSecret(err))
	}
	switch {
	case fs.NArg() == 1 && fs.Arg(0) == "version":
		fmt.Fprintf(stdout, "courier %s (%s, %s/%s)\n", versionString(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	case fs.NArg() > 0:
		return usageError(fmt.Errorf("unexpected argument %q (courier takes flags only, and the command \"version\")", fs.Arg(0)))
	}
	if v := getenv(node.EnvName("config")); v != "" && !fs.Changed("config") {
		*configPath = v // the file is read before the other variables apply
	}
	// A variable set for a setting the command line gives too is ignored
	// (flags win): said once the log is up, so that a key or secret added
	// in an env file behind a unit's flags is not silently dropped.
	var shadowed []string
	fs.Visit(func(f *pflag.Flag) {
		if f.Name != "config" && getenv(node.EnvName(f.Name)) != "" {
			shadowed = append(shadowed, node.EnvName(f.Name))
		}
	})
	if err := node.ApplyFileAndEnv(fs, *configPath, getenv); err != nil {
		fmt.Fprintln(stderr, "courier:", err)
		for env, ctl := range courierctlHint {
			if strings.HasPrefix(err.Error(), env+":") {
				fmt.Fprintf(stderr, "courier: %s is the node's setting (--%s, a map); a value for courierctl goes in %s\n",
					env, strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(env, "COURIER_"), "_", "-")), ctl)
			}
		}
		return 2
	}
	if *addrFile != "" {
		// A tool waiting for the file must not read a previous run's
		// addresses (this run may fail, or bind other ports).
		if err := os.Remove(*addrFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintln(stderr, "courier: --addr-file:", err)
			return 2
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "courier: --log-level %q: %v\n", *logLevel, err)
		return 2
	}
	var h slog.Handler = slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})
	if *logJSON {
		h = slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})
	}
	log := slog.New(h)
	for _, name := range unknownEnv(fs, os.Environ()) {
		log.Warn("courier: unknown environment variable, ignored", "name", name)
	}
	for _, name := range shadowed {
		log.Warn("courier: environment variable ignored: the command line sets the same setting (flags win over the environment and the file)", "name", name)
	}
	if cf.gcMinHeap < 0 {
		fmt.Fprintf(stderr, "courier: --gc-min-heap %d: must be 0 (none) or a number of bytes\n", cf.gcMinHeap)
		return 2
	}
	if cf.gcPercent < 10 || cf.gcPercent > 10000 {
		// A negative one would turn the collector off, and the floor's
		// arithmetic with it: that is GOGC=off's to ask for.
		fmt.Fprintf(stderr, "courier: --gc-percent %d: must be in [10, 10000] (GOGC=off in the environment turns the collector off)\n", cf.gcPercent)
		return 2
	}
	if getenv("GOGC") == "" {
		defer node.StartGCFloor(*gcPercent, uint64(cf.gcMinHeap)).Stop()
	}
	if *dev {
		if err := devLoopback(fs, &cfg); err != nil {
			fmt.Fprintln(stderr, "courier:", err)
			return 2
		}
		devCredentials(&cfg)
		// make cluster's nodes keep their own inboxes by default: not
		// against a cluster.local-store given (flag, environment, file).
		if !fs.Changed("cluster.local-store") {
			cfg.ClusterLocalStore = true
		}
	}

	// Signals are caught before the node starts: a SIGTERM that arrives
	// while it starts (or right after --addr-file appears) shuts it down
	// gracefully instead of killing it.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	node.Version = versionString()
	n, err := node.Start(cfg, log)
	if err != nil {
		fmt.Fprintln(stderr, "courier:", err)
		if errors.Is(err, node.ErrConfig) {
			return 2
		}
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
		} else {
			defer os.Remove(*addrFile) // the addresses of a running node only
		}
	}
	if *dev {
		printDevHelp(stderr, cfg, n.GateAddr(), n.APIAddr(), n.HTTPAddr())
	}
	failed, signalled := false, false
	select {
	case <-ctx.Done():
		signalled = true
	case <-n.Drained():
		log.Info("courier: drained (courierctl drain); stopping")
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
	if signalled {
		// Move the devices and identities off first, without a storm
		// (drain-window); a drain asked through the API is waited for.
		// It leaves the rest of the shutdown its share of the grace
		// (settings check drain-window against it): a drain asked
		// through the API with a longer window is cut short, not the
		// steps after it.
		dctx, dcancel := context.WithTimeout(sctx, cfg.ShutdownGrace-min(5*time.Second, cfg.ShutdownGrace/4))
		if err := n.Drain(dctx, cfg.DrainWindow); err != nil {
			log.Warn("courier: drain", "err", err)
		}
		dcancel()
	}
	if err := n.Shutdown(sctx); err != nil {
		log.Error("courier: shutdown", "err", err)
		failed = true
	}
	log.Info("courier: stopped", "ran", time.Since(start).Round(time.Millisecond), "failed", failed)
	if failed {
		return 1
	}
	return 0
}

// cmdFlags are courier's own flags, besides the node's settings.
type cmdFlags struct {
	config, logLevel, addrFile, pprofAddr string
	dev, logJSON                          bool
	gcPercent                             int
	gcMinHeap                             int64
}

// newFlagSet declares every flag of courier: its own (into f), then the
// node's settings (into cfg), with their defaults. docs/operating.md
// documents each (a test checks it).
func newFlagSet(cfg *node.Config, f *cmdFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("courier", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVar(&f.config, "config", "", "YAML config file (keys are the flag names; nested maps allowed)")
	fs.BoolVar(&f.dev, "dev", false, "development mode: a demo app (appcode 1) with a known token secret and API keys, listening on 127.0.0.1 only")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&f.logJSON, "log-json", false, "log as JSON lines")
	fs.IntVar(&f.gcPercent, "gc-percent", 200, "Go GC target percentage (the GOGC environment variable wins); higher trades memory under load for CPU")
	fs.Int64Var(&f.gcMinHeap, "gc-min-heap", 512<<20, "bytes the Go heap may grow to before a GC cycle however small the live heap (0: no floor; GOGC set turns it off, GOMEMLIMIT still caps it): fewer GC cycles under load for a small node, and shorter latency tails, for memory")
	fs.StringVar(&f.addrFile, "addr-file", "", "write the bound addresses as JSON to this file once started (for tools and tests)")
	fs.StringVar(&f.pprofAddr, "pprof-addr", "", "serve net/http/pprof on this address (\"\" disables; for profiling only)")
	node.BindSettings(fs, cfg)
	return fs
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// unknownEnv returns the COURIER_* variables of env that are no setting
// of fs (nor one of courierctl's), sorted: most likely misspellings.
func unknownEnv(fs *pflag.FlagSet, env []string) []string {
	known := map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) { known[node.EnvName(f.Name)] = true })
	var out []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "COURIER_") && !known[name] && !courierctlEnv[name] {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// devLoopback makes --dev listen on 127.0.0.1 only: it publishes known
// keys. Addresses left at their defaults move to 127.0.0.1; one set to
// anything but a loopback address is refused.
func devLoopback(fs *pflag.FlagSet, cfg *node.Config) error {
	for _, a := range []struct {
		name string
		addr *string
	}{{"gate.addr", &cfg.Gate.Addr}, {"api-addr", &cfg.APIAddr}, {"http-addr", &cfg.HTTPAddr}} {
		if *a.addr == "" {
			continue
		}
		host, port, err := net.SplitHostPort(*a.addr)
		if err != nil {
			return fmt.Errorf("%s %q: %w", a.name, *a.addr, err)
		}
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			continue
		}
		if fs.Changed(a.name) {
			return fmt.Errorf("--dev publishes known keys, so it listens on loopback only: %s %q is not a loopback address (drop --dev, or use 127.0.0.1)", a.name, *a.addr)
		}
		*a.addr = net.JoinHostPort("127.0.0.1", port)
	}
	return nil
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

// devCredentials gives --dev's demo app and keys to a node that has none
// of their kind configured: a secret or key of the operator's own turns
// off the demo ones of that kind.
func devCredentials(cfg *node.Config) {
	if len(cfg.AppSecrets) == 0 && len(cfg.AppSecretFiles) == 0 {
		cfg.AppSecrets["1"] = devSecret
	}
	if len(cfg.APIKeys) == 0 && len(cfg.APIKeyFiles) == 0 {
		cfg.APIKeys[devKey] = "1"
		cfg.APIKeys[devOpKey] = "*"
	}
}

// printDevHelp tells how to try a --dev node. It names a demo credential
// only if cfg holds it: one printed beside the operator's own secrets or
// keys would be refused by the node, and would publish that it is not.
// What is configured instead is referred to by its setting, never shown.
func printDevHelp(w io.Writer, cfg node.Config, gateAddr, apiAddr, httpAddr string) {
	gate, api := dialable(gateAddr), dialable(apiAddr)
	demoApp, demoKey, demoOpKey := cfg.AppSecrets["1"] == devSecret, cfg.APIKeys[devKey] == "1", cfg.APIKeys[devOpKey] == "*"
	devices := "token secrets as configured: app-secret, app-secret-file"
	app, secretArg := "APPCODE", "--secret-file FILE_OF_ITS_SECRET"
	if demoApp {
		devices = fmt.Sprintf("appcode 1, token secret %q", devSecret)
		app, secretArg = "1", "--secret "+devSecret
	}
	var keys []string
	if demoKey {
		keys = append(keys, fmt.Sprintf("API key %q", devKey))
	}
	if demoOpKey {
		keys = append(keys, fmt.Sprintf("operator key %q", devOpKey))
	}
	apps := "API keys as configured: api-key, api-key-file"
	if len(keys) > 0 {
		apps = strings.Join(keys, "; ")
	}
	// The demo app's key acts for app 1 only: another app needs the
	// operator key.
	keyArg := "--key-file FILE_OF_AN_API_KEY"
	switch {
	case demoKey && demoApp:
		keyArg = "--key " + devKey
	case demoOpKey:
		keyArg = "--key " + devOpKey
	}
	fmt.Fprintf(w, `
Courier is running (development mode).
  devices connect to  %s   (%s)
  app-servers call    %s   (%s)
  metrics             http://%s/metrics

Try it, in another terminal:
  bin/courierctl device --gate %s --app %s --uid alice %s
  bin/courierctl push   --api %s %s --app %s --uid alice --payload 'hello alice'
`, gate, devices, api, apps, dialable(httpAddr), gate, app, secretArg, api, keyArg, app)
}
