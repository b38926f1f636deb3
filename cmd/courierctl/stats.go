package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/courier-im/courier/messages/apipb"
)

func statsCmd() *cobra.Command {
	var f apiFlags
	var app uint32
	var msgtypes []uint
	var window time.Duration
	var asJSON bool
	c := &cobra.Command{
		Use:   "stats",
		Short: "Show delivery statistics per msgtype: counts, rates, ack latency",
		Long: `Show the delivery statistics of an app, per msgtype and summed (all),
of the whole cluster whichever node you ask: over the recent window
(rounded up to 10 s) and since each node started. Counts are messages;
rate is messages accepted per second over the window; arrival is acked /
accepted (stored messages); ack latency is the time from acceptance to the
device's acknowledgement. Nodes that did not answer in time are named
first, and on standard error: the counts leave them out, and the command
exits 3 (a later try may get them all). --json prints the API's answer as
it is, for machines.`,
		RunE: func(*cobra.Command, []string) error {
			types, err := toU32(msgtypes)
			if err != nil {
				return err
			}
			if window != 0 && window < time.Second {
				return usageError{fmt.Errorf("--window %v: at least 1s (0: the node's default)", window)}
			}
			if window > maxStatsWindow {
				return usageError{fmt.Errorf("--window %v: at most %v", window, maxStatsWindow)}
			}
			cl, ctx, done, err := f.dial()
			if err != nil {
				return err
			}
			defer done()
			resp, err := cl.Stats(ctx, &apipb.StatsRequest{AppCode: app, Msgtypes: types, WindowSeconds: uint32(window / time.Second)})
			if err != nil {
				return err
			}
			if asJSON {
				printJSON(f.out, resp)
			} else {
				printStats(f.out, resp)
			}
			if len(resp.NodesMissing) > 0 {
				// Printed all the same (the others' counts are worth
				// seeing), but a script must not take them for the
				// cluster's: exitRetry, as the next try may have them all.
				return incomplete{fmt.Errorf("incomplete answer: %s did not answer in time; the counts leave them out",
					strings.Join(resp.NodesMissing, ", "))}
			}
			return nil
		},
	}
	f.bind(c)
	c.Flags().Uint32Var(&app, "app", 1, "appcode")
	c.Flags().UintSliceVar(&msgtypes, "msgtype", nil, "only these msgtypes")
	c.Flags().DurationVar(&window, "window", time.Minute, "recent window (up to 1h; rounded up to 10s, plus the current 10s slot's elapsed part: the table says what the counts cover)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the answer as JSON")
	return c
}

// maxStatsWindow is the longest --window a node takes (its statistics
// keep an hour of 10-second slots).
const maxStatsWindow = time.Hour

// printStats writes the statistics as two tables: the window, and since
// the node started.
func printStats(w io.Writer, r *apipb.StatsResponse) {
	win := time.Duration(r.WindowSeconds) * time.Second
	if len(r.NodesMissing) > 0 {
		fmt.Fprintf(w, "incomplete: %s did not answer; their counts are left out\n\n", strings.Join(r.NodesMissing, ", "))
	}
	fmt.Fprintf(w, "app %d, last %v:\n", r.AppCode, win)
	table(w, r, true, win)
	fmt.Fprintf(w, "\napp %d, since the node started:\n", r.AppCode)
	table(w, r, false, win)
}

func table(w io.Writer, r *apipb.StatsResponse, window bool, win time.Duration) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	rateHead := ""
	if window {
		rateHead = "RATE (msg/s)\t"
	}
	fmt.Fprintf(tw, "MSGTYPE\tACCEPTED\tDELIVERED\tACKED\tRETRIED\tEXPIRED\tDROPPED\t%sARRIVAL\tACK p50\tp90\tp99\tmax\t\n", rateHead)
	rows := append([]*apipb.MsgtypeStats(nil), r.Msgtypes...)
	names := make([]string, 0, len(rows)+1)
	for _, m := range rows {
		names = append(names, strconv.Itoa(int(m.Msgtype)))
	}
	if r.All != nil && len(r.Msgtypes) > 1 {
		rows, names = append(rows, r.All), append(names, "all")
	}
	if len(rows) == 0 {
		fmt.Fprintln(tw, "(nothing counted yet)\t")
	}
	for i, m := range rows {
		name := names[i]
		c, lat, arrival := m.Total, m.AckLatencyTotal, m.ArrivalRateTotal
		if window {
			c, lat, arrival = m.Window, m.AckLatencyWindow, m.ArrivalRateWindow
		}
		if c == nil {
			c = &apipb.Counters{}
		}
		rate := ""
		if window {
			perSec := float64(c.Accepted) / win.Seconds()
			rate = fmt.Sprintf("%.2f\t", perSec)
			if perSec >= 100 {
				rate = fmt.Sprintf("%.0f\t", perSec)
			}
		}
		arr := "-"
		if c.Accepted > 0 {
			arr = fmt.Sprintf("%.1f%%", 100*arrival)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s%s\t%s\t%s\t%s\t%s\t\n", name, c.Accepted, c.Delivered, c.Acked, c.Retried,
			c.Expired, c.Dropped, rate, arr, us(lat, lat.GetP50Us()), us(lat, lat.GetP90Us()), us(lat, lat.GetP99Us()), us(lat, lat.GetMaxUs()))
	}
	tw.Flush()
}

// us renders a latency in microseconds with its unit ("-" when nothing
// was measured).
func us(l *apipb.Latency, v uint64) string {
	if l.GetCount() == 0 {
		return "-"
	}
	d := time.Duration(v) * time.Microsecond
	switch {
	case d < time.Millisecond:
		return strconv.FormatUint(v, 10) + "µs"
	case d < time.Second:
		return strconv.FormatFloat(float64(v)/1e3, 'f', 1, 64) + "ms"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + "s"
}
