package gate

import (
	"fmt"
	"net"
	"runtime"
	"syscall"
	"time"

	"github.com/courier-im/courier/gate/internal/ipset"
	"github.com/courier-im/courier/messages"
)

// Config configures a Gate. Start from DefaultConfig; the zero value is not
// valid. Rate limits are disabled by setting their rate to 0.
type Config struct {
	// Addr is the TCP address to listen on, host:port. Port 0 picks a free
	// port; Gate.Addr reports it.
	Addr string
	// Loops is the number of event loops (0: one per CPU).
	Loops int

	// MaxFrameSize is the largest body length accepted from a client, and
	// the cap on a decompressed body.
	MaxFrameSize uint32

	// MaxConns caps concurrent connections (0: the open-files limit minus
	// FDReserve). Above it new connections get ERROR SERVER_BUSY and are
	// closed. It may not exceed the open-files limit minus FDReserve, so
	// that accept never fails with EMFILE (which would stop gnet).
	MaxConns int
	// FDReserve is the number of file descriptors kept free for everything
	// else in the process (listeners, pollers, files, outgoing clients).
	FDReserve int

	// LoginTimeout closes a connection with no successful login this long
	// after it opened.
	LoginTimeout time.Duration
	// HeartbeatInterval is how often clients should send KEEPALIVE; the
	// Handler announces it in LOGIN_ACK (Gate.HeartbeatInterval).
	HeartbeatInterval time.Duration
	// IdleTimeout closes a logged-in connection silent for this long
	// (0: 3 × HeartbeatInterval).
	IdleTimeout time.Duration
	// TickInterval is the granularity of the login and idle timers.
	TickInterval time.Duration

	// CompressThreshold: bodies sent to a zstd client are compressed when
	// at least this long (and only if that makes them smaller).
	CompressThreshold int

	// OutQueueFrames and OutQueueBytes bound the frames waiting for a
	// connection's event loop. A Deliver that would pass either limit
	// disconnects the client (CloseSlowClient); so does a single Deliver
	// larger than OutQueueBytes.
	OutQueueFrames int
	OutQueueBytes  int
	// MaxOutboundBuffered bounds what gnet holds for a connection whose
	// socket is full (the peer does not read). Passing it disconnects the
	// client (CloseSlowClient).
	MaxOutboundBuffered int

	// FramesPerSecond and FrameBurst limit the frames a connection may
	// send (token bucket; 0 rate: no limit). Running dry is answered with
	// ERROR RATE_LIMITED and a close.
	FramesPerSecond int
	FrameBurst      int
	// BytesPerSecond and ByteBurst limit the bytes a connection may send,
	// headers included (0 rate: no limit). ByteBurst must hold a frame of
	// MaxFrameSize.
	BytesPerSecond int
	ByteBurst      int
	// C2CPerSecond and C2CBurst limit the C2C messages an identity
	// (appcode and uid) may send through the gate, over all its
	// connections (0 rate: no limit). Beyond, a C2C is answered C2C_ACK
	// RATE_LIMITED and not stored; the connection goes on. Every C2C is
	// stored for its receiver (for actors.c2c-ttl if not acknowledged),
	// so this, times the TTL, bounds what one device can make the cluster
	// store.
	C2CPerSecond int
	C2CBurst     int

	// NewConnsPerIP and NewConnsPerIPBurst limit new connections per
	// source IP (0 rate: no limit); IPLimiterSize bounds how many source
	// addresses are remembered (least recently seen forgotten first).
	NewConnsPerIP      float64
	NewConnsPerIPBurst int
	IPLimiterSize      int

	// ProxyProtocol: connections from ProxyFrom (load balancers) must
	// start with a PROXY protocol header (version 2 or 1); the client
	// address it carries replaces the balancer's for the IP lists, the
	// per-IP connection rate, logs and presence. A connection from any
	// other address that sends a PROXY header is refused; without
	// ProxyProtocol every PROXY header is. Default off.
	ProxyProtocol bool
	// ProxyFrom are the addresses or CIDR prefixes of the trusted load
	// balancers (required with ProxyProtocol).
	ProxyFrom []string

	// Lists are the black and white lists at start. ListsFile, if set,
	// names a JSON file (format: ListsSnapshot) that replaces them at
	// start and whenever it changes; it is checked every
	// ListsPollInterval.
	Lists             ListsSnapshot
	ListsFile         string
	ListsPollInterval time.Duration

	// AppSecrets maps an appcode to its HS256 secret for the default JWT
	// authenticator. Ignored when Authenticator is set.
	AppSecrets map[uint16][]byte
	// MaxTokenLifetime, for the default JWT authenticator: a token must
	// carry iat, and exp - iat must not exceed this (0: any lifetime, iat
	// optional). Ignored when Authenticator is set.
	MaxTokenLifetime time.Duration
	// Authenticator verifies login tokens (nil: JWT HS256 with
	// AppSecrets).
	Authenticator Authenticator
}

// DefaultConfig returns the configuration of a production gate.
func DefaultConfig() Config {
	return Config{
		Addr:         ":7000",                 // the device port of `make run`
		Loops:        0,                       // one event loop per CPU
		MaxFrameSize: messages.DefaultMaxBody, // 64 KiB, PROTOCOL.md's default
		MaxConns:     0,                       // open-files limit minus FDReserve
		FDReserve:    2048,                    // for gRPC, Consul, the store, metrics, logs

		LoginTimeout:      10 * time.Second, // PROTOCOL.md's default
		HeartbeatInterval: 30 * time.Second, // a mobile radio wakes twice a minute at most
		IdleTimeout:       0,                // 3 × HeartbeatInterval = 90 s
		TickInterval:      time.Second,      // timers fire up to 1 s late, never early

		CompressThreshold: 512, // below that zstd rarely pays for its header and CPU

		OutQueueFrames:      1024,    // a page of pushes after login plus margin
		OutQueueBytes:       1 << 20, // 1 MiB: 16 max-size frames
		MaxOutboundBuffered: 1 << 20, // 1 MiB on top of the kernel's socket buffer

		FramesPerSecond: 50,        // a chatty client sends a few per second
		FrameBurst:      200,       // a reconnect flushes acks and a PULL at once
		BytesPerSecond:  256 << 10, // 256 KiB/s sustained upstream
		ByteBurst:       1 << 20,   // 1 MiB: 16 max-size frames back to back
		C2CPerSecond:    5,         // a person types far slower
		C2CBurst:        20,        // an outbox flushed after a reconnect

		NewConnsPerIP:      20,      // per second; a NAT of many phones reconnecting
		NewConnsPerIPBurst: 100,     // after a network blip behind one NAT
		IPLimiterSize:      1 << 16, // ~10 MiB at most for the limiters

		ListsPollInterval: 5 * time.Second, // operators see a list edit apply within seconds

		MaxTokenLifetime: 7 * 24 * time.Hour, // a leaked token is good for a week at most
	}
}

// idleTimeout returns the effective idle timeout.
func (c *Config) idleTimeout() time.Duration {
	if c.IdleTimeout == 0 {
		return 3 * c.HeartbeatInterval
	}
	return c.IdleTimeout
}

func (c *Config) loops() int {
	if c.Loops == 0 {
		return runtime.NumCPU()
	}
	return c.Loops
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
}

// validate checks every field; the error names the first bad one.
func (c *Config) validate() error {
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return invalid("Config.Addr %q: %v", c.Addr, err)
	}
	if c.Loops < 0 || c.Loops > 1024 {
		return invalid("Config.Loops %d: want 0..1024", c.Loops)
	}
	if c.MaxFrameSize < 1024 || c.MaxFrameSize > 16<<20 {
		return invalid("Config.MaxFrameSize %d: want 1 KiB..16 MiB", c.MaxFrameSize)
	}
	if c.FDReserve < 16 {
		return invalid("Config.FDReserve %d: want at least 16", c.FDReserve)
	}
	if c.MaxConns < 0 {
		return invalid("Config.MaxConns %d: want >= 0", c.MaxConns)
	}
	if c.ProxyProtocol && len(c.ProxyFrom) == 0 {
		return invalid("Config.ProxyFrom: empty; with Config.ProxyProtocol name the load balancers' addresses")
	}
	if _, err := ipset.Parse(c.ProxyFrom); err != nil {
		return invalid("Config.ProxyFrom: %v", err)
	}
	if fdCap, err := fdConnCap(c.FDReserve); err != nil {
		return invalid("Config.FDReserve: %v", err)
	} else if c.MaxConns > fdCap {
		return invalid("Config.MaxConns %d: above the open-files limit minus Config.FDReserve (%d)", c.MaxConns, fdCap)
	}
	if c.TickInterval < time.Millisecond {
		return invalid("Config.TickInterval %v: want at least 1ms", c.TickInterval)
	}
	if c.LoginTimeout < c.TickInterval {
		return invalid("Config.LoginTimeout %v: want at least Config.TickInterval (%v)", c.LoginTimeout, c.TickInterval)
	}
	if c.HeartbeatInterval < time.Second && c.IdleTimeout == 0 {
		// Sub-second heartbeats are for tests, which set IdleTimeout.
		return invalid("Config.HeartbeatInterval %v: want at least 1s (or set Config.IdleTimeout)", c.HeartbeatInterval)
	}
	if c.HeartbeatInterval <= 0 {
		return invalid("Config.HeartbeatInterval %v: want > 0", c.HeartbeatInterval)
	}
	if c.IdleTimeout < 0 || (c.IdleTimeout > 0 && c.IdleTimeout < c.TickInterval) {
		return invalid("Config.IdleTimeout %v: want 0 or at least Config.TickInterval (%v)", c.IdleTimeout, c.TickInterval)
	}
	if c.IdleTimeout > 0 && c.IdleTimeout < 2*c.HeartbeatInterval {
		// Clients send a KEEPALIVE every heartbeat (LOGIN_ACK says how
		// often) and know of no other timeout: below two, a client doing
		// just that would be closed.
		return invalid("Config.IdleTimeout %v: want 0 (3 heartbeats) or at least twice Config.HeartbeatInterval (%v)", c.IdleTimeout, c.HeartbeatInterval)
	}
	if c.CompressThreshold < 0 {
		return invalid("Config.CompressThreshold %d: want >= 0", c.CompressThreshold)
	}
	if c.OutQueueFrames < 1 || c.OutQueueFrames > 1<<20 {
		return invalid("Config.OutQueueFrames %d: want 1..1Mi", c.OutQueueFrames)
	}
	if c.OutQueueBytes < int(c.MaxFrameSize)+messages.HeaderSize || c.OutQueueBytes > 1<<30 {
		return invalid("Config.OutQueueBytes %d: want one frame of Config.MaxFrameSize (%d) up to 1 GiB", c.OutQueueBytes, int(c.MaxFrameSize)+messages.HeaderSize)
	}
	if c.MaxOutboundBuffered < int(c.MaxFrameSize)+messages.HeaderSize {
		return invalid("Config.MaxOutboundBuffered %d: want at least one frame of Config.MaxFrameSize (%d)", c.MaxOutboundBuffered, int(c.MaxFrameSize)+messages.HeaderSize)
	}
	if c.FramesPerSecond < 0 {
		return invalid("Config.FramesPerSecond %d: want >= 0", c.FramesPerSecond)
	}
	if c.FramesPerSecond > 0 && c.FrameBurst < 1 {
		return invalid("Config.FrameBurst %d: want >= 1", c.FrameBurst)
	}
	if c.BytesPerSecond < 0 {
		return invalid("Config.BytesPerSecond %d: want >= 0", c.BytesPerSecond)
	}
	if c.BytesPerSecond > 0 && c.ByteBurst < int(c.MaxFrameSize)+messages.HeaderSize {
		return invalid("Config.ByteBurst %d: want at least one frame of Config.MaxFrameSize (%d)", c.ByteBurst, int(c.MaxFrameSize)+messages.HeaderSize)
	}
	if c.C2CPerSecond < 0 {
		return invalid("Config.C2CPerSecond %d: want >= 0", c.C2CPerSecond)
	}
	if c.C2CPerSecond > 0 && c.C2CBurst < 1 {
		return invalid("Config.C2CBurst %d: want >= 1", c.C2CBurst)
	}
	if c.NewConnsPerIP < 0 {
		return invalid("Config.NewConnsPerIP %v: want >= 0", c.NewConnsPerIP)
	}
	if c.NewConnsPerIP > 0 && c.NewConnsPerIPBurst < 1 {
		return invalid("Config.NewConnsPerIPBurst %d: want >= 1", c.NewConnsPerIPBurst)
	}
	if c.NewConnsPerIP > 0 && c.IPLimiterSize < 1 {
		return invalid("Config.IPLimiterSize %d: want >= 1", c.IPLimiterSize)
	}
	if c.ListsFile != "" && c.ListsPollInterval < 10*time.Millisecond {
		return invalid("Config.ListsPollInterval %v: want at least 10ms", c.ListsPollInterval)
	}
	if _, err := compileLists(c.Lists); err != nil {
		return invalid("Config.Lists: %v", err)
	}
	if c.MaxTokenLifetime < 0 {
		return invalid("Config.MaxTokenLifetime %v: want >= 0", c.MaxTokenLifetime)
	}
	if c.Authenticator == nil {
		if len(c.AppSecrets) == 0 {
			return invalid("Config.AppSecrets: empty and no Config.Authenticator")
		}
		for app, s := range c.AppSecrets {
			if len(s) < 16 {
				return invalid("Config.AppSecrets[%d]: secret shorter than 16 bytes", app)
			}
		}
	}
	return nil
}

// fdConnCap returns the open-files limit minus reserve.
func fdConnCap(reserve int) (int, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	n := int(min(rl.Cur, 1<<30)) - reserve
	if n < 1 {
		return 0, fmt.Errorf("open-files limit %d leaves no connection after reserving %d", rl.Cur, reserve)
	}
	return n, nil
}
