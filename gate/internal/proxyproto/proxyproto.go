package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"strconv"
	"strings"
)

// Errors of Parse.
var (
	// ErrNeedMore: the bytes so far are a prefix of a header; read more.
	ErrNeedMore = errors.New("proxyproto: incomplete header")
	// ErrNoHeader: the bytes do not start with a PROXY header.
	ErrNoHeader = errors.New("proxyproto: no PROXY header")
	// ErrBadHeader: a header that breaks the specification.
	ErrBadHeader = errors.New("proxyproto: malformed PROXY header")
	// ErrTooLong: a version 2 header longer than the caller allows.
	ErrTooLong = errors.New("proxyproto: PROXY header too long")
)

// sigV2 opens a version 2 header; v1 opens with "PROXY ".
var (
	sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")
	sigV1 = []byte("PROXY ")
)

// MaxV1 is the longest version 1 header the specification allows, CRLF
// included.
const MaxV1 = 107

// Header is a parsed PROXY header.
type Header struct {
	Version int // 1 or 2
	// Local: the proxy's own connection (version 2 LOCAL, such as a
	// health check; version 1 UNKNOWN): it relays no client, and the
	// connection's own addresses stand.
	Local bool
	// Source and Dest are the client's address and the address it
	// connected to; not valid when Local, or for a protocol family other
	// than TCP/UDP over IPv4 or IPv6.
	Source, Dest netip.AddrPort
}

// Looks reports whether b starts like a PROXY header of either version
// (or could, being shorter than a signature): for telling a client that
// sends one where none is expected.
func Looks(b []byte) bool {
	return hasPrefixOrIs(b, sigV2) || hasPrefixOrIs(b, sigV1)
}

// hasPrefixOrIs reports whether b starts with sig, or is a non-empty
// prefix of it.
func hasPrefixOrIs(b, sig []byte) bool {
	if len(b) >= len(sig) {
		return bytes.HasPrefix(b, sig)
	}
	return len(b) > 0 && bytes.HasPrefix(sig, b)
}

// Parse parses the header at the start of b, refusing version 2 headers
// longer than maxV2 bytes (signature and TLVs included; the specification
// allows 16 + 65535). It returns the header and its length in bytes, or
// ErrNeedMore, ErrNoHeader, ErrBadHeader or ErrTooLong.
func Parse(b []byte, maxV2 int) (Header, int, error) {
	switch {
	case hasPrefixOrIs(b, sigV2):
		return parseV2(b, maxV2)
	case hasPrefixOrIs(b, sigV1):
		return parseV1(b)
	}
	return Header{}, 0, ErrNoHeader
}

func parseV2(b []byte, maxLen int) (Header, int, error) {
	if len(b) < 16 {
		return Header{}, 0, ErrNeedMore
	}
	verCmd, fam := b[12], b[13]
	n := 16 + int(binary.BigEndian.Uint16(b[14:16]))
	switch {
	case verCmd>>4 != 2:
		return Header{}, 0, ErrBadHeader
	case verCmd&0x0F > 1:
		return Header{}, 0, ErrBadHeader
	case n > maxLen:
		return Header{}, 0, ErrTooLong
	case len(b) < n:
		return Header{}, 0, ErrNeedMore
	}
	h := Header{Version: 2, Local: verCmd&0x0F == 0}
	addr := b[16:n]
	switch fam >> 4 {
	case 1: // AF_INET
		if len(addr) < 12 {
			return Header{}, 0, ErrBadHeader
		}
		src, dst := netip.AddrFrom4([4]byte(addr[0:4])), netip.AddrFrom4([4]byte(addr[4:8]))
		h.Source = netip.AddrPortFrom(src, binary.BigEndian.Uint16(addr[8:10]))
		h.Dest = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(addr[10:12]))
	case 2: // AF_INET6
		if len(addr) < 36 {
			return Header{}, 0, ErrBadHeader
		}
		src, dst := netip.AddrFrom16([16]byte(addr[0:16])), netip.AddrFrom16([16]byte(addr[16:32]))
		h.Source = netip.AddrPortFrom(src.Unmap(), binary.BigEndian.Uint16(addr[32:34]))
		h.Dest = netip.AddrPortFrom(dst.Unmap(), binary.BigEndian.Uint16(addr[34:36]))
	case 0, 3: // AF_UNSPEC, AF_UNIX: no address to use
	default:
		return Header{}, 0, ErrBadHeader
	}
	if fam&0x0F > 2 {
		return Header{}, 0, ErrBadHeader
	}
	if h.Local {
		h.Source, h.Dest = netip.AddrPort{}, netip.AddrPort{}
	}
	return h, n, nil
}

func parseV1(b []byte) (Header, int, error) {
	end := bytes.Index(b, []byte("\r\n"))
	if end < 0 {
		if len(b) >= MaxV1 {
			return Header{}, 0, ErrBadHeader
		}
		return Header{}, 0, ErrNeedMore
	}
	if end+2 > MaxV1 {
		return Header{}, 0, ErrBadHeader
	}
	f := strings.Split(string(b[len(sigV1):end]), " ")
	h := Header{Version: 1}
	switch {
	case len(f) >= 1 && f[0] == "UNKNOWN":
		h.Local = true
		return h, end + 2, nil
	case len(f) != 5 || (f[0] != "TCP4" && f[0] != "TCP6"):
		return Header{}, 0, ErrBadHeader
	}
	src, err1 := netip.ParseAddr(f[1])
	dst, err2 := netip.ParseAddr(f[2])
	sp, err3 := port(f[3])
	dp, err4 := port(f[4])
	if err := errors.Join(err1, err2, err3, err4); err != nil || src.Is4() != (f[0] == "TCP4") || dst.Is4() != (f[0] == "TCP4") {
		return Header{}, 0, ErrBadHeader
	}
	h.Source, h.Dest = netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)
	return h, end + 2, nil
}

// port parses a decimal port without sign or leading zeros.
func port(s string) (uint16, error) {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, ErrBadHeader
	}
	n, err := strconv.ParseUint(s, 10, 16)
	return uint16(n), err
}
