package main

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	"github.com/courier-im/courier/messages/apipb"
)

// fakeAPI is a Courier API whose answers the test gives: what a real node
// says only while another node of its cluster fails (a partial answer, a
// drain half begun, a list that cannot be had) is hard to bring about on
// time, and these tests are about what courierctl makes of the answer.
type fakeAPI struct {
	apipb.UnimplementedCourierServer
	stats   func() (*apipb.StatsResponse, error)
	drain   func(*apipb.DrainRequest) (*apipb.DrainResponse, error)
	members func(call int) (*apipb.MembersResponse, error) // call counts from 1

	drains, memberCalls atomic.Int32
}

func (f *fakeAPI) Stats(context.Context, *apipb.StatsRequest) (*apipb.StatsResponse, error) {
	return f.stats()
}

func (f *fakeAPI) Drain(_ context.Context, r *apipb.DrainRequest) (*apipb.DrainResponse, error) {
	f.drains.Add(1)
	return f.drain(r)
}

func (f *fakeAPI) Members(context.Context, *apipb.MembersRequest) (*apipb.MembersResponse, error) {
	return f.members(int(f.memberCalls.Add(1)))
}

// startFakeAPI serves f on a free loopback port until the test ends and
// returns its address.
func startFakeAPI(t testing.TB, f *fakeAPI) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	apipb.RegisterCourierServer(srv, f)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return l.Addr().String()
}
