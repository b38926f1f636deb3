package actors

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestWarnThrottle: of many identities' warnings in one second, one is
// logged at warning level; the next, a second later, counts the others.
func TestWarnThrottle(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var w warnThrottle
	now := time.Now()
	for i := range 1000 {
		w.warn(log, now.Add(time.Duration(i)*time.Microsecond), "actors: loading identity failed", "n", i)
	}
	w.warn(log, now.Add(time.Second), "actors: loading identity failed", "n", 1000)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "similar_suppressed=999") {
		t.Fatalf("logged:\n%s", buf.String())
	}
}
