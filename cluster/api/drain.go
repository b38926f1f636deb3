package api

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
)

// MaxDrainWindow is the longest window a Drain call may ask for.
const MaxDrainWindow = 10 * time.Minute

// Drainer begins the drain of member m (this node or another) with its
// kickouts spread over window (0: that node's setting), and returns as
// soon as it has begun.
type Drainer func(ctx context.Context, m membership.Member, window time.Duration) (*actorpb.DrainStarted, error)

// Drain implements apipb.CourierServer: it begins draining every live
// instance of the named node (or the one instance with that id).
// Operator keys only.
func (s *Server) Drain(ctx context.Context, r *apipb.DrainRequest) (*apipb.DrainResponse, error) {
	if !scopeOf(ctx).operator() {
		return nil, status.Error(codes.PermissionDenied, "Drain needs an operator API key")
	}
	if s.view == nil || s.drain == nil {
		return nil, status.Error(codes.FailedPrecondition, "this node has no membership")
	}
	if r.Node == "" {
		return nil, status.Error(codes.InvalidArgument, "node: the node's name or instance id is required")
	}
	if r.WindowMs < 0 || r.WindowMs > MaxDrainWindow.Milliseconds() { // in milliseconds: a Duration of it could wrap
		return nil, status.Errorf(codes.InvalidArgument, "window_ms %d: must be in [0, %d]", r.WindowMs, MaxDrainWindow.Milliseconds())
	}
	window := time.Duration(r.WindowMs) * time.Millisecond
	v := s.view()
	if v.Self.ID == "" {
		return nil, status.Error(codes.Unavailable, "this node has not joined the cluster yet: retry")
	}
	var targets []membership.Member
	for _, m := range v.Live(0) {
		if m.Name == r.Node || m.ID == r.Node {
			targets = append(targets, m)
		}
	}
	if len(targets) == 0 {
		return nil, status.Errorf(codes.NotFound, "node %q: no live member of that name or instance id (courierctl members lists them)", r.Node)
	}
	out := &apipb.DrainResponse{WindowMs: r.WindowMs}
	for _, m := range targets {
		ds, err := s.drain(ctx, m, window)
		if status.Code(err) == codes.NotFound && m.ID != r.Node {
			// An old instance of the node still listed (a restart
			// within the TTL): its address answers for the new one,
			// which is a target of its own.
			continue
		}
		if status.Code(err) == codes.NotFound {
			return out, status.Errorf(codes.NotFound, "node %s (%s): %s", m.Name, m.ID, status.Convert(err).Message())
		}
		if err != nil {
			return out, status.Errorf(codes.Unavailable, "node %s (%s) did not begin draining: %v; retry", m.Name, m.ID, err)
		}
		if ds == nil {
			return out, status.Errorf(codes.Unavailable, "node %s (%s) did not say it began draining; retry", m.Name, m.ID)
		}
		if ds.Member != "" && ds.Member != m.ID {
			// A node of an older version drained the instance that now
			// serves m's address (it does not check the one asked for):
			// m is not what drains.
			continue
		}
		// The window in force: an instance already draining keeps its
		// own; of several instances, the longest.
		if first := len(out.Members) == 0; first || ds.WindowMs > out.WindowMs {
			out.WindowMs = ds.WindowMs
		}
		out.Members = append(out.Members, &apipb.Member{Id: m.ID, Name: m.Name, Address: m.Address, Live: true, Draining: true,
			Conns: ds.Conns, Actors: ds.Actors, GateAddr: m.GateAddr, ApiAddr: m.APIAddr, HttpAddr: m.HTTPAddr})
	}
	if len(out.Members) == 0 {
		return out, status.Errorf(codes.Unavailable, "node %q: none of its listed instances serves its address any more (it restarted or rejoined); retry once the members list shows its new instance", r.Node)
	}
	return out, nil
}
