package node

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/courier-im/courier/actors/stats"
	"github.com/courier-im/courier/messages/actorpb"
)

// statsWait bounds how long Stats waits for the other nodes' parts when
// the caller's context allows longer.
const statsWait = 2 * time.Second

// answerNode answers the NodeRequests of the other members: this node's
// part of the cluster's statistics, and its gate's access lists.
func (n *Node) answerNode(req *actorpb.NodeRequest) *actorpb.Reply {
	switch b := req.Body.(type) {
	case *actorpb.NodeRequest_Stats:
		q := b.Stats
		raw := n.stats.Raw(uint16(q.AppCode), q.Msgtypes, time.Duration(q.WindowMs)*time.Millisecond)
		return &actorpb.Reply{Body: &actorpb.Reply_StatsPart{StatsPart: toStatsPart(raw)}}
	case *actorpb.NodeRequest_ListsEdit, *actorpb.NodeRequest_ListsGet:
		return n.answerLists(req)
	case *actorpb.NodeRequest_Drain:
		if self := n.sys.View().Self.ID; self == "" {
			return &actorpb.Reply{Body: &actorpb.Reply_Failure{Failure: &actorpb.Failure{Code: int32(codes.Unavailable),
				Message: "this node has not joined the cluster yet: retry"}}}
		} else if b.Drain.Member != "" && b.Drain.Member != self {
			return &actorpb.Reply{Body: &actorpb.Reply_Failure{Failure: &actorpb.Failure{Code: int32(codes.NotFound),
				Message: fmt.Sprintf("instance %s is gone: this address is served by instance %s now", b.Drain.Member, self)}}}
		}
		return &actorpb.Reply{Body: &actorpb.Reply_DrainStarted{DrainStarted: n.startDrain(time.Duration(b.Drain.WindowMs) * time.Millisecond)}}
	}
	return &actorpb.Reply{Body: &actorpb.Reply_Failure{Failure: &actorpb.Failure{
		Code: int32(codes.Unimplemented), Message: "node: unknown node request"}}}
}

// clusterStats gathers the statistics of every live node (api.ClusterStats).
func (n *Node) clusterStats(ctx context.Context, app uint16, msgtypes []uint32, window time.Duration) ([][]stats.RawStat, []string) {
	ctx, cancel := context.WithTimeout(ctx, statsWait)
	defer cancel()
	replies, missing := n.sys.Gather(ctx, 0, &actorpb.NodeRequest{Body: &actorpb.NodeRequest_Stats{Stats: &actorpb.StatsQuery{
		AppCode: uint32(app), Msgtypes: msgtypes, WindowMs: window.Milliseconds()}}})
	parts := make([][]stats.RawStat, 0, len(replies))
	for name, r := range replies {
		if p := r.GetStatsPart(); p != nil {
			parts = append(parts, fromStatsPart(p))
		} else {
			missing = append(missing, name)
		}
	}
	return parts, missing
}

func toCounts(c stats.Counts) *actorpb.StatCounts {
	return &actorpb.StatCounts{Accepted: c.Accepted, Delivered: c.Delivered, Acked: c.Acked, Retried: c.Retried,
		Expired: c.Expired, Dropped: c.Dropped, UpstreamReceived: c.UpstreamReceived, UpstreamAcked: c.UpstreamAcked,
		AcceptedStored: c.AcceptedStored}
}

func fromCounts(c *actorpb.StatCounts) stats.Counts {
	return stats.Counts{Accepted: c.GetAccepted(), Delivered: c.GetDelivered(), Acked: c.GetAcked(), Retried: c.GetRetried(),
		Expired: c.GetExpired(), Dropped: c.GetDropped(), UpstreamReceived: c.GetUpstreamReceived(),
		UpstreamAcked: c.GetUpstreamAcked(), AcceptedStored: c.GetAcceptedStored()}
}

func toStatsPart(raw []stats.RawStat) *actorpb.StatsPart {
	p := &actorpb.StatsPart{Stats: make([]*actorpb.RawStat, len(raw))}
	for i, r := range raw {
		p.Stats[i] = &actorpb.RawStat{Msgtype: r.Msgtype, Total: toCounts(r.Total), Window: toCounts(r.Window),
			TotalLatency:  &actorpb.Hist{Index: r.TotalH.Index, Count: r.TotalH.Count, N: r.TotalH.N, MaxUs: r.TotalH.Max},
			WindowLatency: &actorpb.Hist{Index: r.WindowH.Index, Count: r.WindowH.Count, N: r.WindowH.N, MaxUs: r.WindowH.Max}}
	}
	return p
}

func fromStatsPart(p *actorpb.StatsPart) []stats.RawStat {
	out := make([]stats.RawStat, len(p.Stats))
	hist := func(h *actorpb.Hist) stats.Hist {
		return stats.Hist{Index: h.GetIndex(), Count: h.GetCount(), N: h.GetN(), Max: h.GetMaxUs()}
	}
	for i, r := range p.Stats {
		out[i] = stats.RawStat{Msgtype: r.Msgtype, Total: fromCounts(r.Total), Window: fromCounts(r.Window),
			TotalH: hist(r.TotalLatency), WindowH: hist(r.WindowLatency)}
	}
	return out
}
