package api

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/actors/stats"
	"github.com/courier-im/courier/messages/apipb"
)

// Stats implements apipb.CourierServer.
func (s *Server) Stats(ctx context.Context, r *apipb.StatsRequest) (*apipb.StatsResponse, error) {
	if err := scopeOf(ctx).check(r.AppCode); err != nil {
		return nil, err
	}
	if s.stats == nil {
		return nil, status.Error(codes.FailedPrecondition, "this node keeps no statistics")
	}
	if r.WindowSeconds > uint32(stats.MaxWindow/time.Second) {
		return nil, status.Errorf(codes.InvalidArgument, "window_seconds %d: at most %d", r.WindowSeconds, int(stats.MaxWindow/time.Second))
	}
	window := time.Duration(r.WindowSeconds) * time.Second
	if window == 0 {
		window = time.Minute
	}
	per, all := s.stats.Snapshot(uint16(r.AppCode), r.Msgtypes, window)
	out := &apipb.StatsResponse{AppCode: r.AppCode, WindowSeconds: uint32(window / time.Second), All: toStats(all)}
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

// Upstream implements apipb.CourierServer: the first request subscribes,
// later ones acknowledge. Deliveries the app-server has not acknowledged
// when the stream ends go to another subscriber.
func (s *Server) Upstream(stream apipb.Courier_UpstreamServer) error {
	if s.up == nil {
		return status.Error(codes.FailedPrecondition, "this node has no upstream router")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	sub := first.GetSubscribe()
	if sub == nil {
		return status.Error(codes.InvalidArgument, "the first request of the stream must be a subscribe")
	}
	if err := checkIdentity(sub.AppCode, "-"); err != nil {
		return err
	}
	if err := scopeOf(stream.Context()).check(sub.AppCode); err != nil {
		return err
	}
	for i, m := range sub.Msgtypes {
		if m > 0xFFFF {
			return status.Errorf(codes.InvalidArgument, "msgtypes[%d] %d: must be in [0, 65535]", i, m)
		}
	}
	subscriber, err := s.up.Subscribe(uint16(sub.AppCode), sub.Msgtypes, int(sub.MaxInFlight))
	if err != nil {
		return status.Errorf(codes.Unavailable, "upstream: %v", err)
	}
	defer subscriber.Close()

	// Acks arrive on their own goroutine; it ends with the stream.
	recvErr := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			switch b := req.Kind.(type) {
			case *apipb.UpstreamRequest_Ack:
				subscriber.Ack(b.Ack.DeliveryIds)
			default:
				recvErr <- status.Error(codes.InvalidArgument, "a stream subscribes once: later requests must be acks")
				return
			}
		}
	}()
	for {
		msgs := subscriber.Next(done)
		if msgs == nil {
			select {
			case err := <-recvErr:
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			default:
				return status.Error(codes.Unavailable, "upstream: the node is shutting down")
			}
		}
		if err := stream.Send(&apipb.UpstreamDelivery{Messages: msgs}); err != nil {
			return err
		}
	}
}
