package workload

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCount(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	acc := func(key, uid, id string, seq uint32) accept {
		return accept{kind: KindPush, key: key, uid: uid, msgID: id, seq: seq, start: t0, at: t0}
	}
	rcv := func(key, uid, id string, seq uint32, ms int) receipt {
		return receipt{kind: KindPush, key: key, uid: uid, msgID: id, seq: seq, at: at(ms)}
	}
	cases := []struct {
		name     string
		accepts  []accept
		receipts []receipt
		want     Counts
	}{
		{"all delivered once", []accept{acc("k1", "a", "m1", 1), acc("k2", "a", "m2", 2)},
			[]receipt{rcv("k1", "a", "m1", 1, 1), rcv("k2", "a", "m2", 2, 2)},
			Counts{Accepted: 2, Delivered: 2}},
		{"one lost", []accept{acc("k1", "a", "m1", 1), acc("k2", "a", "m2", 2)},
			[]receipt{rcv("k1", "a", "m1", 1, 1)},
			Counts{Accepted: 2, Delivered: 1, Lost: 1, LostSample: []string{"k2"}}},
		{"redelivered is within the contract", []accept{acc("k1", "a", "m1", 1)},
			[]receipt{rcv("k1", "a", "m1", 1, 1), rcv("k1", "a", "m1", 1, 5)},
			Counts{Accepted: 1, Delivered: 1, Redelivered: 1}},
		{"a retried call answered as a duplicate counts once", []accept{acc("k1", "a", "m1", 1), acc("k1", "a", "m1", 1)},
			[]receipt{rcv("k1", "a", "m1", 1, 1)},
			Counts{Accepted: 1, Delivered: 1}},
		{"stored twice: a second id for one key", []accept{acc("k1", "a", "m1", 1), acc("k1", "a", "m9", 2)},
			[]receipt{rcv("k1", "a", "m1", 1, 1), rcv("k1", "a", "m9", 2, 2)},
			Counts{Accepted: 1, Delivered: 1, StoredTwice: 1}},
		{"stored twice, seen only by the device", []accept{acc("k1", "a", "m1", 1)},
			[]receipt{rcv("k1", "a", "m1", 1, 1), rcv("k1", "a", "m7", 2, 2)},
			Counts{Accepted: 1, Delivered: 1, StoredTwice: 1}},
		{"out of order first deliveries", []accept{acc("k1", "a", "m1", 1), acc("k2", "a", "m2", 2)},
			[]receipt{rcv("k2", "a", "m2", 2, 1), rcv("k1", "a", "m1", 1, 2)},
			Counts{Accepted: 2, Delivered: 2, OutOfOrder: 1}},
		{"a late redelivery is not out of order", []accept{acc("k1", "a", "m1", 1), acc("k2", "a", "m2", 2)},
			[]receipt{rcv("k1", "a", "m1", 1, 1), rcv("k2", "a", "m2", 2, 2), rcv("k1", "a", "m1", 1, 3)},
			Counts{Accepted: 2, Delivered: 2, Redelivered: 1}},
		{"order is per identity", []accept{acc("k1", "a", "m1", 5), acc("k2", "b", "m2", 1)},
			[]receipt{rcv("k1", "a", "m1", 5, 1), rcv("k2", "b", "m2", 1, 2)},
			Counts{Accepted: 2, Delivered: 2}},
		{"seq reused for another message", []accept{acc("k1", "a", "m1", 1), acc("k2", "a", "m2", 1)},
			[]receipt{rcv("k1", "a", "m1", 1, 1), rcv("k2", "a", "m2", 1, 2)},
			Counts{Accepted: 2, Delivered: 2, SeqReused: 1}},
		{"received but never confirmed to the sender", nil,
			[]receipt{rcv("k1", "a", "m1", 1, 1)},
			Counts{Unconfirmed: 1}},
		{"delivered to another identity", []accept{acc("k1", "a", "m1", 1)},
			[]receipt{rcv("k1", "b", "m1", 1, 1)},
			Counts{Accepted: 1, Delivered: 1, Misrouted: 1}},
		{"redelivered with another seq", []accept{acc("k1", "a", "m1", 1)},
			[]receipt{rcv("k1", "a", "m1", 1, 1), rcv("k1", "a", "m1", 2, 5)},
			Counts{Accepted: 1, Delivered: 1, Redelivered: 1, SeqReused: 1}},
		// In order, no seq reused: only the API's answer tells it apart.
		{"delivered with another seq than the API answered", []accept{acc("k1", "a", "m1", 1), acc("k2", "a", "m2", 2)},
			[]receipt{rcv("k1", "a", "m1", 1, 1), rcv("k2", "a", "m2", 3, 2)},
			Counts{Accepted: 2, Delivered: 2, WrongSeq: 1}},
		{"a seq the API did not give (C2C) is not compared", []accept{acc("k1", "a", "m1", 0)},
			[]receipt{rcv("k1", "a", "m1", 7, 1)},
			Counts{Accepted: 1, Delivered: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := count(KindPush, tc.accepts, tc.receipts)
			if len(got.LostSample) == 0 {
				got.LostSample = nil
			}
			if got.Accepted != tc.want.Accepted || got.Delivered != tc.want.Delivered || got.Lost != tc.want.Lost ||
				got.StoredTwice != tc.want.StoredTwice || got.Redelivered != tc.want.Redelivered ||
				got.OutOfOrder != tc.want.OutOfOrder || got.SeqReused != tc.want.SeqReused ||
				got.Unconfirmed != tc.want.Unconfirmed || got.Misrouted != tc.want.Misrouted || got.WrongSeq != tc.want.WrongSeq ||
				!slices.Equal(got.LostSample, tc.want.LostSample) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
			// Clean fails on every defect the case has.
			l := Ledger{Pushes: got}
			defect := got.Lost+got.StoredTwice+got.OutOfOrder+got.SeqReused+got.Misrouted+got.WrongSeq > 0
			if l.Clean(false) == defect {
				t.Fatalf("clean %v with %+v", l.Clean(false), got)
			}
			// The other kind sees nothing.
			if o := count(KindC2C, tc.accepts, tc.receipts); o.Accepted != 0 || o.Delivered != 0 || o.Unconfirmed != 0 {
				t.Fatalf("c2c counted push records: %+v", o)
			}
		})
	}
}

// TestCountAcrossKinds: S2C and C2C share an identity's seqs: order and
// reuse are checked over both, and counted in the kind of the receipt
// that breaks them.
func TestCountAcrossKinds(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	accepts := []accept{
		{kind: KindPush, key: "p12", uid: "a", msgID: "m12", seq: 12},
		{kind: KindC2C, key: "c10", uid: "a", msgID: "m10", seq: 10},
		{kind: KindC2C, key: "c12", uid: "a", msgID: "x12", seq: 12},
	}
	receipts := []receipt{
		{kind: KindPush, key: "p12", uid: "a", msgID: "m12", seq: 12, at: at(1)},
		{kind: KindC2C, key: "c10", uid: "a", msgID: "m10", seq: 10, at: at(2)}, // after 12
		{kind: KindC2C, key: "c12", uid: "a", msgID: "x12", seq: 12, at: at(3)}, // 12 again
	}
	push, c2c := count(KindPush, accepts, receipts), count(KindC2C, accepts, receipts)
	if push.OutOfOrder != 0 || push.SeqReused != 0 || push.Delivered != 1 {
		t.Fatalf("push %+v", push)
	}
	if c2c.OutOfOrder != 1 || c2c.SeqReused != 1 || c2c.Delivered != 2 || len(c2c.DisorderSample) != 2 {
		t.Fatalf("c2c %+v", c2c)
	}
}

func TestFaultReports(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	accepts := []accept{
		// Before the fault: not measured.
		{kind: KindPush, key: "k0", uid: "a", msgID: "m0", start: at(-500), at: at(-490)},
		// Caught in the fault: tried at -100, accepted after retries at 2900.
		{kind: KindPush, key: "k1", uid: "a", msgID: "m1", start: at(-100), at: at(2900)},
		// First tried after the fault.
		{kind: KindPush, key: "k2", uid: "a", msgID: "m2", start: at(100), at: at(3000)},
		{kind: KindPush, key: "k3", uid: "b", msgID: "m3", start: at(200), at: at(210)},
	}
	receipts := []receipt{
		{kind: KindPush, key: "k0", uid: "a", msgID: "m0", at: at(-480)},
		{kind: KindPush, key: "k1", uid: "a", msgID: "m1", at: at(2950)},
		{kind: KindPush, key: "k2", uid: "a", msgID: "m2", at: at(3100)},
		{kind: KindPush, key: "k3", uid: "b", msgID: "m3", at: at(220)},
	}
	sessions := []Session{
		{Dev: 0, Up: at(-5000), Down: at(50)},
		{Dev: 0, Up: at(1500)},
		{Dev: 1, Up: at(-5000)},
	}
	r := faultReports([]mark{{"kill", t0}}, accepts, receipts, sessions)
	if len(r) != 1 {
		t.Fatal(r)
	}
	f := r[0]
	// k1: tried before the fault, delivered 2950 ms after it; k2: tried
	// 100 ms after, delivered 3000 ms after that try.
	if f.Interruption != 3000*time.Millisecond || f.Median != 3000*time.Millisecond || f.APIWait != 2900*time.Millisecond ||
		f.Reconnects != 1 || f.DevicesBack != 1500*time.Millisecond || f.PeakReconnects != 1 {
		t.Fatalf("%+v", f)
	}
	// A device that never came back: a bound on DevicesBack fails, and so
	// does Clean.
	sessions = sessions[:1]
	r = faultReports([]mark{{"kill", t0}}, accepts, receipts, sessions)
	if f := r[0]; f.NotBack != 1 || f.DevicesBack != NeverBack || !(f.DevicesBack > 6*time.Second) {
		t.Fatalf("%+v", f)
	}
	if l := (Ledger{Faults: r}); l.Clean(true) || l.CleanButC2SOf() {
		t.Fatal("a ledger with a device that never came back is clean")
	}
	if l := (Ledger{Faults: r}); !strings.Contains(l.String(), "devices back never (1 not back)") {
		t.Fatalf("the ledger says %q", l.String())
	}
}

func TestPeakRate(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var ts []time.Time
	for _, ms := range []int{0, 100, 200, 1500, 1600, 1700, 1800, 5000} {
		ts = append(ts, t0.Add(time.Duration(ms)*time.Millisecond))
	}
	if got := PeakRate(ts, time.Second); got != 4 {
		t.Fatalf("peak %d, want 4", got)
	}
	if got := PeakRate(nil, time.Second); got != 0 {
		t.Fatalf("peak of nothing %d", got)
	}
}

// TestSettleStoredGivesUpOnC2SOnly: after a crash, C2S the dead node held
// may be lost by contract. SettleStored stops waiting for them alone
// after its grace (Settle would wait for them until its context ends),
// but never gives up on a stored message.
func TestSettleStoredGivesUpOnC2SOnly(t *testing.T) {
	w := &Workload{rec: newRecorder()}
	w.rec.c2sAccepted("c2s-1", "gate-a") // accepted, never received

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := w.Settle(ctx); err == nil {
		t.Fatal("Settle returned with a C2S undelivered")
	}
	if err := w.SettleStored(context.Background(), 100*time.Millisecond); err != nil {
		t.Fatalf("SettleStored with only a C2S missing: %v", err)
	}
	if l := w.Ledger(); l.C2S.Lost != 1 || l.Clean(false) || !l.Clean(true) {
		t.Fatalf("the ledger: C2S %+v, clean %v/%v", l.C2S, l.Clean(false), l.Clean(true))
	}
	// Lost by the gate that crashed: allowed; by another: not.
	if l := w.Ledger(); !l.CleanButC2SOf("gate-a") || l.CleanButC2SOf("gate-b") {
		t.Fatalf("C2S lost by gate-a: clean but gate-a's %v, but gate-b's %v", l.CleanButC2SOf("gate-a"), l.CleanButC2SOf("gate-b"))
	}
	l := w.Ledger()
	if p := l.Problems("gate-b"); len(p) != 1 || !strings.Contains(p[0], "1 c2s lost that gate gate-a accepted") {
		t.Fatalf("problems %q", p)
	}

	w.rec.accepted(accept{kind: KindPush, key: "push-1", uid: "u"}) // a stored message missing too
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if err := w.SettleStored(ctx2, 10*time.Millisecond); err == nil {
		t.Fatal("SettleStored gave up on a stored message")
	}
}
