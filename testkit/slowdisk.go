package testkit

import (
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// SlowDisk is a directory whose fsync can be made slow on demand, to see
// what a node does when its disk falls behind: a FUSE loopback of a
// temporary directory, served by the test process, which delays every
// fsync by the current delay. It needs /dev/fuse and the right to mount
// (root). Without them the test is skipped, or fails when CI=true.
type SlowDisk struct {
	// Dir is the mounted directory to use as a node's data directory.
	Dir   string
	delay atomic.Int64 // nanoseconds
}

// NewSlowDisk mounts a SlowDisk for the test. It is unmounted at the end
// of the test, after the cleanups registered later (start the nodes that
// use it after it, so that they are stopped first).
func NewSlowDisk(t testing.TB) *SlowDisk {
	t.Helper()
	unavailable := func(why string, err error) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("testkit: slow disk: %s: %v", why, err)
		}
		t.Skipf("testkit: slow disk needs FUSE: %s: %v", why, err)
	}
	if f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0); err != nil {
		unavailable("open /dev/fuse", err)
	} else {
		f.Close()
	}
	backing, mnt := t.TempDir(), t.TempDir()
	root, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		t.Fatalf("testkit: slow disk: %v", err)
	}
	d := &SlowDisk{Dir: mnt}
	raw := slowRaw{RawFileSystem: fs.NewNodeFS(root, &fs.Options{}), d: d}
	srv, err := fuse.NewServer(raw, mnt, &fuse.MountOptions{FsName: "courier-slowdisk", Name: "slowdisk", DirectMountStrict: true})
	if err != nil {
		unavailable("mount", err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		unavailable("mount", err)
	}
	t.Cleanup(func() {
		d.SetSyncDelay(0)
		for range 50 {
			if srv.Unmount() == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
	})
	return d
}

// SetSyncDelay makes every later fsync (and fdatasync) on the disk take
// d longer (0: as fast as the backing disk).
func (d *SlowDisk) SetSyncDelay(delay time.Duration) { d.delay.Store(int64(delay)) }

func (d *SlowDisk) wait(cancel <-chan struct{}) {
	if delay := time.Duration(d.delay.Load()); delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-cancel:
		}
	}
}

// slowRaw delays the FUSE operations that make data durable.
type slowRaw struct {
	fuse.RawFileSystem
	d *SlowDisk
}

func (r slowRaw) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	r.d.wait(cancel)
	return r.RawFileSystem.Fsync(cancel, in)
}

func (r slowRaw) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	r.d.wait(cancel)
	return r.RawFileSystem.FsyncDir(cancel, in)
}
