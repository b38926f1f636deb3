package testkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a throwaway PostgreSQL server for tests: Debian's package
// (installed with apt-get when missing), a new cluster in a temp dir, on
// a free port of 127.0.0.1, run as the postgres user when the tests run
// as root (PostgreSQL refuses root). It trusts every local connection of
// user "courier". Durability is not what these tests measure: it runs
// with fsync off (its data survives a crash of courier or of itself, not
// of the machine).
type Postgres struct {
	Port int
	host string // the address it listens on
	dir  string
	bin  string
	cred *syscall.Credential

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

var (
	sharedPG    *Postgres
	sharedPGErr error
	sharedOnce  sync.Once
	dbCounter   atomic.Int64
)

// PostgresDB returns the DSN of a new empty database on the test
// process's shared PostgreSQL server, started at first use (and stopped
// by Main). The database is dropped at the end of the test. Without
// PostgreSQL the test is skipped, or fails when CI=true.
func PostgresDB(t testing.TB) string {
	t.Helper()
	sharedOnce.Do(func() { sharedPG, sharedPGErr = startPostgres() })
	if sharedPGErr != nil {
		unavailablePG(t, sharedPGErr)
	}
	return sharedPG.CreateDB(t)
}

// StartPostgres starts a PostgreSQL server of the test's own, stopped at
// its end: for tests that stop or restart the server.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	return StartPostgresOn(t, "127.0.0.1")
}

// StartPostgresOn is StartPostgres listening on another local address (a
// Network's ClusterHost), trusting connections from its /16.
func StartPostgresOn(t testing.TB, host string) *Postgres {
	t.Helper()
	p, err := startPostgresOn(host)
	if err != nil {
		unavailablePG(t, err)
	}
	t.Cleanup(p.Close)
	return p
}

func unavailablePG(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("testkit: PostgreSQL is required when CI=true: %v", err)
	}
	t.Skipf("testkit: no PostgreSQL (%v); CI=true makes this a failure", err)
}

// Main runs the tests of a package that uses PostgreSQL and stops the
// shared server afterwards: func TestMain(m *testing.M) { os.Exit(testkit.Main(m)) }.
func Main(m *testing.M) int {
	code := m.Run()
	if sharedPG != nil {
		sharedPG.Close()
	}
	return code
}

// DSN returns the connection string of database db.
func (p *Postgres) DSN(db string) string {
	return fmt.Sprintf("postgres://courier@%s/%s?sslmode=disable", net.JoinHostPort(p.host, strconv.Itoa(p.Port)), db)
}

// CreateDB creates a new empty database, dropped at the end of the test
// (after the nodes started later in the test are stopped), and returns
// its DSN.
func (p *Postgres) CreateDB(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbCounter.Add(1))
	if err := p.admin(fmt.Sprintf("CREATE DATABASE %s", name)); err != nil {
		t.Fatalf("testkit: create database: %v", err)
	}
	t.Cleanup(func() {
		// WITH (FORCE) ends sessions a test left open.
		_ = p.admin(fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name))
	})
	return p.DSN(name)
}

// Exec runs sql on database dsn (for tests that look at or change the
// database behind the store's back).
func Exec(t testing.TB, dsn, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("testkit: connect: %v", err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("testkit: %s: %v", sql, err)
	}
}

func (p *Postgres) admin(sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, p.DSN("postgres"))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, sql)
	return err
}

// postgresBin finds the newest installed server, installing Debian's
// package if there is none.
func postgresBin() (string, error) {
	find := func() string {
		bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
		sort.Slice(bins, func(i, j int) bool {
			vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(bins[i]))))
			vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(bins[j]))))
			return vi < vj
		})
		if len(bins) == 0 {
			return ""
		}
		return filepath.Dir(bins[len(bins)-1])
	}
	if dir := find(); dir != "" {
		return dir, nil
	}
	installMu.Lock()
	defer installMu.Unlock()
	if dir := find(); dir != "" {
		return dir, nil
	}
	if os.Geteuid() != 0 {
		return "", errors.New("not installed (apt-get install -y postgresql) and not root to install it")
	}
	install := func() ([]byte, error) {
		// Test binaries of several packages may install at once: the
		// second waits for dpkg's lock instead of failing on it.
		cmd := exec.Command("apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq", "postgresql")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	if _, err := install(); err != nil {
		if out, err := exec.Command("apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-qq").CombinedOutput(); err != nil {
			return "", fmt.Errorf("apt-get update: %v: %s", err, out)
		}
		if out, err := install(); err != nil {
			return "", fmt.Errorf("apt-get install postgresql: %v: %s", err, out)
		}
	}
	if dir := find(); dir != "" {
		return dir, nil
	}
	return "", errors.New("apt-get installed postgresql but no server binary was found")
}

var installMu sync.Mutex

func startPostgres() (*Postgres, error) { return startPostgresOn("127.0.0.1") }

func startPostgresOn(host string) (*Postgres, error) {
	bin, err := postgresBin()
	if err != nil {
		return nil, err
	}
	dir, err := processTempDir("courier-pg-")
	if err != nil {
		return nil, err
	}
	p := &Postgres{dir: dir, bin: bin, host: host}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("the postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-A", "trust", "-U", "courier", "--no-sync", "-E", "UTF8", "--no-locale")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsLoopback() {
		hba, err := os.OpenFile(filepath.Join(dir, "data", "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
		if err == nil {
			_, err = fmt.Fprintf(hba, "host all courier %s/16 trust\n", ip.Mask(net.CIDRMask(16, 32)))
			hba.Close()
		}
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pg_hba.conf: %w", err)
		}
	}
	for attempt := 0; ; attempt++ {
		if err = p.Start(); err == nil || attempt == 2 {
			break
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return p, nil
}

// Start starts the server (again) on a free port, or on its old port if
// it had one, and waits until it accepts connections.
func (p *Postgres) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return errors.New("testkit: postgres is running")
	}
	if p.Port == 0 {
		// Below the ephemeral range: a restart finds the port free again.
		ports, err := freePorts(1)
		if err != nil {
			return err
		}
		p.Port = ports[0]
	}
	logf, err := os.OpenFile(filepath.Join(p.dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(p.bin, "postgres"), "-D", filepath.Join(p.dir, "data"),
		"-p", strconv.Itoa(p.Port), "-k", p.dir, "-c", "listen_addresses="+p.host,
		"-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=300",
		"-c", "shared_buffers=64MB")
	cmd.Stdout, cmd.Stderr = logf, logf
	// SIGQUIT (immediate shutdown) if the test process dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
	// The parent-death signal follows the thread that started the
	// server: that thread stays locked to the goroutine that waits for
	// the server, so it ends only with the server (or the process).
	exited := make(chan struct{})
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	p.cmd, p.exited = cmd, exited
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := p.ping(); err == nil {
			return nil
		}
		select {
		case <-exited:
			p.cmd = nil
			log, _ := os.ReadFile(filepath.Join(p.dir, "log"))
			p.Port = 0 // perhaps taken meanwhile: the next start picks another
			return fmt.Errorf("postgres exited at start: %s", tail(log))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			p.cmd = nil
			return errors.New("postgres did not accept connections within 60s")
		}
	}
}

func tail(b []byte) string {
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func (p *Postgres) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, p.DSN("postgres"))
	if err != nil {
		return err
	}
	return c.Close(ctx)
}

// Stop stops the server: fast shutdown (SIGINT: sessions are ended, the
// data is kept) or, with immediate, as a crash (SIGQUIT: recovery from
// the WAL at the next start). It waits for the server to exit.
func (p *Postgres) Stop(immediate bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	sig := syscall.SIGINT
	if immediate {
		sig = syscall.SIGQUIT
	}
	_ = p.cmd.Process.Signal(sig)
	p.resume() // if paused
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	p.cmd = nil
}

// Pause stops every process of the server (SIGSTOP to the postmaster,
// then to each of its children: backends lead process groups of their
// own), as a database that hangs: connections stay open and connecting
// still succeeds at the TCP level, but nothing is answered. Resume (or
// the end of the test) lets it go on.
func (p *Postgres) Pause(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		t.Fatal("testkit: postgres is not running")
	}
	pm := p.cmd.Process.Pid
	// The postmaster first: stopped, it starts no new backend.
	if err := syscall.Kill(pm, syscall.SIGSTOP); err != nil {
		t.Fatalf("testkit: pause postgres: %v", err)
	}
	for _, pid := range children(pm) {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
	t.Cleanup(p.Resume)
}

// Resume continues a paused server. It is safe to call when the server
// is not paused.
func (p *Postgres) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		p.resume()
	}
}

func (p *Postgres) resume() {
	pm := p.cmd.Process.Pid
	for _, pid := range children(pm) {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	_ = syscall.Kill(pm, syscall.SIGCONT)
}

// children returns the processes whose parent is pid (from /proc).
func children(pid int) []int {
	var out []int
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parens.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(fields[1]); err == nil && ppid == pid {
			if c, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// Close stops the server and removes its data.
func (p *Postgres) Close() {
	p.Stop(false)
	os.RemoveAll(p.dir)
}
