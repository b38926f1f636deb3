package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/messages/apipb"
)

// TestPartialDrainSaysWhatIsDraining: a Drain that fails after some
// instances of the node began (the node answers UNAVAILABLE for the first
// that did not, and gRPC drops the rest of its answer) is reported with
// the instances draining now and what failed, so that the operator knows
// a node is on its way out; when none is, that nothing was drained.
func TestPartialDrainSaysWhatIsDraining(t *testing.T) {
	const failure = "node node3 (inst-b) did not begin draining: remoting: timeout; retry"
	tests := []struct {
		name     string
		draining bool // whether inst-a shows draining after the failed call
		err      []string
	}{
		{"one instance began", true, []string{
			"courierctl: drain of node3 only partly begun: node3 (inst-a) draining now, and will exit; but rpc error: code = Unavailable desc = " + failure,
			"drain node3 again for the rest"}},
		{"none began", false, []string{failure, "no instance of node3 is draining: nothing was drained"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := startFakeAPI(t, &fakeAPI{
				drain: func(*apipb.DrainRequest) (*apipb.DrainResponse, error) {
					return nil, status.Error(codes.Unavailable, failure)
				},
				members: func(int) (*apipb.MembersResponse, error) {
					return &apipb.MembersResponse{AnsweredBy: "inst-1", Members: []*apipb.Member{
						{Id: "inst-1", Name: "node1", Live: true},
						{Id: "inst-a", Name: "node3", Live: true, Draining: tt.draining},
						{Id: "inst-b", Name: "node3", Live: true},
					}}, nil
				},
			})
			var out, errw bytes.Buffer
			code := run([]string{"drain", "node3", "--api", addr, "--key", "k"}, nil, &out, &errw)
			if code != exitRetry {
				t.Fatalf("exit %d, want %d (UNAVAILABLE: retry)\nstderr: %s", code, exitRetry, errw.String())
			}
			for _, want := range tt.err {
				if !strings.Contains(errw.String(), want) {
					t.Fatalf("no %q in stderr:\n%s", want, errw.String())
				}
			}
		})
	}
}

// TestDrainWaitNeedsTheMembersFirst: drain --wait lists the members before
// it drains, to know whether it asks through the node it drains. A list
// it could not get was ignored, and the wait that followed could not tell
// the node leaving from the node asked no longer answering. Now a call
// that may pass later is made again within --wait; one that does not
// get through in that time, or a refusal, fails the command before
// anything is drained.
func TestDrainWaitNeedsTheMembersFirst(t *testing.T) {
	node3 := &apipb.Member{Id: "inst-3", Name: "node3", Live: true}
	cluster := func(ms ...*apipb.Member) *apipb.MembersResponse {
		return &apipb.MembersResponse{AnsweredBy: "inst-1", Members: append([]*apipb.Member{{Id: "inst-1", Name: "node1", Live: true}}, ms...)}
	}
	unavailable := status.Error(codes.Unavailable, "this node has not joined the cluster yet: retry")
	tests := []struct {
		name    string
		members func(call int) (*apipb.MembersResponse, error)
		code    int
		drains  int32
		out     string // in stdout
		err     string // in stderr
	}{
		{"never answers", func(int) (*apipb.MembersResponse, error) { return nil, unavailable },
			exitRetry, 0, "", "nothing drained: drain --wait lists the members first"},
		{"refused", func(int) (*apipb.MembersResponse, error) {
			return nil, status.Error(codes.PermissionDenied, "Members needs an operator API key")
		}, 1, 0, "", "nothing drained"},
		// The first call fails, the second lists node3, the next ones
		// no longer do: it left.
		{"answers on a later try", func(call int) (*apipb.MembersResponse, error) {
			switch call {
			case 1:
				return nil, unavailable
			case 2:
				return cluster(node3), nil
			}
			return cluster(), nil
		}, 0, 1, "drained: the node has left the cluster", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeAPI{
				members: tt.members,
				drain: func(*apipb.DrainRequest) (*apipb.DrainResponse, error) {
					return &apipb.DrainResponse{WindowMs: 100, Members: []*apipb.Member{node3}}, nil
				},
			}
			addr := startFakeAPI(t, f)
			start := time.Now()
			var out, errw bytes.Buffer
			code := run([]string{"drain", "node3", "--api", addr, "--key", "k", "--wait", "2s"}, nil, &out, &errw)
			if code != tt.code || f.drains.Load() != tt.drains || !strings.Contains(out.String(), tt.out) || !strings.Contains(errw.String(), tt.err) {
				t.Fatalf("exit %d (want %d), %d Drain calls (want %d)\nstdout: %s\nstderr: %s",
					code, tt.code, f.drains.Load(), tt.drains, out.String(), errw.String())
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("took %v with --wait 2s", took)
			}
		})
	}
}
