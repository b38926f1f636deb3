package testkit

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// processTempDir creates a temp dir for what lives as long as the test
// process (the courier binary it built, its shared PostgreSQL server),
// named prefix<pid>-<random>. Nothing removes such a dir when the
// process ends (a package's tests have no hook after the last test, and
// a timed-out test process is killed), so each call first removes the
// dirs of prefix whose process is gone: a machine that runs the tests
// all day keeps one dir per running test process, not one per run
// (863 binaries of 60 MB filled this machine's disk before).
func processTempDir(prefix string) (string, error) {
	sweepTempDirs(os.TempDir(), prefix, processAlive)
	return os.MkdirTemp("", prefix+strconv.Itoa(os.Getpid())+"-")
}

// sweepTempDirs removes the dirs in parent named prefix<pid>-... whose
// pid alive reports gone. Names that do not carry a pid are left alone.
func sweepTempDirs(parent, prefix string, alive func(pid int) bool) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, ok := tempDirPID(e.Name(), prefix)
		if !ok || !e.IsDir() || alive(pid) {
			continue
		}
		dir := filepath.Join(parent, e.Name())
		// A PostgreSQL server outlives its test process for a moment
		// (it is sent SIGQUIT when the process dies): not while it runs.
		if pm, ok := postmasterPID(dir); ok && alive(pm) {
			continue
		}
		_ = os.RemoveAll(dir)
	}
}

// tempDirPID parses the pid out of prefix<pid>-<random>.
func tempDirPID(name, prefix string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0, false
	}
	digits, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(digits)
	return pid, err == nil && pid > 0
}

// postmasterPID reads the pid a PostgreSQL data dir under dir records.
func postmasterPID(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	return pid, err == nil && pid > 0
}

// processAlive reports whether process pid exists (signal 0: EPERM
// means it exists under another user).
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
