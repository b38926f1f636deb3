package workload

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// Kind is a kind of stored message.
type Kind uint8

// Kinds of stored messages.
const (
	// KindPush is an app-server's stored S2C push.
	KindPush Kind = iota
	// KindC2C is a device's message to another device.
	KindC2C
)

func (k Kind) String() string {
	if k == KindC2C {
		return "c2c"
	}
	return "push"
}

// accept is a stored message the platform said it accepted: an API
// answer with its msg id (a duplicate answer names the first one's), or a
// C2C_ACK OK.
type accept struct {
	kind  Kind
	key   string // idempotency key, or "from/client id"
	uid   string // the receiver
	msgID string
	seq   uint32
	start time.Time // first attempt
	at    time.Time // when the answer came
}

// receipt is a stored message a device received (S2C with a seq, or
// C2C_PUSH); key comes from its payload.
type receipt struct {
	kind  Kind
	uid   string
	key   string
	msgID string
	seq   uint32
	at    time.Time
}

// Session is one logged-in session of a device.
type Session struct {
	Dev  int
	Gate string
	// Up is when LOGIN_ACK OK arrived; Down when the session ended (zero
	// while it lasts), and Why it ended.
	Up, Down time.Time
	Why      string
}

// mark is a fault applied at a moment.
type mark struct {
	name string
	at   time.Time
}

// Counts is the ledger of one kind of stored message.
type Counts struct {
	// Accepted: distinct messages the platform accepted (by idempotency
	// key or client message id).
	Accepted int64 `json:"accepted"`
	// Delivered: accepted messages a device received at least once.
	Delivered int64 `json:"delivered"`
	// Lost: accepted and never delivered.
	Lost int64 `json:"lost"`
	// StoredTwice: extra platform ids for one key (beyond at-least-once).
	StoredTwice int64 `json:"stored_twice"`
	// Redelivered: receipts of an id already received (within the
	// at-least-once contract).
	Redelivered int64 `json:"redelivered"`
	// OutOfOrder: first deliveries of a seq lower than one the identity
	// had already received.
	OutOfOrder int64 `json:"out_of_order"`
	// SeqReused: a seq received again with another msg id, or a msg id
	// received again with another seq (a redelivery keeps both).
	SeqReused int64 `json:"seq_reused"`
	// Misrouted: delivered to another identity than the one it was sent
	// to.
	Misrouted int64 `json:"misrouted"`
	// WrongSeq: first deliveries whose seq differs from the one the API
	// answered for that msg id (pushes only: a C2C_ACK carries no seq).
	WrongSeq int64 `json:"wrong_seq"`
	// Unconfirmed: received, but the sender never heard it was accepted
	// (it gave up, or the answer was lost and not retried yet).
	Unconfirmed int64 `json:"unconfirmed"`
	// LostSample names a few lost keys, for the report; DisorderSample a
	// few first deliveries out of order, seqs reused and wrong seqs.
	LostSample     []string `json:"lost_sample,omitempty"`
	DisorderSample []string `json:"disorder_sample,omitempty"`
}

// Upstream is the ledger of C2S messages.
type Upstream struct {
	// Accepted: distinct client ids answered C2S_ACK OK.
	Accepted int64 `json:"accepted"`
	// Delivered: accepted ones a subscriber received.
	Delivered int64 `json:"delivered"`
	// Lost: accepted, never received. C2S is held in the accepting
	// node's memory until an app-server acknowledges it (docs/protocol.md
	// §11): a crash of that node loses it by contract, other faults must
	// not.
	Lost int64 `json:"lost"`
	// Redelivered: deliveries of an id already received.
	Redelivered int64 `json:"redelivered"`
	// LostByGate: the lost ones by the gate that accepted them.
	LostByGate map[string]int64 `json:"lost_by_gate,omitempty"`
}

// FireAndForget counts unstored pushes (no guarantee: for information).
type FireAndForget struct {
	Sent      int64 `json:"sent"`
	Online    int64 `json:"online"` // the API said a delivery was attempted
	Failed    int64 `json:"failed"` // the call failed (not retried)
	Delivered int64 `json:"delivered"`
}

// Calls counts the app-servers' API calls.
type Calls struct {
	OK int64 `json:"ok"`
	// Retried: calls that failed retryably and were retried.
	Retried int64 `json:"retried"`
	// Failed: calls that failed with a status that must not be retried.
	Failed int64 `json:"failed"`
	// Abandoned: pushes still failing after Config.GiveUp.
	Abandoned int64 `json:"abandoned"`
	// Duplicates: answers that said the key was seen before.
	Duplicates int64 `json:"duplicates"`
	// Codes counts the failures by gRPC code.
	Codes map[string]int64 `json:"codes,omitempty"`
}

// Devices summarizes the devices' sessions.
type Devices struct {
	Sessions   int64            `json:"sessions"`
	Reconnects int64            `json:"reconnects"`
	Kicks      map[string]int64 `json:"kicks,omitempty"`
	// Unexpected lists what a well-behaved platform never sends these
	// devices (LOGGED_IN_ELSEWHERE on their current connection, ERROR
	// frames, refused logins other than retryable ones).
	Unexpected []string `json:"unexpected,omitempty"`
}

// FaultReport is what one fault cost.
type FaultReport struct {
	Name string    `json:"name"`
	At   time.Time `json:"at"`
	// Interruption: how long pushes stopped flowing: the longest wait of a
	// push, tried from a second before the fault until a second before the
	// next fault,
	// for its first delivery, counted from the fault (or from its first
	// try, if later). Median is the median over the identities of each
	// one's longest wait (a fault that moves some identities leaves the
	// others at the normal latency).
	Interruption time.Duration `json:"interruption"`
	Median       time.Duration `json:"median"`
	// APIWait: the longest an app-server kept trying one of those pushes
	// (counted the same way) until it was accepted.
	APIWait time.Duration `json:"api_wait"`
	// Reconnects: sessions that ended between this fault and the next;
	// PeakReconnects the most logins in any second of that time.
	Reconnects     int `json:"reconnects"`
	PeakReconnects int `json:"peak_reconnects"`
	// DevicesBack: from the fault until every device whose session ended
	// in the fault's first 10 s was logged in again (0: none ended;
	// NeverBack if one of them was not when the ledger was taken, so that
	// a bound on it fails).
	DevicesBack time.Duration `json:"devices_back"`
	// NotBack counts those devices that were not logged in again when the
	// ledger was taken; Clean fails if any.
	NotBack int `json:"not_back,omitempty"`
	// Worst names the push that waited longest and the device that came
	// back last, for a look at the logs.
	Worst string `json:"worst,omitempty"`
}

// NeverBack is FaultReport.DevicesBack when a device did not come back:
// longer than any bound a caller may check it against.
const NeverBack = time.Duration(math.MaxInt64)

// Ledger is the exact account of a run.
type Ledger struct {
	Pushes        Counts        `json:"pushes"`
	C2C           Counts        `json:"c2c"`
	C2S           Upstream      `json:"c2s"`
	FireAndForget FireAndForget `json:"fire_and_forget"`
	Calls         Calls         `json:"calls"`
	Devices       Devices       `json:"devices"`
	Faults        []FaultReport `json:"faults,omitempty"`
}

// Clean reports whether nothing accepted was lost, stored twice,
// delivered out of order, misrouted, given a reused seq or another seq
// than the API answered, no device saw anything unexpected, and every
// device a fault disconnected came back. C2S lost to a crash is allowed
// when c2sLossOK.
func (l *Ledger) Clean(c2sLossOK bool) bool {
	return len(l.problems(func(string) bool { return c2sLossOK })) == 0
}

// CleanButC2SOf is Clean for a run in which the nodes of gates crashed:
// only C2S those gates accepted may be lost (their node held them in
// memory); what the others accepted must arrive.
func (l *Ledger) CleanButC2SOf(gates ...string) bool { return len(l.Problems(gates...)) == 0 }

// Problems says why CleanButC2SOf(crashedGates...) is false, one line a
// reason; none when it is true.
func (l *Ledger) Problems(crashedGates ...string) []string {
	return l.problems(func(gate string) bool { return slices.Contains(crashedGates, gate) })
}

// problems lists what keeps the ledger from being clean; C2S lost
// through a gate is allowed if c2sLossOK(gate) ("": a gate unknown).
func (l *Ledger) problems(c2sLossOK func(gate string) bool) []string {
	var out []string
	add := func(n int64, format string, args ...any) {
		if n != 0 {
			out = append(out, fmt.Sprintf(format, append([]any{n}, args...)...))
		}
	}
	for _, k := range []struct {
		name string
		c    Counts
	}{{"push", l.Pushes}, {"c2c", l.C2C}} {
		add(k.c.Lost, "%d %s accepted and never delivered", k.name)
		add(k.c.StoredTwice, "%d %s stored twice", k.name)
		add(k.c.OutOfOrder, "%d %s first delivered out of order", k.name)
		add(k.c.SeqReused, "%d %s seqs reused", k.name)
		add(k.c.WrongSeq, "%d %s delivered with another seq than the API answered", k.name)
		add(k.c.Misrouted, "%d %s delivered to another identity", k.name)
	}
	var attributed int64
	for _, gate := range slices.Sorted(maps.Keys(l.C2S.LostByGate)) {
		n := l.C2S.LostByGate[gate]
		attributed += n
		if !c2sLossOK(gate) {
			add(n, "%d c2s lost that gate %s accepted (its node did not crash)", gate)
		}
	}
	if !c2sLossOK("") {
		add(l.C2S.Lost-attributed, "%d c2s lost, accepted by no known gate")
	}
	add(l.Calls.Failed, "%d API calls failed with a status not to retry")
	// A push abandoned (retried for Config.GiveUp) is an outage the
	// ledger would otherwise count as neither lost nor failed.
	add(l.Calls.Abandoned, "%d pushes abandoned after retrying for the give-up time")
	add(int64(len(l.Devices.Unexpected)), "%d unexpected things seen by devices")
	for _, f := range l.Faults {
		add(int64(f.NotBack), "%d devices never came back after fault %q", f.Name)
	}
	return out
}

// String prints the ledger for people.
func (l *Ledger) String() string {
	var b strings.Builder
	row := func(name string, c Counts) {
		fmt.Fprintf(&b, "%-6s accepted %d  delivered %d  lost %d  stored twice %d  redelivered %d  out of order %d  seq reused %d  wrong seq %d  misrouted %d  unconfirmed %d\n",
			name, c.Accepted, c.Delivered, c.Lost, c.StoredTwice, c.Redelivered, c.OutOfOrder, c.SeqReused, c.WrongSeq, c.Misrouted, c.Unconfirmed)
		if len(c.LostSample) > 0 {
			fmt.Fprintf(&b, "       lost, for example: %s\n", strings.Join(c.LostSample, ", "))
		}
		for _, d := range c.DisorderSample {
			fmt.Fprintf(&b, "       %s\n", d)
		}
	}
	row("push", l.Pushes)
	row("c2c", l.C2C)
	fmt.Fprintf(&b, "c2s    accepted %d  delivered %d  lost %d %v  redelivered %d\n", l.C2S.Accepted, l.C2S.Delivered, l.C2S.Lost, l.C2S.LostByGate, l.C2S.Redelivered)
	fmt.Fprintf(&b, "f&f    sent %d  online %d  delivered %d  failed %d\n", l.FireAndForget.Sent, l.FireAndForget.Online,
		l.FireAndForget.Delivered, l.FireAndForget.Failed)
	fmt.Fprintf(&b, "calls  ok %d  retried %d  failed %d  abandoned %d  duplicates %d  %v\n",
		l.Calls.OK, l.Calls.Retried, l.Calls.Failed, l.Calls.Abandoned, l.Calls.Duplicates, l.Calls.Codes)
	fmt.Fprintf(&b, "devices sessions %d  reconnects %d  kicks %v  unexpected %d\n",
		l.Devices.Sessions, l.Devices.Reconnects, l.Devices.Kicks, len(l.Devices.Unexpected))
	for i, u := range l.Devices.Unexpected {
		if i == 5 {
			fmt.Fprintf(&b, "       ... %d more\n", len(l.Devices.Unexpected)-5)
			break
		}
		fmt.Fprintf(&b, "       %s\n", u)
	}
	for _, f := range l.Faults {
		back := f.DevicesBack.Round(time.Millisecond).String()
		if f.NotBack > 0 {
			back = fmt.Sprintf("never (%d not back)", f.NotBack)
		}
		fmt.Fprintf(&b, "fault  %-28s interruption %v (median %v)  api wait %v  reconnects %d (peak %d/s)  devices back %s\n",
			f.Name, f.Interruption.Round(time.Millisecond), f.Median.Round(time.Millisecond),
			f.APIWait.Round(time.Millisecond), f.Reconnects, f.PeakReconnects, back)
		if f.Worst != "" {
			fmt.Fprintf(&b, "       worst: %s\n", f.Worst)
		}
	}
	return b.String()
}

// count computes the ledger of one kind from what was accepted and what
// was received. It is a pure function of its inputs. Order and seqs are
// checked over both kinds together (S2C and C2C share an identity's
// seqs) and counted in the kind of the receipt that breaks them.
func count(kind Kind, accepts []accept, receipts []receipt) Counts {
	var c Counts
	ids := map[string]map[string]bool{} // key -> msg ids (accepted or received)
	accepted := map[string]bool{}
	to := map[string]string{}     // key -> the identity it was sent to
	apiSeq := map[string]uint32{} // msg id -> the seq the API answered (0: unknown)
	for _, a := range accepts {
		if a.kind != kind {
			continue
		}
		accepted[a.key] = true
		to[a.key] = a.uid
		if _, ok := apiSeq[a.msgID]; !ok && a.seq != 0 {
			apiSeq[a.msgID] = a.seq // a duplicate answer names the first one's
		}
		if ids[a.key] == nil {
			ids[a.key] = map[string]bool{}
		}
		ids[a.key][a.msgID] = true
	}
	c.Accepted = int64(len(accepted))

	rs := append([]receipt(nil), receipts...)
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].at.Before(rs[j].at) })
	note := func(format string, args ...any) {
		if len(c.DisorderSample) < 5 {
			c.DisorderSample = append(c.DisorderSample, fmt.Sprintf(format, args...))
		}
	}
	seqOf := map[string]uint32{} // msg ids received, with their seq
	received := map[string]bool{}
	maxSeq := map[string]uint32{}
	bySeq := map[string]map[uint32]string{}
	for _, r := range rs {
		mine := r.kind == kind
		if seq, ok := seqOf[r.msgID]; ok {
			if mine {
				c.Redelivered++
				if seq != r.seq {
					c.SeqReused++
					note("%s: %s delivered again with seq %d, first with %d", r.uid, r.msgID, r.seq, seq)
				}
			}
			continue
		}
		seqOf[r.msgID] = r.seq
		if r.seq < maxSeq[r.uid] && mine {
			c.OutOfOrder++
			note("%s: seq %d (%s) first received at %s, after seq %d",
				r.uid, r.seq, r.msgID, r.at.Format("15:04:05.000"), maxSeq[r.uid])
		}
		maxSeq[r.uid] = max(maxSeq[r.uid], r.seq)
		if bySeq[r.uid] == nil {
			bySeq[r.uid] = map[uint32]string{}
		}
		if other, ok := bySeq[r.uid][r.seq]; ok && other != r.msgID && mine {
			c.SeqReused++
			note("%s: seq %d reused for %s (first %s) at %s", r.uid, r.seq, r.msgID, other, r.at.Format("15:04:05.000"))
		}
		bySeq[r.uid][r.seq] = r.msgID
		if !mine {
			continue
		}
		received[r.key] = true
		if want, ok := apiSeq[r.msgID]; ok && want != r.seq {
			c.WrongSeq++
			note("%s: %s first received with seq %d, the API answered %d", r.uid, r.msgID, r.seq, want)
		}
		if u, ok := to[r.key]; ok && u != r.uid {
			c.Misrouted++
			note("%s received %s, sent to %s", r.uid, r.key, u)
		}
		if ids[r.key] == nil {
			ids[r.key] = map[string]bool{}
		}
		ids[r.key][r.msgID] = true
	}
	var lost []string
	for key := range accepted {
		if received[key] {
			c.Delivered++
		} else {
			lost = append(lost, key)
		}
	}
	for key := range received {
		if !accepted[key] {
			c.Unconfirmed++
		}
	}
	for _, set := range ids {
		if len(set) > 1 {
			c.StoredTwice += int64(len(set) - 1)
		}
	}
	c.Lost = int64(len(lost))
	slices.Sort(lost)
	c.LostSample = lost[:min(len(lost), 5)]
	return c
}

// faultReports measures each fault from the pushes and sessions.
func faultReports(marks []mark, accepts []accept, receipts []receipt, sessions []Session) []FaultReport {
	firstRecv := map[string]time.Time{} // push key -> first receipt
	for _, r := range receipts {
		if r.kind != KindPush {
			continue
		}
		if t, ok := firstRecv[r.key]; !ok || r.at.Before(t) {
			firstRecv[r.key] = r.at
		}
	}
	var out []FaultReport
	for i, m := range marks {
		end := time.Time{}
		if i+1 < len(marks) {
			end = marks[i+1].at
		}
		f := FaultReport{Name: m.name, At: m.at}
		// How long pushes tried from just before the fault until the next
		// one waited for their first delivery, counted from the fault (or
		// from their first try, if later). Per identity, the longest.
		worst := map[string]time.Duration{}
		var worstPush string
		var worstWait time.Duration
		for _, a := range accepts {
			// From a second before this fault to a second before the next
			// (the next one counts those).
			if a.kind != KindPush || a.start.Before(m.at.Add(-time.Second)) || (!end.IsZero() && !a.start.Before(end.Add(-time.Second))) {
				continue
			}
			from := a.start
			if from.Before(m.at) {
				from = m.at
			}
			if wait := a.at.Sub(from); wait > f.APIWait {
				f.APIWait = wait
			}
			t, ok := firstRecv[a.key]
			if !ok {
				continue // lost: counted as such
			}
			if wait := t.Sub(from); wait > worst[a.uid] {
				worst[a.uid] = wait
				if wait > worstWait {
					worstWait = wait
					worstPush = fmt.Sprintf("push %s to %s tried %+v, accepted %+v, received %+v after the fault",
						a.key, a.uid, a.start.Sub(m.at).Round(time.Millisecond), a.at.Sub(m.at).Round(time.Millisecond),
						t.Sub(m.at).Round(time.Millisecond))
				}
			}
		}
		var gaps []time.Duration
		for _, d := range worst {
			gaps = append(gaps, d)
		}
		if len(gaps) > 0 {
			slices.Sort(gaps)
			f.Interruption = gaps[len(gaps)-1]
			f.Median = gaps[len(gaps)/2]
		}
		// Sessions ended by the fault, and when their devices were back:
		// for each device whose session ended in the fault's first 10 s,
		// the first login after its last such end.
		var ups []time.Time
		for _, s := range sessions {
			if !s.Up.Before(m.at) && (end.IsZero() || s.Up.Before(end)) {
				ups = append(ups, s.Up)
			}
		}
		f.PeakReconnects = PeakRate(ups, time.Second)
		lastDown := map[int]time.Time{}
		for _, s := range sessions {
			if s.Down.IsZero() || s.Down.Before(m.at) || (!end.IsZero() && !s.Down.Before(end)) {
				continue
			}
			f.Reconnects++
			if s.Down.Before(m.at.Add(10*time.Second)) && s.Down.After(lastDown[s.Dev]) {
				lastDown[s.Dev] = s.Down
			}
		}
		lastDev, notBack := "", -1
		for dev, down := range lastDown {
			var up time.Time
			var gate string
			for _, s := range sessions {
				if s.Dev == dev && !s.Up.Before(down) && (up.IsZero() || s.Up.Before(up)) {
					up, gate = s.Up, s.Gate
				}
			}
			if up.IsZero() {
				f.NotBack++
				if notBack < 0 || dev < notBack {
					notBack = dev
				}
				continue
			}
			if back := up.Sub(m.at); back > f.DevicesBack {
				f.DevicesBack = back
				lastDev = fmt.Sprintf("device %d back on %s", dev, gate)
			}
		}
		if f.NotBack > 0 {
			f.DevicesBack = NeverBack
			lastDev = fmt.Sprintf("%d devices never came back, device %d among them", f.NotBack, notBack)
		}
		f.Worst = strings.Trim(worstPush+"; "+lastDev, "; ")
		out = append(out, f)
	}
	return out
}

// PeakRate returns the most events (times) in any window of length w.
func PeakRate(times []time.Time, w time.Duration) int {
	ts := slices.Clone(times)
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	best, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= w {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}

// sortSessions orders sessions by start.
func sortSessions(s []Session) {
	slices.SortFunc(s, func(a, b Session) int { return cmp.Or(a.Up.Compare(b.Up), cmp.Compare(a.Dev, b.Dev)) })
}
