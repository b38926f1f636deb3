package gate

import (
	"context"
	"encoding/binary"
	"errors"
	"strconv"
	"time"

	"github.com/courier-im/courier/gate/internal/proxyproto"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/panjf2000/gnet/v2"
	"google.golang.org/protobuf/proto"
)

// Limits of the LOGIN fields, in bytes. A longer uid is answered
// LOGIN_ACK BAD_UID, a longer device id, app version or token
// BAD_LOGIN_FIELD.
const (
	maxUIDLen = 128
	// MaxDeviceIDLen is the longest Login.device_id.
	MaxDeviceIDLen = 128
	// MaxAppVersionLen is the longest Login.app_version.
	MaxAppVersionLen = 128
	// MaxTokenLen is the longest Login.token.
	MaxTokenLen = 4096
	// maxClientMsgIDLen is the longest client_msg_id the node takes (and
	// echoes in its answers); actors.MaxClientMsgIDLen.
	maxClientMsgIDLen = 128
)

// OnTraffic parses every whole frame gnet has buffered. A partial frame
// stays in gnet's buffer (Peek without Discard) until more arrives; the
// body of an oversized frame is never read. Replies are batched into one
// write per callback.
func (e *events) OnTraffic(c gnet.Conn) gnet.Action {
	s, _ := c.Context().(*conn)
	if s == nil {
		return gnet.Close
	}
	g, l := e.g, s.loop
	if s.proxyWait {
		if done, act := s.proxyHeader(c); !done {
			return act
		}
	}
	now := g.nanos()
	act := gnet.None
	frames := 0
	for act == gnet.None {
		hb, err := c.Peek(messages.HeaderSize)
		if err != nil {
			// A partial header: wait for more. Its first two bytes already
			// say whether this is the protocol at all: a foreign client (an
			// HTTP request, a probe) is closed at once, not at the login
			// timeout.
			if p, err := c.Peek(2); err == nil && binary.BigEndian.Uint16(p) != messages.Magic {
				act = s.headerError(messages.Header{}, messages.ErrBadMagic, p)
			}
			break
		}
		h, herr := messages.ParseHeader(hb, g.cfg.MaxFrameSize)
		if herr != nil && !errors.Is(herr, messages.ErrBadFlags) {
			act = s.headerError(h, herr, hb)
			break
		}
		total := messages.HeaderSize + int(h.Length)
		if c.InboundBuffered() < total {
			break
		}
		frames++
		if limit, wait := s.overRate(now, h.Cmd, total); limit != "" {
			if c.InboundBuffered() <= s.maxHeld() {
				// The frame and what follows it wait in gnet's buffer, in
				// order, until the bucket has refilled: a client that
				// bursts (an outbox flushed after a reconnect) is slowed
				// down, not cut off.
				if s.hold(c, wait) {
					g.metrics.limitHits.WithLabelValues(limit).Inc()
				}
				break
			}
			g.metrics.limitHits.WithLabelValues(limit).Inc()
			l.sendError(s.replyApp(h), h.Seq, devicepb.Code_RATE_LIMITED, "sending too fast")
			s.closeReason = CloseRateLimited
			act = gnet.Close
			break
		}
		frame, err := c.Peek(total)
		if err != nil {
			break
		}
		g.metrics.framesIn[h.Cmd].Inc()
		g.metrics.bytesIn.Add(float64(total))
		act = s.onFrame(h, herr != nil, frame[messages.HeaderSize:])
		_, _ = c.Discard(total)
		if len(l.out) >= maxReplyBuf {
			if l.flush(s); s.closed {
				return gnet.Close // gnet ignores the stale conn
			}
		}
	}
	// Activity is bytes received, a whole frame or more of one: OnTraffic
	// runs when some arrive, or when hold's timer wakes it for a frame
	// that is whole. Before login, lastActive is when the connection
	// opened.
	if s.state == stateLoggedIn {
		s.lastActive = now / int64(g.cfg.TickInterval)
	}
	l.flush(s)
	if s.closed {
		return gnet.Close // closed while writing; gnet ignores the stale conn
	}
	return act
}

// overRate takes a frame of cmd and size bytes from the connection's
// buckets and names the limit that ran dry, if one did. Acks the client
// owes and its keepalives pass the frame limit on credit (ackcredit.go).
func (s *conn) overRate(now int64, cmd messages.Cmd, size int) (limit string, wait int64) {
	cfg := &s.loop.g.cfg
	if cfg.BytesPerSecond > 0 && !s.byteTokens.Take(now, int64(size), int64(cfg.BytesPerSecond), int64(cfg.ByteBurst)) {
		return limitByteRate, s.byteTokens.Wait(now, int64(size), int64(cfg.BytesPerSecond))
	}
	if cfg.FramesPerSecond > 0 && !s.freeFrame(cmd, now) &&
		!s.frameTokens.Take(now, 1, int64(cfg.FramesPerSecond), int64(cfg.FrameBurst)) {
		if cfg.BytesPerSecond > 0 {
			s.byteTokens.Give(int64(size)) // the frame waits: taken again then
		}
		return limitFrameRate, s.frameTokens.Wait(now, 1, int64(cfg.FramesPerSecond))
	}
	return "", 0
}

// maxHeld bounds the bytes a connection over its rate may have waiting
// in the gate (hold): two frames of the largest size, at least 128 KiB
// (an outbox of hundreds of small frames); one frame until it is logged
// in. Beyond, it is answered RATE_LIMITED and closed.
func (s *conn) maxHeld() int {
	frame := int(s.loop.g.cfg.MaxFrameSize) + messages.HeaderSize
	if s.state != stateLoggedIn {
		return frame
	}
	return max(2*frame, 128<<10)
}

// hold has OnTraffic called again wait ns from now, when the buckets
// have refilled for the frame that ran them dry; until then what the
// connection sent waits in gnet's buffer. New data arriving meanwhile
// calls it too (and finds the buckets dry, or not).
// It reports whether it set a timer (false: one was set already).
func (s *conn) hold(c gnet.Conn, wait int64) bool {
	l := s.loop
	l.heldMu.Lock()
	defer l.heldMu.Unlock()
	if l.held[s] != nil {
		return false
	}
	if l.held == nil {
		l.held = map[*conn]*time.Timer{}
	}
	var t *time.Timer
	t = time.AfterFunc(time.Duration(wait), func() {
		l.heldMu.Lock()
		mine := l.held[s] == t
		if mine {
			delete(l.held, s)
		}
		l.heldMu.Unlock()
		if !mine {
			return // the connection closed meanwhile (unhold)
		}
		// On the loop, and only while the engine runs (Execute refuses
		// after it stopped; Wake would write to its closed eventfd).
		_ = l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			if !s.closed {
				_ = c.Wake(nil)
			}
			return nil
		}))
	})
	l.held[s] = t
	return true
}

// unhold stops the timer of a connection that closed with frames held.
func (s *conn) unhold() {
	l := s.loop
	l.heldMu.Lock()
	if t := l.held[s]; t != nil {
		t.Stop()
		delete(l.held, s)
	}
	l.heldMu.Unlock()
}

// replyApp is the appcode of answers: the login's once logged in, else
// the frame's.
func (s *conn) replyApp(h messages.Header) uint16 {
	if s.state == stateLoggedIn {
		return s.app
	}
	return h.AppCode
}

// headerError answers a header that ends the connection.
func (s *conn) headerError(h messages.Header, err error, raw []byte) gnet.Action {
	l := s.loop
	s.closeReason = CloseProtocol
	switch {
	case errors.Is(err, messages.ErrBadMagic) && proxyproto.Looks(raw):
		// A PROXY header from an address that is not a trusted proxy
		// (gate.proxy-from), or while gate.proxy-protocol is off: the
		// address it claims is not believed.
		l.g.metrics.protocolErrors.WithLabelValues("PROXY_UNTRUSTED").Inc()
		l.g.log.Debug("gate: PROXY header from an untrusted address; closing", "conn", s.id, "remote", s.remote)
		return gnet.Close
	case errors.Is(err, messages.ErrBadMagic):
		l.g.metrics.protocolErrors.WithLabelValues("BAD_MAGIC").Inc()
		l.g.log.Debug("gate: bad magic; closing", "conn", s.id, "remote", s.remote, "head", strconv.Quote(string(raw)))
		return gnet.Close
	case errors.Is(err, messages.ErrFrameTooLarge):
		l.g.metrics.limitHits.WithLabelValues(limitFrameSize).Inc()
		l.sendError(s.replyApp(h), h.Seq, devicepb.Code_FRAME_TOO_LARGE,
			"frame body of "+strconv.FormatUint(uint64(h.Length), 10)+" bytes above the limit of "+
				strconv.FormatUint(uint64(l.g.cfg.MaxFrameSize), 10))
	default:
		l.sendError(s.replyApp(h), h.Seq, messages.WireCode(err), err.Error())
	}
	l.g.log.Debug("gate: fatal header; closing", "conn", s.id, "remote", s.remote, "err", err)
	return gnet.Close
}

// onFrame checks a whole frame in the protocol's order (after magic,
// version and length: flags, logged in, command known, appcode, body) and
// acts on it.
func (s *conn) onFrame(h messages.Header, badFlags bool, body []byte) gnet.Action {
	l := s.loop
	g := l.g
	app := s.replyApp(h)
	// A frame refused for its flags is answered and does not count as the
	// first: the next frame still has to be LOGIN, or the connection
	// closes.
	if badFlags {
		l.sendError(app, h.Seq, devicepb.Code_BAD_FLAGS, "reserved flag bits set")
		return gnet.None
	}
	if h.Compressed() && !s.zstd {
		l.sendError(app, h.Seq, devicepb.Code_BAD_FLAGS, "zstd flag without compression negotiated at login")
		return gnet.None
	}
	first := s.state == stateNew
	if first {
		s.state = stateFresh
	}
	switch {
	case s.state == stateFresh && h.Cmd != messages.CmdLogin && first:
		l.sendError(app, h.Seq, devicepb.Code_NOT_LOGGED_IN, "LOGIN must be the first frame")
		s.closeReason = CloseProtocol
		return gnet.Close
	case s.state == stateFresh && h.Cmd != messages.CmdLogin:
		// Only a first frame that is not LOGIN closes the connection. One
		// after a LOGIN that was refused and left it open (ERROR BAD_BODY:
		// its body does not decode) fails the logged-in check, and the
		// client may still log in until the login timeout. A LOGIN refused
		// for its flags does not count as the first frame (above), and one
		// with a field over its bound is answered LOGIN_ACK and closed
		// (failLogin).
		l.sendError(app, h.Seq, devicepb.Code_NOT_LOGGED_IN, "not logged in: send LOGIN")
		return gnet.None
	case s.state != stateFresh && h.Cmd == messages.CmdLogin:
		l.sendError(app, h.Seq, devicepb.Code_ALREADY_LOGGED_IN, "already logged in or logging in")
		return gnet.None
	case s.state == statePending:
		// Only the first frame must be LOGIN (then close); a frame sent
		// behind it, before the login succeeded, fails the logged-in check
		// and is answered, but the login goes on.
		l.sendError(app, h.Seq, devicepb.Code_NOT_LOGGED_IN, "frame before LOGIN_ACK: send it again after LOGIN_ACK")
		return gnet.None
	}
	if !h.Cmd.FromClient() {
		l.sendError(app, h.Seq, devicepb.Code_UNKNOWN_COMMAND, "unknown command "+h.Cmd.String())
		return gnet.None
	}
	if s.state == stateLoggedIn && h.AppCode != s.app {
		l.sendError(app, h.Seq, devicepb.Code_APP_MISMATCH,
			"appcode "+strconv.Itoa(int(h.AppCode))+" differs from the login's "+strconv.Itoa(int(s.app)))
		return gnet.None
	}
	if h.Compressed() {
		out, err := l.decompress(body)
		if err != nil {
			// Refused, but decoded up to past the frame limit first: that
			// work is charged like a whole frame's body, or a stream of
			// small bombs would cost the gate many times the byte rate.
			if cfg := &g.cfg; cfg.BytesPerSecond > 0 && int(cfg.MaxFrameSize) > len(body) &&
				s.byteTokens.Owe(g.nanos(), int64(int(cfg.MaxFrameSize)-len(body)), int64(cfg.BytesPerSecond), int64(cfg.ByteBurst)) {
				g.metrics.limitHits.WithLabelValues(limitByteRate).Inc()
			}
			l.sendError(app, h.Seq, devicepb.Code_BAD_BODY, "body does not decompress within the frame limit (windows up to 128 MiB)")
			return gnet.None
		}
		// The byte rate counts a body at its decompressed size: what the
		// node stores and forwards (a few bytes of zstd can stand for a
		// whole frame of payload). What the bucket lacks for it is owed,
		// at most a frame's worth: the frames after it wait (hold) until
		// the refill has paid it back, as they would behind the same body
		// sent uncompressed.
		if cfg := &g.cfg; cfg.BytesPerSecond > 0 && len(out) > len(body) &&
			s.byteTokens.Owe(g.nanos(), int64(len(out)-len(body)), int64(cfg.BytesPerSecond), int64(cfg.ByteBurst)) {
			g.metrics.limitHits.WithLabelValues(limitByteRate).Inc()
		}
		body = out
		h.Flags &^= messages.FlagZstd
		h.Length = uint32(len(body))
	}
	switch h.Cmd {
	case messages.CmdLogin:
		return s.onLogin(h, body)
	case messages.CmdKeepalive:
		if len(body) != 0 {
			l.sendError(app, h.Seq, devicepb.Code_BAD_BODY, "KEEPALIVE has no body")
			return gnet.None
		}
		l.reply(app, messages.CmdKeepaliveAck, h.Seq, nil)
		return gnet.None
	case messages.CmdLogout:
		if len(body) != 0 {
			l.sendError(app, h.Seq, devicepb.Code_BAD_BODY, "LOGOUT has no body")
			return gnet.None
		}
		// Answers already given to the frames before it go first: the
		// loop's own, then those queued through Deliver (a C2S_ACK the
		// handler answered at once), which the close would drop.
		l.flush(s)
		if s.drain(); s.closed {
			return gnet.Close
		}
		l.reply(app, messages.CmdLogoutAck, h.Seq, nil)
		s.closeReason = CloseLogout
		return gnet.Close
	}
	if !l.checkBody(h.Cmd, body) {
		l.sendError(app, h.Seq, devicepb.Code_BAD_BODY, "body does not decode as "+h.Cmd.String())
		return gnet.None
	}
	if h.Cmd == messages.CmdC2C && g.c2cRate != nil && !g.c2cRate.take(g.nanos(), s.app, s.uid) {
		s.refuseC2C(h, body)
		return gnet.None
	}
	g.h.Frame(s.info(), h, body)
	return gnet.None
}

// refuseC2C answers a C2C over the connection's C2C rate: not stored,
// retry later (the connection goes on).
func (s *conn) refuseC2C(h messages.Header, body []byte) {
	l, g := s.loop, s.loop.g
	g.metrics.limitHits.WithLabelValues(limitC2CRate).Inc()
	var m devicepb.C2C
	_ = proto.Unmarshal(body, &m) // checkBody decoded it
	id := m.ClientMsgId
	if len(id) > maxClientMsgIDLen {
		id = "" // refused for its length by the node; the seq says which
	}
	l.reply(s.app, messages.CmdC2CAck, h.Seq, &devicepb.C2CAck{Code: devicepb.Code_RATE_LIMITED, ClientMsgId: id,
		Reason: "over this identity's C2C rate (gate.c2c-per-second " + strconv.Itoa(g.cfg.C2CPerSecond) + "): not stored; send it again later"})
}

// onLogin checks a LOGIN at the edge (uid, token, uid blacklist) and hands
// it to the Handler, whose answer comes back through Deliver.
func (s *conn) onLogin(h messages.Header, body []byte) gnet.Action {
	l := s.loop
	g := l.g
	m := &devicepb.Login{}
	if err := proto.Unmarshal(body, m); err != nil {
		l.sendError(h.AppCode, h.Seq, devicepb.Code_BAD_BODY, "body does not decode as LOGIN")
		return gnet.None
	}
	if m.Uid == "" || len(m.Uid) > maxUIDLen {
		return s.failLogin(h, devicepb.Code_BAD_UID, "uid must be 1 to 128 bytes")
	}
	if reason := loginFieldTooLong(m); reason != "" {
		return s.failLogin(h, devicepb.Code_BAD_LOGIN_FIELD, reason)
	}
	if err := g.auth.Verify(h.AppCode, m.Uid, m.Token); err != nil {
		code := loginCode(err)
		g.log.Debug("gate: token refused", "conn", s.id, "remote", s.remote, "app", h.AppCode, "uid", m.Uid, "err", err)
		return s.failLogin(h, code, loginReasons[code])
	}
	if g.lists.cur.Load().uidBlocked(h.AppCode, m.Uid) {
		g.metrics.listHits.WithLabelValues(listUIDBlacklist).Inc()
		return s.failLogin(h, devicepb.Code_UID_BLOCKED, "uid blocked")
	}
	s.state = statePending
	s.app, s.uid, s.deviceID = h.AppCode, m.Uid, m.DeviceId
	s.reachedLogin = true
	s.mu.Lock()
	s.sApp, s.sLoginPending, s.sAskedZstd = h.AppCode, true, m.Zstd
	s.mu.Unlock()
	info := s.info()
	// Now plus what is left (by the monotonic clock): a wall clock stepped
	// since the gate started does not shift it.
	info.LoginDeadline = time.Now().Add(time.Duration(s.deadline(g))*g.cfg.TickInterval - time.Since(g.start))
	g.h.Login(info, h.Seq, m)
	return gnet.None
}

// loginFieldTooLong names the first LOGIN field (other than uid) over its
// limit, or returns "".
func loginFieldTooLong(m *devicepb.Login) string {
	switch {
	case len(m.DeviceId) > MaxDeviceIDLen:
		return "device_id longer than " + strconv.Itoa(MaxDeviceIDLen) + " bytes"
	case len(m.AppVersion) > MaxAppVersionLen:
		return "app_version longer than " + strconv.Itoa(MaxAppVersionLen) + " bytes"
	case len(m.Token) > MaxTokenLen:
		return "token longer than " + strconv.Itoa(MaxTokenLen) + " bytes"
	}
	return ""
}

var loginReasons = map[devicepb.Code]string{
	devicepb.Code_AUTH_FAILED:   "token verification failed",
	devicepb.Code_TOKEN_EXPIRED: "token expired",
	devicepb.Code_UNKNOWN_APP:   "unknown appcode",
}

// failLogin answers LOGIN_ACK with a failure code, then closes.
func (s *conn) failLogin(h messages.Header, code devicepb.Code, reason string) gnet.Action {
	l := s.loop
	l.g.metrics.loginFailures.WithLabelValues(code.String()).Inc()
	l.reply(h.AppCode, messages.CmdLoginAck, h.Seq, &devicepb.LoginAck{
		Code: code, Reason: reason, ServerTimeMs: time.Now().UnixMilli(),
	})
	s.closeReason = CloseLoginFailed
	return gnet.Close
}
