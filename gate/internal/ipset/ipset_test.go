package ipset

import (
	"net/netip"
	"testing"
)

func TestContains(t *testing.T) {
	s, err := Parse([]string{"10.0.0.0/8", "192.168.1.7", " 2001:db8::/32 ", "::ffff:172.16.0.0/108", "127.0.0.3/32"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr string
		want bool
	}{
		{"10.200.3.4", true},
		{"11.0.0.1", false},
		{"192.168.1.7", true},
		{"192.168.1.8", false},
		{"::ffff:192.168.1.7", true}, // mapped address matches its IPv4 entry
		{"2001:db8:1::5", true},
		{"2001:db9::1", false},
		{"172.16.9.9", true},  // mapped prefix entry matches IPv4 addresses
		{"172.32.0.1", false}, // /108 mapped is 172.16.0.0/12,
		{"127.0.0.3", true},
		{"127.0.0.1", false},
	}
	for _, tt := range tests {
		if got := s.Contains(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("Contains(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
	if s.Len() != 5 {
		t.Errorf("Len = %d", s.Len())
	}
	var empty *Set
	if empty.Contains(netip.MustParseAddr("10.0.0.1")) || empty.Len() != 0 {
		t.Error("nil set not empty")
	}
}

func TestParseErrors(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/33", "nonsense", "1.2.3", "::ffff:0:0/90", ""} {
		if _, err := Parse([]string{bad}); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
