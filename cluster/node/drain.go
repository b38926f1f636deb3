package node

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/messages/actorpb"
)

// drainState is the node's one drain: it begins once (SIGTERM, or the
// API's Drain through any api node) and every caller waits for it.
type drainState struct {
	started chan struct{} // closed when the drain begins
	done    chan struct{} // closed when it is over
	err     error         // set before done is closed
	// byAPI is closed when a drain asked through the API is over: the
	// process exits then. asked is under Node.drainMu.
	byAPI chan struct{}
	asked bool
	// windowMs is the window of the drain under way (the first caller's,
	// 0 when there is no other gate to move to): a later Drain call is
	// told this one, not the one it asked for.
	windowMs atomic.Int64
}

func newDrainState() *drainState {
	return &drainState{started: make(chan struct{}), done: make(chan struct{}), byAPI: make(chan struct{})}
}

// Drain moves everything off the node without a storm before it stops:
// it publishes that it is draining, so that every member routes its
// identities elsewhere (its actors are handed off) and gate discovery no
// longer lists its gate; its gate refuses new connections and tells its
// devices to reconnect elsewhere with KICKOUT SERVER_SHUTDOWN spread over
// window (gate.MoveOff). Sessions on its gate go on until their device
// is told to move. A node alone in its cluster (or with no other gate)
// kicks its devices at once: there is nowhere to spread them to. It
// returns when no device is left and no handoff is pending, or with
// ctx's error. A second call waits for the first drain. Shutdown stops
// the node afterwards.
func (n *Node) Drain(ctx context.Context, window time.Duration) error {
	d := n.drain
	select {
	case <-d.started:
		select {
		case <-d.done:
			return d.err
		case <-ctx.Done():
			return ctx.Err()
		}
	default:
	}
	n.drainMu.Lock()
	select {
	case <-d.started:
		n.drainMu.Unlock()
		return n.Drain(ctx, window)
	default:
		d.windowMs.Store(window.Milliseconds())
		close(d.started)
		if n.gate != nil {
			// Here, under drainMu, so that a lease regained meanwhile
			// (leaseChanged) cannot open the gate again.
			n.gate.Refuse(true)
		}
	}
	n.drainMu.Unlock()

	start := time.Now()
	l := n.load()
	v := n.sys.View()
	others := func(r membership.Roles) bool {
		for _, m := range v.Serving(r) {
			if m.ID != v.Self.ID {
				return true
			}
		}
		return false
	}
	if !others(membership.RoleGate) {
		window = 0 // no other gate to move to: spreading would only delay the stop
		d.windowMs.Store(0)
	}
	n.log.Info("node: draining", "window", window, "conns", l.Conns, "actors", l.Actors)
	if n.health != nil {
		n.health.Shutdown() // NOT_SERVING: app-servers' balancers move to other api nodes
	}
	var errs []error
	if others(0) {
		// Alone, the node keeps its identities to the end: nobody could
		// take them over.
		if err := n.sys.Drain(ctx); err != nil {
			errs = append(errs, fmt.Errorf("node: drain: identities: %w", err))
		}
	}
	if n.gate != nil {
		if err := n.gate.MoveOff(ctx, window); err != nil {
			errs = append(errs, fmt.Errorf("node: drain: %d devices still on the gate: %w", n.gate.Conns(), err))
		}
	}
	d.err = errors.Join(errs...)
	n.log.Info("node: drained", "took", time.Since(start).Round(time.Millisecond), "err", d.err)
	close(d.done)
	return d.err
}

// Drained is closed once a drain asked through the API (Drain RPC) is
// over: the process then shuts down and exits.
func (n *Node) Drained() <-chan struct{} { return n.drain.byAPI }

// startDrain begins a drain asked through the API and returns at once.
func (n *Node) startDrain(window time.Duration) *actorpb.DrainStarted {
	if window <= 0 {
		window = n.cfg.DrainWindow
	}
	l := n.load()
	ans := &actorpb.DrainStarted{Member: n.sys.View().Self.ID, WindowMs: window.Milliseconds(),
		Conns: uint32(l.Conns), Actors: uint32(l.Actors)}
	n.drainMu.Lock()
	defer n.drainMu.Unlock()
	select {
	case <-n.drain.started:
		// A drain is under way (SIGTERM, an earlier call): it goes on
		// with its own window.
		ans.WindowMs = n.drain.windowMs.Load()
	default:
	}
	if n.drain.asked || n.stopping.Load() {
		return ans // a node stopping drains as it stops (no wg.Add during Shutdown's Wait)
	}
	n.drain.asked = true
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), window+n.cfg.ShutdownGrace)
		defer cancel()
		_ = n.Drain(ctx, window)
		close(n.drain.byAPI)
	}()
	return ans
}

// drainMember begins the drain of member m, this node or another
// (api.Deps.Drain).
func (n *Node) drainMember(ctx context.Context, m membership.Member, window time.Duration) (*actorpb.DrainStarted, error) {
	if m.Address == n.sys.Address() {
		if self := n.sys.View().Self.ID; self != "" && m.ID != self {
			return nil, status.Errorf(codes.NotFound, "instance %s is gone: this address is served by instance %s now", m.ID, self)
		}
		return n.startDrain(window), nil
	}
	r, err := n.sys.AskNode(ctx, m.Address, &actorpb.NodeRequest{Body: &actorpb.NodeRequest_Drain{
		Drain: &actorpb.DrainStart{WindowMs: window.Milliseconds(), Member: m.ID}}})
	if err != nil {
		return nil, err
	}
	if ds := r.GetDrainStarted(); ds != nil {
		return ds, nil
	}
	code := codes.Unavailable // an answer it does not know (a newer node)
	if f := r.GetFailure(); f != nil && f.Code != 0 {
		code = codes.Code(f.Code)
	}
	return nil, status.Errorf(code, "node %s: %s", m.Name, r.GetFailure().GetMessage())
}
