package ipc

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/courier-im/courier/cmd/courier-bench/internal/farm"
)

// EnvWorker is set in a worker's environment; main checks it first.
const EnvWorker = "COURIER_BENCH_WORKER"

// Frame types.
const (
	typeJSON    byte = 1
	typeRecords byte = 2
)

const maxFrame = 64 << 20

// ErrFrame is returned for a frame over the size limit or cut short.
var ErrFrame = errors.New("ipc: bad frame")

func writeFrame(w io.Writer, typ byte, payload []byte) error {
	var h [5]byte
	binary.LittleEndian.PutUint32(h[:4], uint32(len(payload)))
	h[4] = typ
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

func readFrame(r *bufio.Reader, buf []byte) (byte, []byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.LittleEndian.Uint32(h[:4])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrFrame, n)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	return h[4], buf, nil
}

// command is a coordinator → worker message.
type command struct {
	Op       string       `json:"op"` // init, login, reconnect, traffic, stop
	ID       uint64       `json:"id"`
	Config   *farm.Config `json:"config,omitempty"`
	From     int          `json:"from,omitempty"`
	To       int          `json:"to,omitempty"`
	Rate     float64      `json:"rate,omitempty"`
	Inflight int          `json:"inflight,omitempty"`
	Kind     farm.Kind    `json:"kind,omitempty"`
	Duration Duration     `json:"duration,omitempty"`
	Count    int64        `json:"count,omitempty"`
}

// event is a worker → coordinator message.
type event struct {
	Ev    string     `json:"ev"` // ready, done, stats, bye
	ID    uint64     `json:"id,omitempty"`
	Err   string     `json:"err,omitempty"`
	Sent  int64      `json:"sent,omitempty"`
	Stats farm.Stats `json:"stats"`
}

// Duration is a time.Duration that travels as nanoseconds.
type Duration = time.Duration

func marshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("ipc: " + err.Error()) // only our own plain structs are marshalled
	}
	return b
}
