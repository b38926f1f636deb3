package api

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/actors/stats"
	"github.com/courier-im/courier/messages/apipb"
)

// Stats implements apipb.CourierServer.
func (s *Server) Stats(ctx context.Context, r *apipb.StatsRequest) (*apipb.StatsResponse, error) {
	if r.AppCode == 0 || r.AppCode > 0xFFFF {
		return nil, status.Errorf(codes.InvalidArgument, "app_code %d: must be in [1, 65535]", r.AppCode)
	}
	if err := scopeOf(ctx).check(r.AppCode); err != nil {
		return nil, err
	}
	if s.stats == nil && s.clusterStats == nil {
		return nil, status.Error(codes.FailedPrecondition, "this node keeps no statistics")
	}
	if r.WindowSeconds > uint32(stats.MaxWindow/time.Second) {
		return nil, status.Errorf(codes.InvalidArgument, "window_seconds %d: at most %d", r.WindowSeconds, int(stats.MaxWindow/time.Second))
	}
	// The query goes to every node, each of which indexes it.
	if len(r.Msgtypes) > stats.MaxQueryMsgtypes {
		return nil, status.Errorf(codes.InvalidArgument, "msgtypes: %d listed, at most %d (an app's statistics keep %d msgtypes and the others together)",
			len(r.Msgtypes), stats.MaxQueryMsgtypes, stats.MaxQueryMsgtypes-1)
	}
	for i, mt := range r.Msgtypes {
		if mt > 0xFFFF && mt != stats.OtherMsgtype {
			return nil, status.Errorf(codes.InvalidArgument, "msgtypes[%d] %d: must be in [0, 65535], or %d (the others together)", i, mt, stats.OtherMsgtype)
		}
	}
	window := time.Duration(r.WindowSeconds) * time.Second
	if window == 0 {
		window = time.Minute
	}
	// Counted in 10-second slots, the current one partly elapsed: the
	// counts cover the window rounded up to the slots and the current
	// slot's elapsed part, and the answer says how long (a rate over the
	// window asked for would be off by up to a slot's counts).
	covered := stats.Covered(window, s.now())
	window = stats.RoundWindow(window)
	var per []stats.Stat
	var all stats.Stat
	var missing []string
	if s.clusterStats != nil {
		var parts [][]stats.RawStat
		parts, missing = s.clusterStats(ctx, uint16(r.AppCode), r.Msgtypes, window)
		per, all = stats.Merge(uint16(r.AppCode), parts...)
	} else {
		per, all = s.stats.Snapshot(uint16(r.AppCode), r.Msgtypes, window)
	}
	out := &apipb.StatsResponse{AppCode: r.AppCode, WindowSeconds: uint32((covered + time.Second - 1) / time.Second), All: toStats(all), NodesMissing: missing}
	for _, st := range per {
		out.Msgtypes = append(out.Msgtypes, toStats(st))
	}
	return out, nil
}

func toCounters(c stats.Counts) *apipb.Counters {
	return &apipb.Counters{Accepted: c.Accepted, Delivered: c.Delivered, Acked: c.Acked, Retried: c.Retried,
		Expired: c.Expired, Dropped: c.Dropped, UpstreamReceived: c.UpstreamReceived, UpstreamAcked: c.UpstreamAcked}
}

func toLatency(l stats.Latency) *apipb.Latency {
	return &apipb.Latency{P50Us: l.P50, P90Us: l.P90, P99Us: l.P99, P999Us: l.P999, MaxUs: l.Max, Count: l.Count}
}

func toStats(st stats.Stat) *apipb.MsgtypeStats {
	return &apipb.MsgtypeStats{
		Msgtype: st.Msgtype, Total: toCounters(st.Total), Window: toCounters(st.Window),
		ArrivalRateTotal: st.Total.ArrivalRate(), ArrivalRateWindow: st.Window.ArrivalRate(),
		AckLatencyTotal: toLatency(st.TotalLatency), AckLatencyWindow: toLatency(st.WindowLatency),
	}
}
