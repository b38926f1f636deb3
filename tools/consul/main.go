// Command consul is HashiCorp Consul v1.13.9's command line, built from
// the module proxy for tests and `make cluster` (there is no Debian
// package). It does what consul's own main.go does: run the registered
// commands through mitchellh/cli.
package main

import (
	"fmt"
	"os"

	"github.com/hashicorp/consul/command"
	"github.com/hashicorp/consul/command/cli"
	mcli "github.com/mitchellh/cli"
)

func main() {
	ui := &cli.BasicUI{BasicUi: mcli.BasicUi{Writer: os.Stdout, ErrorWriter: os.Stderr}}
	cmds := command.RegisteredCommands(ui)
	factories := make(map[string]mcli.CommandFactory, len(cmds))
	for name, f := range cmds {
		factories[name] = mcli.CommandFactory(f)
	}
	c := &mcli.CLI{
		Name:     "consul",
		Args:     os.Args[1:],
		Commands: factories,
		HelpFunc: mcli.BasicHelpFunc("consul"),
		Version:  "1.13.9",
	}
	code, err := c.Run()
	if err != nil {
		fmt.Fprintf(os.Stderr, "consul: %v\n", err)
	}
	os.Exit(code)
}
