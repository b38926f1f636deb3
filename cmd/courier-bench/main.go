// Command courier-bench is Courier's load generator: it plays many
// devices and an app-server against a node and counts every message.
//
//	courier-bench connect  --devices 15000 --mem-at 5000,15000   # logins/s, memory per device
//	courier-bench push     --devices 10000 --duration 10s        # stored pushes: rates, latency, exact loss
//	courier-bench push     --ff --batch 100                      # fire-and-forget, PushMany
//	courier-bench c2c      --devices 10000 --rate 20000          # pairs chatting
//	courier-bench upstream --devices 10000 --rate 20000          # C2S to a subscribed app-server
//	courier-bench reconnect --devices 10000                      # drop all at once, time until all back
//	courier-bench report a.json b.json                           # compare result files
//	courier-bench chaos --duration 10m                           # faults under load against make cluster, the exact ledger
//
// By default it talks to a `make run` node (bin/courier --dev) on
// 127.0.0.1:7000-7002; --spawn-node bin/courier starts a fresh node per
// run instead, with the gate's rate limits off. Devices run in worker
// processes (this binary re-executed) when they need more open files than
// one process has.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/courier-im/courier/cmd/courier-bench/internal/bench"
	"github.com/courier-im/courier/cmd/courier-bench/internal/ipc"
)

func main() {
	if os.Getenv(ipc.EnvWorker) != "" {
		os.Exit(ipc.WorkerMain())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	var failed errFailed
	var unclean errUnclean
	switch {
	case errors.As(err, &failed), errors.As(err, &unclean):
		fmt.Fprintln(os.Stderr, "courier-bench:", err)
		os.Exit(3)
	case errors.Is(err, bench.ErrUpstreamUnimplemented):
		fmt.Fprintln(os.Stderr, "courier-bench:", err)
		os.Exit(4)
	case err != nil:
		fmt.Fprintln(os.Stderr, "courier-bench:", err)
		os.Exit(1)
	}
}
