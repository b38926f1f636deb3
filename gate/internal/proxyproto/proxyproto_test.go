package proxyproto

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

// v2 builds a version 2 header: cmd 1 PROXY / 0 LOCAL, fam, address
// block, then tlv bytes.
func v2(cmd, fam byte, addr []byte, tlv int) []byte {
	b := append([]byte{}, sigV2...)
	b = append(b, 0x20|cmd, fam, 0, 0)
	b = append(b, addr...)
	b = append(b, make([]byte, tlv)...)
	binary.BigEndian.PutUint16(b[14:16], uint16(len(addr)+tlv))
	return b
}

func ipv4Block() []byte {
	return []byte{203, 0, 113, 7, 10, 0, 0, 1, 0x30, 0x39, 0x1B, 0x58} // 203.0.113.7:12345 -> 10.0.0.1:7000
}

func ipv6Block() []byte {
	src := netip.MustParseAddr("2001:db8::7").As16()
	dst := netip.MustParseAddr("2001:db8::1").As16()
	b := append(src[:], dst[:]...)
	return append(b, 0x30, 0x39, 0x1B, 0x58)
}

func TestParse(t *testing.T) {
	src4 := netip.MustParseAddrPort("203.0.113.7:12345")
	src6 := netip.MustParseAddrPort("[2001:db8::7]:12345")
	tests := []struct {
		name  string
		in    []byte
		want  Header
		n     int
		err   error
		extra int // bytes after the header (the client's own)
	}{
		{"v2 TCP4", v2(1, 0x11, ipv4Block(), 0), Header{Version: 2, Source: src4, Dest: netip.MustParseAddrPort("10.0.0.1:7000")}, 28, nil, 0},
		{"v2 TCP4 with TLVs and a frame after", append(v2(1, 0x11, ipv4Block(), 20), 0xC0, 0xDE), Header{Version: 2, Source: src4, Dest: netip.MustParseAddrPort("10.0.0.1:7000")}, 48, nil, 2},
		{"v2 TCP6", v2(1, 0x21, ipv6Block(), 0), Header{Version: 2, Source: src6, Dest: netip.MustParseAddrPort("[2001:db8::1]:7000")}, 52, nil, 0},
		{"v2 LOCAL", v2(0, 0x00, nil, 0), Header{Version: 2, Local: true}, 16, nil, 0},
		{"v2 LOCAL with an address", v2(0, 0x11, ipv4Block(), 0), Header{Version: 2, Local: true}, 28, nil, 0},
		{"v2 UNSPEC", v2(1, 0x00, nil, 0), Header{Version: 2}, 16, nil, 0},
		{"v2 UNIX", v2(1, 0x31, make([]byte, 216), 0), Header{Version: 2}, 232, nil, 0},
		{"v2 short address block", v2(1, 0x11, ipv4Block()[:8], 0), Header{}, 0, ErrBadHeader, 0},
		{"v2 bad version", func() []byte { b := v2(1, 0x11, ipv4Block(), 0); b[12] = 0x31; return b }(), Header{}, 0, ErrBadHeader, 0},
		{"v2 bad command", v2(2, 0x11, ipv4Block(), 0), Header{}, 0, ErrBadHeader, 0},
		{"v2 bad family", v2(1, 0x41, ipv4Block(), 0), Header{}, 0, ErrBadHeader, 0},
		{"v2 bad transport", v2(1, 0x13, ipv4Block(), 0), Header{}, 0, ErrBadHeader, 0},
		{"v2 too long", v2(1, 0x11, ipv4Block(), 500), Header{}, 0, ErrTooLong, 0},
		{"v1 TCP4", []byte("PROXY TCP4 203.0.113.7 10.0.0.1 12345 7000\r\n"), Header{Version: 1, Source: src4, Dest: netip.MustParseAddrPort("10.0.0.1:7000")}, 44, nil, 0},
		{"v1 TCP6", []byte("PROXY TCP6 2001:db8::7 2001:db8::1 12345 7000\r\nxy"), Header{Version: 1, Source: src6, Dest: netip.MustParseAddrPort("[2001:db8::1]:7000")}, 47, nil, 2},
		{"v1 UNKNOWN", []byte("PROXY UNKNOWN\r\n"), Header{Version: 1, Local: true}, 15, nil, 0},
		{"v1 family mismatch", []byte("PROXY TCP4 2001:db8::7 10.0.0.1 12345 7000\r\n"), Header{}, 0, ErrBadHeader, 0},
		{"v1 bad port", []byte("PROXY TCP4 203.0.113.7 10.0.0.1 99999 7000\r\n"), Header{}, 0, ErrBadHeader, 0},
		{"v1 leading zero port", []byte("PROXY TCP4 203.0.113.7 10.0.0.1 012 7000\r\n"), Header{}, 0, ErrBadHeader, 0},
		{"v1 missing field", []byte("PROXY TCP4 203.0.113.7 10.0.0.1 12345\r\n"), Header{}, 0, ErrBadHeader, 0},
		{"v1 no CRLF within 107 bytes", append([]byte("PROXY TCP4 "), make([]byte, 120)...), Header{}, 0, ErrBadHeader, 0},
		{"a frame", []byte{0xC0, 0xDE, 1, 1}, Header{}, 0, ErrNoHeader, 0},
		{"an HTTP request", []byte("GET / HTTP/1.1\r\n"), Header{}, 0, ErrNoHeader, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, n, err := Parse(tt.in, 256)
			if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if h != tt.want || n != tt.n {
				t.Fatalf("got %+v, %d; want %+v, %d", h, n, tt.want, tt.n)
			}
			if tt.err == nil && n+tt.extra != len(tt.in) {
				t.Fatalf("length %d of %d bytes", n, len(tt.in))
			}
			// Every strict prefix of a good header asks for more.
			if tt.err == nil {
				for i := 1; i < n; i++ {
					if _, _, err := Parse(tt.in[:i], 256); !errors.Is(err, ErrNeedMore) {
						t.Fatalf("prefix of %d bytes: %v", i, err)
					}
				}
			}
		})
	}
}

func TestLooks(t *testing.T) {
	for _, b := range [][]byte{sigV2[:1], sigV2, v2(1, 0x11, ipv4Block(), 0), []byte("PRO"), []byte("PROXY TCP4 ")} {
		if !Looks(b) {
			t.Errorf("%q does not look like a header", b)
		}
	}
	for _, b := range [][]byte{nil, {0xC0, 0xDE}, []byte("PROXZ"), []byte("\r\n\r\n\x00\r\nQUIZ")} {
		if Looks(b) {
			t.Errorf("%q looks like a header", b)
		}
	}
}

// FuzzParse: Parse never panics, and a header it accepts is no longer
// than its input and the limit.
func FuzzParse(f *testing.F) {
	f.Add(v2(1, 0x11, ipv4Block(), 3))
	f.Add([]byte("PROXY TCP4 203.0.113.7 10.0.0.1 12345 7000\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, n, err := Parse(b, 300)
		if err == nil && (n > len(b) || n > 300 && n > MaxV1) {
			t.Fatalf("accepted %d bytes of %d", n, len(b))
		}
	})
}
