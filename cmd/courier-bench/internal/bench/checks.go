package bench

import (
	"fmt"
	"time"
)

// The checks a run must pass for its figures to stand. Loss is apart
// (Result.Lost, which --allow-loss lets through); every other check that
// fails is a line of Result.Failures, and makes courier-bench exit 3.

// pendingCheck is what the node said (Presence) about the stored
// messages not acknowledged after the drain.
type pendingCheck struct {
	asked bool
	n     int64
	err   error
}

// failures lists the checks a push run failed. Refusals with
// RESOURCE_EXHAUSTED (the node's overload admission, expected at the
// highest rate) and fire-and-forget pushes the API said it dropped are
// not failures; redeliveries of a stored push are not either (at least
// once), as long as they are the same message.
func (t pushTotals) failures(ff bool, p pendingCheck) []string {
	var out []string
	add := func(n int64, format string) {
		if n > 0 {
			out = append(out, fmt.Sprintf(format, n))
		}
	}
	add(t.Mismatched, "%d pushes delivered with another seq, msg id or device than the API answered")
	if ff {
		add(t.Dups, "%d fire-and-forget pushes delivered again (they are delivered at most once)")
	} else {
		add(t.DupsOther, "%d pushes received again as another message (msg id, seq or device): not a redelivery")
	}
	add(t.Unexpected+t.Unknown, "%d pushes received though not accepted (the call failed, the API said dropped, or never pushed)")
	add(t.FailedOther, "%d pushes failed with another status than RESOURCE_EXHAUSTED or UNAVAILABLE STORE_BUSY (the notes say which)")
	out = append(out, latencyFailures(t.OutOfRange)...)
	switch {
	case p.err != nil:
		out = append(out, fmt.Sprintf("the check of what is pending on the node failed: %v", p.err))
	case p.asked:
		// A stored push lost on the way to its device is still pending:
		// it is counted as lost (which --allow-loss lets through), not
		// again here.
		add(max(p.n-t.Lost, 0), "%d stored messages still unacknowledged on the node after the drain (Presence), beyond those counted lost")
	}
	return out
}

// failures lists the checks a C2C or C2S run (what names it) failed.
// Refusals are not failures (admission, like UPSTREAM_BUSY); receipts
// again of the same message are not either (at least once).
func (t msgTotals) failures(what string) []string {
	var out []string
	add := func(n int64, format string) {
		if n > 0 {
			out = append(out, fmt.Sprintf(format, n, what))
		}
	}
	add(t.NoAck, "%d %s never answered (no ack by the end of the drain)")
	add(t.Mismatched, "%d %s received by another than the one sent to, or with another msg id than the ack said")
	add(t.DupsOther, "%d %s received again as another message (msg id or receiver): not a redelivery")
	add(t.Unexpected, "%d %s received though refused")
	return append(out, latencyFailures(t.OutOfRange)...)
}

// latencyFailures fails a run with n latency samples the histograms
// could not hold: its percentiles leave them out.
func latencyFailures(n int64) []string {
	if n == 0 {
		return nil
	}
	return []string{fmt.Sprintf("%d latency samples could not be recorded (negative: a clock stepped back; or over %v): the percentiles leave them out",
		n, time.Duration(histMax)*time.Microsecond)}
}
