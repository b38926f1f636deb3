package api

import (
	"context"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/courier-im/courier/cluster/upstream"
	"github.com/courier-im/courier/messages/apipb"
)

// halfClosingStream is an Upstream stream whose app-server subscribes,
// takes one delivery, and half-closes while it is being sent.
type halfClosingStream struct {
	grpc.ServerStream
	ctx    context.Context
	mu     sync.Mutex
	sent   []*apipb.UpstreamDelivery
	closed chan struct{}
	once   sync.Once
	first  bool
}

func (s *halfClosingStream) Context() context.Context { return s.ctx }

func (s *halfClosingStream) Recv() (*apipb.UpstreamRequest, error) {
	if !s.first {
		s.first = true
		return &apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Subscribe{Subscribe: &apipb.Subscribe{AppCode: 1, MaxInFlight: 100}}}, nil
	}
	<-s.closed
	return nil, io.EOF
}

func (s *halfClosingStream) Send(d *apipb.UpstreamDelivery) error {
	s.mu.Lock()
	s.sent = append(s.sent, d)
	s.mu.Unlock()
	s.once.Do(func() {
		close(s.closed)                    // the half-close arrives meanwhile
		time.Sleep(100 * time.Millisecond) // and is read
	})
	return nil
}

// TestUpstreamHalfCloseStopsTheDeliveries: once the app-server has
// closed its request side it can acknowledge nothing: the node sends
// nothing more (what waited goes to another subscriber) and ends the
// call with OK. It used to send whatever waited for the stream.
func TestUpstreamHalfCloseStopsTheDeliveries(t *testing.T) {
	cfg := upstream.DefaultConfig()
	cfg.MaxBatch = 1
	up := upstream.New(cfg, nil)
	defer up.Close()
	hub := upstream.NewLocalHub(up)
	defer hub.Close()
	s := New(Deps{Keys: Keys{testKey: 1}, Upstream: hub})
	first, err := up.Subscribe(1, nil, 1) // holds one, the rest queue
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := up.Publish(&apipb.UpstreamMessage{AppCode: 1, Msgtype: 1, MsgId: strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	st := &halfClosingStream{ctx: context.WithValue(context.Background(), scopeKey{}, scope{app: 1}), closed: make(chan struct{})}
	if err := s.Upstream(st); err != nil {
		t.Fatalf("the call ended with %v, want OK", err)
	}
	if len(st.sent) != 1 {
		t.Fatalf("%d deliveries sent, want 1: after the half-close nothing more", len(st.sent))
	}
	// What the streams held goes to the next subscriber.
	first.Close()
	next, err := up.Subscribe(1, nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	done := make(chan struct{})
	timer := time.AfterFunc(5*time.Second, func() { close(done) })
	defer timer.Stop()
	got := map[string]bool{}
	for len(got) < 10 {
		msgs := next.Next(done)
		if msgs == nil {
			t.Fatalf("the next subscriber got %d of the 10 messages", len(got))
		}
		for _, m := range msgs {
			got[m.MsgId] = true
		}
	}
}
