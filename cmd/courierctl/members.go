package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/courier-im/courier/messages/apipb"
)

func membersCmd() *cobra.Command {
	var f apiFlags
	var asJSON bool
	c := &cobra.Command{
		Use:   "members",
		Short: "List the cluster's nodes: roles, addresses, load, health, version, blocked instances (operator key)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, ctx, done, err := f.dial()
			if err != nil {
				return err
			}
			defer done()
			resp, err := cl.Members(ctx, &apipb.MembersRequest{})
			if err != nil {
				return err
			}
			if asJSON {
				printJSON(cmd.OutOrStdout(), resp)
				return nil
			}
			printMembers(cmd.OutOrStdout(), resp)
			return nil
		},
	}
	f.bind(c)
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return c
}

// printMembers writes the members as a table, live ones first.
func printMembers(out io.Writer, r *apipb.MembersResponse) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tROLES\tSTATE\tVERSION\tGATE\tAPI\tHTTP\tCONNS\tACTORS\tUP\tINSTANCE")
	now := time.Now()
	for _, blocked := range []bool{false, true} {
		for _, m := range r.Members {
			if m.Blocked != blocked {
				continue
			}
			state := memberState(m)
			self := ""
			if m.Id == r.AnsweredBy {
				self = " (answered)"
			}
			conns := "-"
			if strings.Contains(strings.Join(m.Roles, ","), "gate") {
				conns = fmt.Sprintf("%d/%d", m.Conns, m.MaxConns)
			}
			up := now.Sub(time.UnixMilli(m.StartedAtMs)).Round(time.Second)
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%v\t%s%s\n", m.Name, strings.Join(m.Roles, ","), state, m.Version,
				dash(m.GateAddr), dash(m.ApiAddr), dash(m.HttpAddr), conns, m.Actors, up, m.Id, self)
		}
	}
	_ = w.Flush()
	fmt.Fprintf(out, "membership: %s, as seen by %s\n", r.Provider, r.AnsweredBy)
}

// memberState is the STATE column: blocked, draining, live, or else the
// provider's health of an instance not live (warning, critical, Consul's
// maintenance; unknown when Consul gave a check status it does not know).
// docs/operating.md lists them (TestMemberStatesAreDocumented).
func memberState(m *apipb.Member) string {
	switch {
	case m.Blocked:
		return "blocked"
	case m.Live && m.Draining:
		return "draining"
	case m.Live:
		return "live"
	case m.Health == "":
		// A blank cell would shift the columns of whoever splits the
		// table on spaces.
		return "unknown"
	}
	return m.Health
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
