package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

// ConnConfig tunes a Conn. The zero value is usable.
type ConnConfig struct {
	// AppCode goes in the header of every frame written with WriteMessage
	// (default 1).
	AppCode uint16
	// MaxBody is the largest body, compressed or not, accepted from the
	// server (default 16 MiB, generous: a server keeps what it sends
	// within its frame limit, 64 KiB by default, but servers before
	// MESSAGE_TOO_LARGE sent PULL_ACKs of a few hundred KiB).
	MaxBody uint32
	// CompressThreshold: once compression is on, bodies of at least this
	// many bytes are sent compressed (default 512).
	CompressThreshold int
	// WriteTimeout bounds every write (default 10 s).
	WriteTimeout time.Duration
	// TLS, if set, wraps the connection in TLS (a load balancer that
	// terminates TLS in front of the gate). ServerName defaults to the
	// dialled host.
	TLS *tls.Config
	// LocalAddr is the source address to dial from (IP or IP:port; empty:
	// the kernel chooses).
	LocalAddr string
}

func (c *ConnConfig) setDefaults() {
	if c.AppCode == 0 {
		c.AppCode = 1
	}
	if c.MaxBody == 0 {
		c.MaxBody = 16 << 20
	}
	if c.CompressThreshold <= 0 {
		c.CompressThreshold = 512
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
}

// Frame is a frame as a Conn received it.
type Frame struct {
	messages.Header
	// Body is the body, decompressed if the header said so (the header's
	// flags still say it was), owned by the caller.
	Body []byte
	// Msg is Body decoded with messages.DecodeBody (nil for commands
	// whose body is empty, and for unknown commands).
	Msg proto.Message
}

// Conn is one connection speaking the device protocol: framing, zstd and
// body codecs, and nothing else (no login logic, no keepalive, no
// reconnect; Client adds those). Tests and tools that need to send
// arbitrary frames use it directly.
//
// One goroutine may read (ReadFrame) while others write: writes are
// serialised by a mutex. SetCompression must happen before the reading
// goroutine expects compressed frames (Client turns it on from the
// LOGIN_ACK, before it starts reading).
type Conn struct {
	cfg      ConnConfig
	nc       net.Conn
	r        *messages.Reader
	compress atomic.Bool

	wmu  sync.Mutex
	wbuf []byte
	zbuf []byte

	// dmu orders interrupt against the deadlines the Conn sets itself:
	// once interrupted, no write (or Login's read) gets a new deadline,
	// which would otherwise undo the interruption and let the next write
	// on a stalled link block for WriteTimeout. It is not wmu, which a
	// blocked write holds.
	dmu         sync.Mutex
	interrupted bool
}

// errInterrupted: the connection was interrupted (the client is closing);
// nothing more is written on it.
var errInterrupted = errors.New("client: connection interrupted")

// encodeError is a body protobuf could not encode (a string field that
// is not valid UTF-8): nothing was written, and the connection is as good
// as before; the frame, not the link, is at fault.
type encodeError struct {
	cmd messages.Cmd
	err error
}

func (e *encodeError) Error() string { return fmt.Sprintf("client: encode %v: %v", e.cmd, e.err) }
func (e *encodeError) Unwrap() error { return e.err }

// zstdCodecs are the codecs of the process, by the MaxBody they cap
// decompressed bodies at (safe for concurrent use; the connections of
// one MaxBody share one). A codec capped at the largest MaxBody would
// let a body that does not declare its size make a connection of a
// small MaxBody allocate up to that largest before refusing it.
var zstdCodecs sync.Map // uint32 -> *messages.Zstd

func zstdCodecFor(maxBody uint32) (*messages.Zstd, error) {
	if z, ok := zstdCodecs.Load(maxBody); ok {
		return z.(*messages.Zstd), nil
	}
	z, err := messages.NewZstd(maxBody)
	if err != nil {
		return nil, err
	}
	got, _ := zstdCodecs.LoadOrStore(maxBody, z)
	return got.(*messages.Zstd), nil
}

// maxDecompressed caps a decompressed body from the server (and the
// largest ConnConfig.MaxBody).
const maxDecompressed = 64 << 20

// DialConn connects to a gate at addr ("host:port").
func DialConn(ctx context.Context, addr string, cfg ConnConfig) (*Conn, error) {
	cfg.setDefaults()
	d := net.Dialer{}
	if cfg.LocalAddr != "" {
		la, err := localAddr(cfg.LocalAddr)
		if err != nil {
			return nil, fmt.Errorf("client: local address %q: %w", cfg.LocalAddr, err)
		}
		d.LocalAddr = la
	}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if cfg.TLS != nil {
		tc := cfg.TLS.Clone()
		if tc.ServerName == "" {
			host, _, _ := net.SplitHostPort(addr)
			tc.ServerName = host
		}
		tlsConn := tls.Client(nc, tc)
		if err := tlsConn.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("client: TLS handshake with %s: %w", addr, err)
		}
		nc = tlsConn
	}
	return NewConn(nc, cfg), nil
}

func localAddr(s string) (*net.TCPAddr, error) {
	if ip := net.ParseIP(s); ip != nil {
		return &net.TCPAddr{IP: ip}, nil
	}
	return net.ResolveTCPAddr("tcp", s)
}

// NewConn speaks the protocol over an established connection.
func NewConn(nc net.Conn, cfg ConnConfig) *Conn {
	cfg.setDefaults()
	return &Conn{cfg: cfg, nc: nc, r: messages.NewReader(nc, min(cfg.MaxBody, maxDecompressed))}
}

// NetConn returns the underlying connection (to set deadlines, half-close
// or write arbitrary bytes).
func (c *Conn) NetConn() net.Conn { return c.nc }

// AppCode returns the appcode WriteMessage puts in headers.
func (c *Conn) AppCode() uint16 { return c.cfg.AppCode }

// SetCompression turns body compression on or off (on once a LOGIN_ACK
// said so).
func (c *Conn) SetCompression(on bool) { c.compress.Store(on) }

// Compressing reports whether compression is on.
func (c *Conn) Compressing() bool { return c.compress.Load() }

// Close closes the connection.
func (c *Conn) Close() error { return c.nc.Close() }

// interrupt makes a read or write blocked on the connection return now,
// and every later write fail at once (safe from any goroutine).
func (c *Conn) interrupt() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.interrupted = true
	_ = c.nc.SetDeadline(time.Now())
}

// setReadDeadline sets the read deadline unless the connection was
// interrupted (whose deadline, now, stays).
func (c *Conn) setReadDeadline(t time.Time) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if !c.interrupted {
		_ = c.nc.SetReadDeadline(t)
	}
}

// WriteMessage writes a frame of cmd with the connection's appcode,
// msgtype and seq, and body (nil: empty).
func (c *Conn) WriteMessage(cmd messages.Cmd, msgtype uint16, seq uint32, body proto.Message) error {
	return c.WriteFrame(messages.Header{Cmd: cmd, AppCode: c.cfg.AppCode, MsgType: msgtype, Seq: seq}, body)
}

// WriteFrame writes a frame with header h (Length is computed). The body
// is compressed when compression is on and it reaches the threshold, or
// when h.Flags already carries messages.FlagZstd (to test servers).
func (c *Conn) WriteFrame(h messages.Header, body proto.Message) error {
	_, err := c.writeFrame(h, body)
	return err
}

// writeFrame is WriteFrame that returns the header as written (with its
// flags and length).
func (c *Conn) writeFrame(h messages.Header, body proto.Message) (messages.Header, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var err error
	c.wbuf, err = messages.AppendMessage(c.wbuf[:0], h, body)
	if err != nil {
		return h, &encodeError{cmd: h.Cmd, err: err}
	}
	raw := c.wbuf[messages.HeaderSize:]
	if (c.compress.Load() && len(raw) >= c.cfg.CompressThreshold) || h.Flags&messages.FlagZstd != 0 {
		z, err := zstdCodecFor(uint32(min(c.cfg.MaxBody, maxDecompressed)))
		if err != nil {
			return h, err
		}
		c.zbuf = z.Compress(c.zbuf[:0], raw)
		// Sent compressed only when that makes it smaller (or asked for):
		// incompressible bodies (encrypted, images) grow by the frame's
		// overhead, and one near the frame limit would pass it.
		if len(c.zbuf) < len(raw) || h.Flags&messages.FlagZstd != 0 {
			h.Flags |= messages.FlagZstd
			c.wbuf = messages.AppendFrame(c.wbuf[:0], h, c.zbuf)
		}
	}
	h.Length = uint32(len(c.wbuf) - messages.HeaderSize)
	return h, c.writeLocked(c.wbuf)
}

// WriteRaw writes b as it is.
func (c *Conn) WriteRaw(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(b)
}

func (c *Conn) writeLocked(b []byte) error {
	c.dmu.Lock()
	if c.interrupted {
		c.dmu.Unlock()
		return errInterrupted
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
	c.dmu.Unlock()
	_, err := c.nc.Write(b)
	return err
}

// ReadFrame reads the next frame. It returns io.EOF (or a reset error)
// when the server closed the connection, a net.Error on a deadline set
// through NetConn, and an error for a frame that breaks the protocol
// towards the client: a compressed frame while compression is off, a body
// that does not decompress or decode. A command it does not know comes
// with a nil Msg, to be ignored. Set a deadline on NetConn to bound it.
// Only one goroutine may read.
func (c *Conn) ReadFrame() (Frame, error) {
	f, err := c.r.ReadFrame()
	if err != nil {
		return Frame{}, err
	}
	out := Frame{Header: f.Header, Body: append([]byte(nil), f.Body...)}
	if f.Compressed() {
		if !c.compress.Load() {
			return out, fmt.Errorf("%w: %v frame compressed, but compression is not on", ErrProtocol, f.Cmd)
		}
		z, err := zstdCodecFor(uint32(min(c.cfg.MaxBody, maxDecompressed)))
		if err != nil {
			return out, err
		}
		if out.Body, err = z.Decompress(nil, f.Body); err != nil {
			return out, fmt.Errorf("%w: %v frame: %v", ErrProtocol, f.Cmd, err)
		}
		if len(out.Body) > int(c.cfg.MaxBody) {
			return out, fmt.Errorf("%w: %v frame decompresses to %d bytes, more than %d", ErrProtocol, f.Cmd, len(out.Body), c.cfg.MaxBody)
		}
	}
	out.Msg, err = messages.DecodeBody(f.Cmd, out.Body)
	if errors.Is(err, messages.ErrBodyNotEmpty) {
		// A command this client does not know, or a body on one that has
		// none: a newer server's. Ignored, as unknown fields are.
		err = nil
	}
	if err != nil {
		return out, fmt.Errorf("%w: %v body: %v", ErrProtocol, f.Cmd, err)
	}
	return out, nil
}

// Login writes LOGIN (seq 1, or seq if not zero) and reads until its
// LOGIN_ACK, within timeout. An ERROR frame instead (the gate refusing the
// connection at connect: SERVER_BUSY, RATE_LIMITED) is returned as a
// *ServerError. A LOGIN_ACK that is not OK is returned as it is, with a nil
// error: the caller decides. A successful LOGIN_ACK that turns compression
// on turns it on here.
func (c *Conn) Login(login *devicepb.Login, seq uint32, timeout time.Duration) (*devicepb.LoginAck, error) {
	if seq == 0 {
		seq = 1
	}
	if err := c.WriteMessage(messages.CmdLogin, 0, seq, login); err != nil {
		return nil, err
	}
	c.setReadDeadline(time.Now().Add(timeout))
	defer c.setReadDeadline(time.Time{})
	for {
		f, err := c.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch m := f.Msg.(type) {
		case *devicepb.LoginAck:
			if f.Seq != seq {
				return nil, fmt.Errorf("%w: LOGIN_ACK seq %d, want %d", ErrProtocol, f.Seq, seq)
			}
			if m.Code == devicepb.Code_OK && m.Zstd {
				if !login.Zstd {
					return nil, fmt.Errorf("%w: the server turned on compression the client did not ask for", ErrProtocol)
				}
				c.SetCompression(true)
			}
			return m, nil
		case *devicepb.Error:
			return nil, &ServerError{Code: m.Code, Reason: m.Reason}
		default:
			return nil, fmt.Errorf("%w: %v before LOGIN_ACK", ErrProtocol, f.Cmd)
		}
	}
}
