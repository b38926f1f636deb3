package main

import (
	"bytes"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/courier-im/courier/messages/apipb"
)

// TestStatsWithNodesMissingExitsRetry: counts without some nodes are
// printed, but the command exits 3 naming the nodes on standard error: a
// script reading exit 0 took a part of the cluster for the whole (exit 3:
// a later try may get every node's counts). A whole answer exits 0.
func TestStatsWithNodesMissingExitsRetry(t *testing.T) {
	counts := []*apipb.MsgtypeStats{{Msgtype: 3, Total: &apipb.Counters{Accepted: 7}, Window: &apipb.Counters{Accepted: 7}}}
	var missing atomic.Pointer[[]string] // read by the server's goroutine
	addr := startFakeAPI(t, &fakeAPI{stats: func() (*apipb.StatsResponse, error) {
		return &apipb.StatsResponse{AppCode: 1, WindowSeconds: 60, Msgtypes: counts, All: counts[0], NodesMissing: *missing.Load()}, nil
	}})
	tests := []struct {
		name    string
		missing []string
		json    bool
		code    int
		out     string // in stdout
		err     string // in stderr
	}{
		{"whole answer", nil, false, 0, "app 1, last 1m0s:", ""},
		{"nodes missing", []string{"node2", "node3"}, false, 3, "app 1, last 1m0s:",
			"courierctl: incomplete answer: node2, node3 did not answer in time; the counts leave them out"},
		{"nodes missing, json", []string{"node2"}, true, 3, `"nodesMissing": [`, "courierctl: incomplete answer: node2 did not answer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			missing.Store(&tt.missing)
			args := []string{"stats", "--api", addr, "--key", "k"}
			if tt.json {
				args = append(args, "--json")
			}
			var out, errw bytes.Buffer
			code := run(args, nil, &out, &errw)
			if code != tt.code || !strings.Contains(out.String(), tt.out) || !strings.Contains(errw.String(), tt.err) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tt.code, out.String(), errw.String())
			}
			// What was counted is printed all the same.
			if !tt.json && !strings.Contains(out.String(), "since the node started:") {
				t.Fatalf("no tables:\n%s", out.String())
			}
			if tt.code == 0 && errw.Len() != 0 {
				t.Fatalf("stderr on a whole answer: %s", errw.String())
			}
		})
	}
}
