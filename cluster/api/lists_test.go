package api

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/gate"
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
