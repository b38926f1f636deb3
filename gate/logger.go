package gate

import (
	"context"
	"fmt"
	"log/slog"
)

// gnetLogger routes gnet's own log lines to slog.
type gnetLogger struct{ log *slog.Logger }

func (l gnetLogger) logf(level slog.Level, format string, args ...any) {
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	l.log.Log(context.Background(), level, fmt.Sprintf(format, args...), "component", "gnet")
}

func (l gnetLogger) Debugf(format string, args ...any) { l.logf(slog.LevelDebug, format, args...) }
func (l gnetLogger) Infof(format string, args ...any)  { l.logf(slog.LevelDebug, format, args...) }
func (l gnetLogger) Warnf(format string, args ...any)  { l.logf(slog.LevelWarn, format, args...) }
func (l gnetLogger) Errorf(format string, args ...any) { l.logf(slog.LevelError, format, args...) }
func (l gnetLogger) Fatalf(format string, args ...any) { l.logf(slog.LevelError, format, args...) }
