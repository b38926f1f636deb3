package chaos

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// node is one node of the cluster as make cluster describes it.
type node struct {
	Name    string `json:"name"`
	Roles   string `json:"roles"`
	Gate    string `json:"gate"`
	API     string `json:"api"`
	HTTP    string `json:"http"`
	Cluster string `json:"cluster"`
}

// cluster is what .cluster/ says about the cluster.
type cluster struct {
	dir    string
	Consul string `json:"consul"`
	Nodes  []node `json:"nodes"`
}

// readCluster reads dir/addrs.json and checks that every address is a
// loopback one.
func readCluster(dir string) (*cluster, error) {
	b, err := os.ReadFile(filepath.Join(dir, "addrs.json"))
	if err != nil {
		return nil, fmt.Errorf("chaos: %w (is make cluster running?)", err)
	}
	c := &cluster{dir: dir}
	if err := json.Unmarshal(b, c); err != nil {
		return nil, fmt.Errorf("chaos: %s: %w", filepath.Join(dir, "addrs.json"), err)
	}
	if len(c.Nodes) == 0 {
		return nil, fmt.Errorf("chaos: %s lists no node", filepath.Join(dir, "addrs.json"))
	}
	addrs := []string{c.Consul}
	for _, n := range c.Nodes {
		addrs = append(addrs, n.Gate, n.API, n.HTTP, n.Cluster)
	}
	for _, a := range addrs {
		if a == "" {
			continue
		}
		host, _, err := net.SplitHostPort(a)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("chaos: %q is not a loopback address: chaos runs only against a cluster on this machine's loopback", a)
		}
	}
	return c, nil
}

// node returns the node called name.
func (c *cluster) node(name string) (node, bool) {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return node{}, false
}

// pid returns the current process id of name (a node, or "consul"), from
// its supervisor's pid file.
func (c *cluster) pid(name string) (int, error) {
	b, err := os.ReadFile(filepath.Join(c.dir, name+".pid"))
	if err != nil {
		return 0, fmt.Errorf("chaos: the process id of %s: %w (make cluster writes it)", name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("chaos: %s.pid: %q is not a process id", name, b)
	}
	return pid, nil
}

// signal sends sig to name's current process.
func (c *cluster) signal(name string, sig syscall.Signal) (int, error) {
	pid, err := c.pid(name)
	if err != nil {
		return 0, err
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return pid, fmt.Errorf("chaos: %v to %s (pid %d): %w", sig, name, pid, err)
	}
	return pid, nil
}

// hold keeps name's supervisor from starting it again until release.
func (c *cluster) hold(name string) (release func(), err error) {
	p := filepath.Join(c.dir, name+".hold")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		return nil, fmt.Errorf("chaos: hold %s: %w", name, err)
	}
	return func() { _ = os.Remove(p) }, nil
}

// pgCtl is the cluster's pg_ctl script, or "" without PostgreSQL.
func (c *cluster) pgCtl() string {
	p := filepath.Join(c.dir, "pg_ctl")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}
