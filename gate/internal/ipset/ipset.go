package ipset

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Set is a set of IPv4 and IPv6 prefixes. The nil *Set is empty.
type Set struct {
	prefixes map[netip.Prefix]struct{}
	bits4    []int // distinct IPv4 prefix lengths, longest first
	bits6    []int
}

// Parse builds a set from entries that are addresses ("10.1.2.3", "::1")
// or CIDR prefixes ("10.0.0.0/8", "2001:db8::/32"). IPv4-mapped IPv6
// addresses are treated as IPv4. Host bits of a prefix are ignored.
func Parse(entries []string) (*Set, error) {
	s := &Set{prefixes: make(map[netip.Prefix]struct{}, len(entries))}
	for _, e := range entries {
		p, err := parseOne(strings.TrimSpace(e))
		if err != nil {
			return nil, err
		}
		s.prefixes[p] = struct{}{}
	}
	seen := map[[2]int]bool{}
	for p := range s.prefixes {
		k := [2]int{p.Bits(), 4}
		if p.Addr().Is6() {
			k[1] = 6
		}
		if seen[k] {
			continue
		}
		seen[k] = true
		if k[1] == 4 {
			s.bits4 = append(s.bits4, k[0])
		} else {
			s.bits6 = append(s.bits6, k[0])
		}
	}
	slices.Sort(s.bits4)
	slices.Reverse(s.bits4)
	slices.Sort(s.bits6)
	slices.Reverse(s.bits6)
	return s, nil
}

func parseOne(e string) (netip.Prefix, error) {
	if strings.Contains(e, "/") {
		p, err := netip.ParsePrefix(e)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("ipset: bad prefix %q: %w", e, err)
		}
		if a := p.Addr(); a.Is4In6() {
			bits := p.Bits() - 96
			if bits < 0 {
				return netip.Prefix{}, fmt.Errorf("ipset: prefix %q is shorter than the IPv4-mapped range", e)
			}
			p = netip.PrefixFrom(a.Unmap(), bits)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(e)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ipset: bad address %q: %w", e, err)
	}
	a = a.Unmap().WithZone("")
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Len returns the number of distinct prefixes in the set.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.prefixes)
}

// Contains reports whether a falls in one of the set's prefixes.
func (s *Set) Contains(a netip.Addr) bool {
	if s == nil || len(s.prefixes) == 0 || !a.IsValid() {
		return false
	}
	a = a.Unmap().WithZone("")
	bits := s.bits6
	if a.Is4() {
		bits = s.bits4
	}
	for _, b := range bits {
		p, err := a.Prefix(b)
		if err != nil {
			continue
		}
		if _, ok := s.prefixes[p]; ok {
			return true
		}
	}
	return false
}
