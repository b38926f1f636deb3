package ipc

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/courier-im/courier/cmd/courier-bench/internal/farm"
)

// FlushInterval is how often a worker sends its records and counters.
const FlushInterval = 200 * time.Millisecond

// WorkerMain runs a worker on stdin and stdout and returns its exit code.
func WorkerMain() int {
	if err := serve(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "courier-bench worker:", err)
		return 1
	}
	return 0
}

// out serialises writes to the coordinator.
type out struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (o *out) send(typ byte, payload []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := writeFrame(o.w, typ, payload); err != nil {
		return err
	}
	return o.w.Flush()
}

func (o *out) event(e event) error { return o.send(typeJSON, marshal(e)) }

func serve(in io.Reader, w io.Writer) error {
	r := bufio.NewReaderSize(in, 64<<10)
	o := &out{w: bufio.NewWriterSize(w, 256<<10)}
	typ, b, err := readFrame(r, nil)
	if err != nil {
		return fmt.Errorf("read init: %w", err)
	}
	var init command
	if typ != typeJSON || json.Unmarshal(b, &init) != nil || init.Op != "init" || init.Config == nil {
		return fmt.Errorf("first command is not init")
	}
	f, err := farm.New(*init.Config)
	if err != nil {
		_ = o.event(event{Ev: "ready", Err: err.Error()})
		return err
	}
	if err := o.event(event{Ev: "ready"}); err != nil {
		f.Close()
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var flushMu sync.Mutex // a drain and its send are one step, so a done event follows its records
	flush := func() error {
		flushMu.Lock()
		defer flushMu.Unlock()
		recs := f.Drain(nil)
		if len(recs) > 0 {
			if err := o.send(typeRecords, farm.AppendRecords(make([]byte, 0, len(recs)*farm.RecordSize), recs)); err != nil {
				return err
			}
		}
		return o.event(event{Ev: "stats", Stats: f.Stats()})
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(FlushInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if flush() != nil {
					cancel()
					return
				}
			}
		}
	}()

	var runErr error
	for runErr == nil {
		typ, b, err := readFrame(r, nil)
		if err != nil {
			break // the coordinator went away: stop
		}
		var c command
		if typ != typeJSON || json.Unmarshal(b, &c) != nil {
			runErr = fmt.Errorf("bad command frame")
			break
		}
		if c.Op == "stop" {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			var sent int64
			switch c.Op {
			case "login":
				err = f.Login(ctx, c.From, c.To, c.Rate, c.Inflight)
			case "reconnect":
				err = f.Reconnect(ctx, c.From, c.To, c.Inflight)
			case "traffic":
				sent, err = f.Traffic(ctx, c.Kind, c.Rate, c.Duration, c.Count)
			default:
				err = fmt.Errorf("unknown op %q", c.Op)
			}
			// Records of the command go out before its done event.
			ferr := flush()
			e := event{Ev: "done", ID: c.ID, Sent: sent, Stats: f.Stats()}
			if err != nil {
				e.Err = err.Error()
			}
			if ferr == nil {
				_ = o.event(e)
			}
		}()
	}
	cancel()
	f.Close()
	wg.Wait()
	if err := flush(); err != nil {
		return err
	}
	if err := o.event(event{Ev: "bye", Stats: f.Stats()}); err != nil {
		return err
	}
	return runErr
}
