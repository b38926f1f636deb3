package client

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

// Config is what a Client runs with. AppCode, UID, a token (Token or
// TokenSource) and a gate (Addr or Discovery) are required; every other
// field has a default (DefaultConfig).
type Config struct {
	// Addr is the gate's address, "host:port". The name is resolved again
	// at every connection.
	Addr string
	// Discovery is the URL of a gate discovery endpoint (a node's
	// `GET /v1/gates`), asked before connecting; its answer is
	// {"gates":[{"addr":"host:port", ...}, ...]}, best gate first. The
	// client tries the gates in order and asks again when it has tried
	// them all. "app=APPCODE" is added to the query. If discovery fails
	// and Addr is set, Addr is used.
	Discovery string
	// HTTPClient asks Discovery (default: a client with a 5 s timeout).
	HTTPClient *http.Client

	// AppCode and UID are the identity.
	AppCode uint16
	UID     string
	// Token is the device token from the app-server (a static one: a
	// login it fails stops the client for good).
	Token string
	// TokenSource, if set, is asked for a token before every login
	// instead of Token, and again after AUTH_FAILED (once) or
	// TOKEN_EXPIRED. Its ctx ends after DialTimeout, or when the client
	// stops: a call that has not answered by then fails the attempt,
	// which is retried after a backoff like a failed connect. The client
	// does not wait for a call that ignores its ctx: Dial and Close
	// return on time, the call's goroutine outlives them until it
	// returns, its token is dropped, and TokenSource may be called again
	// meanwhile (at most two calls run at once).
	TokenSource func(ctx context.Context) (string, error)
	// DeviceID, Platform and AppVersion go in LOGIN (informational).
	DeviceID   string
	Platform   devicepb.Platform
	AppVersion string

	// NoCompression stops the client from asking for zstd at login
	// (default: it asks, and compresses bodies of CompressThreshold bytes
	// or more when the server agrees).
	NoCompression     bool
	CompressThreshold int // default 512

	// ManualAck: the caller acknowledges each message with Ack; one it
	// does not is returned again (Message.Redelivered) when the server
	// redelivers it. By default a message Recv (or Pull) returned is
	// acknowledged when the app calls Recv or Pull again, having handled
	// it (or when it calls Ack).
	ManualAck bool
	// ResumeSeq is the highest inbox seq the app handled in an earlier
	// run (persist LastSeq to fill it). After each login the client PULLs
	// what came after it. Messages handed out but not acknowledged when
	// the app stopped (below LastSeq: with ManualAck, those not acked; by
	// default, what the last Recv or Pull returned) are pushed again
	// after the login, those beyond the server's delivery window behind
	// what the resume PULL brings. An app that must see them in seq order
	// (ManualAck, or default-mode Pull pages larger than the window)
	// persists instead the highest seq up to which it handled every
	// message.
	ResumeSeq uint32

	// TLS, if set, connects with TLS (to a load balancer terminating TLS
	// in front of the gates).
	TLS *tls.Config
	// DialTimeout bounds a TCP (and TLS) connect, a discovery request,
	// and a TokenSource call (default 10 s).
	DialTimeout time.Duration
	// LoginTimeout bounds the wait for LOGIN_ACK (default 12 s: the
	// gate's login timeout is 10 s).
	LoginTimeout time.Duration
	// WriteTimeout bounds every write; a write that times out drops the
	// connection (default 10 s).
	WriteTimeout time.Duration
	// MaxFrameSize is the gate's frame limit: larger C2S and C2C bodies are
	// refused with ErrTooLarge before they are sent (default 64 KiB, the
	// gate's default). A smaller limit the gate announces in LOGIN_ACK
	// applies once logged in.
	MaxFrameSize uint32
	// MaxBody is the largest body accepted from the server (default
	// 16 MiB, generous; see ConnConfig.MaxBody).
	MaxBody uint32

	// BackoffInitial and BackoffMax bound the wait before reconnecting:
	// a random time in [0, b), b starting at BackoffInitial and doubling
	// up to BackoffMax after each failed attempt (defaults 1 s, 60 s). A
	// session that lasted BackoffReset (default 60 s) starts b again at
	// BackoffInitial. After KICKOUT SERVER_SHUTDOWN the wait is a random
	// time in [0, ShutdownJitter) (default 2 s) and b does not grow.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	BackoffReset   time.Duration
	ShutdownJitter time.Duration
	// ResendAfter: a C2C or C2S that got no answer this long after it was
	// sent is sent again with the same client message id (default 15 s).
	// Unanswered sends are also sent again after every reconnect.
	ResendAfter time.Duration

	// FrameRate and FrameBurst pace the frames the client sends that the
	// gate counts against a connection's frame rate (C2S, C2C, PULL,
	// LOGOUT, and C2C_PUSH_ACKs sent again on a new connection; acks of
	// what the server delivered, and a KEEPALIVE per heartbeat, do not
	// count): at most FrameBurst back to back, then FrameRate a second.
	// ByteRate and ByteBurst do the same for the bytes of every frame.
	// Frames over them wait for their turn, in order, so that a client
	// reconnecting with a full outbox is not closed with RATE_LIMITED
	// (docs/protocol.md §13). The defaults, 40 frames a second in bursts
	// of 150 and 200 KiB a second in bursts of 768 KiB, are under the
	// gate's default limits (50 and 200; 256 KiB and 1 MiB); set them
	// under the limits of the gates you connect to. ByteBurst is at least
	// MaxFrameSize plus the 18-byte header (its default is raised to that).
	FrameRate  float64
	FrameBurst int
	ByteRate   int
	ByteBurst  int
	// C2CRate and C2CBurst pace C2C sends the same way, under the gate's
	// C2C rate of the identity (default 4 a second in bursts of 16; the
	// gate's default is 5 and 20, docs/protocol.md §13), over the
	// client's whole life as the gate's is over the identity's
	// connections: beyond it the gate answers RATE_LIMITED and does not
	// store the message. Other sends and pulls do not wait for it.
	C2CRate  float64
	C2CBurst int

	// RecvBuffer is how many received messages wait for Recv (default
	// 256). The connection is read on regardless (answers to sends and
	// pulls must get through); past it, a stored message is left
	// unacknowledged (the server delivers it again later). Fire-and-forget
	// pushes fill at most three quarters of it, the rest kept for stored
	// messages; beyond, they are dropped (Client.DroppedPushes). The
	// client's own resume PULLs ask for no more than there is room for.
	RecvBuffer int
	// MaxOutbox bounds the sends waiting for their answer (default 1024).
	MaxOutbox int
	// DedupSize is how many message ids the client remembers to drop
	// duplicates (default 10,000). Older ids are forgotten first.
	DedupSize int

	// Logger receives the client's logs (default: slog.Default()).
	Logger *slog.Logger
	// OnFrame, if set, is called with every frame sent (out true) and
	// received, on the client's goroutine: it must not block, and must
	// not call the Client's methods (they wait for that goroutine). For
	// tools and debugging.
	OnFrame func(out bool, h messages.Header, body proto.Message)
	// OnState, if set, is called on every change of the connection's
	// state, in order, on a goroutine of its own: it may call the
	// Client's methods (send on a reconnect, Close on StateClosed). It
	// may run a moment after the change (the last call, StateClosed,
	// possibly after Done is closed), but Close and Logout return only
	// after that last call did (unless called from OnState itself), so it
	// must not wait for something that waits for them; if it falls more
	// than 64 changes behind, the oldest waiting are dropped (logged).
	OnState func(s State, err error)

	ownHTTP bool // HTTPClient is the client's own (fill)
}

// MaxTokenLen is the longest token the gate accepts in LOGIN
// (docs/protocol.md §13; longer: BAD_LOGIN_FIELD).
const MaxTokenLen = 4096

// DefaultConfig returns a Config with every default filled in and no
// identity, token or gate.
func DefaultConfig() Config {
	return Config{
		Platform:          devicepb.Platform_OTHER,
		AppVersion:        "courier-go-client",
		CompressThreshold: 512,
		DialTimeout:       10 * time.Second,
		LoginTimeout:      12 * time.Second,
		WriteTimeout:      10 * time.Second,
		MaxFrameSize:      messages.DefaultMaxBody,
		MaxBody:           16 << 20,
		BackoffInitial:    time.Second,
		BackoffMax:        60 * time.Second,
		BackoffReset:      60 * time.Second,
		ShutdownJitter:    2 * time.Second,
		ResendAfter:       15 * time.Second,
		FrameRate:         40,
		FrameBurst:        150,
		ByteRate:          200 << 10,
		ByteBurst:         768 << 10,
		C2CRate:           4,
		C2CBurst:          16,
		RecvBuffer:        256,
		MaxOutbox:         1024,
		DedupSize:         10_000,
	}
}

// fill sets the zero fields of c to their defaults.
func (c *Config) fill() {
	d := DefaultConfig()
	set := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	setInt := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	if c.Platform == devicepb.Platform_PLATFORM_UNSPECIFIED {
		c.Platform = d.Platform
	}
	if c.AppVersion == "" {
		c.AppVersion = d.AppVersion
	}
	setInt(&c.CompressThreshold, d.CompressThreshold)
	set(&c.DialTimeout, d.DialTimeout)
	set(&c.LoginTimeout, d.LoginTimeout)
	set(&c.WriteTimeout, d.WriteTimeout)
	if c.MaxFrameSize == 0 {
		c.MaxFrameSize = d.MaxFrameSize
	}
	if c.MaxBody == 0 {
		c.MaxBody = d.MaxBody
	}
	set(&c.BackoffInitial, d.BackoffInitial)
	set(&c.BackoffMax, d.BackoffMax)
	set(&c.BackoffReset, d.BackoffReset)
	set(&c.ShutdownJitter, d.ShutdownJitter)
	set(&c.ResendAfter, d.ResendAfter)
	if c.FrameRate == 0 {
		c.FrameRate = d.FrameRate
	}
	setInt(&c.FrameBurst, d.FrameBurst)
	if c.C2CRate == 0 {
		c.C2CRate = d.C2CRate
	}
	setInt(&c.C2CBurst, d.C2CBurst)
	setInt(&c.ByteRate, d.ByteRate)
	// At least the largest frame, for a gate whose frame limit was raised.
	setInt(&c.ByteBurst, max(d.ByteBurst, int(c.MaxFrameSize)+messages.HeaderSize))
	setInt(&c.RecvBuffer, d.RecvBuffer)
	setInt(&c.MaxOutbox, d.MaxOutbox)
	setInt(&c.DedupSize, d.DedupSize)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.HTTPClient == nil {
		// Its own transport, whose idle connections the client closes
		// when it stops.
		c.HTTPClient = &http.Client{Timeout: 5 * time.Second, Transport: http.DefaultTransport.(*http.Transport).Clone()}
		c.ownHTTP = true
	}
}

func (c *Config) validate() error {
	switch {
	case c.AppCode == 0:
		return fmt.Errorf("client: AppCode: must be in [1, 65535]")
	case len(c.UID) == 0 || len(c.UID) > 128:
		return fmt.Errorf("client: UID: must be 1 to 128 bytes, got %d", len(c.UID))
	case len(c.DeviceID) > 128 || len(c.AppVersion) > 128:
		return fmt.Errorf("client: DeviceID and AppVersion: at most 128 bytes each (the gate refuses longer)")
	// LOGIN's fields are protobuf strings: one that is not UTF-8 does
	// not encode, and every login would fail the same way.
	case !utf8.ValidString(c.UID):
		return fmt.Errorf("%w: UID %q", ErrNotUTF8, c.UID)
	case !utf8.ValidString(c.DeviceID):
		return fmt.Errorf("%w: DeviceID %q", ErrNotUTF8, c.DeviceID)
	case !utf8.ValidString(c.AppVersion):
		return fmt.Errorf("%w: AppVersion %q", ErrNotUTF8, c.AppVersion)
	case !utf8.ValidString(c.Token):
		return fmt.Errorf("%w: Token", ErrNotUTF8) // a secret: not printed
	case len(c.Token) > MaxTokenLen:
		return fmt.Errorf("client: Token of %d bytes: at most %d (the gate refuses longer)", len(c.Token), MaxTokenLen)
	case c.Token == "" && c.TokenSource == nil:
		return fmt.Errorf("client: Token or TokenSource is required")
	case c.Addr == "" && c.Discovery == "":
		return fmt.Errorf("client: Addr or Discovery is required: %w", ErrNoGate)
	case c.DialTimeout < 0, c.LoginTimeout < 0, c.WriteTimeout < 0, c.BackoffInitial < 0, c.BackoffMax < 0,
		c.BackoffReset < 0, c.ShutdownJitter < 0, c.ResendAfter < 0:
		// Zero means the default; a negative wait would make a loop of
		// reconnects or resends without pause.
		return fmt.Errorf("client: durations (DialTimeout, LoginTimeout, WriteTimeout, BackoffInitial, BackoffMax, BackoffReset, ShutdownJitter, ResendAfter) must not be negative")
	case c.BackoffMax < c.BackoffInitial:
		return fmt.Errorf("client: BackoffMax %v: less than BackoffInitial %v", c.BackoffMax, c.BackoffInitial)
	case c.CompressThreshold < 0, c.RecvBuffer < 0, c.MaxOutbox < 0, c.DedupSize < 0:
		return fmt.Errorf("client: sizes must not be negative")
	case c.FrameRate < 0, c.FrameBurst < 1, c.ByteRate < 1:
		return fmt.Errorf("client: FrameRate, FrameBurst, ByteRate: must be positive")
	case c.C2CRate < 0, c.C2CBurst < 1:
		return fmt.Errorf("client: C2CRate, C2CBurst: must be positive")
	case c.ByteBurst < int(c.MaxFrameSize)+messages.HeaderSize:
		return fmt.Errorf("client: ByteBurst %d: at least MaxFrameSize plus the header (%d), or the largest frame never goes",
			c.ByteBurst, int(c.MaxFrameSize)+messages.HeaderSize)
	case c.MaxBody > maxDecompressed:
		return fmt.Errorf("client: MaxBody %d: at most %d", c.MaxBody, maxDecompressed)
	}
	if c.Discovery != "" {
		u, err := url.Parse(c.Discovery)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("client: Discovery %q: want an http(s) URL", c.Discovery)
		}
	}
	return nil
}
