// Command courierctl is the tool of operators and app-server developers:
// mint a device token, act as a demo device, push, kick, ask presence and
// statistics, and edit the gate's access lists.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "courierctl",
		Short:         "Operate a Courier node and try it out",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(tokenCmd(), deviceCmd(), pushCmd(), kickCmd(), presenceCmd(), statsCmd(), upstreamCmd(), listsCmd(),
		certsCmd(), membersCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "courierctl:", err)
		os.Exit(1)
	}
}
