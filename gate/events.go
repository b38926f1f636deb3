package gate

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/panjf2000/gnet/v2"
	"google.golang.org/protobuf/proto"
)

// events is the gate's gnet.EventHandler. Every callback but OnTick runs
// on an event loop and must not block.
type events struct {
	gnet.BuiltinEventEngine
	g *Gate
}

// Answers to connections refused at open (seq 0: they answer no frame).
var (
	refusedBusy        = errorFrame(devicepb.Code_SERVER_BUSY, "server busy: reconnect later or elsewhere")
	refusedRateLimited = errorFrame(devicepb.Code_RATE_LIMITED, "too many new connections from your address")
)

func errorFrame(code devicepb.Code, reason string) []byte {
	b, err := messages.AppendMessage(nil, messages.Header{Cmd: messages.CmdError}, &devicepb.Error{Code: code, Reason: reason})
	if err != nil {
		panic(err) // a fixed message always encodes
	}
	return b
}

// OnBoot releases the port holder (gnet's first listener now has the
// port) and keeps the engine, to stop it on Shutdown.
func (e *events) OnBoot(eng gnet.Engine) gnet.Action {
	e.g.mu.Lock()
	e.g.engine = &eng
	e.g.mu.Unlock()
	e.g.closeHolder()
	return gnet.None
}

// OnTick runs on gnet's ticker goroutine: it queues a timer tick on every
// loop (at most one waiting per loop) and stops the engine on Shutdown.
func (e *events) OnTick() (time.Duration, gnet.Action) {
	g := e.g
	g.readyOnce.Do(func() { close(g.ready) })
	if g.stopping.Load() {
		return g.cfg.TickInterval, gnet.Shutdown
	}
	for _, l := range *g.loops.Load() {
		if l.tickQueued.CompareAndSwap(false, true) {
			if err := l.el.Execute(context.Background(), l); err != nil {
				l.tickQueued.Store(false)
			}
		}
	}
	return g.cfg.TickInterval, gnet.None
}

// OnOpen admits or refuses a new connection: draining, IP lists,
// connection cap, per-IP rate, in that order. For a connection from a
// trusted proxy the IP checks wait for its PROXY header (proxy.go).
func (e *events) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	g := e.g
	l := g.loopOf(c.EventLoop())
	remote := addrPort(c.RemoteAddr())
	proxied := g.trustedProxy(remote.Addr())
	n := g.conns.Add(1)
	refuse := func(reason string, out []byte) ([]byte, gnet.Action) {
		if g.conns.Add(-1) == 0 && g.draining.Load() {
			g.signalDrained()
		}
		g.metrics.refusals.WithLabelValues(reason).Inc()
		g.log.Debug("gate: connection refused", "remote", remote, "reason", reason)
		return out, gnet.Close
	}
	if g.draining.Load() || g.refusing.Load() {
		return refuse(refuseDraining, refusedBusy)
	}
	if denied, list := g.lists.cur.Load().ipDenied(remote.Addr()); denied && !proxied {
		g.metrics.listHits.WithLabelValues(list).Inc()
		return refuse(list, nil)
	}
	if n > g.maxConns {
		g.metrics.limitHits.WithLabelValues(limitConnCap).Inc()
		return refuse(refuseConnCap, refusedBusy)
	}
	if !proxied && g.ipRate != nil && !g.ipRate.Allow(remote.Addr(), time.Now()) {
		g.metrics.limitHits.WithLabelValues(limitIPRate).Inc()
		return refuse(refuseIPRate, refusedRateLimited)
	}
	now := g.nowTick()
	s := &conn{id: ConnID(g.nextID.Add(1)), c: c, loop: l, remote: remote, lastActive: now, proxyWait: proxied}
	s.node.Value = s
	c.SetContext(s)
	g.reg.put(s)
	l.wheel.Schedule(&s.node, s.deadline(g))
	g.metrics.opens.Inc()
	g.metrics.connections.Inc()
	return nil, gnet.None
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// OnClose forgets the connection and tells the Handler, once, if it
// reached Login.
func (e *events) OnClose(c gnet.Conn, err error) gnet.Action {
	s, _ := c.Context().(*conn)
	if s == nil {
		return gnet.None // refused at open
	}
	g := e.g
	c.SetContext(nil)
	s.closed = true
	s.unhold()
	s.loop.wheel.Remove(&s.node)
	g.reg.del(s.id)
	s.mu.Lock()
	s.sClosed = true
	s.out, s.pendingLogin, s.loginAckAt, s.loginAckEnd = nil, nil, 0, 0
	s.mu.Unlock()

	reason := s.closeReason
	if reason == 0 {
		reason = CloseClient
		if g.draining.Load() {
			reason = CloseShutdown
		}
	}
	g.metrics.closes.WithLabelValues(reason.String()).Inc()
	g.metrics.connections.Dec()
	g.log.Debug("gate: connection closed", "conn", s.id, "remote", s.remote, "app", s.app, "uid", s.uid,
		"reason", reason, "err", err)
	if s.reachedLogin {
		g.h.Closed(s.info(), reason)
	}
	if g.conns.Add(-1) == 0 && g.draining.Load() {
		g.signalDrained()
	}
	return gnet.None
}

// checkBody reports whether body decodes as cmd's message. The messages
// are reused per loop: checking allocates only what Unmarshal copies.
func (l *loop) checkBody(cmd messages.Cmd, body []byte) bool {
	if cmd == messages.CmdS2CAck || cmd == messages.CmdC2CPushAck {
		_, ok := messages.MsgIDBody(body) // one per stored message: no reflection
		return ok
	}
	m := l.check[cmd]
	if m == nil {
		if m = messages.NewBody(cmd); m == nil {
			return len(body) == 0
		}
		l.check[cmd] = m
	}
	err := proto.Unmarshal(body, m)
	proto.Reset(m)
	return err == nil
}
