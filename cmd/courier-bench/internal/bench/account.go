package bench

import (
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/courier-im/courier/cmd/courier-bench/internal/farm"
	"github.com/courier-im/courier/messages/devicepb"
)

// histMax is the longest latency a histogram holds, in µs: a day. A
// fixed-rate run counts latency from each message's scheduled time, so a
// long run that falls behind has latencies as long as the run (the
// earlier bound, 10 minutes, dropped them); a day costs a few more KiB
// per histogram.
const histMax = 24 * 3600 * 1_000_000

// newHist returns a histogram of microseconds from 1 µs to histMax at 3
// significant digits.
func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, histMax, 3) }

// recordNs records a latency of ns into h, in µs (under 1 µs as 1), and
// reports false for one h cannot hold: negative (a clock stepped back
// between the two stamps, or a stamp is wrong) or over histMax. The
// caller counts those, and the run fails on them: percentiles that
// leave samples out look better than what happened.
func recordNs(h *hdrhistogram.Histogram, ns int64) bool {
	if ns < 0 {
		return false
	}
	return h.RecordValue(max(ns/1000, 1)) == nil
}

// States of a push as the API answered it.
const (
	pushPending  uint8 = iota // not answered yet
	pushAccepted              // accepted (stored, or fire-and-forget written to an online device)
	pushDropped               // fire-and-forget to an offline device: the API said it was dropped
	pushFailed                // the call or the item failed
)

// pushRec is everything known about one push, by index.
type pushRec struct {
	sendNs   int64
	recvNs   int64
	respHash uint64
	recvHash uint64
	respSeq  uint32
	recvSeq  uint32
	dev      int32 // target device (>= devices: a ghost that never logs in)
	recvDev  int32
	state    uint8
	online   bool
	recvs    uint8
}

const chunkSize = 1 << 16

// msgRec is what is known about one C2C or C2S message: when it was
// sent, acknowledged to its sender (with which code) and received.
type msgRec struct {
	sentNs, ackNs, recvNs int64
	ackHash, recvHash     uint64
	sender                int32
	code                  uint8
	sent, acked           bool
	recvs                 uint8
}

type c2cRec struct {
	msgRec
	receiver int32
}

type c2sRec struct {
	msgRec
	recvUID string
}

// tally counts one message into t; mismatch says whether what arrived
// differs from what was sent, lost describes it if it was lost.
func (t *msgTotals) tally(r *msgRec, mismatch bool, lost func() string) {
	t.Sent++
	if r.recvs > 0 {
		t.Delivered++
		if !recordNs(t.DeliverLat, r.recvNs-r.sentNs) {
			t.OutOfRange++
		}
		if mismatch {
			t.Mismatched++
		}
	}
	switch {
	case !r.acked:
		t.NoAck++
	case r.code != 0:
		t.Refused++
		t.RefusedBy[devicepb.Code(r.code).String()]++
		if r.recvs > 0 && !maybeStored(devicepb.Code(r.code)) {
			t.Unexpected++
		}
	default:
		t.AckOK++
		if !recordNs(t.AckLat, r.ackNs-r.sentNs) {
			t.OutOfRange++
		}
		if r.recvs == 0 {
			t.Lost++
			if len(t.LostSample) < 20 {
				t.LostSample = append(t.LostSample, lost())
			}
		}
	}
}

// accountant joins what the app-server side did (pushes, upstream
// receipts) with what the devices recorded. It is safe for concurrent
// use.
type accountant struct {
	mu      sync.Mutex
	devices int
	prefix  string

	// logins
	loginLat            *hdrhistogram.Histogram
	loginOK, loginFail  int64
	loginCodes          map[string]int64
	firstDial, lastDone int64

	// pushes, by index
	pushes    [][]pushRec
	npush     int64
	pushLat   *hdrhistogram.Histogram // API call → device receipt
	apiLat    *hdrhistogram.Histogram // API call → API answer
	delivered int64                   // first receipts of this run's pushes
	lastRecv  int64                   // time of the latest first receipt (push, C2C or C2S)
	dups      int64
	// dupsOther: receipts again of a message that differ from its first
	// receipt (another msg id, seq or receiver): another message with the
	// same index, not a redelivery.
	dupsOther int64
	unknown   int64 // receipts of indices never pushed
	foreign   int64 // receipts of other runs' messages
	// outOfRange: login, push and API latencies the histograms could not
	// hold (recordNs), over the whole run.
	outOfRange int64

	// C2C and C2S, by index
	c2c      map[uint64]*c2cRec
	c2cRecvd int64
	c2s      map[uint64]*c2sRec
	c2sRecvd int64
	c2sAckOK int64
}

func newAccountant(devices int, prefix string) *accountant {
	return &accountant{
		devices: devices, prefix: prefix,
		loginLat: newHist(), loginCodes: map[string]int64{},
		pushLat: newHist(), apiLat: newHist(),
		c2c: map[uint64]*c2cRec{}, c2s: map[uint64]*c2sRec{},
	}
}

// loginCode names a LoginDone code.
func loginCode(c uint8) string {
	switch c {
	case farm.CodeConnectFailed:
		return "connect failed"
	case farm.CodeTimeout:
		return "timeout"
	case farm.CodeClosed:
		return "closed before LOGIN_ACK"
	}
	return devicepb.Code(c).String()
}

func (a *accountant) resetLogins() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.loginLat.Reset()
	a.loginOK, a.loginFail, a.firstDial, a.lastDone = 0, 0, 0, 0
	a.loginCodes = map[string]int64{}
}

// push returns the record of push i, growing the table; a.mu is held.
func (a *accountant) push(i int64) *pushRec {
	for int64(len(a.pushes))*chunkSize <= i {
		a.pushes = append(a.pushes, make([]pushRec, chunkSize))
	}
	return &a.pushes[i/chunkSize][i%chunkSize]
}

// reserve allocates n push indices to targets dev(i) and stamps their
// send time.
func (a *accountant) reserve(n int, sendNs int64, dev func(i int64) int32) int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	first := a.npush
	for i := first; i < first+int64(n); i++ {
		r := a.push(i)
		r.sendNs, r.dev, r.recvDev = sendNs, dev(i), -1
	}
	a.npush += int64(n)
	return first
}

// answered records the API's answer for push i.
func (a *accountant) answered(i int64, state uint8, online bool, seq uint32, hash uint64, callNs int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.push(i)
	r.state, r.online, r.respSeq, r.respHash = state, online, seq, hash
	if callNs > 0 {
		a.record(a.apiLat, callNs)
	}
}

// records takes a batch of device records.
func (a *accountant) records(rs []farm.Record) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range rs {
		switch r.Kind {
		case farm.LoginDone:
			start := int64(r.Idx)
			if a.firstDial == 0 || start < a.firstDial {
				a.firstDial = start
			}
			a.lastDone = max(a.lastDone, r.T)
			if r.Code == 0 {
				a.loginOK++
				a.record(a.loginLat, r.T-start)
			} else {
				a.loginFail++
				a.loginCodes[loginCode(r.Code)]++
			}
		case farm.RecvS2C:
			if int64(r.Idx) >= a.npush {
				a.unknown++
				continue
			}
			p := a.push(int64(r.Idx))
			if p.recvs > 0 {
				p.recvs = min(p.recvs+1, 255)
				a.dups++
				if r.Hash != p.recvHash || r.Seq != p.recvSeq || int32(r.Dev) != p.recvDev {
					a.dupsOther++
				}
				continue
			}
			p.recvs = 1
			p.recvNs, p.recvHash, p.recvSeq, p.recvDev = r.T, r.Hash, r.Seq, int32(r.Dev)
			a.record(a.pushLat, r.T-p.sendNs)
			a.delivered++
			a.lastRecv = max(a.lastRecv, r.T)
		case farm.RecvForeign:
			a.foreign++
		case farm.SentC2C:
			c := a.c2cRec(r.Idx)
			c.sent, c.sentNs, c.sender = true, r.T, int32(r.Dev)
		case farm.AckC2C:
			c := a.c2cRec(r.Idx)
			if !c.acked {
				c.acked, c.ackNs, c.code, c.ackHash = true, r.T, r.Code, r.Hash
			}
		case farm.RecvC2C:
			c := a.c2cRec(r.Idx)
			if c.recvs == 0 {
				c.recvNs, c.recvHash, c.receiver = r.T, r.Hash, int32(r.Dev)
				a.c2cRecvd++
				a.lastRecv = max(a.lastRecv, r.T)
			} else {
				a.dups++
				if r.Hash != c.recvHash || int32(r.Dev) != c.receiver {
					a.dupsOther++
				}
			}
			c.recvs = min(c.recvs+1, 255)
		case farm.SentC2S:
			c := a.c2sRec(r.Idx)
			c.sent, c.sentNs, c.sender = true, r.T, int32(r.Dev)
		case farm.AckC2S:
			c := a.c2sRec(r.Idx)
			if !c.acked {
				c.acked, c.ackNs, c.code, c.ackHash = true, r.T, r.Code, r.Hash
				if r.Code == 0 {
					a.c2sAckOK++
				}
			}
		}
	}
}

// record records a latency of ns into h, counting it if out of range;
// a.mu is held.
func (a *accountant) record(h *hdrhistogram.Histogram, ns int64) {
	if !recordNs(h, ns) {
		a.outOfRange++
	}
}

// latenciesOutOfRange returns how many login, push and API latencies the
// histograms could not hold.
func (a *accountant) latenciesOutOfRange() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.outOfRange
}

func (a *accountant) c2cRec(i uint64) *c2cRec {
	c := a.c2c[i]
	if c == nil {
		c = &c2cRec{msgRec: msgRec{sender: -1}, receiver: -1}
		a.c2c[i] = c
	}
	return c
}

func (a *accountant) c2sRec(i uint64) *c2sRec {
	c := a.c2s[i]
	if c == nil {
		c = &c2sRec{msgRec: msgRec{sender: -1}}
		a.c2s[i] = c
	}
	return c
}

// upstream records a C2S message the app-server received.
func (a *accountant) upstream(idx uint64, msgHash uint64, uid string, t int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.c2sRec(idx)
	if c.recvs == 0 {
		c.recvNs, c.recvHash, c.recvUID = t, msgHash, uid
		a.c2sRecvd++
		a.lastRecv = max(a.lastRecv, t)
	} else {
		a.dups++
		if msgHash != c.recvHash || uid != c.recvUID {
			a.dupsOther++
		}
	}
	c.recvs = min(c.recvs+1, 255)
}

// pushTotals is the final accounting of a push run.
type pushTotals struct {
	Pushed, Accepted, Dropped, Failed, Delivered, Lost, Mismatched, Unexpected, Dups, Unknown, Foreign int64
	// DupsOther: receipts again of a push that differ from its first one
	// (msg id, seq or device); FailedOther: pushes whose call or item
	// failed with another status than RESOURCE_EXHAUSTED (set by the
	// scenario).
	DupsOther, FailedOther int64
	// OutOfRange: latencies the histograms could not hold (recordNs).
	OutOfRange int64
	LostSample []string
}

// expectedPushes counts accepted pushes to online devices (those the
// drain waits for) and their first receipts.
func (a *accountant) pushProgress() (expected, delivered, answered int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := int64(0); i < a.npush; i++ {
		p := a.push(i)
		if p.state != pushPending {
			answered++
		}
		if p.state == pushAccepted && int(p.dev) < a.devices {
			expected++
			if p.recvs > 0 {
				delivered++
			}
		}
	}
	return expected, delivered, answered
}

// pushTotals joins the API's answers with the receipts: a push accepted
// and never received is lost; one received with another seq, msg id or
// device than the API said is mismatched.
func (a *accountant) pushTotals(uid func(dev int32) string) pushTotals {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := pushTotals{Pushed: a.npush, Dups: a.dups, DupsOther: a.dupsOther, Unknown: a.unknown, Foreign: a.foreign, OutOfRange: a.outOfRange}
	for i := int64(0); i < a.npush; i++ {
		p := a.push(i)
		if p.recvs > 0 {
			t.Delivered++
		}
		switch p.state {
		case pushAccepted:
			t.Accepted++
			if p.recvs == 0 {
				t.Lost++
				if len(t.LostSample) < 20 {
					t.LostSample = append(t.LostSample, fmt.Sprintf("push %d to %s (seq %d)", i, uid(p.dev), p.respSeq))
				}
			} else if p.recvHash != p.respHash || p.recvSeq != p.respSeq || p.recvDev != p.dev {
				t.Mismatched++
			}
		case pushDropped:
			t.Dropped++
			if p.recvs > 0 {
				t.Unexpected++
			}
		default:
			t.Failed++
			if p.recvs > 0 {
				t.Unexpected++
			}
		}
	}
	return t
}

// msgTotals is the final accounting of C2C or C2S messages.
type msgTotals struct {
	Sent, AckOK, Refused, NoAck, Delivered, Lost, Mismatched, Dups int64
	// DupsOther: receipts again that differ from the first (msg id or
	// receiver); Unexpected: received though the ack refused it (but for
	// STORE_UNAVAILABLE and INTERNAL, which may have stored it);
	// OutOfRange: latencies the histograms could not hold (recordNs),
	// the run's logins' included.
	DupsOther, Unexpected, OutOfRange int64
	RefusedBy                         map[string]int64
	LostSample                        []string
	AckLat, DeliverLat                *hdrhistogram.Histogram
}

func (a *accountant) c2cTotals() msgTotals {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := msgTotals{RefusedBy: map[string]int64{}, AckLat: newHist(), DeliverLat: newHist(), Dups: a.dups, DupsOther: a.dupsOther,
		OutOfRange: a.outOfRange}
	for idx, c := range a.c2c {
		if !c.sent {
			continue
		}
		t.tally(&c.msgRec, c.receiver != c.sender^1 || (c.acked && c.ackHash != c.recvHash),
			func() string { return fmt.Sprintf("c2c %d from %s%d", idx, a.prefix, c.sender) })
	}
	sort.Strings(t.LostSample)
	return t
}

func (a *accountant) c2sTotals() msgTotals {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := msgTotals{RefusedBy: map[string]int64{}, AckLat: newHist(), DeliverLat: newHist(), Dups: a.dups, DupsOther: a.dupsOther,
		OutOfRange: a.outOfRange}
	for idx, c := range a.c2s {
		if !c.sent {
			continue
		}
		t.tally(&c.msgRec, c.recvs > 0 && (c.recvUID != fmt.Sprintf("%s%d", a.prefix, c.sender) || (c.acked && c.code == 0 && c.ackHash != c.recvHash)),
			func() string { return fmt.Sprintf("c2s %d from %s%d", idx, a.prefix, c.sender) })
	}
	sort.Strings(t.LostSample)
	return t
}

// counts returns the progress counters.
func (a *accountant) counts() (delivered, c2cRecvd, c2sRecvd, c2sAckOK int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.delivered, a.c2cRecvd, a.c2sRecvd, a.c2sAckOK
}

// c2cPending counts C2C messages sent and not yet acknowledged, or
// acknowledged OK and not yet received.
func (a *accountant) c2cPending() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var n int64
	for _, c := range a.c2c {
		if c.sent && (!c.acked || (c.code == 0 && c.recvs == 0)) {
			n++
		}
	}
	return n
}

// c2sPending counts C2S messages sent and not yet acknowledged, or
// acknowledged OK and not yet received by the app-server.
func (a *accountant) c2sPending() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var n int64
	for _, c := range a.c2s {
		if c.sent && (!c.acked || (c.code == 0 && c.recvs == 0)) {
			n++
		}
	}
	return n
}

// logins returns the login figures since the last reset.
func (a *accountant) logins() (ok, fail int64, codes map[string]int64, spanNs int64, lat *hdrhistogram.Histogram) {
	a.mu.Lock()
	defer a.mu.Unlock()
	codes = map[string]int64{}
	for k, v := range a.loginCodes {
		codes[k] = v
	}
	return a.loginOK, a.loginFail, codes, a.lastDone - a.firstDial, hdrhistogram.Import(a.loginLat.Export())
}

// pushLatencies returns copies of the push histograms.
func (a *accountant) pushLatencies() (toDevice, api *hdrhistogram.Histogram) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return hdrhistogram.Import(a.pushLat.Export()), hdrhistogram.Import(a.apiLat.Export())
}

// lastReceipt returns the time of the latest first receipt.
func (a *accountant) lastReceipt() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return time.Unix(0, a.lastRecv)
}

// pushed returns how many pushes were reserved.
func (a *accountant) pushed() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.npush
}

// maybeStored reports whether a C2C refused with code may have been
// stored all the same (docs/protocol.md: a write that failed after it
// was submitted, a commit that timed out and landed): its delivery is
// no defect.
func maybeStored(code devicepb.Code) bool {
	return code == devicepb.Code_STORE_UNAVAILABLE || code == devicepb.Code_INTERNAL
}
