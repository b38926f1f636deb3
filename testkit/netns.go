package testkit

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// Network is a pair of private networks on this machine for tests that
// cut nodes off from each other (partitions), made of network namespaces,
// veth pairs and two bridges in the root namespace:
//
//   - the cluster network (10.213.C.0/24): the members' remoting, Consul,
//     PostgreSQL. The root namespace is ClusterHost (10.213.C.254) on it,
//     where a test runs Consul and PostgreSQL.
//   - the public network (10.213.P.0/24): devices and app-servers to the
//     gates, APIs and HTTP endpoints. The test process, in the root
//     namespace, is 10.213.P.254 on it.
//
// Each node has a namespace of its own with one leg on each network.
// Cut(name) takes its cluster leg down: it reaches neither the other
// nodes nor Consul nor PostgreSQL (packets are dropped, connections hang),
// while devices still reach its gate; Heal brings it back. Everything is
// removed at the end of the test. It needs root and iproute2; in CI
// (CI=true) a missing one fails the test, elsewhere the test is skipped.
type Network struct {
	t    testing.TB
	id   string // in every name this network makes
	c, p int    // third octets of the cluster and public networks

	mu    sync.Mutex
	hosts map[string]int // node name -> host number (1..200)
}

// NewNetwork makes the two bridges and their addresses in the root
// namespace.
func NewNetwork(t testing.TB) *Network {
	t.Helper()
	if os.Geteuid() != 0 {
		needs(t, "root (network namespaces)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		needs(t, "iproute2's ip")
	}
	var b [2]byte
	_, _ = rand.Read(b[:])
	nw := &Network{t: t, id: hex.EncodeToString(b[:]), hosts: map[string]int{}}
	addrs, _ := exec.Command("ip", "-4", "addr").Output()
	for {
		nw.c = 2 * mrand.IntN(127)
		nw.p = nw.c + 1
		if !strings.Contains(string(addrs), fmt.Sprintf("10.213.%d.", nw.c)) &&
			!strings.Contains(string(addrs), fmt.Sprintf("10.213.%d.", nw.p)) {
			break
		}
	}
	t.Cleanup(nw.remove)
	for i, br := range []struct {
		name string
		net  int
	}{{nw.bridge("c"), nw.c}, {nw.bridge("p"), nw.p}} {
		// A bridge takes the lowest MAC of its ports unless it has its
		// own: a node added later would change it under the others'
		// ARP caches, and they would lose the root namespace (Consul,
		// PostgreSQL) for seconds.
		mac := fmt.Sprintf("02:cf:%02x:%02x:%02x:%02x", b[0], b[1], nw.c, i)
		nw.ip("link", "add", br.name, "address", mac, "type", "bridge")
		nw.ip("addr", "add", fmt.Sprintf("10.213.%d.254/24", br.net), "dev", br.name)
		nw.ip("link", "set", br.name, "up")
	}
	return nw
}

func needs(t testing.TB, what string) {
	t.Helper()
	if inCI() {
		t.Fatalf("testkit: a partition test needs %s", what)
	}
	t.Skipf("testkit: a partition test needs %s (CI would fail here)", what)
}

func (nw *Network) bridge(kind string) string { return "cf" + nw.id + kind }

// Namespace is the network namespace of node name.
func (nw *Network) Namespace(name string) string { return "cf" + nw.id + "-" + name }

func (nw *Network) leg(n int, kind string) string { return fmt.Sprintf("cf%s%d%s", nw.id, n, kind) }

// ClusterHost is the root namespace's address on the cluster network.
func (nw *Network) ClusterHost() string { return fmt.Sprintf("10.213.%d.254", nw.c) }

// AddHost makes node name's namespace with its two legs and returns its
// addresses on the cluster and the public network.
func (nw *Network) AddHost(name string) (clusterIP, publicIP string) {
	nw.t.Helper()
	nw.mu.Lock()
	n, ok := nw.hosts[name]
	if !ok {
		n = len(nw.hosts) + 1
		nw.hosts[name] = n
	}
	nw.mu.Unlock()
	clusterIP, publicIP = fmt.Sprintf("10.213.%d.%d", nw.c, n), fmt.Sprintf("10.213.%d.%d", nw.p, n)
	if ok {
		return clusterIP, publicIP
	}
	ns := nw.Namespace(name)
	nw.ip("netns", "add", ns)
	nw.ip("-n", ns, "link", "set", "lo", "up")
	for _, l := range []struct {
		kind, ip string
	}{{"c", clusterIP}, {"p", publicIP}} {
		outer, inner := nw.leg(n, l.kind), "eth"+l.kind
		nw.ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
		nw.ip("link", "set", outer, "master", nw.bridge(l.kind))
		nw.ip("link", "set", outer, "up")
		nw.ip("-n", ns, "addr", "add", l.ip+"/24", "dev", inner)
		nw.ip("-n", ns, "link", "set", inner, "up")
	}
	return clusterIP, publicIP
}

// Cut takes node name's cluster leg down: from then on it reaches no
// other node, no Consul and no PostgreSQL, and none reaches it (packets
// are dropped; nothing is refused). Its public leg stays up.
func (nw *Network) Cut(name string) {
	nw.t.Helper()
	nw.ip("link", "set", nw.leg(nw.host(name), "c"), "down")
}

// Heal brings node name's cluster leg back up.
func (nw *Network) Heal(name string) {
	nw.t.Helper()
	nw.ip("link", "set", nw.leg(nw.host(name), "c"), "up")
}

func (nw *Network) host(name string) int {
	nw.t.Helper()
	nw.mu.Lock()
	defer nw.mu.Unlock()
	n, ok := nw.hosts[name]
	if !ok {
		nw.t.Fatalf("testkit: no host %q on the network", name)
	}
	return n
}

// Command returns a command that runs bin with args in node name's
// namespace.
func (nw *Network) Command(name, bin string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", nw.Namespace(name), bin}, args...)...)
}

func (nw *Network) ip(args ...string) {
	nw.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		nw.t.Fatalf("testkit: ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// remove deletes the namespaces (their veths go with them) and bridges.
func (nw *Network) remove() {
	nw.mu.Lock()
	names := make([]string, 0, len(nw.hosts))
	for name := range nw.hosts {
		names = append(names, name)
	}
	nw.mu.Unlock()
	for _, name := range names {
		_ = exec.Command("ip", "netns", "del", nw.Namespace(name)).Run()
	}
	for _, kind := range []string{"c", "p"} {
		_ = exec.Command("ip", "link", "del", nw.bridge(kind)).Run()
	}
}
