package iprate

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func TestPerAddressAndBounded(t *testing.T) {
	l := New(1, 2, 3)
	now := time.Unix(1000, 0)
	a := netip.MustParseAddr("10.0.0.1")
	for i := range 2 {
		if !l.Allow(a, now) {
			t.Fatalf("burst event %d refused", i)
		}
	}
	if l.Allow(a, now) {
		t.Fatal("third event in the same instant allowed")
	}
	if !l.Allow(netip.MustParseAddr("::ffff:10.0.0.2"), now) {
		t.Fatal("another address refused")
	}
	if !l.Allow(a, now.Add(time.Second)) {
		t.Fatal("no refill after a second")
	}
	for i := range 10 {
		l.Allow(netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), now)
	}
	if l.Len() != 3 {
		t.Fatalf("remembers %d addresses, want 3", l.Len())
	}
}

// TestIPv6CountsByItsSlash64: a host picks source addresses from its
// whole /64; counted per address, it was never limited.
func TestIPv6CountsByItsSlash64(t *testing.T) {
	l := New(1, 3, 100)
	now := time.Now()
	for i := range 3 {
		a := netip.MustParseAddr(fmt.Sprintf("2001:db8:1:2::%x", i+1))
		if !l.Allow(a, now) {
			t.Fatalf("event %d of the burst refused", i)
		}
	}
	if l.Allow(netip.MustParseAddr("2001:db8:1:2:ffff::9"), now) {
		t.Fatal("a fourth address of the same /64 got past a burst of 3")
	}
	if !l.Allow(netip.MustParseAddr("2001:db8:1:3::1"), now) {
		t.Fatal("another /64 was refused")
	}
}
