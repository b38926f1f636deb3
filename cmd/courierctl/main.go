// Command courierctl is the tool of operators and app-server developers:
// mint a device token, act as a demo device, push, kick, ask presence and
// statistics, and edit the gate's access lists.
//
// Its environment variables are COURIERCTL_* (COURIERCTL_API,
// COURIERCTL_KEY, ...; env.go): COURIER_* ones are the node's settings.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/messages/apipb"
)

// version is stamped by `make release` (-ldflags "-X main.version=...").
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// usageError is a mistake on the command line: it is printed with the
// command's usage and exits 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// Exit codes besides 0 (done), 1 (the command failed) and 2 (a mistake
// on the command line): scripts (an upgrade, a drain) tell a refusal
// from what a later try may get through.
const (
	// exitRetry: the node could not take the call now (UNAVAILABLE,
	// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED NODE_OVERLOADED), or its
	// answer left out nodes that did not answer in time (stats): the same
	// command may succeed, or get the whole answer, later or on another
	// node.
	exitRetry = 3
	// exitWaitTimeout: drain --wait ran out before the node left.
	exitWaitTimeout = 4
)

// waitTimeout is drain --wait's error when its time ran out.
type waitTimeout struct{ err error }

func (e waitTimeout) Error() string { return e.err.Error() }

// incomplete is the error of a command that printed an answer with parts
// missing (nodes that did not answer in time): it exits exitRetry, since
// a later try may get the whole answer.
type incomplete struct{ err error }

func (e incomplete) Error() string { return e.err.Error() }

// run executes the command line and returns the exit code: 0, 1 when the
// command failed, 2 for a mistake on the command line, exitRetry (also
// for an incomplete answer) and exitWaitTimeout.
func run(args []string, in io.Reader, out, errw io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(errw)
	cmd, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	fmt.Fprintln(errw, "courierctl:", err)
	if why := reason(err); why != "" {
		fmt.Fprintln(errw, "courierctl:", why)
	}
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
		fmt.Fprintf(errw, "\n%s", cmd.UsageString())
		return 2
	}
	var wt waitTimeout
	if errors.As(err, &wt) {
		return exitWaitTimeout
	}
	var inc incomplete
	if errors.As(err, &inc) {
		return exitRetry
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return exitRetry
	case codes.ResourceExhausted:
		// The node's overload passes; an inbox full or a list at its cap
		// waits for something else.
		if info := apipb.ErrorInfo(err); info != nil && info.Reason == apipb.ReasonNodeOverloaded {
			return exitRetry
		}
	}
	return 1
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "courierctl",
		Short: "Operate a Courier node and try it out",
		Long: "Operate a Courier node and try it out.\n\nFlags marked (env COURIERCTL_...) default to that environment variable;\n" +
			"COURIER_* variables are the node's settings, not courierctl's.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          noArgs,
		RunE:          func(c *cobra.Command, _ []string) error { return c.Help() },
		// Run before each command's own PreRun.
		PersistentPreRunE: func(c *cobra.Command, _ []string) error {
			warnLegacyEnv(c)
			// Appcodes are 16 bits on the wire: a larger one is a mistake
			// found here (exit 2), not by the node.
			if f := c.Flags().Lookup("app"); f != nil {
				if v, err := strconv.ParseUint(f.Value.String(), 10, 32); err == nil && v > 0xFFFF {
					return usageError{fmt.Errorf("--app %d: an appcode is at most 65535", v)}
				}
			}
			return nil
		},
	}
	root.AddCommand(tokenCmd(), deviceCmd(), pushCmd(), kickCmd(), presenceCmd(), statsCmd(), upstreamCmd(), listsCmd(), versionCmd(),
		certsCmd(), membersCmd(), drainCmd())
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
		if c.Args == nil {
			c.Args = noArgs
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return root
}

// noArgs refuses positional arguments as a usage error.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		if c.HasSubCommands() {
			return usageError{fmt.Errorf("unknown command %q for %q", args[0], c.CommandPath())}
		}
		return usageError{fmt.Errorf("%s takes no arguments, got %q", c.CommandPath(), args)}
	}
	return nil
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

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print courierctl's version",
		RunE: func(c *cobra.Command, _ []string) error {
			fmt.Fprintln(c.OutOrStdout(), "courierctl", versionString())
			return nil
		},
	}
}

// minArgs wants at least n positional arguments.
func minArgs(n int) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) < n {
			return usageError{fmt.Errorf("%s needs at least %d argument(s)", c.CommandPath(), n)}
		}
		return nil
	}
}

// reason describes the google.rpc.ErrorInfo of a refusal by the node
// (docs/api.md, Errors), "" if err has none.
func reason(err error) string {
	info := apipb.ErrorInfo(err)
	if info == nil {
		return ""
	}
	if s := info.Metadata[apipb.SettingKey]; s != "" {
		return fmt.Sprintf("reason %s (setting %s)", info.Reason, s)
	}
	return "reason " + info.Reason
}
