package gate

import (
	"context"
	"time"
)

// Refuse makes the gate refuse new connections (ERROR SERVER_BUSY at
// connect, as while it shuts down) while on is true, and take them again
// when it is false. The node uses it while it drains, and while it is
// not sure it is still a member of the cluster (its sessions would be
// taken for ended). Connections already open are not touched.
func (g *Gate) Refuse(on bool) { g.refusing.Store(on) }

// moveOffStep is how often MoveOff kicks its next share of connections.
const moveOffStep = 50 * time.Millisecond

// MoveOff moves every device off the gate without a reconnect storm: it
// refuses new connections (Refuse) and sends KICKOUT SERVER_SHUTDOWN to
// the open ones in even shares over window (each share every 50 ms), so
// that the other gates see at most about conns / window reconnects per
// second. It returns when no connection is left, or ctx's error when ctx
// ends first. The gate keeps refusing until Refuse(false) or Shutdown.
func (g *Gate) MoveOff(ctx context.Context, window time.Duration) error {
	g.Refuse(true)
	total := g.conns.Load()
	steps := max(int64(window/moveOffStep), 1)
	per := max((total+steps-1)/steps, 1)
	t := time.NewTicker(moveOffStep)
	defer t.Stop()
	for g.conns.Load() > 0 {
		g.kickSome(ctx, per)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// kickSome sends KICKOUT SERVER_SHUTDOWN to up to n connections, spread
// evenly over the loops, and waits (briefly) until the loops have done
// it. A loop with fewer connections than its share leaves the rest to
// the next step.
func (g *Gate) kickSome(ctx context.Context, n int64) {
	loops := *g.loops.Load()
	done := make(chan struct{}, len(loops))
	left := n
	for i, l := range loops {
		share := (n + int64(len(loops)-i) - 1) / int64(len(loops)-i)
		share = min(share, left)
		left -= share
		if share == 0 {
			done <- struct{}{}
			continue
		}
		l.exec(func() {
			for _, s := range l.conns() {
				if share == 0 {
					break
				}
				if !s.closed {
					s.kick(kickShutdown, CloseShutdown)
					share--
				}
			}
			done <- struct{}{}
		})
	}
	for range loops {
		select {
		case <-done:
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
			return // a loop is busy; the next step catches up
		}
	}
}
