package farm

import (
	"os"
	"testing"
	"time"

	"github.com/courier-im/courier/cmd/courier-bench/internal/wire"
)

// TestPaceTrafficStampsTheSchedule: a loop that fell a second behind a
// rate of 1000/s sends the 1001 messages due at once, each stamped (in
// its Sent record and its payload) with the time it was due, not with
// the time of the write: latency counts from the schedule.
func TestPaceTrafficStampsTheSchedule(t *testing.T) {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	f := &Farm{cfg: Config{UIDPrefix: "p-", PayloadSize: 64, RunID: 9}}
	l := &loop{f: f}
	f.loops = []*loop{l}
	l.devs = []*device{{g: 0, fd: int(null.Fd()), state: stOnline}, {g: 1, fd: int(null.Fd()), state: stOnline}}

	now := time.Now().UnixNano()
	t0 := now - int64(time.Second)
	l.tr = &traffic{kind: SentC2C, rate: 1000, t0: t0, end: now + int64(time.Hour), done: func(int64) {}}
	l.paceTraffic(now)
	if len(l.local) != 1001 {
		t.Fatalf("%d messages sent, want the 1001 due", len(l.local))
	}
	for k, r := range l.local {
		if want := t0 + int64(k)*int64(time.Millisecond); r.Kind != SentC2C || r.T != want {
			t.Fatalf("message %d stamped %v after the start, due %v after it", k, time.Duration(r.T-t0), time.Duration(want-t0))
		}
	}
	// The payload of the last one carries its schedule too.
	if p, err := wire.ParsePayload(l.payBuf); err != nil || p.SentNs != l.local[1000].T {
		t.Fatalf("payload %+v %v, want SentNs %d", p, err, l.local[1000].T)
	}
}
