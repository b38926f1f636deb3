package cluster

import (
	"context"

	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/messages/actorpb"
)

// The lease (cluster/membership/lease.go) as routing sees it: a node
// without one serves none of its identities (requests fail retryably, and
// so do a device's LOGIN, C2C and PULL; of the frames its actors would
// send only the answers to a device's requests go out, as refusals
// (OnLeaseless): the identity's real owner delivers the rest), drops
// every identity actor it holds when it loses it, and tells the node
// (OnLease) so that its gate stops taking devices.

// LeaseValid reports whether this node holds its membership lease.
func (s *System) LeaseValid() bool { return s.members.LeaseValid() }

// leaseHeld is LeaseValid as routing sees it (tests lapse it at will).
func (s *System) leaseHeld() bool {
	return !s.leaseLapsedForTest.Load() && s.members.LeaseValid()
}

// OnLease has fn called when this node loses its lease (false) and when
// it holds one again (true), on the membership's goroutine, after the
// System's own reaction. fn must not block. Call it before Join.
func (s *System) OnLease(fn func(valid bool)) {
	s.viewMu.Lock()
	s.leaseHooks = append(s.leaseHooks, fn)
	s.viewMu.Unlock()
}

func (s *System) onLease(valid bool) {
	if !valid {
		s.dropAll()
	}
	s.viewMu.Lock()
	hooks := s.leaseHooks
	s.viewMu.Unlock()
	for _, fn := range hooks {
		fn(valid)
	}
}

// confirmLease asks every other live member of v to vouch for this node
// while the membership provider cannot be reached; true only if each
// one did before ctx ended. With no other member there is nobody to
// vouch, and the lease lapses.
func (s *System) confirmLease(ctx context.Context, v *membership.View) bool {
	others := 0
	for _, m := range v.Live(0) {
		if m.ID != v.Self.ID {
			others++
		}
	}
	if others == 0 {
		return false
	}
	replies, missing := s.Gather(ctx, 0, &actorpb.NodeRequest{Body: &actorpb.NodeRequest_LeaseCheck{
		LeaseCheck: &actorpb.LeaseCheck{Member: v.Self.ID}}})
	if len(missing) > 0 {
		s.log.Warn("cluster: members did not answer whether they vouch for this node", "missing", missing)
		return false
	}
	for name, r := range replies {
		if name == v.Self.Name {
			continue
		}
		lv := r.GetLeaseVouch()
		if !lv.GetVouch() {
			s.log.Warn("cluster: a member does not vouch for this node", "member", name, "sees_this_node_live", lv.GetLive(),
				"provider_down_there", lv.GetProviderDown(), "settling_there", lv.GetSettling())
			return false
		}
	}
	return true
}

// answerLease answers another member's LeaseCheck.
func (s *System) answerLease(lc *actorpb.LeaseCheck) *actorpb.Reply {
	a := s.members.Vouch(lc.Member)
	return &actorpb.Reply{Body: &actorpb.Reply_LeaseVouch{LeaseVouch: &actorpb.LeaseVouch{
		Vouch: a.Vouch, Live: a.Live, ProviderDown: a.ProviderDown, Settling: a.Settling}}}
}
