package main

import (
	"context"
	"fmt"
	"io"
	"strings"
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
			if window < 0 || window > maxDrainWindow {
				return usageError{fmt.Errorf("--window %v: must be in [0, %v]", window, maxDrainWindow)}
			}
			if wait < 0 {
				return usageError{fmt.Errorf("--wait %v: must not be negative (0: do not wait)", wait)}
			}
			cl, _, done, err := f.dial()
			if err != nil {
				return err
			}
			defer done()
			// Which node answers us, and the others' API addresses: the
			// drained node may be the one we ask through (the only one, on
			// a single node), and then --wait asks another, or takes the
			// node's exit for its leaving. Without that list --wait cannot
			// tell a node that left from one it can no longer ask.
			// --wait bounds the whole command, this list included.
			deadline := time.Now().Add(wait)
			var before *apipb.MembersResponse
			if wait > 0 {
				if before, err = membersBeforeDrain(&f, cl, deadline); err != nil {
					return err
				}
			}
			ctx, cancel := f.callCtx()
			defer cancel()
			resp, err := cl.Drain(ctx, &apipb.DrainRequest{Node: args[0], WindowMs: window.Milliseconds()})
			if err != nil {
				return drainFailed(&f, cl, args[0], err)
			}
			out := cmd.OutOrStdout()
			for _, m := range resp.Members {
				fmt.Fprintf(out, "%s (%s): draining, %d connections and %d identity actors to move over %v\n",
					m.Name, m.Id, m.Conns, m.Actors, time.Duration(resp.WindowMs)*time.Millisecond)
			}
			if wait <= 0 {
				return nil
			}
			return waitGone(&f, cl, before, resp.Members, wait, deadline, out)
		},
	}
	f.bind(c)
	c.Flags().DurationVar(&window, "window", 0, "spread the kickouts over this long (0: the node's drain-window; at most 10m)")
	c.Flags().DurationVar(&wait, "wait", 0, "wait up to this long until the drained instances have left the cluster (0: do not wait)")
	return c
}

// maxDrainWindow is the longest --window a node takes (api.MaxDrainWindow).
const maxDrainWindow = 10 * time.Minute

// pollEvery is how often drain --wait asks again.
const pollEvery = 500 * time.Millisecond

// mayPass reports whether a failed call may get through if made again
// (the node is busy, restarting, or not reachable for a moment), as
// opposed to a refusal that waiting will not change.
func mayPass(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Canceled:
		return true
	}
	return false
}

// membersBeforeDrain lists the members for drain --wait before it drains
// anything, asking again while the call may get through, until deadline
// (--wait's end). It fails rather than drain blind: without the list, a
// node asked through that is the one drained was waited for through
// itself, and its exit read as the cluster not answering.
func membersBeforeDrain(f *apiFlags, cl apipb.CourierClient, deadline time.Time) (*apipb.MembersResponse, error) {
	for {
		ctx, cancel := f.callCtx()
		r, err := cl.Members(ctx, &apipb.MembersRequest{})
		cancel()
		if err == nil {
			return r, nil
		}
		if !mayPass(err) || time.Now().Add(pollEvery).After(deadline) {
			return nil, fmt.Errorf("nothing drained: drain --wait lists the members first (to know whom to wait through), and that failed: %w", err)
		}
		time.Sleep(pollEvery)
	}
}

// drainFailed explains a failed Drain. The node asks each instance of a
// node in turn and fails at the first that does not begin (UNAVAILABLE),
// or runs out of time (DEADLINE_EXCEEDED), after the earlier ones began
// draining; gRPC drops the answer of a failed call, so the members list
// says which are draining now.
func drainFailed(f *apiFlags, cl apipb.CourierClient, node string, err error) error {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
	default:
		return err // refused before anything began: nothing is draining
	}
	ctx, cancel := f.callCtx()
	defer cancel()
	r, merr := cl.Members(ctx, &apipb.MembersRequest{})
	if merr != nil {
		return fmt.Errorf("%w; whether an instance of %s began draining before that is unknown (members: %s): see courierctl members",
			err, node, status.Convert(merr).Message())
	}
	var draining []string
	for _, m := range r.Members {
		if (m.Name == node || m.Id == node) && m.Draining {
			draining = append(draining, fmt.Sprintf("%s (%s)", m.Name, m.Id))
		}
	}
	if len(draining) == 0 {
		return fmt.Errorf("%w; no instance of %s is draining: nothing was drained", err, node)
	}
	// %w keeps the call's code: run exits exitRetry for UNAVAILABLE, and
	// a retry is safe, an instance already draining carries on as it was.
	return fmt.Errorf("drain of %s only partly begun: %s draining now, and will exit; but %w; drain %s again for the rest",
		node, strings.Join(draining, ", "), err, node)
}

// waitGone polls Members until none of ms is registered any more. When
// the node asked through (before.AnsweredBy) is one of ms, it polls
// another live member's API address instead; with none left to ask, the
// drained node no longer answering is its exit, as the drain asked.
func waitGone(f *apiFlags, cl apipb.CourierClient, before *apipb.MembersResponse, ms []*apipb.Member, wait time.Duration, deadline time.Time, out io.Writer) error {
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
	var gone time.Time // since when the drained node asked through has not answered
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+f.key)
		r, err := cl.Members(ctx, &apipb.MembersRequest{})
		cancel()
		if err != nil && !mayPass(err) {
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
		time.Sleep(pollEvery)
	}
}
