package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages/apipb"
)

// noHandler is a gate.Handler for a gate that never serves.
type noHandler struct{ gate.Handler }

// TestListsCopyKeepsTheEditsMadeMeanwhile: a gate with lists of its own
// copies another gate's when it can be reached again; an edit that
// reached it meanwhile (recorded), which the gate copied from had not
// applied yet when it answered, stays in force over the copy, and is
// stored. A copy that comes after another one replaced the lists (no
// recording on) changes nothing.
func TestListsCopyKeepsTheEditsMadeMeanwhile(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.OpenPebble(store.PebbleConfig{Dir: t.TempDir()}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := gate.DefaultConfig()
	cfg.AppSecrets = map[uint16][]byte{1: []byte("a secret of at least 32 bytes...")}
	g, err := gate.New(cfg, noHandler{}, prometheus.NewRegistry(), log)
	if err != nil {
		t.Fatal(err)
	}
	l := &durableLists{st: st, gate: g.Lists(), log: log}
	if err := l.start(context.Background(), gate.ListsSnapshot{UIDBlacklist: map[uint16][]string{1: {"lifted"}}}); err != nil {
		t.Fatal(err)
	}
	banned := func() string {
		s := g.Lists().Snapshot().UIDBlacklist[1]
		slices.Sort(s)
		return fmt.Sprint(s)
	}
	// A recording ended by a later one (the lease lost again) is not
	// replaced: the later one's copy will come.
	stale := l.Record()
	rec := l.Record()
	if err := l.Replace(stale, &gate.ListsSnapshot{}); err != nil {
		t.Fatal(err)
	}
	if got := banned(); got != "[lifted]" {
		t.Fatalf("the copy of an ended recording replaced the lists: %s", got)
	}
	// Two edits reach this gate: a ban, and the lifting of a ban the
	// copy still has.
	for _, e := range []*apipb.UpdateAccessListRequest{
		{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: []string{"meanwhile"}},
		{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Remove: []string{"lifted"}},
	} {
		if err := l.Edit(e); err != nil {
			t.Fatal(err)
		}
	}
	copied := gate.ListsSnapshot{UIDBlacklist: map[uint16][]string{1: {"while-out", "lifted"}}}
	if err := l.Replace(rec, &copied); err != nil {
		t.Fatal(err)
	}
	if got := banned(); got != "[meanwhile while-out]" {
		t.Fatalf("after the copy: %s, want [meanwhile while-out]", got)
	}
	if err := l.Replace(rec, &gate.ListsSnapshot{}); err != nil {
		t.Fatal(err)
	}
	if got := banned(); got != "[meanwhile while-out]" {
		t.Fatalf("a second copy replaced them: %s", got)
	}
	// Stored: a restart starts with them.
	l2 := &durableLists{st: st, gate: g.Lists(), log: log}
	if err := g.Lists().Update(gate.ListsSnapshot{}); err != nil {
		t.Fatal(err)
	}
	if err := l2.start(context.Background(), gate.ListsSnapshot{}); err != nil {
		t.Fatal(err)
	}
	if got := banned(); got != "[meanwhile while-out]" {
		t.Fatalf("stored: %s", got)
	}
}
