package api

import (
	"cmp"
	"context"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/messages/apipb"
)

// Members implements apipb.CourierServer: the cluster as this node sees
// it. Operator keys only: it shows every node's internal addresses.
func (s *Server) Members(ctx context.Context, _ *apipb.MembersRequest) (*apipb.MembersResponse, error) {
	if !scopeOf(ctx).operator() {
		return nil, status.Error(codes.PermissionDenied, "Members needs an operator API key")
	}
	if s.view == nil {
		return nil, status.Error(codes.FailedPrecondition, "this node has no membership")
	}
	v := s.view()
	if v.Self.ID == "" {
		return nil, status.Error(codes.Unavailable, "this node has not joined the cluster yet: retry")
	}
	out := &apipb.MembersResponse{AnsweredBy: v.Self.ID, Provider: s.prov}
	for _, m := range v.Members {
		pm := &apipb.Member{
			Id: m.ID, Name: m.Name, Roles: strings.Split(m.Roles.String(), ","), Version: m.Version,
			Address: m.Address, GateId: m.GateID, GateAddr: m.GateAddr, ApiAddr: m.APIAddr, HttpAddr: m.HTTPAddr,
			Conns: uint32(m.Load.Conns), MaxConns: uint32(m.Load.MaxConns), Actors: uint32(m.Load.Actors),
			Health: m.Health, Blocked: m.Blocked, Live: m.Live(), StartedAtMs: m.StartedAt.UnixMilli(), Draining: m.Draining,
		}
		for _, a := range m.Apps {
			pm.Apps = append(pm.Apps, uint32(a))
		}
		out.Members = append(out.Members, pm)
	}
	slices.SortFunc(out.Members, func(a, b *apipb.Member) int { return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Id, b.Id)) })
	return out, nil
}
