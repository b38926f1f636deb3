package workload

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// Config describes the workload and where to send it.
type Config struct {
	// App is the appcode of the devices and pushes (default 1).
	App uint16
	// Secret is the HS256 secret of the app's device tokens.
	Secret []byte
	// APIKey acts for App on the gRPC API.
	APIKey string
	// Discover are the HTTP addresses (host:port) of api nodes serving
	// gate discovery, tried in turn before every connection. Without any,
	// devices use Gates.
	Discover []string
	// Gates are gate addresses, tried in random order: for the first
	// connection of every device if set (so a test places the devices),
	// and for every connection when Discover is empty.
	Gates []string
	// APIs are the gRPC API addresses; a call that fails retryably is
	// retried on the next one.
	APIs []string
	// Devices is the number of simulated devices (default 10), uids
	// UIDPrefix0, UIDPrefix1, ... Device i sends its C2C to device i^1.
	Devices int
	// UIDPrefix prefixes every uid (default "w-").
	UIDPrefix string
	// Sources are local IPs to dial the gates from, in turn (default: the
	// kernel's choice).
	Sources []string
	// LoginRate paces the first logins (per second; 0: no pacing).
	LoginRate float64
	// PushRate is stored pushes per second over all identities, in turn
	// (0: none). FireAndForgetRate likewise for fire-and-forget pushes.
	PushRate, FireAndForgetRate float64
	// C2CRate is C2C messages per second from random online devices to
	// their partners; C2SRate C2S messages per second (0: none).
	C2CRate, C2SRate float64
	// Msgtype of every message (default 7).
	Msgtype uint32
	// Keepalive is the devices' KEEPALIVE interval (default 1 s).
	Keepalive time.Duration
	// DeadAfter: a connection on which nothing arrived for this long is
	// taken for dead (default 3 × Keepalive).
	DeadAfter time.Duration
	// ShutdownDelay: after KICKOUT SERVER_SHUTDOWN a device reconnects
	// after a random delay up to this (default 500 ms; 0 is allowed with
	// NoShutdownDelay).
	ShutdownDelay   time.Duration
	NoShutdownDelay bool
	// Backoff is the first reconnect delay after a failure, doubled up to
	// MaxBackoff, with jitter (defaults 100 ms and 2 s).
	Backoff, MaxBackoff time.Duration
	// ResendAfter: a C2C or C2S not answered for this long is sent again
	// with the same client message id (default 3 s).
	ResendAfter time.Duration
	// CallTimeout bounds one API call (default 5 s); GiveUp abandons a
	// push still failing after this long (default 2 m).
	CallTimeout, GiveUp time.Duration
	// Log receives the workload's notable events (default: discarded).
	Log *slog.Logger
}

// DefaultConfig returns the defaults documented on Config's fields.
func DefaultConfig() Config {
	return Config{
		App:           1,
		Devices:       10,
		UIDPrefix:     "w-",
		Msgtype:       7,
		Keepalive:     time.Second,
		ShutdownDelay: 500 * time.Millisecond,
		Backoff:       100 * time.Millisecond,
		MaxBackoff:    2 * time.Second,
		ResendAfter:   3 * time.Second,
		CallTimeout:   5 * time.Second,
		GiveUp:        2 * time.Minute,
	}
}

func (c *Config) validate() error {
	switch {
	case c.App == 0:
		return errors.New("workload: App must not be 0")
	case len(c.Secret) == 0:
		return errors.New("workload: Secret is required")
	case len(c.Discover) == 0 && len(c.Gates) == 0:
		return errors.New("workload: Discover or Gates is required")
	case (c.PushRate > 0 || c.FireAndForgetRate > 0 || c.C2SRate > 0) && (len(c.APIs) == 0 || c.APIKey == ""):
		return errors.New("workload: pushes and C2S need APIs and APIKey")
	case c.Devices < 1:
		return fmt.Errorf("workload: Devices %d: at least 1", c.Devices)
	case c.C2CRate > 0 && c.Devices < 2:
		return errors.New("workload: C2C needs at least 2 devices")
	case c.Keepalive <= 0 || c.Backoff <= 0 || c.MaxBackoff < c.Backoff || c.ResendAfter <= 0 ||
		c.CallTimeout <= 0 || c.GiveUp <= 0:
		return errors.New("workload: timers must be positive (and MaxBackoff ≥ Backoff)")
	case c.PushRate < 0 || c.FireAndForgetRate < 0 || c.C2CRate < 0 || c.C2SRate < 0 || c.LoginRate < 0:
		return errors.New("workload: rates must not be negative")
	}
	for _, s := range c.Sources {
		if net.ParseIP(s) == nil {
			return fmt.Errorf("workload: source %q is not an IP address", s)
		}
	}
	if c.DeadAfter == 0 {
		c.DeadAfter = 3 * c.Keepalive
	}
	if c.ShutdownDelay == 0 && !c.NoShutdownDelay {
		c.ShutdownDelay = 500 * time.Millisecond
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}
