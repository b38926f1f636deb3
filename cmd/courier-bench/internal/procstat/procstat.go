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
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("procstat: /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("procstat: /proc/%d/stat: %d fields", pid, len(f))
	}
	// After ')': state(0) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(11) stime(12).
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * time.Second / clockTick, nil
}

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
