package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/courier-im/courier/cluster/node"
	"github.com/courier-im/courier/testkit"
)

// repoRoot is the module's root, from this package's directory.
const repoRoot = "../.."

// TestMakeRelease runs `make release` (for the courier binary only, to
// keep the test short) and checks what it promises: a tarball per
// architecture with a static binary for that machine, SHA256SUMS, and
// the version stamped where `courier version` prints it. (docker build
// is impossible on this machine; the Dockerfile is checked below.)
func TestMakeRelease(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is not installed")
	}
	dist := t.TempDir()
	const version = "v9.9.9-releasetest"
	cmd := exec.Command("make", "release", "VERSION="+version, "DIST="+dist, "RELEASE_CMDS=./cmd/courier")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make release: %v\n%s", err, out)
	}
	sums, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	for arch, machine := range machines {
		name := "courier-" + version + "-linux-" + arch
		tgz := filepath.Join(dist, name+".tar.gz")
		b, err := os.ReadFile(tgz)
		if err != nil {
			t.Fatalf("%s: %v", arch, err)
		}
		sum := sha256.Sum256(b)
		if !strings.Contains(string(sums), hex.EncodeToString(sum[:])+"  "+name+".tar.gz") {
			t.Fatalf("SHA256SUMS does not list %s:\n%s", name, sums)
		}
		bin := extract(t, tgz, name+"/courier")
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatalf("%s: %v", arch, err)
		}
		if f.Machine != machine {
			t.Fatalf("%s binary is for %v", arch, f.Machine)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Fatalf("%s binary is dynamically linked", arch)
			}
		}
		f.Close()
		if arch == runtime.GOARCH {
			out, err := exec.Command(bin, "version").Output()
			if err != nil || !strings.HasPrefix(string(out), "courier "+version+" (") {
				t.Fatalf("courier version: %q %v", out, err)
			}
		}
	}
}

// extract writes member of the tarball to a file and returns its path.
func extract(t *testing.T, tgz, member string) string {
	t.Helper()
	fh, err := os.Open(tgz)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	zr, err := gzip.NewReader(fh)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s has no %s: %v", tgz, member, err)
		}
		if h.Name != member {
			continue
		}
		out := filepath.Join(t.TempDir(), filepath.Base(member))
		w, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, tr); err != nil {
			t.Fatal(err)
		}
		w.Close()
		return out
	}
}

// TestDockerfile checks what can be checked without a Docker engine: a
// multi-stage build of a static binary with the version stamped, on the
// Go release go.mod asks for, running as a non-root user.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	froms := regexp.MustCompile(`(?m)^FROM (\S+)`).FindAllStringSubmatch(df, -1)
	if len(froms) < 2 {
		t.Fatalf("not a multi-stage build: %v", froms)
	}
	mod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	// The build stage uses exactly the Go release go.mod requires: its
	// toolchain line, or else its go line. The golang images build with
	// GOTOOLCHAIN=local, so a floating tag ("golang:1.26") cached at an
	// older patch release would fail on go.mod; what Go runs this test
	// does not matter.
	want := goModToolchain(t, string(mod))
	if froms[0][1] != "golang:"+want {
		t.Fatalf("build stage %q: want golang:%s (go.mod's toolchain, or else go, line; raise both together)", froms[0][1], want)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-X main.version=${VERSION}", "./cmd/courier"} {
		if !strings.Contains(df, want) {
			t.Fatalf("the build does not have %q", want)
		}
	}
	final := df[strings.LastIndex(df, "\nFROM "):]
	user := regexp.MustCompile(`(?m)^USER (\S+)`).FindStringSubmatch(final)
	if user == nil || user[1] == "root" || strings.HasPrefix(user[1], "0") {
		t.Fatalf("the final stage runs as %v", user)
	}
}

// goModToolchain returns the Go release go.mod requires: its toolchain
// line's ("toolchain go1.26.8": "1.26.8"), or else its go line's, which
// must then name a release ("1.26.7", not "1.26").
func goModToolchain(t *testing.T, mod string) string {
	t.Helper()
	if m := regexp.MustCompile(`(?m)^toolchain go(\S+)\s*$`).FindStringSubmatch(mod); m != nil {
		return m[1]
	}
	m := regexp.MustCompile(`(?m)^go (\S+)\s*$`).FindStringSubmatch(mod)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	if !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(m[1]) {
		t.Fatalf("go.mod's go line %q names no release (1.26.7): add a toolchain line for the Dockerfile to match", m[1])
	}
	return m[1]
}

func TestDockerfileGoVersionOfGoMod(t *testing.T) {
	for mod, want := range map[string]string{
		"module x\n\ngo 1.26.7\n":                       "1.26.7",
		"module x\n\ngo 1.26.7\n\ntoolchain go1.26.9\n": "1.26.9",
		"module x\n\ngo 1.26.0\ntoolchain go1.27rc1\n":  "1.27rc1",
	} {
		if got := goModToolchain(t, mod); got != want {
			t.Errorf("%q: %q, want %q", mod, got, want)
		}
	}
}

// TestSystemdUnit has systemd-analyze verify the unit (with the binary
// path pointed at a real file) and checks it passes secrets as files.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy/courier.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	for _, want := range []string{"--app-secret-file", "--api-key-file", "LoadCredential=", "RestartPreventExitStatus=2", "KillSignal=SIGTERM",
		// A node whose store is down at boot fails fast, again and again:
		// without this systemd stops restarting it after 5 tries.
		"\nStartLimitIntervalSec=0\n"} {
		if !strings.Contains(unit, want) {
			t.Fatalf("the unit has no %q", want)
		}
	}
	// systemd must wait longer than the node's own bound on a graceful
	// stop (the grace, then at most 5 s for the last steps: finalContext),
	// or it kills the node as the node finishes.
	m := regexp.MustCompile(`(?m)^TimeoutStopSec=(\S+)$`).FindStringSubmatch(unit)
	if m == nil {
		t.Fatal("the unit sets no TimeoutStopSec")
	}
	if stop, err := time.ParseDuration(m[1]); err != nil || stop <= node.DefaultConfig().ShutdownGrace+5*time.Second {
		t.Fatalf("TimeoutStopSec=%s: want more than shutdown-grace's default %v and 5 s", m[1], node.DefaultConfig().ShutdownGrace)
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze is not installed (.ci/run installs the systemd package)")
		}
		t.Skip("systemd-analyze is not installed")
	}
	dir := t.TempDir()
	unit = strings.ReplaceAll(unit, "/usr/local/bin/courier", testkitBinary(t))
	path := filepath.Join(dir, "courier.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	var problems []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		// Running as root in a container without systemd as init, the
		// verifier may add notes about the machine; only lines naming
		// the unit are about it.
		if strings.Contains(sc.Text(), "courier.service") {
			problems = append(problems, sc.Text())
		}
	}
	if err != nil || len(problems) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func testkitBinary(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(testkit.CourierBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	return p
}
