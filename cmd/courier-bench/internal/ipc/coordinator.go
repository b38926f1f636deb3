package ipc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/courier-im/courier/cmd/courier-bench/internal/farm"
)

// ErrWorkerGone is returned by calls to a worker that has exited.
var ErrWorkerGone = errors.New("ipc: worker exited")

// Worker is the coordinator's handle on one worker process.
type Worker struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	onRec func([]farm.Record)

	mu      sync.Mutex
	wmu     sync.Mutex // serialises writes to stdin
	nextID  uint64
	waiting map[uint64]chan event
	stats   farm.Stats
	gone    chan struct{} // closed when stdout ends
	err     error
}

// Spawn starts exe as a worker running a farm of cfg. onRecords is called
// (from the worker's reader goroutine, one call at a time) with every
// batch of records.
func Spawn(ctx context.Context, exe string, cfg farm.Config, onRecords func([]farm.Record)) (*Worker, error) {
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), EnvWorker+"=1")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("ipc: start worker: %w", err)
	}
	w := &Worker{cmd: cmd, stdin: stdin, onRec: onRecords, waiting: map[uint64]chan event{}, gone: make(chan struct{})}
	ready := make(chan event, 1)
	w.waiting[0] = ready
	go w.read(bufio.NewReaderSize(stdout, 256<<10))
	if err := w.write(command{Op: "init", Config: &cfg}); err != nil {
		w.Kill()
		return nil, err
	}
	select {
	case e := <-ready:
		if e.Err != "" {
			w.Kill()
			return nil, fmt.Errorf("ipc: worker: %s", e.Err)
		}
	case <-w.gone:
		w.Kill()
		return nil, fmt.Errorf("%w at start: %v", ErrWorkerGone, w.err)
	case <-ctx.Done():
		w.Kill()
		return nil, ctx.Err()
	}
	return w, nil
}

// PID is the worker's process id.
func (w *Worker) PID() int { return w.cmd.Process.Pid }

func (w *Worker) write(c command) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	return writeFrame(w.stdin, typeJSON, marshal(c))
}

func (w *Worker) read(r *bufio.Reader) {
	defer close(w.gone)
	var buf []byte
	var recs []farm.Record
	for {
		typ, b, err := readFrame(r, buf)
		if err != nil {
			w.mu.Lock()
			if !errors.Is(err, io.EOF) {
				w.err = err
			}
			w.mu.Unlock()
			return
		}
		buf = b[:0]
		switch typ {
		case typeRecords:
			recs = farm.DecodeRecords(recs[:0], b)
			if w.onRec != nil {
				w.onRec(recs)
			}
		case typeJSON:
			var e event
			if json.Unmarshal(b, &e) != nil {
				continue
			}
			w.mu.Lock()
			w.stats = e.Stats
			var ch chan event
			switch e.Ev {
			case "ready":
				ch = w.waiting[0]
				delete(w.waiting, 0)
			case "done":
				ch = w.waiting[e.ID]
				delete(w.waiting, e.ID)
			}
			w.mu.Unlock()
			if ch != nil {
				ch <- e
			}
		}
	}
}

// Stats returns the worker's latest counters.
func (w *Worker) Stats() farm.Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats
}

// call sends c and waits for its done event. The records it produced
// have been passed to onRecords by then.
func (w *Worker) call(ctx context.Context, c command) (event, error) {
	ch := make(chan event, 1)
	w.mu.Lock()
	w.nextID++
	c.ID = w.nextID
	w.waiting[c.ID] = ch
	w.mu.Unlock()
	if err := w.write(c); err != nil {
		return event{}, fmt.Errorf("%w: %v", ErrWorkerGone, err)
	}
	select {
	case e := <-ch:
		if e.Err != "" {
			return e, fmt.Errorf("ipc: worker %s: %s", c.Op, e.Err)
		}
		return e, nil
	case <-w.gone:
		return event{}, ErrWorkerGone
	case <-ctx.Done():
		return event{}, ctx.Err()
	}
}

// Login logs in devices [from, to) of the worker's farm (see farm.Farm.Login).
func (w *Worker) Login(ctx context.Context, from, to int, rate float64, inflight int) error {
	_, err := w.call(ctx, command{Op: "login", From: from, To: to, Rate: rate, Inflight: inflight})
	return err
}

// Reconnect drops and logs in again devices [from, to).
func (w *Worker) Reconnect(ctx context.Context, from, to int, inflight int) error {
	_, err := w.call(ctx, command{Op: "reconnect", From: from, To: to, Inflight: inflight})
	return err
}

// Traffic sends C2C or C2S frames (see farm.Farm.Traffic).
func (w *Worker) Traffic(ctx context.Context, kind farm.Kind, rate float64, d time.Duration, count int64) (int64, error) {
	e, err := w.call(ctx, command{Op: "traffic", Kind: kind, Rate: rate, Duration: d, Count: count})
	return e.Sent, err
}

// Stop closes the worker's connections, waits for its last records and
// for the process to exit (at most timeout, then kills it).
func (w *Worker) Stop(timeout time.Duration) error {
	_ = w.write(command{Op: "stop"})
	_ = w.stdin.Close()
	select {
	case <-w.gone:
	case <-time.After(timeout):
		_ = w.cmd.Process.Kill()
		<-w.gone
	}
	err := w.cmd.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	return err
}

// Kill ends the worker at once and reaps it.
func (w *Worker) Kill() {
	_ = w.cmd.Process.Kill()
	<-w.gone
	_ = w.cmd.Wait()
}
