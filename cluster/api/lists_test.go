package api

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
)

// fakeLists fails every change with err.
type fakeLists struct{ err error }

func (f fakeLists) Snapshot(context.Context) (gate.ListsSnapshot, error) {
	return gate.ListsSnapshot{}, nil
}

func (f fakeLists) Edit(context.Context, *apipb.UpdateAccessListRequest) error { return f.err }

// TestListEditErrors: a change that does not parse is the caller's
// mistake (INVALID_ARGUMENT); one that could not be stored is not
// (UNAVAILABLE: nothing changed, retry).
func TestListEditErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("%w: ip_blacklist: bad", gate.ErrBadLists), codes.InvalidArgument},
		{errors.New("store: unavailable: lists: connection refused"), codes.Unavailable},
	} {
		s := New(Deps{Req: &fakeReq{}, Limits: DefaultLimits(), Lists: fakeLists{tc.err}})
		_, err := s.UpdateAccessList(scoped(1), &apipb.UpdateAccessListRequest{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: []string{"u"}})
		if status.Code(err) != tc.code {
			t.Errorf("Edit failing with %q: %v, want %v", tc.err, err, tc.code)
		}
	}
}

// TestListEditsAreBounded: one call adds or removes at most api.max-batch
// entries (each added uid is also a kick), a list holds at most
// MaxListEntries (refused whole, nothing changed), and applying an edit
// costs time linear in the list, not quadratic.
func TestListEditsAreBounded(t *testing.T) {
	lists := &memLists{}
	lim := DefaultLimits()
	s := New(Deps{Req: &fakeReq{}, Limits: lim, Lists: lists})
	uids := func(from, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprint("u", from+i)
		}
		return out
	}
	_, err := s.UpdateAccessList(scoped(1), &apipb.UpdateAccessListRequest{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: uids(0, lim.MaxBatch+1)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "api.max-batch") {
		t.Fatalf("an edit over api.max-batch: %v", err)
	}
	for i := 0; i < MaxListEntries; i += lim.MaxBatch {
		if _, err := s.UpdateAccessList(scoped(1), &apipb.UpdateAccessListRequest{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: uids(i, lim.MaxBatch)}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = s.UpdateAccessList(scoped(1), &apipb.UpdateAccessListRequest{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: uids(MaxListEntries, 1)})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "20000 a list may hold") {
		t.Fatalf("an edit past MaxListEntries: %v", err)
	}
	if n := len(lists.snap.UIDBlacklist[1]); n != MaxListEntries {
		t.Fatalf("the list holds %d", n)
	}
	// Replacing one entry by another keeps the size: allowed.
	if _, err := s.UpdateAccessList(scoped(1), &apipb.UpdateAccessListRequest{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1,
		Add: uids(MaxListEntries, 1), Remove: uids(0, 1)}); err != nil {
		t.Fatalf("a swap at the bound: %v", err)
	}
	// Merging (each gate applies the edit): duplicates and removals of
	// large lists, in linear time (BenchmarkListEdit).
	l := gate.ListsSnapshot{}
	ApplyListEdit(&l, &apipb.UpdateAccessListRequest{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: uids(0, 50_000)})
	ApplyListEdit(&l, &apipb.UpdateAccessListRequest{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: uids(25_000, 50_000), Remove: uids(0, 10_000)})
	if got := l.UIDBlacklist[1]; len(got) != 65_000 || got[0] != "u10000" || got[len(got)-1] != "u74999" {
		t.Fatalf("two edits of 50,000: %d entries", len(got))
	}
}

// BenchmarkListEdit: one gate applying an edit of api.max-batch uids to a
// full list (quadratic merging took seconds for 50,000).
func BenchmarkListEdit(b *testing.B) {
	full := make([]string, MaxListEntries)
	for i := range full {
		full[i] = fmt.Sprint("u", i)
	}
	add := make([]string, DefaultLimits().MaxBatch)
	for i := range add {
		add[i] = fmt.Sprint("n", i)
	}
	for b.Loop() {
		edit(full, add, full[:len(add)])
	}
}

// memLists are lists in memory, edited as every gate edits its own.
type memLists struct {
	mu   sync.Mutex
	snap gate.ListsSnapshot
}

// Snapshot is a copy, as a gate's: edits do not change what it returned.
func (m *memLists) Snapshot(context.Context) (gate.ListsSnapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.snap
	c.IPBlacklist, c.IPWhitelist = slices.Clone(c.IPBlacklist), slices.Clone(c.IPWhitelist)
	c.UIDBlacklist = maps.Clone(c.UIDBlacklist)
	for app, uids := range c.UIDBlacklist {
		c.UIDBlacklist[app] = slices.Clone(uids)
	}
	return c, nil
}

func (m *memLists) Edit(_ context.Context, r *apipb.UpdateAccessListRequest) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ApplyListEdit(&m.snap, r)
	return nil
}

// slowLists are memLists whose edits take a while, as a cluster's do (a
// round trip to every gate).
type slowLists struct{ memLists }

func (m *slowLists) Edit(ctx context.Context, r *apipb.UpdateAccessListRequest) error {
	time.Sleep(20 * time.Millisecond)
	return m.memLists.Edit(ctx, r)
}

// TestConcurrentListEditsStayBounded: edits that add, made at once, were
// each checked against the same list and took it past MaxListEntries
// together (by up to the calls in flight times api.max-batch).
func TestConcurrentListEditsStayBounded(t *testing.T) {
	lists := &slowLists{}
	lim := DefaultLimits()
	s := New(Deps{Req: &fakeReq{}, Limits: lim, Lists: lists})
	start := MaxListEntries - lim.MaxBatch/2
	full := make([]string, start)
	for i := range full {
		full[i] = fmt.Sprint("u", i)
	}
	ApplyListEdit(&lists.snap, &apipb.UpdateAccessListRequest{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: full})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			add := make([]string, lim.MaxBatch/4)
			for i := range add {
				add[i] = fmt.Sprint("g", g, "-", i)
			}
			_, _ = s.UpdateAccessList(scoped(1), &apipb.UpdateAccessListRequest{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: add})
		}()
	}
	wg.Wait()
	if n := len(lists.snap.UIDBlacklist[1]); n > MaxListEntries {
		t.Fatalf("concurrent edits took the list to %d entries, past %d", n, MaxListEntries)
	}
}

// failingKicks answers every request with a failure, as an actor without
// its node's lease does.
type failingKicks struct{ fakeReq }

func (f *failingKicks) RequestMany(_ context.Context, envs []*actorpb.Envelope) ([]*actorpb.Reply, []error) {
	reps := make([]*actorpb.Reply, len(envs))
	for i := range reps {
		reps[i] = &actorpb.Reply{Body: &actorpb.Reply_Failure{Failure: &actorpb.Failure{Code: int32(codes.Unavailable), Message: "no lease"}}}
	}
	return reps, make([]error, len(envs))
}

// TestBlacklistEditKicksWhatItBans: a uid both added and removed by one
// edit is not blacklisted (the removal wins) and so is not kicked (a
// KICKOUT UID_BLACKLISTED tells a client to stop for good); a kick the
// actor answers with a failure fails the call (UNAVAILABLE: retry), as one
// that was not answered does.
func TestBlacklistEditKicksWhatItBans(t *testing.T) {
	req := &fakeReq{}
	lists := &memLists{}
	s := New(Deps{Req: req, Limits: DefaultLimits(), Lists: lists})
	if _, err := s.UpdateAccessList(scoped(1), &apipb.UpdateAccessListRequest{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1,
		Add: []string{"banned", "undecided"}, Remove: []string{"undecided"}}); err != nil {
		t.Fatal(err)
	}
	var kicked []string
	for _, e := range req.got {
		if e.GetKick() != nil {
			kicked = append(kicked, e.Uid)
		}
	}
	if fmt.Sprint(kicked) != "[banned]" {
		t.Fatalf("kicked %v, want [banned]", kicked)
	}
	s = New(Deps{Req: &failingKicks{}, Limits: DefaultLimits(), Lists: &memLists{}})
	_, err := s.UpdateAccessList(scoped(1), &apipb.UpdateAccessListRequest{List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: []string{"banned"}})
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "could not be kicked") {
		t.Fatalf("a kick that failed: %v, want UNAVAILABLE", err)
	}
}

// TestAccessListsOfTheKeysApp: with an app's key, app_code 0 asks for the
// key's own app's uid blacklist (courierctl lists without --app); another
// app's is refused.
func TestAccessListsOfTheKeysApp(t *testing.T) {
	lists := &memLists{}
	for app, uid := range map[uint32]string{1: "one", 2: "two"} {
		_ = lists.Edit(context.Background(), &apipb.UpdateAccessListRequest{List: apipb.AccessList_UID_BLACKLIST, AppCode: app, Add: []string{uid}})
	}
	s := New(Deps{Req: &fakeReq{}, Limits: DefaultLimits(), Lists: lists})
	r, err := s.GetAccessLists(scoped(1), &apipb.GetAccessListsRequest{})
	if err != nil || len(r.UidBlacklists) != 1 || r.UidBlacklists[0].AppCode != 1 || fmt.Sprint(r.UidBlacklists[0].Uids) != "[one]" {
		t.Fatalf("app 0 with app 1's key: %v %v", r, err)
	}
	if _, err := s.GetAccessLists(scoped(1), &apipb.GetAccessListsRequest{AppCode: 2}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("another app's lists: %v", err)
	}
}
