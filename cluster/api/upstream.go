package api

import (
	"errors"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/messages/apipb"
)

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
	msgtypes, err := checkMsgtypes(sub.Msgtypes)
	if err != nil {
		return err
	}
	subscriber, err := s.up.Subscribe(uint16(sub.AppCode), msgtypes, int(sub.MaxInFlight))
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
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
		select {
		case <-done:
			// The request side ended (a half-close, an error): what was
			// taken could not be acknowledged any more; it goes to
			// another subscriber when the subscription closes.
			msgs = nil
		default:
		}
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

// MaxSubscribeMsgtypes bounds the distinct msgtypes of one subscribe (a
// subscription repeats them to every gate of the cluster every 2 s); an
// app-server that wants more subscribes to all of them (none listed).
const MaxSubscribeMsgtypes = 1024

// checkMsgtypes checks a subscribe's msgtypes and returns them without
// duplicates.
func checkMsgtypes(in []uint32) ([]uint32, error) {
	seen := make(map[uint32]bool, min(len(in), MaxSubscribeMsgtypes+1))
	out := make([]uint32, 0, min(len(in), MaxSubscribeMsgtypes))
	for i, m := range in {
		if m > 0xFFFF {
			return nil, status.Errorf(codes.InvalidArgument, "msgtypes[%d] %d: must be in [0, 65535]", i, m)
		}
		if seen[m] {
			continue
		}
		if len(out) == MaxSubscribeMsgtypes {
			return nil, status.Errorf(codes.InvalidArgument, "msgtypes: more than %d distinct; subscribe to all of the app's (an empty list) and ignore the rest", MaxSubscribeMsgtypes)
		}
		seen[m] = true
		out = append(out, m)
	}
	return out, nil
}
