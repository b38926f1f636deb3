package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/courier-im/courier/testkit"
)

// TestAPIFlood: against a node with api.max-calls-in-flight 4 (all of it
// one app's share), ten unfinished calls: four are held, six refused
// before their request.
func TestAPIFlood(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--api.max-calls-in-flight", "4", "--api.max-app-calls-in-flight", "4"}})
	cmd := apiFloodCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--api", n.APIAddr, "--api-key", testkit.App1Key, "--calls", "10", "--size", "100000", "--hold", "3s"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if want := "calls 10, answered before their request ended 6, of which refused (RESOURCE_EXHAUSTED) 6, so held 4"; !strings.Contains(out.String(), want) {
		t.Fatalf("api-flood printed %q, want %q", out.String(), want)
	}
}
