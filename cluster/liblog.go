package cluster

import (
	"context"
	"log/slog"
)

// libHandler passes the library's log records on one level lower than
// they were logged (Info becomes Debug, Warn becomes Info, Error becomes
// Warn): Proto.Actor reports every routine step of starting and stopping
// at Info, which would drown the node's own lines at the default level,
// while its warnings and errors still show at Info and Warn.
type libHandler struct{ h slog.Handler }

// demote is how far the library's levels are lowered.
const demote = 4

func (l libHandler) Enabled(ctx context.Context, lv slog.Level) bool {
	return l.h.Enabled(ctx, lv-demote)
}

func (l libHandler) Handle(ctx context.Context, r slog.Record) error {
	r.Level -= demote
	return l.h.Handle(ctx, r)
}

func (l libHandler) WithAttrs(as []slog.Attr) slog.Handler { return libHandler{l.h.WithAttrs(as)} }

func (l libHandler) WithGroup(name string) slog.Handler { return libHandler{l.h.WithGroup(name)} }
