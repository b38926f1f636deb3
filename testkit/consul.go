package testkit

import (
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	consulOnce sync.Once
	consulBin  string
	consulErr  error
)

// inCI reports whether the tests run in CI, where a service a test needs
// and cannot get is a failure, never a skip.
func inCI() bool { return os.Getenv("CI") == "true" }

// ConsulBinary returns the path of the Consul agent (v1.13.9, built from
// the module proxy by scripts/consul.sh once per machine). If it cannot be
// built, the test fails in CI (CI=true) and is skipped elsewhere.
func ConsulBinary(t testing.TB) string {
	t.Helper()
	consulOnce.Do(func() {
		cmd := exec.Command(filepath.Join(moduleRoot(), "scripts", "consul.sh"))
		var stderr syncBuffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			consulErr = fmt.Errorf("scripts/consul.sh: %v\n%s", err, stderr.String())
			return
		}
		consulBin = strings.TrimSpace(string(out))
	})
	if consulErr != nil {
		if inCI() {
			t.Fatalf("testkit: no Consul agent: %v", consulErr)
		}
		t.Skipf("testkit: no Consul agent (CI would fail here): %v", consulErr)
	}
	return consulBin
}

// Consul is a real Consul agent for tests: one server that is its own
// leader, with its data in a directory of its own, on free loopback ports.
// Stop and Restart keep the data and the ports, for tests of a Consul
// outage.
type Consul struct {
	t    testing.TB
	bin  string
	dir  string
	host string // the address it listens on
	// Addr is the agent's HTTP address (host:port), what nodes are given
	// as --cluster.consul.
	Addr  string
	ports [4]int // http, serf lan, serf wan, server rpc

	mu     sync.Mutex
	cmd    *exec.Cmd
	logs   *syncBuffer
	exited chan struct{}
}

// StartConsul starts a Consul agent on 127.0.0.1 and waits until it has a
// leader and has registered itself. It is killed at the end of the test.
func StartConsul(t testing.TB) *Consul {
	t.Helper()
	return StartConsulOn(t, "127.0.0.1")
}

// StartConsulOn is StartConsul on another local address (a Network's
// ClusterHost).
func StartConsulOn(t testing.TB, host string) *Consul {
	t.Helper()
	c := &Consul{t: t, bin: ConsulBinary(t), dir: consulDir(t), host: host}
	t.Cleanup(c.kill)
	// The ports are free when drawn, but another test process may bind
	// one before the agent does (packages run in parallel): an agent that
	// exits at start is started again on other ports.
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(len(c.ports))
		if err != nil {
			t.Fatalf("testkit: ports for Consul: %v", err)
		}
		copy(c.ports[:], ports)
		c.Addr = net.JoinHostPort(host, strconv.Itoa(c.ports[0]))
		err = c.tryStart()
		if err == nil {
			return c
		}
		if attempt == 3 || !errors.Is(err, errExitedAtStart) {
			t.Fatal(err)
		}
		t.Logf("%v; starting it again on other ports", err)
		_ = os.RemoveAll(filepath.Join(c.dir, "data"))
	}
}

// consulDir is where an agent keeps its data: in memory (/dev/shm) where
// the machine has it. The agent commits each check update through Raft,
// an fsync each; on a 2-core VM whose disk the other packages' tests
// (PostgreSQL, Pebble) keep busy, those fsyncs took longer than half a
// node's TTL, and fault tests failed because the test's Consul did not
// answer ("its servers do not answer"), not because of the code under
// test. tmpfs keeps the data across an agent's restart (the tests of a
// Consul outage restart it), which -dev mode would not.
func consulDir(t testing.TB) string {
	const shm = "/dev/shm"
	if fi, err := os.Stat(shm); err != nil || !fi.IsDir() {
		return t.TempDir()
	}
	// A test process killed (a timeout) leaves its dirs: the next one
	// removes those whose process is gone.
	sweepTempDirs(shm, "courier-consul-", processAlive)
	dir, err := os.MkdirTemp(shm, "courier-consul-"+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// errExitedAtStart: the agent exited before it was ready.
var errExitedAtStart = errors.New("testkit: Consul exited at start")

// freePorts finds n distinct free TCP ports on 127.0.0.1, below the
// kernel's ephemeral range (32768 and up here): a service restarted on
// its old ports (Consul, PostgreSQL) must not find one taken by an
// outgoing connection meanwhile. They are free when it returns; a
// process that binds them later may race another.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, fmt.Errorf("no %d free ports in [%d, %d)", n, lowPortMin, lowPortMax)
		}
		p := lowPortMin + mrand.IntN(lowPortMax-lowPortMin)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		// Free for UDP too (Consul's Serf ports take both).
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			l.Close()
			continue
		}
		u.Close()
		ls = append(ls, l)
		ports = append(ports, p)
	}
	return ports, nil
}

// The range freePorts draws from: below the ephemeral range, above the
// ports services usually have.
const lowPortMin, lowPortMax = 20000, 32000

func (c *Consul) start() {
	c.t.Helper()
	if err := c.tryStart(); err != nil {
		c.t.Fatal(err)
	}
}

// tryStart starts the agent on c.ports and waits for it to be ready.
func (c *Consul) tryStart() error {
	t := c.t
	t.Helper()
	p := func(i int) string { return strconv.Itoa(c.ports[i]) }
	cmd := exec.Command(c.bin, "agent",
		"-server", "-bootstrap-expect", "1",
		"-data-dir", filepath.Join(c.dir, "data"),
		"-node", "testkit",
		"-bind", c.host, "-client", c.host,
		"-http-port", p(0), "-serf-lan-port", p(1), "-serf-wan-port", p(2), "-server-port", p(3),
		"-dns-port", "-1", "-grpc-port", "-1",
		// Raft's fastest timers (elections in about a second), check
		// output synced at once, no calls home.
		"-hcl", "performance { raft_multiplier = 1 }",
		"-hcl", `check_update_interval = "0s"`,
		"-hcl", "disable_update_check = true",
	)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = childProcAttr()
	if err := cmd.Start(); err != nil {
		if inCI() {
			t.Fatalf("testkit: start Consul: %v", err)
		}
		t.Skipf("testkit: start Consul (CI would fail here): %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	c.mu.Lock()
	c.cmd, c.logs, c.exited = cmd, logs, exited
	c.mu.Unlock()

	deadline := time.Now().Add(60 * time.Second)
	for !c.ready() {
		select {
		case <-exited:
			return fmt.Errorf("%w (%v):\n%s", errExitedAtStart, cmd.ProcessState, tail([]byte(logs.String())))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testkit: Consul had no leader within 60s:\n%s", logs.String())
		}
	}
	return nil
}

// ready reports whether the agent has a leader and its own node is in
// the catalog (so that registrations succeed).
func (c *Consul) ready() bool {
	var leader string
	if getJSON("http://"+c.Addr+"/v1/status/leader", &leader) != nil || leader == "" {
		return false
	}
	var nodes []struct{ Node string }
	return getJSON("http://"+c.Addr+"/v1/catalog/nodes", &nodes) == nil && len(nodes) > 0
}

func getJSON(url string, v any) error {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// Stop kills the agent (as a crash would) and waits for it to exit. Its
// data stays for Restart.
func (c *Consul) Stop() {
	c.t.Helper()
	c.kill()
}

// Restart starts the stopped agent again on its ports and its data.
func (c *Consul) Restart() {
	c.t.Helper()
	c.start()
}

func (c *Consul) kill() {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// Logs returns what the agent has written so far (in its current run).
func (c *Consul) Logs() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.logs == nil {
		return ""
	}
	return c.logs.String()
}
