package workload

import (
	"sync"
	"time"

	"google.golang.org/grpc/codes"
)

// recorder keeps everything the workload saw, under one lock (the rates
// here are hundreds to a few thousand events per second).
type recorder struct {
	mu       sync.Mutex
	accepts  []accept
	receipts []receipt
	sessions []Session
	marks    []mark
	ff       FireAndForget
	ffRecv   map[string]bool
	c2sAcked map[string]bool
	c2sRecv  map[string]int
	c2sGate  map[string]string // the gate that accepted each C2S
	// c2sReceipts counts every C2S delivery, redeliveries included.
	c2sReceipts int
	calls       Calls
	kicks       map[string]int64
	weird       []string
}

func newRecorder() *recorder {
	return &recorder{ffRecv: map[string]bool{}, c2sAcked: map[string]bool{}, c2sRecv: map[string]int{}, c2sGate: map[string]string{},
		kicks: map[string]int64{}, calls: Calls{Codes: map[string]int64{}}}
}

func (r *recorder) accepted(a accept) {
	r.mu.Lock()
	r.accepts = append(r.accepts, a)
	r.mu.Unlock()
}

func (r *recorder) received(rc receipt) {
	r.mu.Lock()
	r.receipts = append(r.receipts, rc)
	r.mu.Unlock()
}

func (r *recorder) ffSent(online bool) {
	r.mu.Lock()
	r.ff.Sent++
	if online {
		r.ff.Online++
	}
	r.mu.Unlock()
}

func (r *recorder) ffFailed(c codes.Code) {
	r.mu.Lock()
	r.ff.Failed++
	r.calls.Codes[c.String()]++
	r.mu.Unlock()
}

func (r *recorder) ffReceived(key string) {
	r.mu.Lock()
	r.ffRecv[key] = true
	r.mu.Unlock()
}

// c2sAccepted records a C2S answered OK through gate (its address).
func (r *recorder) c2sAccepted(id, gate string) {
	r.mu.Lock()
	if !r.c2sAcked[id] {
		r.c2sGate[id] = gate // the first acceptance holds it
	}
	r.c2sAcked[id] = true
	r.mu.Unlock()
}

func (r *recorder) c2sReceived(id string) {
	r.mu.Lock()
	r.c2sRecv[id]++
	r.c2sReceipts++
	r.mu.Unlock()
}

// activity counts the receipts so far, stored and C2S: it changes while
// anything still arrives.
func (r *recorder) activity() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.receipts) + r.c2sReceipts
}

func (r *recorder) callOK(duplicate bool) {
	r.mu.Lock()
	r.calls.OK++
	if duplicate {
		r.calls.Duplicates++
	}
	r.mu.Unlock()
}

func (r *recorder) callFailed(c codes.Code, retried bool) {
	r.mu.Lock()
	if retried {
		r.calls.Retried++
	} else {
		r.calls.Failed++
	}
	r.calls.Codes[c.String()]++
	r.mu.Unlock()
}

func (r *recorder) abandoned() {
	r.mu.Lock()
	r.calls.Abandoned++
	r.mu.Unlock()
}

func (r *recorder) kicked(reason string) {
	r.mu.Lock()
	r.kicks[reason]++
	r.mu.Unlock()
}

func (r *recorder) unexpected(what string) {
	r.mu.Lock()
	if len(r.weird) < 1000 {
		r.weird = append(r.weird, time.Now().Format("15:04:05.000 ")+what)
	}
	r.mu.Unlock()
}

// sessionUp records a new session and returns its index.
func (r *recorder) sessionUp(dev int, gate string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sessions = append(r.sessions, Session{Dev: dev, Gate: gate, Up: time.Now()})
	return len(r.sessions) - 1
}

func (r *recorder) sessionDown(i int, why string) {
	r.mu.Lock()
	r.sessions[i].Down, r.sessions[i].Why = time.Now(), why
	r.mu.Unlock()
}

func (r *recorder) mark(name string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.marks = append(r.marks, mark{name: name, at: now})
	return now
}

// ledger computes the ledger of everything recorded so far.
func (r *recorder) ledger(devices int) Ledger {
	r.mu.Lock()
	accepts := append([]accept(nil), r.accepts...)
	receipts := append([]receipt(nil), r.receipts...)
	sessions := append([]Session(nil), r.sessions...)
	marks := append([]mark(nil), r.marks...)
	l := Ledger{FireAndForget: r.ff, Calls: r.calls}
	l.FireAndForget.Delivered = int64(len(r.ffRecv))
	l.Calls.Codes = map[string]int64{}
	for k, v := range r.calls.Codes {
		l.Calls.Codes[k] = v
	}
	l.Devices.Kicks = map[string]int64{}
	for k, v := range r.kicks {
		l.Devices.Kicks[k] = v
	}
	l.Devices.Unexpected = append([]string(nil), r.weird...)
	l.C2S.Accepted = int64(len(r.c2sAcked))
	for id := range r.c2sAcked {
		if n := r.c2sRecv[id]; n > 0 {
			l.C2S.Delivered++
		} else {
			l.C2S.Lost++
			if l.C2S.LostByGate == nil {
				l.C2S.LostByGate = map[string]int64{}
			}
			l.C2S.LostByGate[r.c2sGate[id]]++
		}
	}
	for _, n := range r.c2sRecv {
		if n > 1 {
			l.C2S.Redelivered += int64(n - 1)
		}
	}
	r.mu.Unlock()

	l.Pushes = count(KindPush, accepts, receipts)
	l.C2C = count(KindC2C, accepts, receipts)
	l.Devices.Sessions = int64(len(sessions))
	l.Devices.Reconnects = max(int64(len(sessions)-devices), 0)
	l.Faults = faultReports(marks, accepts, receipts, sessions)
	return l
}

// pendingDeliveries returns how many accepted stored messages no device
// has received yet, and how many accepted C2S no subscriber has.
func (r *recorder) pendingDeliveries() (stored, upstream int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	got := make(map[string]bool, len(r.receipts))
	for _, rc := range r.receipts {
		got[rc.key] = true
	}
	seen := map[string]bool{}
	for _, a := range r.accepts {
		if !got[a.key] && !seen[a.key] {
			seen[a.key] = true
			stored++
		}
	}
	for id := range r.c2sAcked {
		if r.c2sRecv[id] == 0 {
			upstream++
		}
	}
	return stored, upstream
}

// sessionsCopy returns every session so far.
func (r *recorder) sessionsCopy() []Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Session(nil), r.sessions...)
}
