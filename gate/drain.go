package gate

import (
	"context"
	"fmt"
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
// the open ones evenly over window (every 50 ms, as many as keep the pace
// of connections / window; whatever is left when the window ends goes at
// once), so that the other gates see about connections / window
// reconnects per second. It returns when no connection is left, or ctx's
// error when ctx ends first. The gate keeps refusing until Refuse(false)
// or Shutdown.
func (g *Gate) MoveOff(ctx context.Context, window time.Duration) error {
	g.Refuse(true)
	total := g.conns.Load()
	start := time.Now()
	var kicked int64
	t := time.NewTicker(moveOffStep)
	defer t.Stop()
	for g.conns.Load() > 0 {
		due := total
		if elapsed := time.Since(start); elapsed < window {
			due = total * int64(elapsed+moveOffStep) / int64(window)
		}
		if n := due - kicked; n > 0 {
			kicked += g.kickSome(ctx, n, false)
		} else if due == total {
			kicked += g.kickSome(ctx, 0, true) // stragglers, and connections opened before Refuse took
		}
		select {
		case <-ctx.Done():
			g.logLeft()
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// kickSome sends KICKOUT SERVER_SHUTDOWN to up to n connections (every
// one if all), spread evenly over the loops, waits (briefly) until the
// loops have done it and returns how many it kicked. The loop that gets
// the larger share turns with every call, and a loop with fewer
// connections than its share leaves the rest to the next call.
func (g *Gate) kickSome(ctx context.Context, n int64, all bool) int64 {
	loops := *g.loops.Load()
	counts := make(chan int64, len(loops))
	turn := int(g.moveOffTurn.Add(1))
	left := n
	for i := range loops {
		l := loops[(turn+i)%len(loops)]
		share := (left + int64(len(loops)-i) - 1) / int64(len(loops)-i)
		left -= share
		if share == 0 && !all {
			counts <- 0
			continue
		}
		l.exec(func() {
			var k int64
			for _, s := range l.conns() {
				if k == share && !all {
					break
				}
				if !s.closed {
					s.kick(kickShutdown, CloseShutdown)
					k++
				}
			}
			counts <- k
		})
	}
	var kicked int64
	for range loops {
		select {
		case k := <-counts:
			kicked += k
		case <-ctx.Done():
			return kicked
		case <-time.After(time.Second):
			return kicked // a loop is busy; the next call catches up
		}
	}
	return kicked
}

// logLeft logs a few of the connections MoveOff did not move in time.
func (g *Gate) logLeft() {
	for _, l := range *g.loops.Load() {
		done := make(chan []string, 1)
		l.exec(func() {
			var out []string
			for _, s := range l.conns() {
				if len(out) == 5 {
					break
				}
				out = append(out, fmt.Sprintf("conn %d uid %q state %d closed %v remote %v", s.id, s.uid, s.state, s.closed, s.remote))
			}
			done <- out
		})
		select {
		case left := <-done:
			if len(left) > 0 {
				g.log.Warn("gate: connections left after moving devices off", "conns", g.conns.Load(), "some", left)
			}
		case <-time.After(time.Second):
		}
	}
}
