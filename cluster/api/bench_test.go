package api

import (
	"context"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
)

// instantReq answers every push at once, as an actor that accepted it.
type instantReq struct{}

func (instantReq) Request(_ context.Context, env *actorpb.Envelope) (*actorpb.Reply, error) {
	return &actorpb.Reply{ReqId: env.ReqId, Body: &actorpb.Reply_Push{Push: &actorpb.PushReply{MsgId: "0123456789abcdef0123", Seq: 7, Online: true}}}, nil
}

func (r instantReq) RequestMany(ctx context.Context, envs []*actorpb.Envelope) ([]*actorpb.Reply, []error) {
	reps, errs := make([]*actorpb.Reply, len(envs)), make([]error, len(envs))
	for i, e := range envs {
		reps[i], errs[i] = r.Request(ctx, e)
	}
	return reps, errs
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPushManyGRPC is the API's cost per push over real gRPC on
// loopback, client and server in this process, with actors that answer
// at once: what a call costs besides the actors. cpu-µs/msg is the
// process's CPU time (both sides) per push.
func BenchmarkPushManyGRPC(b *testing.B) {
	for _, batch := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			s := New(Deps{Keys: Keys{testKey: 1}, Req: instantReq{}, Limits: DefaultLimits()})
			srv := grpc.NewServer(s.ServerOptions()...)
			apipb.RegisterCourierServer(srv, s)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go func() { _ = srv.Serve(ln) }()
			defer srv.Stop()
			conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			client := apipb.NewCourierClient(conn)
			ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+testKey)
			req := &apipb.PushManyRequest{}
			for i := range batch {
				req.Items = append(req.Items, &apipb.PushRequest{AppCode: 1, Uid: fmt.Sprintf("user-%06d", i), Msgtype: 1, Payload: make([]byte, 128)})
			}
			call := func() {
				resp, err := client.PushMany(ctx, req)
				if err != nil || len(resp.Results) != batch {
					b.Error(err)
				}
			}
			call()
			const inflight = 8
			calls := b.N/batch + 1
			b.ReportAllocs()
			b.ResetTimer()
			cpu := cpuTime()
			var wg sync.WaitGroup
			for w := range inflight {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < calls; i += inflight {
						call()
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(cpuTime()-cpu)/1e3/float64(calls*batch), "cpu-µs/msg")
		})
	}
}
