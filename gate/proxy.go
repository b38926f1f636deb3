package gate

import (
	"errors"
	"net/netip"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/courier-im/courier/gate/internal/proxyproto"
)

// MaxProxyHeader is the longest PROXY protocol version 2 header accepted,
// signature and TLVs included (a version 1 header is at most 107 bytes).
// Load balancers send far less (an IPv6 address block is 36 bytes; AWS
// and HAProxy TLVs add tens to a few hundred).
const MaxProxyHeader = 4096

// Reasons of refusals that PROXY headers cause.
const (
	refuseProxyMissing = "proxy_missing"    // a trusted proxy sent no header
	refuseProxyBad     = "proxy_bad_header" // malformed, or too long
)

// trustedProxy reports whether a connection from a is a load balancer's
// that must start with a PROXY header.
func (g *Gate) trustedProxy(a netip.Addr) bool {
	return g.proxies != nil && g.proxies.Contains(a)
}

// proxyHeader reads the PROXY header that starts a connection from a
// trusted proxy, from gnet's buffer, without waiting: an incomplete
// header stays buffered until more arrives (the login timeout bounds the
// wait). Once it is whole, the client address it carries replaces the
// proxy's, and the admission checks that OnOpen skipped for the proxy run
// on it: IP lists, then the per-IP connection rate. It returns done when
// the header is consumed and the connection may go on to its frames.
func (s *conn) proxyHeader(c gnet.Conn) (done bool, act gnet.Action) {
	g, l := s.loop.g, s.loop
	buf, _ := c.Peek(-1)
	h, n, err := proxyproto.Parse(buf, MaxProxyHeader)
	refuse := func(reason string, why CloseReason) (bool, gnet.Action) {
		g.metrics.refusals.WithLabelValues(reason).Inc()
		g.log.Debug("gate: connection refused", "conn", s.id, "remote", s.remote, "reason", reason, "err", err)
		s.closeReason = why
		return false, gnet.Close
	}
	switch {
	case errors.Is(err, proxyproto.ErrNeedMore):
		return false, gnet.None
	case errors.Is(err, proxyproto.ErrNoHeader):
		return refuse(refuseProxyMissing, CloseProtocol)
	case err != nil:
		return refuse(refuseProxyBad, CloseProtocol)
	}
	_, _ = c.Discard(n)
	s.proxyWait = false
	if h.Local || !h.Source.IsValid() {
		// The proxy's own connection (a health check): it stays the
		// proxy's, which is trusted.
		g.log.Debug("gate: PROXY header without a client address", "conn", s.id, "proxy", s.remote, "version", h.Version)
		return true, gnet.None
	}
	proxy := s.remote
	s.remote = netip.AddrPortFrom(h.Source.Addr().Unmap(), h.Source.Port())
	g.log.Debug("gate: PROXY header", "conn", s.id, "proxy", proxy, "remote", s.remote, "version", h.Version)
	if denied, list := g.lists.cur.Load().ipDenied(s.remote.Addr()); denied {
		g.metrics.listHits.WithLabelValues(list).Inc()
		return refuse(list, CloseBlocked)
	}
	if g.ipRate != nil && !g.ipRate.Allow(s.remote.Addr(), time.Now()) {
		g.metrics.limitHits.WithLabelValues(limitIPRate).Inc()
		l.out = append(l.out, refusedRateLimited...)
		l.flush(s)
		return refuse(refuseIPRate, CloseRateLimited)
	}
	return true, gnet.None
}
