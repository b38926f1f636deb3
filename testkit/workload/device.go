package workload

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

// device is one simulated device. Its goroutine (run) connects, logs in
// and reads; acks and resends are written under mu by whoever sends.
type device struct {
	w       *Workload
	i       int
	uid     string
	partner string
	token   string

	mu      sync.Mutex
	conn    net.Conn // nil while offline
	gate    string
	seq     uint32 // frame seq of the connection
	nextKA  time.Time
	nextID  int
	pending map[string]*pending // client msg id -> C2C or C2S waiting for its answer
}

// pending is a C2C or C2S waiting for C2C_ACK / C2S_ACK OK.
type pending struct {
	cmd      messages.Cmd
	clientID string
	to       string // C2C: the receiver
	payload  []byte
	start    time.Time // first send
	sentAt   time.Time // last send (zero: not sent on this connection)
}

// run is the device's goroutine: connect, log in, read, reconnect.
func (d *device) run(startAt time.Time) {
	w := d.w
	defer w.wg.Done()
	if !w.sleep(time.Until(startAt)) {
		return
	}
	backoff := w.cfg.Backoff
	for first := true; !w.stopped(); first = false {
		var r *messages.Reader
		conn, gate, err := d.dial(first)
		if err == nil {
			var ack *devicepb.LoginAck
			ack, r, err = d.login(conn)
			if err == nil && ack.Code != devicepb.Code_OK {
				if !retryableLogin(ack.Code) {
					w.rec.unexpected(fmt.Sprintf("%s: LOGIN_ACK %v %s", d.uid, ack.Code, ack.Reason))
				}
				err = fmt.Errorf("login: %v %s", ack.Code, ack.Reason)
			}
			if err != nil {
				conn.Close()
			}
		}
		if err != nil {
			w.cfg.Log.Debug("workload: device cannot connect", "uid", d.uid, "err", err)
			if !w.sleep(jitter(backoff)) {
				return
			}
			backoff = min(2*backoff, w.cfg.MaxBackoff)
			continue
		}
		backoff = w.cfg.Backoff
		sess := w.rec.sessionUp(d.i, gate)
		d.mu.Lock()
		d.conn, d.gate = conn, gate
		d.nextKA = time.Now().Add(w.cfg.Keepalive)
		for _, p := range d.pending {
			p.sentAt = time.Time{} // not sent on this connection yet
		}
		d.mu.Unlock()
		if w.stopped() {
			conn.Close() // Stop may have missed it
		}
		d.resend(time.Now())
		why, delay := d.read(conn, r)
		d.mu.Lock()
		d.conn = nil
		d.mu.Unlock()
		conn.Close()
		w.rec.sessionDown(sess, why)
		if !w.sleep(delay) {
			return
		}
	}
}

// retryableLogin reports whether a refused login is worth retrying.
func retryableLogin(c devicepb.Code) bool {
	switch c {
	case devicepb.Code_STORE_UNAVAILABLE, devicepb.Code_SERVER_BUSY, devicepb.Code_RATE_LIMITED:
		return true
	}
	return false
}

func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(d))) + d/10
}

// dial connects to the first gate discovery (or Config.Gates) offers
// that accepts a connection.
func (d *device) dial(first bool) (net.Conn, string, error) {
	gates, err := d.w.gates(first)
	if err != nil {
		return nil, "", err
	}
	dialer := net.Dialer{Timeout: 3 * time.Second}
	if src := d.w.cfg.Sources; len(src) > 0 {
		dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src[d.i%len(src)])}
	}
	var last error
	for _, g := range gates {
		c, err := dialer.Dial("tcp", g)
		if err == nil {
			return c, g, nil
		}
		last = err
	}
	return nil, "", fmt.Errorf("no gate took the connection (%d tried): %w", len(gates), last)
}

// login sends LOGIN and waits for LOGIN_ACK. The reader it returns may
// hold frames that followed LOGIN_ACK.
func (d *device) login(c net.Conn) (*devicepb.LoginAck, *messages.Reader, error) {
	b, err := messages.AppendMessage(nil, messages.Header{Cmd: messages.CmdLogin, AppCode: d.w.cfg.App, Seq: 1},
		&devicepb.Login{Uid: d.uid, Token: d.token, DeviceId: "wl-" + d.uid[:min(len(d.uid), 40)],
			Platform: devicepb.Platform_ANDROID, AppVersion: "workload"})
	if err != nil {
		return nil, nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(b); err != nil {
		return nil, nil, err
	}
	r := messages.NewReader(c, 16<<20)
	for {
		f, err := r.ReadFrame()
		if err != nil {
			return nil, nil, err
		}
		switch f.Cmd {
		case messages.CmdLoginAck:
			var ack devicepb.LoginAck
			if err := proto.Unmarshal(f.Body, &ack); err != nil {
				return nil, nil, err
			}
			d.mu.Lock()
			d.seq = 1
			d.mu.Unlock()
			_ = c.SetDeadline(time.Time{})
			return &ack, r, nil
		case messages.CmdError:
			var e devicepb.Error
			_ = proto.Unmarshal(f.Body, &e)
			return nil, nil, fmt.Errorf("ERROR %v %s", e.Code, e.Reason)
		}
	}
}

// read handles frames until the connection ends; it returns why, and how
// long to wait before reconnecting.
func (d *device) read(c net.Conn, r *messages.Reader) (string, time.Duration) {
	w := d.w
	for {
		_ = c.SetReadDeadline(time.Now().Add(w.cfg.DeadAfter))
		f, err := r.ReadFrame()
		if err != nil {
			var ne net.Error
			switch {
			case w.stopped():
				return "stopped", 0
			case errors.As(err, &ne) && ne.Timeout():
				return "silent", jitter(w.cfg.Backoff)
			case errors.Is(err, io.EOF) || errors.Is(err, messages.ErrTruncated):
				return "closed", jitter(w.cfg.Backoff)
			}
			return "error", jitter(w.cfg.Backoff)
		}
		now := time.Now()
		switch f.Cmd {
		case messages.CmdS2C:
			var m devicepb.S2C
			if proto.Unmarshal(f.Body, &m) != nil {
				w.rec.unexpected(d.uid + ": S2C body does not decode")
				continue
			}
			if f.Seq == 0 {
				w.rec.ffReceived(string(m.Payload))
			} else {
				w.rec.received(receipt{kind: KindPush, uid: d.uid, key: string(m.Payload), msgID: m.MsgId, seq: f.Seq, at: now})
			}
			d.send(messages.CmdS2CAck, 0, &devicepb.S2CAck{MsgId: m.MsgId})
		case messages.CmdC2CPush:
			var m devicepb.C2CPush
			if proto.Unmarshal(f.Body, &m) != nil {
				w.rec.unexpected(d.uid + ": C2C_PUSH body does not decode")
				continue
			}
			// The payload is "sender/client id": the sender the platform
			// names must be that one.
			if !strings.HasPrefix(string(m.Payload), m.FromUid+"/") {
				w.rec.unexpected(fmt.Sprintf("%s: C2C_PUSH %q from %q", d.uid, m.Payload, m.FromUid))
			}
			w.rec.received(receipt{kind: KindC2C, uid: d.uid, key: string(m.Payload), msgID: m.MsgId, seq: f.Seq, at: now})
			d.send(messages.CmdC2CPushAck, f.MsgType, &devicepb.C2CPushAck{MsgId: m.MsgId})
		case messages.CmdC2CAck:
			var m devicepb.C2CAck
			if proto.Unmarshal(f.Body, &m) == nil {
				d.answered(m.ClientMsgId, m.Code, m.MsgId, m.Reason, now)
			}
		case messages.CmdC2SAck:
			var m devicepb.C2SAck
			if proto.Unmarshal(f.Body, &m) == nil {
				d.answered(m.ClientMsgId, m.Code, m.MsgId, m.Reason, now)
			}
		case messages.CmdKickout:
			var k devicepb.Kickout
			_ = proto.Unmarshal(f.Body, &k)
			w.rec.kicked(k.Reason.String())
			if k.Reason == devicepb.KickReason_SERVER_SHUTDOWN {
				return "kicked " + k.Reason.String(), jitter(w.cfg.ShutdownDelay)
			}
			w.rec.unexpected(fmt.Sprintf("%s: KICKOUT %v %s", d.uid, k.Reason, k.Detail))
			return "kicked " + k.Reason.String(), jitter(w.cfg.Backoff)
		case messages.CmdError:
			var e devicepb.Error
			_ = proto.Unmarshal(f.Body, &e)
			w.rec.unexpected(fmt.Sprintf("%s: ERROR %v %q (seq %d)", d.uid, e.Code, e.Reason, f.Seq))
		}
	}
}

// answered takes a C2C_ACK or C2S_ACK.
func (d *device) answered(clientID string, code devicepb.Code, msgID, reason string, now time.Time) {
	d.mu.Lock()
	p := d.pending[clientID]
	if p != nil && code == devicepb.Code_OK {
		delete(d.pending, clientID)
	}
	gate := d.gate // the connection that got the answer: the gate that took it
	d.mu.Unlock()
	if p == nil {
		return // an answer to a resend already answered
	}
	switch {
	case code == devicepb.Code_OK && p.cmd == messages.CmdC2C:
		d.w.rec.accepted(accept{kind: KindC2C, key: string(p.payload), uid: p.to, msgID: msgID, start: p.start, at: now})
	case code == devicepb.Code_OK:
		d.w.rec.c2sAccepted(p.clientID, gate)
	case code == devicepb.Code_STORE_UNAVAILABLE || code == devicepb.Code_UPSTREAM_BUSY ||
		code == devicepb.Code_UNAVAILABLE || code == devicepb.Code_NO_SUBSCRIBER || code == devicepb.Code_INBOX_FULL:
		// Resent after ResendAfter.
	default:
		d.w.rec.unexpected(fmt.Sprintf("%s: %v answered %v %s", d.uid, p.cmd, code, reason))
		d.mu.Lock()
		delete(d.pending, clientID)
		d.mu.Unlock()
	}
}

// send writes one frame if the device is online; a failed write closes
// the connection (the reader then reconnects).
func (d *device) send(cmd messages.Cmd, msgtype uint16, body proto.Message) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sendLocked(cmd, msgtype, body)
}

func (d *device) sendLocked(cmd messages.Cmd, msgtype uint16, body proto.Message) bool {
	if d.conn == nil {
		return false
	}
	d.seq++
	b, err := messages.AppendMessage(nil, messages.Header{Cmd: cmd, AppCode: d.w.cfg.App, MsgType: msgtype, Seq: d.seq}, body)
	if err != nil {
		return false
	}
	_ = d.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if _, err := d.conn.Write(b); err != nil {
		_ = d.conn.Close()
		d.conn = nil
		return false
	}
	return true
}

// newMessage queues a C2C (to its partner) or a C2S and sends it if
// online.
func (d *device) newMessage(cmd messages.Cmd) {
	now := time.Now()
	d.mu.Lock()
	d.nextID++
	kind := "s"
	if cmd == messages.CmdC2C {
		kind = "c"
	}
	id := fmt.Sprintf("%s-%s%d", d.uid, kind, d.nextID)
	p := &pending{cmd: cmd, clientID: id, start: now}
	if cmd == messages.CmdC2C {
		p.to = d.partner
		p.payload = []byte(d.uid + "/" + id)
	} else {
		p.payload = []byte(id)
	}
	if d.pending == nil {
		d.pending = map[string]*pending{}
	}
	d.pending[id] = p
	d.sendPending(p, now)
	d.mu.Unlock()
}

// sendPending (d.mu held) sends p on the current connection.
func (d *device) sendPending(p *pending, now time.Time) {
	var ok bool
	mt := uint16(d.w.cfg.Msgtype)
	if p.cmd == messages.CmdC2C {
		ok = d.sendLocked(messages.CmdC2C, mt, &devicepb.C2C{ToUid: p.to, ClientMsgId: p.clientID, Payload: p.payload})
	} else {
		ok = d.sendLocked(messages.CmdC2S, mt, &devicepb.C2S{ClientMsgId: p.clientID, Payload: p.payload})
	}
	if ok {
		p.sentAt = now
	}
}

// resend sends what is unanswered since ResendAfter (or not sent on this
// connection), and a KEEPALIVE when due.
func (d *device) resend(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn == nil {
		return
	}
	if !now.Before(d.nextKA) {
		d.sendLocked(messages.CmdKeepalive, 0, nil)
		d.nextKA = now.Add(d.w.cfg.Keepalive)
	}
	for _, p := range d.pending {
		if p.sentAt.IsZero() || now.Sub(p.sentAt) >= d.w.cfg.ResendAfter {
			d.sendPending(p, now)
		}
	}
}

// online reports whether the device is logged in.
func (d *device) online() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conn != nil
}

// closeConn ends the current connection (at Stop).
func (d *device) closeConn() {
	d.mu.Lock()
	if d.conn != nil {
		_ = d.conn.Close()
	}
	d.mu.Unlock()
}
