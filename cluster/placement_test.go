package cluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/courier-im/courier/cluster/membership"
)

func TestPlacementStableAndBalanced(t *testing.T) {
	three := newPlacement([]string{"10.0.0.1:7100", "10.0.0.2:7100", "10.0.0.3:7100"}, 8, 1)
	// The member order given does not matter.
	shuffled := newPlacement([]string{"10.0.0.3:7100", "10.0.0.1:7100", "10.0.0.2:7100"}, 8, 1)
	const n = 30000
	per := map[string]int{}
	for i := range n {
		h := identityHash(uint16(1+i%3), fmt.Sprintf("driver-%d", i))
		a, b := three.owner(h), shuffled.owner(h)
		if a.address != b.address {
			t.Fatalf("identity %d: owner depends on member order", i)
		}
		per[a.address]++
		if s := shard(h, 8); s < 0 || s >= 8 {
			t.Fatalf("shard %d", s)
		}
	}
	for addr, c := range per {
		if c < n/3*85/100 || c > n/3*115/100 {
			t.Fatalf("member %s owns %d of %d identities: unbalanced %v", addr, c, n, per)
		}
	}
}

// TestPlacementMovesOnlyWhatMust: a member joining takes about its share,
// and every identity that moves goes to it; a member leaving moves only
// its own identities.
func TestPlacementMovesOnlyWhatMust(t *testing.T) {
	before := newPlacement([]string{"a:1", "b:1", "c:1"}, 4, 1)
	after := newPlacement([]string{"a:1", "b:1", "c:1", "d:1"}, 4, 2)
	const n = 20000
	moved := 0
	for i := range n {
		h := identityHash(2, fmt.Sprintf("u%d", i))
		o1, o2 := before.owner(h).address, after.owner(h).address
		if o1 != o2 {
			moved++
			if o2 != "d:1" {
				t.Fatalf("identity moved from %s to %s, not to the new member", o1, o2)
			}
		}
	}
	if moved < n/4*80/100 || moved > n/4*120/100 {
		t.Fatalf("%d of %d identities moved when a fourth member joined", moved, n)
	}
	for i := range n {
		h := identityHash(2, fmt.Sprintf("u%d", i))
		if o := after.owner(h).address; o != "d:1" && before.owner(h).address != o {
			t.Fatalf("identity of %s moved when d left", o)
		}
	}
	if newPlacement(nil, 4, 0).owner(1) != nil {
		t.Fatal("an empty placement has an owner")
	}
}

func TestIdentityHashSeparatesApps(t *testing.T) {
	if identityHash(1, "u") == identityHash(2, "u") || identityHash(1, "u") == identityHash(1, "v") {
		t.Fatal("hash collisions on trivial identities")
	}
	if identityHash(0x0102, "") == identityHash(0x0201, "") {
		t.Fatal("app bytes not ordered in the hash")
	}
}

// TestPlacementUsesEachMembersShards: an identity is sent to the host
// actor its owner's own shard count picks, whatever the sender's.
func TestPlacementUsesEachMembersShards(t *testing.T) {
	shards := map[string]int{"a:1": 16, "b:1": 0}
	p := newPlacement([]string{"a:1", "b:1"}, 8, 0, func(addr string) int { return shards[addr] })
	for _, m := range p.members {
		want := 16
		if m.address == "b:1" {
			want = 8 // not published: the sender's
		}
		if len(m.hosts) != want {
			t.Fatalf("%s: %d hosts, want %d", m.address, len(m.hosts), want)
		}
		for i, h := range m.hosts {
			if h.Id != hostName(i) || h.Address != m.address {
				t.Fatalf("%s host %d: %v", m.address, i, h)
			}
		}
	}
}

// TestShardsOfAnAddressWithTwoInstances: a restarted node's old instance
// may still be listed beside its new one at the same address; the fewer
// shards of the two are used (any host routes to the member's
// identities), and a count past the bound is cut to it.
func TestShardsOfAnAddressWithTwoInstances(t *testing.T) {
	live := membership.HealthPassing
	v := &membership.View{Members: []membership.Member{
		{ID: "a-old", Address: "a:1", Health: live, Shards: 16},
		{ID: "a-new", Address: "a:1", Health: live, Shards: 8},
		{ID: "b", Address: "b:1", Health: live, Shards: 1 << 20},
		{ID: "c-gone", Address: "c:1", Health: membership.HealthCritical, Shards: 2},
	}}
	of := shardsIn(v)
	if n := of("a:1"); n != 8 {
		t.Fatalf("a: %d shards, want 8", n)
	}
	if n := of("b:1"); n != maxShards {
		t.Fatalf("b: %d shards, want %d", n, maxShards)
	}
	if n := of("c:1"); n != 0 {
		t.Fatalf("c (not live): %d shards, want 0 (this node's count)", n)
	}
}

// TestGatherAsksEachAddressOnce: a node restarted within the TTL is
// listed twice (its old instance too); it is asked once, as its newest
// instance (statistics summed it twice).
func TestGatherAsksEachAddressOnce(t *testing.T) {
	now := time.Now()
	got := onePerAddress([]membership.Member{
		{ID: "a-old", Name: "a", Address: "a:1", StartedAt: now.Add(-time.Hour)},
		{ID: "b", Name: "b", Address: "b:1", StartedAt: now},
		{ID: "a-new", Name: "a", Address: "a:1", StartedAt: now},
	})
	if len(got) != 2 || got[0].ID != "a-new" || got[1].ID != "b" {
		t.Fatalf("got %+v, want a-new and b", got)
	}
}

// TestPriorKeptWhenThePlacementStays: a view that places over the same
// members (a gate-only member joined) keeps the record of the previous
// owners; a changed one replaces it.
func TestPriorKeptWhenThePlacementStays(t *testing.T) {
	s := &System{address: "b:1", cfg: DefaultConfig()}
	v := &membership.View{Members: []membership.Member{{Address: "a:1", Health: membership.HealthPassing}, {Address: "b:1", Health: membership.HealthPassing}}}
	old := newPlacement([]string{"a:1"}, 4, 1)
	s.notePrior(old, []string{"a:1", "b:1"}, v, false)
	first := s.prior.Load()
	if first == nil || first.p != old {
		t.Fatal("the first change was not recorded")
	}
	s.notePrior(newPlacement([]string{"a:1", "b:1"}, 4, 2), []string{"a:1", "b:1"}, v, false)
	if s.prior.Load() != first {
		t.Fatal("a view over the same members replaced the record")
	}
	// A rejoin takes the placement over the others, whatever it had.
	s.notePrior(newPlacement([]string{"a:1", "b:1"}, 4, 3), []string{"a:1", "b:1"}, v, true)
	if p := s.prior.Load().p; len(p.members) != 1 || p.members[0].address != "a:1" {
		t.Fatalf("after a rejoin the prior placement is %+v, want a:1 alone", p.members)
	}
}
