package nodeproc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Credentials of a node started in development mode (cmd/courier --dev).
const (
	DevSecret = "courier-dev-secret-app-1"
	DevAPIKey = "courier-dev-api-key-0001"
)

// DefaultArgs are the flags every spawned node gets before the caller's:
// limits that protect a node from abusive devices would otherwise
// throttle the simulated ones.
var DefaultArgs = []string{
	"--dev",
	"--gate.addr", "127.0.0.1:0",
	"--api-addr", "127.0.0.1:0",
	"--http-addr", "127.0.0.1:0",
	"--pprof-addr", "127.0.0.1:0",
	"--gate.new-conns-per-ip", "0",
	"--gate.frames-per-second", "0",
	"--gate.c2c-per-second", "0",
	"--actors.logins-per-second", "0",
	"--gate.bytes-per-second", "0",
	"--log-level", "warn",
}

// Node is a running node process.
type Node struct {
	Gate, API, HTTP, Pprof string
	// Args are the node's flags (without the data directory and address
	// file, which are temporary).
	Args []string

	cmd     *exec.Cmd
	dir     string
	log     *os.File
	logPath string
	lastLog string // the log's tail, kept when the directory is removed
	exited  chan struct{}
}

// Start runs bin with DefaultArgs and extra, and waits (up to a minute)
// until it has written its addresses.
func Start(ctx context.Context, bin string, extra []string) (*Node, error) {
	dir, err := os.MkdirTemp("", "courier-bench-node-")
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "node.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	args := append(append([]string{}, DefaultArgs...), extra...)
	addrFile := filepath.Join(dir, "addrs.json")
	full := append([]string{"--data-dir", filepath.Join(dir, "data"), "--addr-file", addrFile}, args...)
	n := &Node{Args: args, cmd: exec.Command(bin, full...), dir: dir, log: logf, logPath: logf.Name(), exited: make(chan struct{})}
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := n.cmd.Start(); err != nil {
		logf.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("nodeproc: start %s: %w", bin, err)
	}
	go func() { _ = n.cmd.Wait(); close(n.exited) }()
	deadline := time.After(time.Minute)
	for {
		if b, err := os.ReadFile(addrFile); err == nil {
			var a struct{ Gate, API, HTTP, Pprof string }
			if json.Unmarshal(b, &a) == nil && a.Gate != "" {
				n.Gate, n.API, n.HTTP, n.Pprof = a.Gate, a.API, a.HTTP, a.Pprof
				return n, nil
			}
		}
		select {
		case <-n.exited:
			err := fmt.Errorf("nodeproc: the node exited at start (%v):\n%s", n.cmd.ProcessState, n.tail())
			n.cleanup()
			return nil, err
		case <-deadline:
			n.Stop()
			return nil, errors.New("nodeproc: the node did not start within a minute")
		case <-ctx.Done():
			n.Stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// PID is the node's process id.
func (n *Node) PID() int { return n.cmd.Process.Pid }

// Alive reports whether the process is still running.
func (n *Node) Alive() bool {
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

func (n *Node) tail() string {
	if n.dir == "" {
		return n.lastLog
	}
	b, _ := os.ReadFile(n.logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

// Log returns the last lines the node wrote.
func (n *Node) Log() string { return n.tail() }

// Stop ends the node (SIGTERM, then SIGKILL after 10 s) and removes its
// data directory. It is safe to call twice.
func (n *Node) Stop() {
	if n.Alive() {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.exited:
		case <-time.After(10 * time.Second):
			_ = n.cmd.Process.Kill()
			<-n.exited
		}
	}
	n.cleanup()
}

func (n *Node) cleanup() {
	if n.log != nil {
		n.log.Close()
		n.log = nil
	}
	if n.dir != "" {
		n.lastLog = n.tail()
		os.RemoveAll(n.dir)
		n.dir = ""
	}
}
