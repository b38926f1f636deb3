package gate

import (
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
)

// Deliver acts on one of the gate's connections. It may be called from
// any goroutine (and from Handler callbacks); it never blocks on the
// network.
//
// The frames are encoded at once (header with the connection's appcode;
// a body of at least Config.CompressThreshold bytes is zstd-compressed
// for a connection that negotiated it, if that makes it smaller) into the
// connection's bounded queue, which its event loop drains with one write
// for everything waiting. Then, on the loop, in this order: if m.Login is
// set, the login's outcome applies (ok: the connection is logged in as
// app, uid, epoch, zstd, and frames of m are its first; not ok: it is
// closed after the frames, CloseKicked); if m.Close is set, the
// connection is closed after the frames (CloseKicked). Frames of the ToConn
// carrying the LoginOutcome are never compressed: the client learns about
// compression from the LOGIN_ACK among them.
//
// Errors: ErrUnknownConn if the gate does not hold the connection (also
// once it is closing); ErrStaleEpoch if m.Epoch is older than the
// connection's session (m is dropped); ErrNoLoginPending for a
// LoginOutcome without a login in progress; ErrSlowClient if the queue
// would overflow (the frames are dropped, KICKOUT SLOW_CLIENT is queued
// and the connection closes, CloseSlowClient; a LOGIN_ACK still waiting,
// queued or in m, is kept and sent before the KICKOUT, and its outcome
// applies before the close); ErrBadFrame for a command
// the server does not send (nothing is queued); ErrClosed while the gate
// stops.
//
// A successful LoginOutcome for a connection that has already closed
// makes the gate call Handler.Closed with the outcome's identity and epoch
// (reason CloseClient), so that the node does not believe it online.
func (g *Gate) Deliver(m *actorpb.ToConn) error {
	s := g.reg.get(ConnID(m.GetConnId()))
	if s == nil {
		return g.deliverGone(m)
	}
	var size int
	for _, f := range m.Frames {
		if f.Cmd > 0xFF || !messages.Cmd(f.Cmd).FromServer() {
			g.metrics.deliverDropped.WithLabelValues("bad_frame").Inc()
			return ErrBadFrame
		}
		size += messages.HeaderSize + len(f.Body)
	}

	// Compression (up to a few ms for a large body) happens before the
	// connection's lock, which its event loop takes too: encoded for the
	// connection's session as it is now, kept if that has not changed.
	pre, preApp := g.precompress(s, m)
	if pre != nil {
		defer putOutBuf(pre)
	}

	s.mu.Lock()
	switch {
	case s.sClosed || s.sCloseReq != 0:
		s.mu.Unlock()
		return g.deliverGone(m)
	case m.Epoch < s.sEpoch:
		s.mu.Unlock()
		g.metrics.deliverDropped.WithLabelValues("stale_epoch").Inc()
		return ErrStaleEpoch
	case m.Login != nil && !s.sLoginPending:
		s.mu.Unlock()
		g.metrics.deliverDropped.WithLabelValues("no_login_pending").Inc()
		return ErrNoLoginPending
	}
	overflow := int(s.outFrames)+len(m.Frames) > g.cfg.OutQueueFrames || int(s.outBytes)+size > g.cfg.OutQueueBytes
	switch {
	case overflow:
		s.overflow(m)
	case len(m.Frames) > 0:
		if s.out == nil {
			s.out = getOutBuf()
		}
		buf := *s.out
		before := len(buf)
		if pre != nil && s.sZstd && s.sApp == preApp {
			buf = append(buf, *pre...)
		} else {
			for _, f := range m.Frames {
				start := len(buf)
				buf = g.appendFrame(buf, f, s.sApp, s.sZstd)
				if m.Login != nil && messages.Cmd(f.Cmd) == messages.CmdLoginAck {
					s.loginAckAt, s.loginAckEnd = int32(start), int32(len(buf))
				}
			}
		}
		*s.out = buf
		s.outFrames += int32(len(m.Frames))
		s.outBytes += int32(len(buf) - before)
		for _, f := range m.Frames {
			s.sAckCredit = min(s.sAckCredit+ackCredit(f, &s.sPulledTo), maxAckCredit)
		}
	}
	if lo := m.Login; lo != nil {
		s.sLoginPending = false
		s.pendingLogin = lo
		if lo.Ok {
			s.sEpoch, s.sApp, s.sZstd = lo.Epoch, uint16(lo.AppCode), lo.Zstd && s.sAskedZstd
		} else if s.sCloseReq == 0 {
			s.sCloseReq = CloseKicked
		}
	}
	if m.Close && s.sCloseReq == 0 {
		s.sCloseReq = CloseKicked
	}
	sched := s.schedule()
	s.mu.Unlock()

	if overflow {
		g.slowClient(limitOutQueue)
		g.log.Debug("gate: outbound queue full; disconnecting", "conn", s.id, "remote", s.remote)
		if sched {
			_ = s.loop.queueDrain(s)
		}
		return ErrSlowClient
	}
	for _, f := range m.Frames {
		g.metrics.framesOut[f.Cmd].Inc()
	}
	if m.Close {
		g.log.Debug("gate: close requested", "conn", s.id, "reason", m.CloseReason)
	}
	if sched {
		return s.loop.queueDrain(s)
	}
	return nil
}

// overflow replaces what waits in s's queue with KICKOUT SLOW_CLIENT and
// asks for the close (s.mu held). A LOGIN_ACK still waiting (in the queue
// or in m) goes out first and its outcome is applied before the close:
// a client always learns the outcome of its login, and the node hears
// the session end with its epoch.
func (s *conn) overflow(m *actorpb.ToConn) {
	g := s.loop.g
	var ack []byte
	if s.loginAckEnd > 0 {
		ack = (*s.out)[s.loginAckAt:s.loginAckEnd]
	}
	if m.Login != nil {
		for _, f := range m.Frames {
			if messages.Cmd(f.Cmd) == messages.CmdLoginAck {
				ack = g.appendFrame(nil, f, s.sApp, false)
				break
			}
		}
	}
	// The queue's buffer is dropped, not reused: ack may point into it.
	out := append([]byte(nil), ack...)
	out, _ = messages.AppendMessage(out, messages.Header{Cmd: messages.CmdKickout, AppCode: s.sApp},
		&devicepb.Kickout{Reason: kickSlow.reason, Detail: kickSlow.detail})
	s.out, s.outFrames, s.outBytes = &out, 1, int32(len(out))
	if ack != nil {
		s.outFrames = 2
	}
	s.loginAckAt, s.loginAckEnd, s.sAckCredit = 0, 0, 0
	s.sCloseReq = CloseSlowClient
}

// schedule reports whether the caller must queue a drain (s.mu held).
func (s *conn) schedule() bool {
	if s.drainQueued {
		return false
	}
	s.drainQueued = true
	return true
}

// deliverGone answers a Deliver for a connection the gate no longer holds.
func (g *Gate) deliverGone(m *actorpb.ToConn) error {
	g.metrics.deliverDropped.WithLabelValues("unknown_conn").Inc()
	id := ConnID(m.GetConnId())
	if lo := m.GetLogin(); lo.GetOk() && id != 0 && uint64(id) <= g.nextID.Load() {
		g.h.Closed(ConnInfo{ID: id, AppCode: uint16(lo.AppCode), UID: lo.Uid, Epoch: lo.Epoch}, CloseClient)
	}
	return ErrUnknownConn
}

// appendFrame encodes f for a connection with appcode app.
func (g *Gate) appendFrame(dst []byte, f *actorpb.OutFrame, app uint16, zstd bool) []byte {
	h := messages.Header{Cmd: messages.Cmd(f.Cmd), AppCode: app, MsgType: uint16(f.Msgtype), Seq: f.Seq}
	if zstd && len(f.Body) > 0 && len(f.Body) >= g.cfg.CompressThreshold {
		start := len(dst)
		dst = messages.AppendHeader(dst, h)
		if g.compressing != nil {
			g.compressing()
		}
		dst = g.zstd.Compress(dst, f.Body)
		if n := len(dst) - start - messages.HeaderSize; n < len(f.Body) {
			h.Flags, h.Length = messages.FlagZstd, uint32(n)
			messages.PutHeader(dst[start:], h)
			return dst
		}
		dst = dst[:start]
	}
	return messages.AppendFrame(dst, h, f.Body)
}

// precompress encodes m's frames for s outside s's lock when one of them
// would be compressed (the session reads zstd, a body reaches the
// threshold; never with a login outcome, whose LOGIN_ACK goes plain). It
// returns nil otherwise, and the appcode it encoded them with.
func (g *Gate) precompress(s *conn, m *actorpb.ToConn) (*[]byte, uint16) {
	if m.Login != nil {
		return nil, 0
	}
	big := false
	for _, f := range m.Frames {
		big = big || (len(f.Body) > 0 && len(f.Body) >= g.cfg.CompressThreshold)
	}
	if !big {
		return nil, 0
	}
	s.mu.Lock()
	zstd, app := s.sZstd, s.sApp
	s.mu.Unlock()
	if !zstd {
		return nil, 0
	}
	out := getOutBuf()
	for _, f := range m.Frames {
		*out = g.appendFrame(*out, f, app, true)
	}
	return out, app
}

// drain writes what Deliver queued in one write, then applies a login
// outcome and a close request (event loop only).
func (s *conn) drain() {
	if s.closed {
		return
	}
	s.mu.Lock()
	out, login, closeReq, zstd, credit := s.out, s.pendingLogin, s.sCloseReq, s.sZstd, s.sAckCredit
	s.out, s.outFrames, s.outBytes, s.pendingLogin, s.drainQueued, s.sAckCredit = nil, 0, 0, nil, false, 0
	s.loginAckAt, s.loginAckEnd = 0, 0
	s.mu.Unlock()
	s.addAckCredit(credit)
	if out != nil {
		ok := s.writeQueued(*out)
		putOutBuf(out)
		if !ok {
			return
		}
	}
	if login != nil {
		s.applyLogin(login, zstd)
	}
	if closeReq != 0 {
		s.closeOnLoop(closeReq)
	}
}

// writeQueued writes buf, everything queued since the last drain, with
// one write (gnet keeps what the socket does not take); false if s closed
// meanwhile.
func (s *conn) writeQueued(buf []byte) bool {
	g := s.loop.g
	if s.c.OutboundBuffered()+len(buf) > g.cfg.MaxOutboundBuffered {
		g.slowClient(limitOutBuffered)
		g.log.Debug("gate: outbound buffer full; disconnecting", "conn", s.id, "remote", s.remote)
		s.closeOnLoop(CloseSlowClient)
		return false
	}
	_, _ = s.c.Write(buf)
	g.metrics.writeBatches.Inc()
	g.metrics.bytesOut.Add(float64(len(buf)))
	return !s.closed
}

// applyLogin makes the Handler's answer to LOGIN effective.
func (s *conn) applyLogin(o *actorpb.LoginOutcome, zstd bool) {
	g := s.loop.g
	if s.state != statePending {
		g.log.Warn("gate: login outcome without a pending login", "conn", s.id)
		return
	}
	if !o.Ok {
		g.metrics.loginFailures.WithLabelValues("REJECTED").Inc()
		return // the close follows
	}
	s.state = stateLoggedIn
	s.app, s.uid, s.epoch, s.zstd = uint16(o.AppCode), o.Uid, o.Epoch, zstd
	s.lastActive = g.nowTick()
	// The idle deadline may come before the login deadline the wheel
	// holds; the wheel only tolerates deadlines moving later.
	s.loop.wheel.Schedule(&s.node, s.deadline(g))
	g.metrics.logins.Inc()
}
