package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/courier-im/courier/cmd/courier-bench/internal/farm"
)

// Figure is one number of a run.
type Figure struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit,omitempty"`
}

// Latency is a distribution's percentiles, in microseconds.
type Latency struct {
	Name  string `json:"name"`
	Count int64  `json:"count"`
	P50   int64  `json:"p50_us"`
	P90   int64  `json:"p90_us"`
	P99   int64  `json:"p99_us"`
	P999  int64  `json:"p999_us"`
	Max   int64  `json:"max_us"`
}

func latency(name string, h *hdrhistogram.Histogram) Latency {
	return Latency{Name: name, Count: h.TotalCount(), P50: h.ValueAtQuantile(50), P90: h.ValueAtQuantile(90),
		P99: h.ValueAtQuantile(99), P999: h.ValueAtQuantile(99.9), Max: h.Max()}
}

// Machine describes where a run happened.
type Machine struct {
	Cores     int    `json:"cores"`
	CPU       string `json:"cpu"`
	MemoryGiB int    `json:"memory_gib"`
	Go        string `json:"go"`
	Kernel    string `json:"kernel"`
}

func thisMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if v, ok := strings.CutPrefix(s.Text(), "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			m.MemoryGiB = int((kb + 1<<19) >> 20)
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// NodeInfo says which node was measured.
type NodeInfo struct {
	Gate    string   `json:"gate"`
	API     string   `json:"api"`
	Metrics string   `json:"metrics,omitempty"`
	PID     int      `json:"pid,omitempty"`
	Spawned bool     `json:"spawned"`
	Args    []string `json:"args,omitempty"`
}

// Result is the outcome of one scenario run, as written to --out.
type Result struct {
	Scenario  string         `json:"scenario"`
	Started   time.Time      `json:"started"`
	Command   []string       `json:"command"`
	Machine   Machine        `json:"machine"`
	Node      NodeInfo       `json:"node"`
	Settings  map[string]any `json:"settings"`
	Figures   []Figure       `json:"figures"`
	Latencies []Latency      `json:"latencies"`
	// Lost counts messages the platform accepted that never arrived.
	Lost       int64    `json:"lost"`
	LostSample []string `json:"lost_sample,omitempty"`
	// Failures lists the other checks the run failed (checks.go), one
	// line each: the figures of such a run do not stand.
	Failures []string   `json:"failures,omitempty"`
	Devices  farm.Stats `json:"devices"`
	Notes    []string   `json:"notes,omitempty"`
}

func (r *Result) fig(name string, v float64, unit string) {
	r.Figures = append(r.Figures, Figure{Name: name, Value: v, Unit: unit})
}

func (r *Result) lat(name string, h *hdrhistogram.Histogram) {
	if h.TotalCount() > 0 {
		r.Latencies = append(r.Latencies, latency(name, h))
	}
}

func (r *Result) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// Figure returns the value of the named figure (false if absent).
func (r *Result) Figure(name string) (float64, bool) {
	for _, f := range r.Figures {
		if f.Name == name {
			return f.Value, true
		}
	}
	return 0, false
}

// LatencyOf returns the named distribution.
func (r *Result) LatencyOf(name string) (Latency, bool) {
	for _, l := range r.Latencies {
		if l.Name == name {
			return l, true
		}
	}
	return Latency{}, false
}

func formatValue(v float64) string {
	switch {
	case v == float64(int64(v)) && v < 1e15 && v > -1e15:
		return groupDigits(strconv.FormatInt(int64(v), 10))
	case v >= 100 || v <= -100:
		return groupDigits(strconv.FormatInt(int64(v+0.5), 10))
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func groupDigits(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func us(v int64) string {
	switch {
	case v >= 10_000_000:
		return fmt.Sprintf("%.1fs", float64(v)/1e6)
	case v >= 10_000:
		return fmt.Sprintf("%.1fms", float64(v)/1e3)
	case v >= 1000:
		return fmt.Sprintf("%.2fms", float64(v)/1e3)
	}
	return fmt.Sprintf("%dµs", v)
}

// WriteSummary prints r for a person.
func (r *Result) WriteSummary(w io.Writer) {
	fmt.Fprintf(w, "\n== %s  (%s, %d cores, %d GiB, %s)\n", r.Scenario, r.Started.Format(time.RFC3339), r.Machine.Cores, r.Machine.MemoryGiB, r.Machine.Go)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, f := range r.Figures {
		fmt.Fprintf(tw, "%s\t%s\t %s\t\n", f.Name, formatValue(f.Value), f.Unit)
	}
	tw.Flush()
	if len(r.Latencies) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "latency\tcount\tp50\tp90\tp99\tp99.9\tmax\t\n")
		for _, l := range r.Latencies {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", l.Name, groupDigits(strconv.FormatInt(l.Count, 10)),
				us(l.P50), us(l.P90), us(l.P99), us(l.P999), us(l.Max))
		}
		tw.Flush()
	}
	if r.Lost > 0 {
		fmt.Fprintf(w, "\nLOST %d messages accepted by the platform, e.g.:\n", r.Lost)
		for _, s := range r.LostSample {
			fmt.Fprintf(w, "  %s\n", s)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	for _, f := range r.Failures {
		fmt.Fprintf(w, "FAILED: %s\n", f)
	}
}

// WriteJSON writes r to path.
func (r *Result) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// ReadResult reads a result file.
func ReadResult(path string) (*Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

// Compare prints the figures and latency percentiles of several results
// side by side, one column per result.
func Compare(w io.Writer, names []string, rs []*Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\t")
	for i, r := range rs {
		fmt.Fprintf(tw, "%s\t", names[i]+" ("+r.Scenario+")")
	}
	fmt.Fprintln(tw)
	var rows []string
	seen := map[string]bool{}
	for _, r := range rs {
		for _, f := range r.Figures {
			if !seen[f.Name] {
				seen[f.Name] = true
				rows = append(rows, f.Name)
			}
		}
	}
	for _, name := range rows {
		fmt.Fprintf(tw, "%s\t", name)
		for _, r := range rs {
			if v, ok := r.Figure(name); ok {
				fmt.Fprintf(tw, "%s\t", formatValue(v))
			} else {
				fmt.Fprintf(tw, "-\t")
			}
		}
		fmt.Fprintln(tw)
	}
	seen = map[string]bool{}
	for _, r := range rs {
		for _, l := range r.Latencies {
			if seen[l.Name] {
				continue
			}
			seen[l.Name] = true
			for _, q := range []string{"p50", "p99", "p99.9"} {
				fmt.Fprintf(tw, "%s %s\t", l.Name, q)
				for _, r := range rs {
					l2, ok := r.LatencyOf(l.Name)
					switch {
					case !ok:
						fmt.Fprintf(tw, "-\t")
					case q == "p50":
						fmt.Fprintf(tw, "%s\t", us(l2.P50))
					case q == "p99":
						fmt.Fprintf(tw, "%s\t", us(l2.P99))
					default:
						fmt.Fprintf(tw, "%s\t", us(l2.P999))
					}
				}
				fmt.Fprintln(tw)
			}
		}
	}
	tw.Flush()
}
