package gate

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// The gate runs gnet with SO_REUSEPORT: every event loop has its own
// listening socket and accepts one connection per wake-up, calling OnOpen
// at once. That keeps the number of accepted-but-unchecked sockets at one
// per loop, so the connection cap really bounds the descriptors in use
// (with one shared acceptor, a burst could be accepted faster than the
// loops close the excess, and EMFILE stops gnet).
//
// SO_REUSEPORT has two traps, handled here. Binding port 0 in every loop
// would give each loop a different port, so the port is chosen first and
// held by a bound, non-listening socket until gnet has bound its own.
// And another process listening on the port with SO_REUSEPORT would
// silently share it, so the address is first probed without SO_REUSEPORT.

// reserveAddr resolves addr (host:port, port 0 allowed) to a concrete
// address that is free, and returns it with the descriptor of a socket
// holding the port. The caller closes the holder once gnet has bound.
func reserveAddr(addr string) (*net.TCPAddr, int, error) {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, -1, fmt.Errorf("gate: resolve %q: %w", addr, err)
	}
	probe, bound, err := bindSocket(ta, false)
	if err != nil {
		return nil, -1, fmt.Errorf("gate: listen %s: %w", addr, err)
	}
	defer unix.Close(probe)
	holder, _, err := bindSocket(bound, true)
	if err != nil {
		return nil, -1, fmt.Errorf("gate: listen %s: %w", bound, err)
	}
	return bound, holder, nil
}

// bindSocket binds (without listening) a TCP socket to a with
// SO_REUSEADDR, and SO_REUSEPORT if reusePort, and returns it with the
// address it got.
func bindSocket(a *net.TCPAddr, reusePort bool) (int, *net.TCPAddr, error) {
	family := unix.AF_INET6
	ip4 := a.IP.To4()
	if ip4 != nil {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, nil, fmt.Errorf("socket: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return -1, nil, fmt.Errorf("SO_REUSEADDR: %w", err)
	}
	if reusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return -1, nil, fmt.Errorf("SO_REUSEPORT: %w", err)
		}
	}
	var sa unix.Sockaddr
	if ip4 != nil {
		s := &unix.SockaddrInet4{Port: a.Port}
		copy(s.Addr[:], ip4)
		sa = s
	} else {
		s := &unix.SockaddrInet6{Port: a.Port}
		if a.IP != nil {
			copy(s.Addr[:], a.IP.To16())
		}
		if a.Zone != "" {
			ifi, err := net.InterfaceByName(a.Zone)
			if err != nil {
				return -1, nil, err
			}
			s.ZoneId = uint32(ifi.Index)
		}
		sa = s
	}
	if err := unix.Bind(fd, sa); err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			return -1, nil, fmt.Errorf("address in use: %w", err)
		}
		return -1, nil, fmt.Errorf("bind: %w", err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		return -1, nil, fmt.Errorf("getsockname: %w", err)
	}
	out := &net.TCPAddr{IP: a.IP, Zone: a.Zone}
	switch s := got.(type) {
	case *unix.SockaddrInet4:
		out.Port = s.Port
	case *unix.SockaddrInet6:
		out.Port = s.Port
	}
	ok = true
	return fd, out, nil
}
