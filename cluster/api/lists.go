package api

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sort"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
)

// Lists are the black and white lists of the cluster's gates: LocalLists
// for a node's own gate, or the node's cluster-wide lists, which store an
// edit (in the inbox store, when the node has one) and apply it on every
// live gate. An Edit error with a gRPC status is passed on; one wrapping
// gate.ErrBadLists is a bad edit (INVALID_ARGUMENT); any other means the
// edit could not be stored and nothing changed (UNAVAILABLE).
type Lists interface {
	Snapshot(ctx context.Context) (gate.ListsSnapshot, error)
	Edit(ctx context.Context, r *apipb.UpdateAccessListRequest) error
}

// LocalLists are one gate's lists.
func LocalLists(l *gate.Lists) Lists { return localLists{l} }

type localLists struct{ l *gate.Lists }

func (l localLists) Snapshot(context.Context) (gate.ListsSnapshot, error) { return l.l.Snapshot(), nil }

func (l localLists) Edit(_ context.Context, r *apipb.UpdateAccessListRequest) error {
	return l.l.Modify(func(s *gate.ListsSnapshot) { ApplyListEdit(s, r) })
}

func toAPI(s gate.ListsSnapshot, app uint32, all bool) *apipb.AccessLists {
	out := &apipb.AccessLists{WhitelistMode: s.WhitelistMode, IpBlacklist: s.IPBlacklist, IpWhitelist: s.IPWhitelist}
	apps := make([]int, 0, len(s.UIDBlacklist))
	for a := range s.UIDBlacklist {
		if all || uint32(a) == app {
			apps = append(apps, int(a))
		}
	}
	sort.Ints(apps)
	for _, a := range apps {
		out.UidBlacklists = append(out.UidBlacklists, &apipb.UidList{AppCode: uint32(a), Uids: s.UIDBlacklist[uint16(a)]})
	}
	return out
}

// GetAccessLists implements apipb.CourierServer. An app key sees its own
// uid blacklist and the IP lists; an operator key with app_code 0 sees
// every app's.
func (s *Server) GetAccessLists(ctx context.Context, r *apipb.GetAccessListsRequest) (*apipb.AccessLists, error) {
	if s.lists == nil {
		return nil, status.Error(codes.FailedPrecondition, errNoLists.Error())
	}
	sc := scopeOf(ctx)
	all := r.AppCode == 0 && sc.operator()
	if r.AppCode == 0 && !sc.operator() && sc.app > 0 {
		r.AppCode = uint32(sc.app) // an app's key: its own app
	}
	if !all {
		if err := sc.check(r.AppCode); err != nil {
			return nil, err
		}
	}
	snap, err := s.lists.Snapshot(ctx)
	if err != nil {
		return nil, listsError(err)
	}
	return toAPI(snap, r.AppCode, all), nil
}

// listsError turns a Lists error into a gRPC status.
func listsError(err error) error {
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	if errors.Is(err, gate.ErrBadLists) {
		return status.Errorf(codes.InvalidArgument, "lists: %v", err)
	}
	// Not stored: nothing changed.
	return status.Errorf(codes.Unavailable, "lists: the change could not be stored (%v); nothing changed, retry", err)
}

// UpdateAccessList implements apipb.CourierServer. IP lists and whitelist
// mode need an operator key; an app key may change its own uid blacklist.
// A uid added to the blacklist is kicked at once.
func (s *Server) UpdateAccessList(ctx context.Context, r *apipb.UpdateAccessListRequest) (*apipb.AccessLists, error) {
	if s.lists == nil {
		return nil, status.Error(codes.FailedPrecondition, errNoLists.Error())
	}
	// The request goes to every gate as it is: without fields this node
	// does not know of (a newer client's), which the gates would keep.
	r.ProtoReflect().SetUnknown(nil)
	sc := scopeOf(ctx)
	switch r.List {
	case apipb.AccessList_IP_BLACKLIST, apipb.AccessList_IP_WHITELIST:
		if !sc.operator() {
			return nil, status.Error(codes.PermissionDenied, "IP lists are node-wide: they need an operator key")
		}
		for i, e := range slices.Concat(r.Add, r.Remove) {
			if _, err := netip.ParsePrefix(e); err != nil {
				if _, err := netip.ParseAddr(e); err != nil {
					return nil, status.Errorf(codes.InvalidArgument, "entry %d %q: not an IP address or CIDR prefix", i, e)
				}
			}
		}
	case apipb.AccessList_UID_BLACKLIST:
		if err := sc.check(r.AppCode); err != nil {
			return nil, err
		}
		for i, uid := range slices.Concat(r.Add, r.Remove) {
			if err := checkIdentity(r.AppCode, uid); err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "entry %d: %s", i, status.Convert(err).Message())
			}
		}
	default:
		if r.WhitelistMode == nil {
			return nil, status.Errorf(codes.InvalidArgument, "list %v: must be IP_BLACKLIST, IP_WHITELIST or UID_BLACKLIST", r.List)
		}
	}
	if r.WhitelistMode != nil && !sc.operator() {
		return nil, status.Error(codes.PermissionDenied, "whitelist_mode is node-wide: it needs an operator key")
	}
	if n := len(r.Add) + len(r.Remove); n > s.limits.MaxBatch {
		return nil, status.Errorf(codes.InvalidArgument, "add and remove: %d entries, limit %d per call (api.max-batch): split the edit", n, s.limits.MaxBatch)
	}
	// The uids the edit blacklists: those added and not removed by the
	// same edit (the removal wins, edit), whose sessions end.
	var banned []string
	if r.List == apipb.AccessList_UID_BLACKLIST {
		for _, uid := range r.Add {
			if !slices.Contains(r.Remove, uid) {
				banned = append(banned, uid)
			}
		}
	}
	kicks := len(banned) > 0
	release := func(context.Context) {}
	if kicks {
		// The kicks below are requests to actors, bounded as pushes are;
		// taken first, so that a refusal changed nothing.
		var err error
		if release, err = s.admitRequests(sc, len(banned)); err != nil {
			return nil, err
		}
	}
	if err := s.editList(ctx, r); err != nil {
		release(ctx)
		return nil, err
	}
	if kicks {
		envs := make([]*actorpb.Envelope, len(banned))
		for i, uid := range banned {
			envs[i] = &actorpb.Envelope{AppCode: r.AppCode, Uid: uid, Body: &actorpb.Envelope_Kick{Kick: &actorpb.Kick{
				Reason: devicepb.KickReason_UID_BLACKLISTED, Detail: "this account is blocked"}}}
		}
		reps, errs := s.req.RequestMany(ctx, envs)
		release(ctx)
		for i, err := range errs {
			why := ""
			if err != nil {
				why = "its actor did not answer in time: " + err.Error()
			} else if f := reps[i].GetFailure(); f != nil {
				why = f.Message
			}
			if why != "" {
				return nil, status.Errorf(codes.Unavailable, "uid %q is blacklisted but could not be kicked yet (%s): it cannot log in again; retry to kick it",
					banned[i], why)
			}
		}
	}
	snap, err := s.lists.Snapshot(ctx)
	if err != nil {
		return nil, listsError(err)
	}
	// The answer holds the IP lists and, after a uid blacklist's edit,
	// that list: every app's uid blacklists together could pass the
	// 4 MiB a gRPC client receives by default.
	return toAPI(snap, r.AppCode, false), nil
}

// editList checks that an edit that adds keeps its list within
// MaxListEntries and makes it. The edits of this node that add are made
// one at a time, so that concurrent ones cannot each pass the check
// against the same list and take it past the bound together (edits
// through other api nodes can still pass it by at most api.max-batch
// each).
func (s *Server) editList(ctx context.Context, r *apipb.UpdateAccessListRequest) error {
	if len(r.Add) > 0 {
		select {
		case s.listsMu <- struct{}{}:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		defer func() { <-s.listsMu }()
		before, err := s.lists.Snapshot(ctx)
		if err != nil {
			return listsError(err)
		}
		cur := currentList(before, r)
		if after := len(edit(cur, r.Add, r.Remove)); after > MaxListEntries && after > len(cur) {
			return refusalf(codes.ResourceExhausted, apipb.ReasonLimitReached, "",
				"the list would hold %d entries, more than the %d a list may hold; nothing was changed", after, MaxListEntries)
		}
	}
	if err := s.lists.Edit(ctx, r); err != nil {
		return listsError(err)
	}
	return nil
}

// ApplyListEdit applies a validated UpdateAccessList request to l: what
// every gate of the cluster does with it.
func ApplyListEdit(l *gate.ListsSnapshot, r *apipb.UpdateAccessListRequest) {
	if r.WhitelistMode != nil {
		l.WhitelistMode = *r.WhitelistMode
	}
	switch r.List {
	case apipb.AccessList_IP_BLACKLIST:
		l.IPBlacklist = edit(l.IPBlacklist, r.Add, r.Remove)
	case apipb.AccessList_IP_WHITELIST:
		l.IPWhitelist = edit(l.IPWhitelist, r.Add, r.Remove)
	case apipb.AccessList_UID_BLACKLIST:
		if l.UIDBlacklist == nil {
			l.UIDBlacklist = map[uint16][]string{}
		}
		l.UIDBlacklist[uint16(r.AppCode)] = edit(l.UIDBlacklist[uint16(r.AppCode)], r.Add, r.Remove)
		if len(l.UIDBlacklist[uint16(r.AppCode)]) == 0 {
			delete(l.UIDBlacklist, uint16(r.AppCode))
		}
	}
}

// MaxListEntries bounds each access list (an IP list, one app's uid
// blacklist): every gate node holds them all, and GetAccessLists returns
// a list whole, which at 128-byte uids stays within the 4 MiB a gRPC
// client receives by default.
const MaxListEntries = 20_000

// currentList is the list r edits, as it is in l.
func currentList(l gate.ListsSnapshot, r *apipb.UpdateAccessListRequest) []string {
	switch r.List {
	case apipb.AccessList_IP_BLACKLIST:
		return l.IPBlacklist
	case apipb.AccessList_IP_WHITELIST:
		return l.IPWhitelist
	case apipb.AccessList_UID_BLACKLIST:
		return l.UIDBlacklist[uint16(r.AppCode)]
	}
	return nil
}

// edit returns list with add appended (once) and remove taken out, in
// time linear in their lengths.
func edit(list, add, remove []string) []string {
	gone := make(map[string]bool, len(remove))
	for _, e := range remove {
		gone[e] = true
	}
	out := make([]string, 0, len(list)+len(add))
	in := make(map[string]bool, len(list)+len(add))
	for _, e := range slices.Concat(list, add) {
		if !gone[e] && !in[e] {
			in[e] = true
			out = append(out, e)
		}
	}
	return out
}
