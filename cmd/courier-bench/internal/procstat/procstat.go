package procstat

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/PID/stat times (100 on every
// Linux this runs on).
const clockTick = 100

// ErrNoSource is returned when neither a PID nor a metrics address is known.
var ErrNoSource = errors.New("procstat: no pid or metrics address")

// CPU returns the user+system CPU time pid has used.
func CPU(pid int) (time.Duration, error) {
	st, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	return st.cpu, nil
}

// TreeCPU returns the CPU time of pid and all its descendants, those
// running and those it has reaped (a database server's postmaster and
// its backends).
func TreeCPU(pid int) (time.Duration, error) {
	root, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	stats := map[int]stat{}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil || p == pid {
			continue
		}
		if st, err := readStat(p); err == nil {
			stats[p] = st
			children[st.ppid] = append(children[st.ppid], p)
		}
	}
	total := root.cpu + root.childCPU
	queue := append([]int(nil), children[pid]...)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		// A descendant's reaped children are in its own childCPU.
		total += stats[p].cpu + stats[p].childCPU
		queue = append(queue, children[p]...)
	}
	return total, nil
}

// stat is what CPU accounting reads from /proc/PID/stat.
type stat struct {
	ppid          int
	cpu, childCPU time.Duration // own; of waited-for children
}

func readStat(pid int) (stat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return stat{}, err
	}
	// The command name (field 2) may hold spaces; fields after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return stat{}, fmt.Errorf("procstat: /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return stat{}, fmt.Errorf("procstat: /proc/%d/stat: %d fields", pid, len(f))
	}
	// After ')': state(0) ppid(1) pgrp session tty tpgid flags minflt
	// cminflt majflt cmajflt utime(11) stime(12) cutime(13) cstime(14).
	var v [5]int64
	var errs []error
	for i, k := range []int{1, 11, 12, 13, 14} {
		var err error
		v[i], err = strconv.ParseInt(f[k], 10, 64)
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return stat{}, err
	}
	return stat{ppid: int(v[0]), cpu: tick(v[1] + v[2]), childCPU: tick(v[3] + v[4])}, nil
}

// tick converts USER_HZ ticks, the unit of /proc's CPU times.
func tick(n int64) time.Duration { return time.Duration(n) * time.Second / clockTick }

// SelfCPU returns the CPU time of this process, at rusage precision.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// RSS returns the resident set size of pid in bytes.
func RSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("procstat: no VmRSS for pid %d", pid)
}

// Node is a node to measure: a local PID, or the host:port of its
// /metrics, or both (the PID wins for CPU and RSS). Pprof is the
// host:port of its pprof server, if it has one.
type Node struct {
	PID     int
	Metrics string
	Pprof   string
}

var client = &http.Client{Timeout: 5 * time.Second}

// Scrape returns the values of the named metrics (without labels) from
// the node's /metrics.
func (n Node) Scrape(ctx context.Context, names ...string) (map[string]float64, error) {
	if n.Metrics == "" {
		return nil, ErrNoSource
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.Metrics+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("procstat: /metrics: %s", resp.Status)
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]float64{}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		name, val, ok := strings.Cut(line, " ")
		if !ok || !want[name] {
			continue
		}
		if v, err := strconv.ParseFloat(strings.Fields(val)[0], 64); err == nil {
			out[name] = v
		}
	}
	return out, s.Err()
}

// CPU returns the node's CPU time.
func (n Node) CPU(ctx context.Context) (time.Duration, error) {
	if n.PID > 0 {
		return CPU(n.PID)
	}
	m, err := n.Scrape(ctx, "process_cpu_seconds_total")
	if err != nil {
		return 0, err
	}
	v, ok := m["process_cpu_seconds_total"]
	if !ok {
		return 0, errors.New("procstat: no process_cpu_seconds_total in /metrics")
	}
	return time.Duration(v * float64(time.Second)), nil
}

// RSS returns the node's resident memory.
func (n Node) RSS(ctx context.Context) (int64, error) {
	if n.PID > 0 {
		return RSS(n.PID)
	}
	m, err := n.Scrape(ctx, "process_resident_memory_bytes")
	if err != nil {
		return 0, err
	}
	v, ok := m["process_resident_memory_bytes"]
	if !ok {
		return 0, errors.New("procstat: no process_resident_memory_bytes in /metrics")
	}
	return int64(v), nil
}

// HeapInuse returns go_memstats_heap_inuse_bytes from /metrics.
func (n Node) HeapInuse(ctx context.Context) (int64, error) {
	m, err := n.Scrape(ctx, "go_memstats_heap_inuse_bytes")
	if err != nil {
		return 0, err
	}
	v, ok := m["go_memstats_heap_inuse_bytes"]
	if !ok {
		return 0, errors.New("procstat: no go_memstats_heap_inuse_bytes in /metrics")
	}
	return int64(v), nil
}

// GC makes the node collect garbage, through pprof's heap profile with
// gc=1. It reports false if the node has no pprof address.
func (n Node) GC(ctx context.Context) (bool, error) {
	if n.Pprof == "" {
		return false, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.Pprof+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return false, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("procstat: pprof heap: %s", resp.Status)
	}
	return true, nil
}

// Heap writes the node's heap profile (after a GC) from its pprof to w.
func (n Node) Heap(ctx context.Context, w io.Writer) error {
	if n.Pprof == "" {
		return errors.New("procstat: the node has no pprof address (start it with --pprof-addr)")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.Pprof+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("procstat: pprof heap: %s", resp.Status)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

// Profile writes a CPU profile of d seconds from the node's pprof to w.
func (n Node) Profile(ctx context.Context, d time.Duration, w io.Writer) error {
	if n.Pprof == "" {
		return errors.New("procstat: the node has no pprof address (start it with --pprof-addr)")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", n.Pprof, max(int(d.Seconds()), 1)), nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("procstat: pprof profile: %s", resp.Status)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

// Machine is the CPU time all of the machine's cores spent, by kind,
// since boot (the first line of /proc/stat). Two readings' difference
// says how busy the machine was between them: the generator and the
// node share it in a local run, and a latency figure read without it
// mixes the code's cost with the machine's.
type Machine struct {
	Busy   time.Duration // user, nice, system, irq, softirq, steal
	Kernel time.Duration // system, irq, softirq
	Steal  time.Duration // what the hypervisor ran elsewhere while this VM waited
	Total  time.Duration // Busy, idle and iowait
}

// MachineCPU reads /proc/stat.
func MachineCPU() (Machine, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return Machine{}, err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		return Machine{}, fmt.Errorf("procstat: /proc/stat: %w", err)
	}
	return parseMachine(line)
}

// parseMachine parses /proc/stat's "cpu" line: user nice system idle
// iowait irq softirq steal guest guest_nice, in USER_HZ ticks (guest
// time is already counted in user and nice).
func parseMachine(line string) (Machine, error) {
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return Machine{}, fmt.Errorf("procstat: /proc/stat: not a cpu line: %q", line)
	}
	var v [8]int64
	for i := range v {
		n, err := strconv.ParseInt(f[i+1], 10, 64)
		if err != nil {
			return Machine{}, fmt.Errorf("procstat: /proc/stat: field %d: %w", i+1, err)
		}
		v[i] = n
	}
	user, nice, system, idle, iowait, irq, softirq, steal := v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
	busy := user + nice + system + irq + softirq + steal
	return Machine{Busy: tick(busy), Kernel: tick(system + irq + softirq), Steal: tick(steal),
		Total: tick(busy + idle + iowait)}, nil
}
