package gate

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/courier-im/courier/gate/wheel"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/panjf2000/gnet/v2"
	"google.golang.org/protobuf/proto"
)

// wheelSlots is the size of each loop's timer wheel: with the default 1 s
// tick a deadline up to 8.5 minutes away costs one visit.
const wheelSlots = 512

// maxReplyBuf is the most reply scratch a loop keeps between callbacks.
const maxReplyBuf = 64 << 10

// loop is the gate's state of one gnet event loop. Everything but el,
// g, tickQueued and drains belongs to the loop's goroutine.
type loop struct {
	g          *Gate
	el         gnet.EventLoop
	tickQueued atomic.Bool // a tick task is on the loop's queue

	wheel *wheel.Wheel[conn]    // every connection of the loop, by deadline
	out   []byte                // replies of the current callback, written once
	dbuf  []byte                // decompressed body of the current frame
	zdec  *messages.ZstdDecoder // the loop's decoder, made at its first compressed frame
	check [256]proto.Message    // reused messages for checking bodies
	tmp   []*conn

	drains    drainList  // connections whose queues wait (any goroutine, under its lock)
	drainTask *drainTask // drains them (outbuf.go)

	// held are the loop's connections with frames held back by the rate
	// limits and a timer to read them again (conn.hold); under heldMu,
	// which the timers take too. Few at a time: kept off conn.
	heldMu sync.Mutex
	held   map[*conn]*time.Timer
}

// decompress decodes a compressed body into the loop's buffer (valid
// until the next frame). Every connection of the loop shares its one
// decoder, so decoder memory grows with the loops, not the connections.
func (l *loop) decompress(body []byte) ([]byte, error) {
	if l.zdec == nil {
		d, err := messages.NewZstdDecoder(l.g.cfg.MaxFrameSize)
		if err != nil {
			l.g.log.Error("gate: zstd decoder", "err", err)
			return nil, err
		}
		l.zdec = d
	}
	out, err := l.zdec.Decompress(l.dbuf[:0], body)
	if err != nil {
		return nil, err
	}
	l.dbuf = out
	return out, nil
}

// exec runs f on the loop. Errors mean the engine is stopping, when the
// loop closes every connection anyway.
func (l *loop) exec(f func()) {
	_ = l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		f()
		return nil
	}))
}

// Run is the loop's timer tick (a gnet.Runnable, so queuing it allocates
// nothing of ours).
func (l *loop) Run(context.Context) error {
	l.tickQueued.Store(false)
	l.wheel.Advance(l.g.nowTick(), l.expire)
	return nil
}

// expire is called for a connection whose wheel slot came due. Deadlines
// move later on activity without touching the wheel, so check the real
// one and reschedule if it is not reached.
func (l *loop) expire(s *conn) {
	if s.closed {
		return
	}
	if d := s.deadline(l.g); d > l.wheel.Now() {
		l.wheel.Schedule(&s.node, d)
		return
	}
	reason := CloseLoginTimeout
	if s.state == stateLoggedIn {
		reason = CloseIdle
	}
	l.g.log.Debug("gate: timeout", "conn", s.id, "remote", s.remote, "reason", reason)
	s.closeOnLoop(reason)
}

// deadline returns the tick at which s times out.
func (s *conn) deadline(g *Gate) int64 {
	if s.state == stateLoggedIn {
		return s.lastActive + g.idleTicks
	}
	return s.lastActive + g.loginTicks // opened at
}

// conns returns the loop's connections in l.tmp (valid until the next call).
func (l *loop) conns() []*conn {
	l.tmp = l.tmp[:0]
	l.wheel.Each(func(s *conn) { l.tmp = append(l.tmp, s) })
	return l.tmp
}

type kick struct {
	reason devicepb.KickReason
	detail string
}

var (
	kickShutdown = kick{devicepb.KickReason_SERVER_SHUTDOWN, "server shutting down: reconnect"}
	kickUID      = kick{devicepb.KickReason_UID_BLACKLISTED, "uid blocked"}
	kickIP       = kick{devicepb.KickReason_KICKED_BY_OPERATOR, "source address blocked"}
	kickSlow     = kick{devicepb.KickReason_SLOW_CLIENT, "outbound queue full"}
)

// kickAll sends KICKOUT to every connection of the loop and closes it.
func (l *loop) kickAll(k kick, reason CloseReason) {
	for _, s := range l.conns() {
		s.kick(k, reason)
	}
}

// enforceLists closes the loop's connections that the lists now refuse.
func (l *loop) enforceLists() {
	lists := l.g.lists.cur.Load()
	for _, s := range l.conns() {
		if s.proxyWait {
			continue // its address is known at its PROXY header, checked then
		}
		if denied, list := lists.ipDenied(s.remote.Addr()); denied {
			l.g.metrics.listHits.WithLabelValues(list).Inc()
			s.kick(kickIP, CloseBlocked)
		} else if s.state >= statePending && lists.uidBlocked(s.app, s.uid) {
			l.g.metrics.listHits.WithLabelValues(listUIDBlacklist).Inc()
			s.kick(kickUID, CloseBlocked)
		}
	}
}

// kick writes what is queued, then KICKOUT, and closes (event loop only).
// A connection not logged in is closed without a KICKOUT: its client
// waits for LOGIN_ACK, and a KICKOUT would carry no session's appcode
// (docs/protocol.md §8.2: reconnect with backoff).
func (s *conn) kick(k kick, reason CloseReason) {
	s.drain()
	if s.closed {
		return
	}
	if s.state == stateLoggedIn {
		l := s.loop
		l.reply(s.app, messages.CmdKickout, 0, &devicepb.Kickout{Reason: k.reason, Detail: k.detail})
		l.flush(s)
	}
	s.closeOnLoop(reason)
}

// closeOnLoop closes s now; OnClose runs before it returns.
func (s *conn) closeOnLoop(reason CloseReason) {
	if s.closed {
		return
	}
	if s.closeReason == 0 {
		s.closeReason = reason
	}
	_ = s.loop.el.Close(s.c)
}

// reply appends a frame to the loop's reply buffer.
func (l *loop) reply(app uint16, cmd messages.Cmd, seq uint32, body proto.Message) {
	var err error
	l.out, err = messages.AppendMessage(l.out, messages.Header{Cmd: cmd, AppCode: app, Seq: seq}, body)
	if err != nil {
		l.g.log.Error("gate: encode reply", "cmd", cmd, "err", err)
		return
	}
	l.g.metrics.framesOut[cmd].Inc()
}

// sendError appends an ERROR frame answering seq.
func (l *loop) sendError(app uint16, seq uint32, code devicepb.Code, reason string) {
	l.g.metrics.protocolErrors.WithLabelValues(code.String()).Inc()
	l.reply(app, messages.CmdError, seq, &devicepb.Error{Code: code, Reason: reason})
}

// flush writes the reply buffer to s. A peer whose gnet buffer is already
// over the limit is disconnected as a slow client.
func (l *loop) flush(s *conn) {
	if len(l.out) == 0 {
		return
	}
	if !s.closed {
		if s.c.OutboundBuffered()+len(l.out) > l.g.cfg.MaxOutboundBuffered {
			l.out = l.out[:0]
			l.g.slowClient(limitOutBuffered)
			s.closeOnLoop(CloseSlowClient)
			return
		}
		n := len(l.out)
		_, _ = s.c.Write(l.out)
		l.g.metrics.bytesOut.Add(float64(n))
	}
	l.out = l.out[:0]
	if cap(l.out) > maxReplyBuf {
		l.out = nil
	}
}

func (g *Gate) slowClient(limit string) {
	g.metrics.slowClients.Inc()
	g.metrics.limitHits.WithLabelValues(limit).Inc()
}
