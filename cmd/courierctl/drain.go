package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/messages/apipb"
)

func drainCmd() *cobra.Command {
	var f apiFlags
	var window, wait time.Duration
	c := &cobra.Command{
		Use:   "drain NODE",
		Short: "Move everything off a node and stop it: out of discovery and placement at once, devices told to reconnect elsewhere over a window (operator key)",
		Example: `  courierctl drain node3 --key OPS_KEY
  courierctl drain node3 --key OPS_KEY --window 30s --wait 2m`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{fmt.Errorf("drain takes one node name (or instance id), got %d arguments", len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, ctx, done, err := f.dial()
			if err != nil {
				return err
			}
			defer done()
			// Which node answers us, and the others' API addresses: the
			// drained node may be the one we ask through (the only one, on
			// a single node), and then --wait asks another, or takes the
			// node's exit for its leaving.
			before, _ := cl.Members(ctx, &apipb.MembersRequest{})
			resp, err := cl.Drain(ctx, &apipb.DrainRequest{Node: args[0], WindowMs: window.Milliseconds()})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, m := range resp.Members {
				fmt.Fprintf(out, "%s (%s): draining, %d connections and %d identity actors to move over %v\n",
					m.Name, m.Id, m.Conns, m.Actors, time.Duration(resp.WindowMs)*time.Millisecond)
			}
			if wait <= 0 {
				return nil
			}
			return waitGone(&f, cl, before, resp.Members, wait, out)
		},
	}
	f.bind(c)
	c.Flags().DurationVar(&window, "window", 0, "spread the kickouts over this long (0: the node's drain-window; at most 10m)")
	c.Flags().DurationVar(&wait, "wait", 0, "wait up to this long until the drained instances have left the cluster (0: do not wait)")
	return c
}

// waitGone polls Members until none of ms is registered any more. When
// the node asked through (before.AnsweredBy) is one of ms, it polls
// another live member's API address instead; with none left to ask, the
// drained node no longer answering is its exit, as the drain asked.
func waitGone(f *apiFlags, cl apipb.CourierClient, before *apipb.MembersResponse, ms []*apipb.Member, wait time.Duration, out io.Writer) error {
	drained := map[string]bool{}
	for _, m := range ms {
		drained[m.Id] = true
	}
	var others []string
	selfDrained := before != nil && drained[before.AnsweredBy]
	if selfDrained {
		for _, m := range before.Members {
			if !drained[m.Id] && m.Live && m.ApiAddr != "" {
				others = append(others, m.ApiAddr)
			}
		}
		if len(others) > 0 {
			alt := *f
			alt.addr = others[0]
			c, _, done, err := alt.dial()
			if err != nil {
				return err
			}
			defer done()
			cl, selfDrained = c, false
			fmt.Fprintf(out, "waiting through %s: %s is the node being drained\n", others[0], f.addr)
		}
	}
	deadline := time.Now().Add(wait)
	var gone time.Time // since when the drained node asked through has not answered
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+f.key)
		r, err := cl.Members(ctx, &apipb.MembersRequest{})
		cancel()
		switch status.Code(err) {
		case codes.OK, codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Canceled:
		default:
			// A refusal (the key, the call): waiting will not change it.
			return fmt.Errorf("waiting for the node to leave: %w", err)
		}
		if err == nil {
			left := 0
			for _, x := range r.Members {
				if drained[x.Id] && x.Live {
					left++
				}
			}
			if left == 0 {
				fmt.Fprintln(out, "drained: the node has left the cluster")
				return nil
			}
		} else if selfDrained && status.Code(err) == codes.Unavailable {
			// Gone for good, not a moment's hiccup: it stops its API
			// before it has left the cluster.
			if gone.IsZero() {
				gone = time.Now()
			} else if time.Since(gone) >= 3*time.Second {
				fmt.Fprintf(out, "drained: the node has exited (%s no longer answers)\n", f.addr)
				return nil
			}
		} else {
			gone = time.Time{}
		}
		if time.Now().After(deadline) {
			return waitTimeout{fmt.Errorf("the node is still in the cluster after %v (err %v)", wait, err)}
		}
		time.Sleep(500 * time.Millisecond)
	}
}
