package cluster

import (
	"sort"
	"strings"

	"github.com/asynkron/protoactor-go/actor"
)

// placement maps identities to the members that host them: rendezvous
// (highest random weight) hashing over the members that declare the device
// kind. Every node computes the same owner from the same member list, and a
// membership change moves only the identities of the members that came or
// went. A placement is immutable; the System swaps in a new one on every
// topology change.
type placement struct {
	members []placedMember // sorted by address
	hash    uint64         // topology hash, for logs
}

type placedMember struct {
	address string
	seed    uint64       // hash of the address
	hosts   []*actor.PID // host actors on that member, by shard
}

// newPlacement places over addresses, each member running shardsOf(its
// address) host actors (shards when shardsOf is nil or says 0).
func newPlacement(addresses []string, shards int, hash uint64, shardsOf ...func(string) int) *placement {
	sort.Strings(addresses)
	p := &placement{hash: hash}
	for _, a := range addresses {
		m := placedMember{address: a, seed: fnv64(0, a)}
		n := shards
		if len(shardsOf) > 0 {
			if k := shardsOf[0](a); k > 0 {
				n = k
			}
		}
		m.hosts = make([]*actor.PID, n)
		for i := range n {
			m.hosts[i] = actor.NewPID(a, hostName(i))
		}
		p.members = append(p.members, m)
	}
	return p
}

// FNV-1a, as in hash/fnv, inlined to hash without allocating.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnv64(h uint64, s string) uint64 {
	if h == 0 {
		h = fnvOffset
	}
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// mix is a 64-bit finalizer (from splitmix64) so that scores of one key
// across members are independent.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// identityHash hashes an identity without allocating.
func identityHash(app uint16, uid string) uint64 {
	h := uint64(fnvOffset)
	h ^= uint64(app >> 8)
	h *= fnvPrime
	h ^= uint64(app & 0xff)
	h *= fnvPrime
	return fnv64(h, uid)
}

// owner returns the member that hosts the identity with hash h, or nil if
// there is no member.
func (p *placement) owner(h uint64) *placedMember {
	var best *placedMember
	var bestScore uint64
	for i := range p.members {
		m := &p.members[i]
		if s := mix(h ^ m.seed); best == nil || s > bestScore {
			best, bestScore = m, s
		}
	}
	return best
}

// sameMembers reports whether p places over exactly addresses.
func (p *placement) sameMembers(addresses []string) bool {
	if len(p.members) != len(addresses) {
		return false
	}
	for _, a := range addresses {
		if _, found := sort.Find(len(p.members), func(i int) int { return strings.Compare(a, p.members[i].address) }); !found {
			return false
		}
	}
	return true
}

// shard picks the host actor of an identity on its member.
func shard(h uint64, shards int) int { return int(mix(h) % uint64(shards)) }

// OwnerOf returns which of the given actor members' remoting addresses
// owns the identity app/uid, as every node computes it ("" if there is
// none). For tools and tests: nodes keep their own placement.
func OwnerOf(members []string, app uint16, uid string) string {
	p := newPlacement(append([]string(nil), members...), 1, 0)
	if o := p.owner(identityHash(app, uid)); o != nil {
		return o.address
	}
	return ""
}
