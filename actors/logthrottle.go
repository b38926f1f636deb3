package actors

import (
	"log/slog"
	"sync"
	"time"
)

// warnThrottle keeps warnings that every identity may log at once (the
// store down: each actor's write or load fails) to one line a second:
// the others go at debug level and are counted in the next line
// ("suppressed"). A store outage would otherwise log a line per
// identity, thousands a second.
type warnThrottle struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// warn logs msg at warning level if none was logged in the last second
// (with the count of those suppressed since), else at debug level.
func (w *warnThrottle) warn(log *slog.Logger, now time.Time, msg string, args ...any) {
	w.mu.Lock()
	if now.Sub(w.last) < time.Second {
		w.suppressed++
		w.mu.Unlock()
		log.Debug(msg, args...)
		return
	}
	w.last = now
	n := w.suppressed
	w.suppressed = 0
	w.mu.Unlock()
	if n > 0 {
		args = append(args, "similar_suppressed", n)
	}
	log.Warn(msg, args...)
}
