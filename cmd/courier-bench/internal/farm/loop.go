package farm

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/cmd/courier-bench/internal/wire"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

// Device states.
const (
	stIdle uint8 = iota
	stConnecting
	stLoggingIn
	stOnline
)

// Codes of LoginDone records that are not LOGIN_ACK codes.
const (
	CodeConnectFailed uint8 = 250 // socket, bind or connect failed
	CodeTimeout       uint8 = 251 // no LOGIN_ACK within the login timeout
	CodeClosed        uint8 = 252 // the connection ended before LOGIN_ACK
)

// LoginDone is the record kind of a finished login attempt: Code is the
// LOGIN_ACK code (0 OK) or one of the Code* failures, Idx the dial time
// (Unix ns) and T the time of the result.
const LoginDone Kind = 8

const (
	maxBody      = 16 << 20
	readBufSize  = 64 << 10
	maxEvents    = 512
	sendsPerTick = 2000
)

// device is one simulated device, owned by its loop.
type device struct {
	g      int    // global index
	uid    string // uid it logs in as
	token  string // its signed token
	fd     int    // -1 when not connected
	gen    int32  // bumped on every close, to drop stale epoll events
	state  uint8
	login  bool // counted in the current login command
	seq    uint32
	hb     int64 // keepalive interval, ns
	nextKA int64
	start  int64 // dial time, Unix ns
	parser *messages.Parser
	out    []byte // bytes the socket did not take yet
}

func (d *device) nextSeq() uint32 {
	d.seq++
	return d.seq
}

// traffic is a paced C2C or C2S send.
type traffic struct {
	kind   Kind // SentC2C or SentC2S
	rate   float64
	t0     int64
	end    int64
	count  int64 // most messages (0: until end)
	sent   int64
	cursor int
	done   func(sent int64)
}

// loop is an event loop and the devices it owns. Everything but mu's
// fields and the counters belongs to the loop's goroutine.
type loop struct {
	f    *Farm
	id   int
	epfd int
	evfd int
	devs []*device
	st   counters

	mu      sync.Mutex
	cmds    []func()
	recs    []Record
	lastErr string

	events  [maxEvents]unix.EpollEvent
	rbuf    []byte
	wbuf    []byte
	uidBuf  []byte
	idxBuf  []byte
	payBuf  []byte
	local   []Record
	fields  wire.Fields
	parsers []*messages.Parser
	counter uint64 // message index counter of this loop

	// Login pacing.
	pend      []*device
	loginRate float64
	loginT0   int64
	dialed    int64
	inflight  int
	maxFlight int
	loginLeft int
	loginDone func()
	nextLogin int64 // next login timeout scan

	tr      *traffic
	nextKA  int64
	stopped bool
}

func newLoop(f *Farm, id int) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("farm: epoll: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("farm: eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("farm: epoll add eventfd: %w", err)
	}
	return &loop{f: f, id: id, epfd: epfd, evfd: evfd, rbuf: make([]byte, readBufSize)}, nil
}

// post runs fn on the loop.
func (l *loop) post(fn func()) {
	l.mu.Lock()
	l.cmds = append(l.cmds, fn)
	l.mu.Unlock()
	var one = [8]byte{1}
	_, _ = unix.Write(l.evfd, one[:])
}

func (l *loop) setErr(s string) {
	l.mu.Lock()
	l.lastErr = s
	l.mu.Unlock()
}

func now() int64 { return time.Now().UnixNano() }

func (l *loop) run() {
	defer l.shutdown()
	for !l.stopped {
		n, err := unix.EpollWait(l.epfd, l.events[:], l.timeout())
		if err != nil && !errors.Is(err, unix.EINTR) {
			l.setErr("epoll_wait: " + err.Error())
			return
		}
		for i := 0; i < n; i++ {
			ev := l.events[i]
			if ev.Fd < 0 {
				var b [8]byte
				_, _ = unix.Read(l.evfd, b[:])
				continue
			}
			d := l.devs[ev.Fd]
			if d.gen != ev.Pad || d.fd < 0 {
				continue
			}
			l.handle(d, ev.Events)
		}
		l.runCommands()
		t := now()
		l.paceLogins(t)
		l.paceTraffic(t)
		l.timers(t)
		l.flushRecords()
	}
}

func (l *loop) timeout() int {
	if len(l.pend) > 0 || l.tr != nil || l.loginLeft > 0 {
		return 1
	}
	return 200
}

func (l *loop) runCommands() {
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = nil
	l.mu.Unlock()
	for _, c := range cmds {
		c()
	}
}

func (l *loop) flushRecords() {
	if len(l.local) == 0 {
		return
	}
	l.mu.Lock()
	l.recs = append(l.recs, l.local...)
	l.mu.Unlock()
	l.local = l.local[:0]
}

func (l *loop) record(r Record) { l.local = append(l.local, r) }

func (l *loop) shutdown() {
	for _, d := range l.devs {
		if d.fd >= 0 {
			unix.Close(d.fd)
			d.fd = -1
		}
	}
	l.flushRecords()
	unix.Close(l.epfd)
	unix.Close(l.evfd)
}

// handle processes epoll events of d.
func (l *loop) handle(d *device, ev uint32) {
	if d.state == stConnecting {
		if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		soErr, err := unix.GetsockoptInt(d.fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil && soErr != 0 {
			err = unix.Errno(soErr)
		}
		if err != nil {
			l.setErr("connect: " + err.Error())
			l.fail(d, CodeConnectFailed)
			return
		}
		l.connected(d)
		return
	}
	if ev&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		l.read(d)
	}
	if ev&unix.EPOLLOUT != 0 && d.fd >= 0 {
		l.flushOut(d)
	}
}

func (l *loop) read(d *device) {
	n, err := unix.Read(d.fd, l.rbuf)
	switch {
	case n > 0:
		l.wbuf = l.wbuf[:0]
		l.consume(d, l.rbuf[:n], now())
		if d.fd >= 0 && len(l.wbuf) > 0 {
			l.write(d, l.wbuf)
		}
	case n == 0:
		l.closeDev(d, true, CodeClosed)
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
	default:
		l.closeDev(d, true, CodeClosed)
	}
}

// consume parses frames out of data (read at t) and handles them. Whole
// frames are parsed in place; a partial one is kept in a borrowed parser.
func (l *loop) consume(d *device, data []byte, t int64) {
	if d.parser != nil {
		d.parser.Feed(data)
		for d.fd >= 0 {
			f, ok, err := d.parser.Next()
			if err != nil && messages.Fatal(err) {
				l.protocolError(d, err)
				return
			}
			if !ok {
				break
			}
			if err == nil {
				l.frame(d, f.Header, f.Body, t)
			}
		}
		if d.parser != nil && d.parser.Buffered() == 0 {
			l.parsers = append(l.parsers, d.parser)
			d.parser = nil
		}
		return
	}
	for len(data) > 0 && d.fd >= 0 {
		h, err := messages.ParseHeader(data, maxBody)
		if errors.Is(err, messages.ErrShortHeader) {
			break
		}
		if err != nil && messages.Fatal(err) {
			l.protocolError(d, err)
			return
		}
		end := messages.HeaderSize + int(h.Length)
		if len(data) < end {
			break
		}
		if err == nil {
			l.frame(d, h, data[messages.HeaderSize:end], t)
		}
		data = data[end:]
	}
	if len(data) > 0 && d.fd >= 0 {
		if n := len(l.parsers); n > 0 {
			d.parser = l.parsers[n-1]
			l.parsers = l.parsers[:n-1]
		} else {
			d.parser = messages.NewParser(maxBody)
		}
		d.parser.Feed(data)
	}
}

func (l *loop) protocolError(d *device, err error) {
	l.st.add(cErrors, 1)
	l.setErr(fmt.Sprintf("device %d: protocol error from the server: %v", d.g, err))
	l.closeDev(d, true, CodeClosed)
}

// appendFrame appends a frame of cmd with body to the write buffer.
func (l *loop) beginFrame() int {
	start := len(l.wbuf)
	l.wbuf = append(l.wbuf, make([]byte, messages.HeaderSize)...)
	return start
}

func (l *loop) endFrame(d *device, start int, cmd messages.Cmd, msgType uint16) {
	messages.PutHeader(l.wbuf[start:], messages.Header{Cmd: cmd, AppCode: l.f.cfg.AppCode, MsgType: msgType,
		Seq: d.nextSeq(), Length: uint32(len(l.wbuf) - start - messages.HeaderSize)})
}

func code8(v uint64) uint8 { return uint8(min(v, 255)) }

// frame handles one frame from the server.
func (l *loop) frame(d *device, h messages.Header, body []byte, t int64) {
	cfg := &l.f.cfg
	switch h.Cmd {
	case messages.CmdS2C, messages.CmdC2CPush:
		if l.fields.Decode(body) != nil {
			l.st.add(cErrors, 1)
			return
		}
		msgID, payload, kind, ack := l.fields.Bytes[wire.S2CMsgID], l.fields.Bytes[wire.S2CPayload], RecvS2C, messages.CmdS2CAck
		if h.Cmd == messages.CmdC2CPush {
			msgID, payload, kind, ack = l.fields.Bytes[wire.C2CPushMsgID], l.fields.Bytes[wire.C2CPushPayload], RecvC2C, messages.CmdC2CPushAck
			l.st.add(cRecvC2C, 1)
		} else {
			l.st.add(cRecvS2C, 1)
		}
		p, err := wire.ParsePayload(payload)
		switch {
		case err != nil || p.RunID != cfg.RunID:
			l.st.add(cForeign, 1)
			l.record(Record{Kind: RecvForeign, Dev: uint32(d.g), Seq: h.Seq, Hash: wire.Hash(msgID), T: t})
		case kind == RecvS2C && cfg.DropEvery > 0 && p.Index%cfg.DropEvery == 0:
			l.st.add(cDiscarded, 1)
		default:
			l.record(Record{Kind: kind, Dev: uint32(d.g), Seq: h.Seq, Idx: p.Index, Hash: wire.Hash(msgID), T: t})
		}
		if h.Cmd == messages.CmdS2C && h.Seq == 0 {
			// Fire-and-forget: not in the inbox, nothing to acknowledge
			// (as docs/protocol.md tells clients).
			return
		}
		start := l.beginFrame()
		l.wbuf = wire.AppendMsgIDAck(l.wbuf, msgID)
		l.endFrame(d, start, ack, h.MsgType)
		if ack == messages.CmdS2CAck {
			l.st.add(cAckedS2C, 1)
		} else {
			l.st.add(cAckedC2C, 1)
		}
	case messages.CmdC2CAck, messages.CmdC2SAck:
		if l.fields.Decode(body) != nil {
			l.st.add(cErrors, 1)
			return
		}
		idx, _ := wire.ParseIndex(l.fields.Bytes[wire.AckClientMsgID])
		kind := AckC2C
		if h.Cmd == messages.CmdC2SAck {
			kind = AckC2S
			l.st.add(cAckC2S, 1)
		} else {
			l.st.add(cAckC2C, 1)
		}
		code := l.fields.Varint[wire.AckCode]
		if code != 0 {
			l.setErr(fmt.Sprintf("%v: %v %s", h.Cmd, devicepb.Code(code), l.fields.Bytes[4]))
		}
		l.record(Record{Kind: kind, Code: code8(code), Dev: uint32(d.g), Idx: idx, Hash: wire.Hash(l.fields.Bytes[wire.AckMsgID]), T: t})
	case messages.CmdC2CPushAckAck:
		l.st.add(cAckAckC2C, 1)
	case messages.CmdKeepaliveAck:
		l.st.add(cKeepaliveAcks, 1)
	case messages.CmdLoginAck:
		l.loginAck(d, body, t)
	case messages.CmdKickout:
		l.st.add(cKicked, 1)
		var k devicepb.Kickout
		_ = proto.Unmarshal(body, &k)
		l.setErr(fmt.Sprintf("device %d kicked: %v %s", d.g, k.Reason, k.Detail))
	case messages.CmdError:
		l.st.add(cErrors, 1)
		var e devicepb.Error
		_ = proto.Unmarshal(body, &e)
		l.setErr(fmt.Sprintf("device %d: ERROR %v %q (seq %d)", d.g, e.Code, e.Reason, h.Seq))
	}
}

func (l *loop) loginAck(d *device, body []byte, t int64) {
	if d.state != stLoggingIn {
		return
	}
	var ack devicepb.LoginAck
	if err := proto.Unmarshal(body, &ack); err != nil {
		l.protocolError(d, err)
		return
	}
	if ack.Code != devicepb.Code_OK {
		l.setErr(fmt.Sprintf("login of %s: %v %s", d.uid, ack.Code, ack.Reason))
		l.fail(d, uint8(min(int32(ack.Code), 249)))
		return
	}
	d.state = stOnline
	d.hb = int64(ack.HeartbeatSeconds) * int64(time.Second)
	if l.f.cfg.Keepalive > 0 {
		d.hb = int64(l.f.cfg.Keepalive)
	}
	if d.hb <= 0 {
		d.hb = int64(30 * time.Second)
	}
	d.nextKA = t + d.hb
	l.st.add(cOnline, 1)
	l.st.add(cLoginOK, 1)
	l.loginResult(d, 0, t)
}

// write sends b on d, keeping what the socket does not take.
func (l *loop) write(d *device, b []byte) {
	if len(d.out) > 0 {
		d.out = append(d.out, b...)
		return
	}
	for len(b) > 0 {
		n, err := unix.Write(d.fd, b)
		switch {
		case err == nil:
			b = b[n:]
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			d.out = append(d.out, b...)
			l.ctl(d, unix.EPOLL_CTL_MOD, unix.EPOLLIN|unix.EPOLLOUT)
			return
		default:
			l.closeDev(d, true, CodeClosed)
			return
		}
	}
}

func (l *loop) flushOut(d *device) {
	for len(d.out) > 0 {
		n, err := unix.Write(d.fd, d.out)
		switch {
		case err == nil:
			d.out = d.out[n:]
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			return
		default:
			l.closeDev(d, true, CodeClosed)
			return
		}
	}
	d.out = nil
	l.ctl(d, unix.EPOLL_CTL_MOD, unix.EPOLLIN)
}

func (l *loop) ctl(d *device, op int, events uint32) {
	ev := unix.EpollEvent{Events: events, Fd: int32(d.idx(l)), Pad: d.gen}
	if err := unix.EpollCtl(l.epfd, op, d.fd, &ev); err != nil {
		l.setErr("epoll_ctl: " + err.Error())
	}
}

// idx is d's position in its loop (g → local index → loop slot).
func (d *device) idx(l *loop) int { return (d.g - l.f.cfg.First) / len(l.f.loops) }

// dial opens d's connection and starts the login.
func (l *loop) dial(d *device, t int64) {
	cfg := &l.f.cfg
	l.st.add(cDialed, 1)
	d.start = t
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		l.setErr("socket: " + err.Error())
		l.loginResult(d, CodeConnectFailed, t)
		l.st.add(cLoginFailed, 1)
		return
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if len(cfg.Sources) > 0 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		src := cfg.Sources[d.g%len(cfg.Sources)]
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
			unix.Close(fd)
			l.setErr(fmt.Sprintf("bind %v: %v", src, err))
			l.loginResult(d, CodeConnectFailed, t)
			l.st.add(cLoginFailed, 1)
			return
		}
	}
	d.fd, d.state = fd, stConnecting
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(cfg.Gate.Port()), Addr: cfg.Gate.Addr().As4()})
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		l.setErr("connect: " + err.Error())
		l.fail(d, CodeConnectFailed)
		return
	}
	l.ctl(d, unix.EPOLL_CTL_ADD, unix.EPOLLIN|unix.EPOLLOUT)
}

// connected sends LOGIN on a connection that was just established.
func (l *loop) connected(d *device) {
	cfg := &l.f.cfg
	d.state = stLoggingIn
	d.seq = 0
	b, err := messages.AppendMessage(l.wbuf[:0], messages.Header{Cmd: messages.CmdLogin, AppCode: cfg.AppCode, Seq: d.nextSeq()},
		&devicepb.Login{Uid: d.uid, Token: d.token, DeviceId: "bench-" + strconv.Itoa(d.g),
			Platform: devicepb.Platform_OTHER, AppVersion: "courier-bench"})
	if err != nil {
		l.fail(d, CodeConnectFailed)
		return
	}
	l.wbuf = b
	l.ctl(d, unix.EPOLL_CTL_MOD, unix.EPOLLIN)
	l.write(d, l.wbuf)
}

// fail ends a login attempt with code and closes the connection.
func (l *loop) fail(d *device, code uint8) {
	l.st.add(cLoginFailed, 1)
	l.closeDev(d, false, code)
}

// closeDev closes d's connection. unexpected counts it as a disconnect;
// a login in progress ends with code.
func (l *loop) closeDev(d *device, unexpected bool, code uint8) {
	if d.fd < 0 {
		return
	}
	if d.state == stOnline {
		l.st.add(cOnline, -1)
		if unexpected {
			l.st.add(cDisconnects, 1)
		}
	} else if unexpected {
		l.st.add(cLoginFailed, 1)
	}
	unix.Close(d.fd)
	d.fd = -1
	d.gen++
	d.state = stIdle
	d.out = nil
	if d.parser != nil {
		if d.parser.Buffered() == 0 {
			l.parsers = append(l.parsers, d.parser)
		}
		d.parser = nil
	}
	l.loginResult(d, code, now())
}

// loginResult ends d's part in the current login command.
func (l *loop) loginResult(d *device, code uint8, t int64) {
	if !d.login {
		return
	}
	d.login = false
	l.inflight--
	l.loginLeft--
	l.record(Record{Kind: LoginDone, Code: code, Dev: uint32(d.g), Idx: uint64(d.start), T: t})
	if l.loginLeft == 0 && len(l.pend) == 0 && l.loginDone != nil {
		l.flushRecords()
		done := l.loginDone
		l.loginDone = nil
		done()
	}
}

// startLogin queues devs for login at rate per second (0: as fast as
// maxFlight allows); done runs on the loop when all have a result.
func (l *loop) startLogin(devs []*device, rate float64, maxFlight int, done func()) {
	t := now()
	for _, d := range devs {
		if d.login {
			continue
		}
		d.login = true
		l.pend = append(l.pend, d)
		l.loginLeft++
	}
	l.loginRate, l.loginT0, l.dialed, l.maxFlight = rate, t, 0, max(maxFlight, 1)
	l.nextLogin = t + int64(100*time.Millisecond)
	if l.loginLeft == 0 {
		done()
		return
	}
	l.loginDone = done
}

func (l *loop) paceLogins(t int64) {
	if len(l.pend) == 0 {
		return
	}
	allowed := int64(len(l.pend))
	if l.loginRate > 0 {
		allowed = int64(float64(t-l.loginT0)*l.loginRate/1e9) + 1 - l.dialed
	}
	for allowed > 0 && l.inflight < l.maxFlight && len(l.pend) > 0 {
		d := l.pend[0]
		l.pend = l.pend[1:]
		allowed--
		l.dialed++
		l.inflight++
		if d.fd >= 0 { // already connected: nothing to do
			l.loginResult(d, 0, t)
			continue
		}
		l.dial(d, t)
	}
	if len(l.pend) == 0 {
		l.pend = nil
	}
}

// timers sends keepalives and times out logins.
func (l *loop) timers(t int64) {
	if l.loginLeft > 0 && t >= l.nextLogin {
		l.nextLogin = t + int64(100*time.Millisecond)
		limit := int64(l.f.cfg.LoginTimeout)
		for _, d := range l.devs {
			if d.login && d.fd >= 0 && d.state != stOnline && t-d.start > limit {
				l.setErr(fmt.Sprintf("login of %s: no LOGIN_ACK within %v", d.uid, l.f.cfg.LoginTimeout))
				l.fail(d, CodeTimeout)
			}
		}
	}
	if t < l.nextKA {
		return
	}
	l.nextKA = t + int64(time.Second)
	for _, d := range l.devs {
		if d.state == stOnline && t >= d.nextKA {
			d.nextKA = t + d.hb
			l.wbuf = l.wbuf[:0]
			start := l.beginFrame()
			l.endFrame(d, start, messages.CmdKeepalive, 0)
			l.write(d, l.wbuf)
			l.st.add(cKeepalives, 1)
		}
	}
}

// paceTraffic sends the C2C or C2S frames that are due.
func (l *loop) paceTraffic(t int64) {
	tr := l.tr
	if tr == nil {
		return
	}
	if t >= tr.end || (tr.count > 0 && tr.sent >= tr.count) {
		l.tr = nil
		l.flushRecords()
		tr.done(tr.sent)
		return
	}
	due := int64(float64(t-tr.t0)*tr.rate/1e9) + 1 - tr.sent
	if tr.count > 0 {
		due = min(due, tr.count-tr.sent)
	}
	due = min(due, sendsPerTick)
	for ; due > 0; due-- {
		d := l.nextSender(tr)
		if d == nil {
			return
		}
		l.send(d, tr.kind, tr.scheduled(tr.sent, t))
		tr.sent++
	}
}

// scheduled is when message k (from 0) of tr was due: its latency counts
// from then, not from when a loop that fell behind got to write it (no
// coordinated omission). Without a rate it is now.
func (tr *traffic) scheduled(k, now int64) int64 {
	if tr.rate <= 0 {
		return now
	}
	return min(tr.t0+int64(float64(k)*1e9/tr.rate), now)
}

func (l *loop) nextSender(tr *traffic) *device {
	for range l.devs {
		d := l.devs[tr.cursor]
		tr.cursor = (tr.cursor + 1) % len(l.devs)
		if d.state == stOnline {
			return d
		}
	}
	return nil
}

// send writes one C2C (to the device's partner, g xor 1) or C2S frame
// that was due at t (Unix ns): its Sent record and payload carry t.
func (l *loop) send(d *device, kind Kind, t int64) {
	cfg := &l.f.cfg
	l.counter++
	idx := uint64(cfg.WorkerID)<<48 | uint64(l.id)<<40 | l.counter
	l.idxBuf = strconv.AppendUint(l.idxBuf[:0], idx, 10)
	pk := wire.KindC2C
	if kind == SentC2S {
		pk = wire.KindC2S
	}
	l.payBuf = wire.AppendPayload(l.payBuf[:0], wire.Payload{Kind: pk, RunID: cfg.RunID, Index: idx, SentNs: t}, cfg.PayloadSize)
	l.wbuf = l.wbuf[:0]
	start := l.beginFrame()
	if kind == SentC2C {
		l.uidBuf = strconv.AppendInt(append(l.uidBuf[:0], cfg.UIDPrefix...), int64(d.g^1), 10)
		l.wbuf = wire.AppendC2C(l.wbuf, l.uidBuf, l.idxBuf, l.payBuf)
		l.endFrame(d, start, messages.CmdC2C, cfg.MsgType)
		l.st.add(cSentC2C, 1)
	} else {
		l.wbuf = wire.AppendC2S(l.wbuf, l.idxBuf, l.payBuf)
		l.endFrame(d, start, messages.CmdC2S, cfg.MsgType)
		l.st.add(cSentC2S, 1)
	}
	l.record(Record{Kind: kind, Dev: uint32(d.g), Idx: idx, T: t})
	l.write(d, l.wbuf)
}

// drop closes devs abruptly (RST, as a lost network does); they are
// not counted as disconnects.
func (l *loop) drop(devs []*device) {
	for _, d := range devs {
		if d.fd < 0 {
			continue
		}
		_ = unix.SetsockoptLinger(d.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		l.closeDev(d, false, CodeClosed)
	}
}
