package testkit

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/courier-im/courier/cluster/mtls"
)

// ClusterOptions tunes StartCluster.
type ClusterOptions struct {
	// Roles has one entry per node to start: its roles ("gate,api"; ""
	// for all). Nodes are named node1, node2, ...
	Roles []string
	// Args are extra flags for every node.
	Args []string
	// TLS makes the members talk over mutual TLS, with a CA and node
	// certificates the testkit makes.
	TLS bool
	// Network, if set, puts every node in a namespace of its own on it
	// and Consul on its cluster network (Network.ClusterHost), so that a
	// test can cut nodes off (Network.Cut). It implies TLS.
	Network *Network
	// Store is "postgres" (every node on one new database of the test
	// PostgreSQL: the cluster's store) or "pebble" (each node its own);
	// default: TestStore().
	Store string
	// Postgres, if set, is the server the cluster's database is made on
	// (a test's own, which it may stop and restart) instead of the shared
	// one; it implies Store "postgres".
	Postgres *Postgres
}

// Cluster is a Courier cluster for tests, in the manner of hashicorp
// raft's MakeCluster: a real Consul agent, a real PostgreSQL (Store
// "postgres") and N node processes on loopback, one cluster member per process (the actor library's remoting
// races with other gRPC in a process, FACTS). Every process is killed at
// the end of the test, whatever happened.
type Cluster struct {
	t      testing.TB
	opts   ClusterOptions
	Consul *Consul
	// Certs is where the TLS material lives (TLS only): ca.pem and, per
	// node, NAME.pem and NAME-key.pem.
	Certs string
	ca    mtls.PEM
	// DSN is the cluster's PostgreSQL database (Store "postgres").
	DSN string

	mu    sync.Mutex
	Nodes []*Node
}

// StartCluster starts Consul and the nodes, and returns once every node
// sees every other one live.
func StartCluster(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	if opts.Store == "" {
		opts.Store = TestStore()
	}
	if opts.Postgres != nil {
		opts.Store = "postgres"
	}
	if opts.Network != nil {
		opts.TLS = true
	}
	c := &Cluster{t: t, opts: opts}
	if opts.Network != nil {
		c.Consul = StartConsulOn(t, opts.Network.ClusterHost())
	} else {
		c.Consul = StartConsul(t)
	}
	if opts.Store == "postgres" {
		if opts.Postgres != nil {
			c.DSN = opts.Postgres.CreateDB(t)
		} else {
			c.DSN = PostgresDB(t)
		}
	}
	if opts.TLS {
		c.Certs = t.TempDir()
		var err error
		if c.ca, err = mtls.NewCA("testkit cluster CA", 24*time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.Certs, "ca.pem"), c.ca.Cert, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, roles := range opts.Roles {
		c.AddNode(roles)
	}
	c.WaitConverged()
	return c
}

// AddNode starts one more node with roles ("" for all) and extra flags;
// it joins the running cluster. It does not wait for the others to see
// it (WaitConverged does).
func (c *Cluster) AddNode(roles string, args ...string) *Node {
	c.t.Helper()
	c.mu.Lock()
	name := fmt.Sprintf("node%d", len(c.Nodes)+1)
	c.mu.Unlock()
	all := []string{
		"--cluster.provider", "consul",
		"--cluster.consul", c.Consul.Addr,
		"--cluster.ttl", "1s",
		"--cluster.load-interval", "200ms",
	}
	var hosts []string
	if nw := c.opts.Network; nw != nil {
		clusterIP, _ := nw.AddHost(name)
		hosts = append(hosts, clusterIP)
	}
	if c.opts.TLS {
		all = append(all, c.NodeCertArgs(name, hosts...)...)
	}
	if c.opts.Store != "postgres" {
		all = append(all, "--cluster.local-store") // a test of what needs no shared store
	}
	all = append(all, c.opts.Args...)
	all = append(all, args...)
	n := StartNode(c.t, NodeOptions{Name: name, Roles: roles, Args: all, PostgresDSN: c.DSN, Network: c.opts.Network})
	c.mu.Lock()
	c.Nodes = append(c.Nodes, n)
	c.mu.Unlock()
	return n
}

// NodeCertArgs makes a certificate of the cluster's CA for node name
// (valid for 127.0.0.1, localhost and hosts) and returns the flags that
// use it.
func (c *Cluster) NodeCertArgs(name string, hosts ...string) []string {
	c.t.Helper()
	p, err := mtls.IssueNode(c.ca, name, append([]string{"127.0.0.1", "localhost"}, hosts...), 24*time.Hour)
	if err != nil {
		c.t.Fatal(err)
	}
	cert, key := filepath.Join(c.Certs, name+".pem"), filepath.Join(c.Certs, name+"-key.pem")
	if err := p.Write(cert, key); err != nil {
		c.t.Fatal(err)
	}
	return []string{"--cluster.tls-ca", filepath.Join(c.Certs, "ca.pem"), "--cluster.tls-cert", cert, "--cluster.tls-key", key}
}

// Running returns the nodes whose process runs.
func (c *Cluster) Running() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Node
	for _, n := range c.Nodes {
		if n.Running() {
			out = append(out, n)
		}
	}
	return out
}

// WaitConverged waits until every running node sees exactly the running
// nodes as the cluster's live members, by role.
func (c *Cluster) WaitConverged() {
	c.t.Helper()
	running := c.Running()
	want := map[string]int{}
	for _, n := range running {
		for _, r := range strings.Split(n.Roles(), ",") {
			want[r]++
		}
	}
	Eventually(c.t, 60*time.Second, func() bool {
		for _, n := range running {
			for _, role := range []string{"gate", "actors", "api"} {
				v, ok := n.Metric(fmt.Sprintf(`courier_cluster_members{role=%q}`, role))
				if !ok || int(v) != want[role] {
					return false
				}
			}
		}
		return true
	}, "the %d running nodes to see each other (want %v)", len(running), want)
}

// Node returns the node named name.
func (c *Cluster) Node(name string) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.Nodes {
		if n.Name() == name {
			return n
		}
	}
	c.t.Fatalf("testkit: no node %q", name)
	return nil
}

// Metric returns the value of one series of the node's /metrics, named
// exactly as exposed (`courier_cluster_members{role="gate"}`), and whether
// it was there.
func (n *Node) Metric(series string) (float64, bool) {
	if n.HTTPAddr == "" {
		return 0, false
	}
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + n.HTTPAddr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}
