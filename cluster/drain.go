package cluster

import (
	"context"
	"fmt"
	"time"
)

// Drain publishes that this node is draining: every member, this one
// included, places identities without it (its actors are handed off to
// their new owners) and gate discovery leaves its gate out; it stays
// live, so the sessions on its gate go on. It returns once this node's
// own view shows it draining and no handoff is pending, or ctx's error.
func (s *System) Drain(ctx context.Context) error {
	if err := s.members.SetDraining(ctx); err != nil {
		return err
	}
	for {
		// The view is published before the actors it moves are counted
		// as handoffs (onView registers them shard by shard after): only
		// once the view is applied does no pending handoff mean none.
		if v := s.View(); v.Self.Draining && s.appliedView.Load() >= v.Seq && s.handoffsPending() == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: drain: %d handoffs pending: %w", s.handoffsPending(), ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
