package testkit

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/client"
	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

// DeviceConfig tunes a Device. The zero value is usable.
type DeviceConfig struct {
	// AppCode goes in the header of every frame Send writes (0: 1).
	AppCode uint16
	// LocalAddr is the source address to dial from: an IP ("127.0.0.2")
	// or IP:port. Empty lets the kernel choose.
	LocalAddr string
	// Timeout bounds the dial and every read and write (0: 5 s).
	Timeout time.Duration
	// MaxBody is the largest body accepted from the server (0: 64 KiB,
	// the protocol's default frame limit, which everything the server
	// sends must fit: a larger frame fails the test that reads it). A
	// test of a node with a larger gate.max-frame-size sets it.
	MaxBody uint32
}

// Frame is a frame as a Device received it: the body decompressed if the
// header said so (the header's flags still say it was), and decoded.
type Frame = client.Frame

// Device is a blocking device-protocol client over real TCP, for tests
// that drive the protocol frame by frame (tests of a whole device use
// client.Client). It is built on client.Conn: it compresses bodies of 64
// bytes or more and decompresses once LOGIN_ACK says compression is on,
// and refuses compressed frames before. Methods that fail the test (Send,
// Expect, Login, ...) must be called from the test's goroutine; ReadFrame
// and TrySend only return errors. A Device is used by one goroutine at a
// time; Close may be called from any.
type Device struct {
	t       testing.TB
	cfg     DeviceConfig
	c       *client.Conn
	seq     uint32
	closeMu sync.Once
}

// Dial connects a Device to addr, failing the test if it cannot. The
// connection is closed at the end of the test.
func Dial(t testing.TB, addr string, cfg DeviceConfig) *Device {
	t.Helper()
	d, err := DialErr(t, addr, cfg)
	if err != nil {
		t.Fatalf("testkit: dial %s: %v", addr, err)
	}
	return d
}

// DialErr is Dial that returns the error instead of failing the test.
func DialErr(t testing.TB, addr string, cfg DeviceConfig) (*Device, error) {
	t.Helper()
	if cfg.AppCode == 0 {
		cfg.AppCode = 1
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.MaxBody == 0 {
		cfg.MaxBody = messages.DefaultMaxBody
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	c, err := client.DialConn(ctx, addr, client.ConnConfig{AppCode: cfg.AppCode, MaxBody: cfg.MaxBody,
		CompressThreshold: 64, WriteTimeout: cfg.Timeout, LocalAddr: cfg.LocalAddr})
	if err != nil {
		return nil, err
	}
	d := &Device{t: t, cfg: cfg, c: c}
	t.Cleanup(d.Close)
	return d, nil
}

// Conn returns the underlying connection (to stop reading, half-close,
// or write arbitrary bytes).
func (d *Device) Conn() net.Conn { return d.c.NetConn() }

// AppCode returns the appcode the device writes in its headers.
func (d *Device) AppCode() uint16 { return d.cfg.AppCode }

// Compressing reports whether the server turned compression on in
// LOGIN_ACK.
func (d *Device) Compressing() bool { return d.c.Compressing() }

// NextSeq returns a new seq for a client frame (1, 2, ...).
func (d *Device) NextSeq() uint32 {
	d.seq++
	return d.seq
}

// Close closes the connection. It is safe to call more than once.
func (d *Device) Close() { d.closeMu.Do(func() { _ = d.c.Close() }) }

// Login sends LOGIN for uid with token (asking for compression if zstd)
// and returns the LOGIN_ACK, failing the test if another frame or none
// arrives. A successful ack that turns compression on makes the device
// compress and decompress from then on.
func (d *Device) Login(uid, token string, zstd bool) *devicepb.LoginAck {
	d.t.Helper()
	deviceID := "dev-" + uid
	deviceID = deviceID[:min(len(deviceID), gate.MaxDeviceIDLen)]
	return d.LoginWith(&devicepb.Login{Uid: uid, Token: token, DeviceId: deviceID,
		Platform: devicepb.Platform_ANDROID, AppVersion: "test", Zstd: zstd})
}

// LoginWith sends the given LOGIN and returns the LOGIN_ACK.
func (d *Device) LoginWith(login *devicepb.Login) *devicepb.LoginAck {
	d.t.Helper()
	seq := d.NextSeq()
	d.Send(messages.CmdLogin, seq, login)
	f := d.Expect(messages.CmdLoginAck)
	if f.Seq != seq {
		d.t.Fatalf("testkit: LOGIN_ACK seq %d, want %d", f.Seq, seq)
	}
	ack := f.Msg.(*devicepb.LoginAck)
	if ack.Code == devicepb.Code_OK && ack.Zstd {
		if !login.Zstd {
			d.t.Fatalf("testkit: server turned on compression the client did not ask for")
		}
		d.c.SetCompression(true)
	}
	return ack
}

// Send writes a frame of cmd with the device's appcode, msgtype 0 and
// seq, failing the test on a write error. Once compression is on, a body
// of 64 bytes or more is sent compressed.
func (d *Device) Send(cmd messages.Cmd, seq uint32, body proto.Message) {
	d.t.Helper()
	if err := d.TrySend(messages.Header{Cmd: cmd, AppCode: d.cfg.AppCode, Seq: seq}, body); err != nil {
		d.t.Fatalf("testkit: send %v: %v", cmd, err)
	}
}

// TrySend writes a frame with header h (its Length is computed) and
// returns any error. The body is compressed if compression is on and it
// is 64 bytes or more, or if h.Flags already has messages.FlagZstd.
func (d *Device) TrySend(h messages.Header, body proto.Message) error {
	return d.c.WriteFrame(h, body)
}

// SendRaw writes b as it is, failing the test on a write error.
func (d *Device) SendRaw(b []byte) {
	d.t.Helper()
	if err := d.c.WriteRaw(b); err != nil {
		d.t.Fatalf("testkit: send raw: %v", err)
	}
}

// ReadFrame reads the next frame within the device's timeout. It returns
// io.EOF (or a connection-reset error) when the server closed the
// connection, and an error for a frame that breaks the protocol towards
// the client (a compressed frame before compression was agreed, a body
// that does not decode).
func (d *Device) ReadFrame() (Frame, error) {
	_ = d.c.NetConn().SetReadDeadline(time.Now().Add(d.cfg.Timeout))
	return d.c.ReadFrame()
}

// Expect reads the next frame and fails the test unless it is a cmd.
func (d *Device) Expect(cmd messages.Cmd) Frame {
	d.t.Helper()
	f, err := d.ReadFrame()
	if err != nil {
		d.t.Fatalf("testkit: waiting for %v: %v", cmd, err)
	}
	if f.Cmd != cmd {
		d.t.Fatalf("testkit: got %v (seq %d, body %v), want %v", f.Cmd, f.Seq, f.Msg, cmd)
	}
	return f
}

// ExpectError reads the next frame and fails the test unless it is an
// ERROR with code answering seq.
func (d *Device) ExpectError(code devicepb.Code, seq uint32) *devicepb.Error {
	d.t.Helper()
	f := d.Expect(messages.CmdError)
	e := f.Msg.(*devicepb.Error)
	if e.Code != code || f.Seq != seq {
		d.t.Fatalf("testkit: ERROR %v seq %d (%q), want %v seq %d", e.Code, f.Seq, e.Reason, code, seq)
	}
	return e
}

// ExpectClosed fails the test unless the server closes the connection
// within the timeout without sending another frame.
func (d *Device) ExpectClosed() {
	d.t.Helper()
	f, err := d.ReadFrame()
	switch {
	case err == nil:
		d.t.Fatalf("testkit: want the connection closed, got %v (seq %d, body %v)", f.Cmd, f.Seq, f.Msg)
	case !Closed(err):
		d.t.Fatalf("testkit: want the connection closed, got %v", err)
	}
}

// Closed reports whether err from ReadFrame means the peer closed the
// connection (EOF or reset).
func Closed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, messages.ErrTruncated)
}

// Keepalive sends KEEPALIVE and fails the test unless KEEPALIVE_ACK with
// the same seq is the next frame.
func (d *Device) Keepalive() {
	d.t.Helper()
	seq := d.NextSeq()
	d.Send(messages.CmdKeepalive, seq, nil)
	if f := d.Expect(messages.CmdKeepaliveAck); f.Seq != seq {
		d.t.Fatalf("testkit: KEEPALIVE_ACK seq %d, want %d", f.Seq, seq)
	}
}
