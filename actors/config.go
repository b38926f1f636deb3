package actors

import (
	"fmt"
	"time"

	"github.com/courier-im/courier/messages"
)

// Config tunes device actors. Every node of a cluster should use the same.
type Config struct {
	// Heartbeat is the keepalive interval announced in LOGIN_ACK (default
	// 30 s; the gate closes connections silent for 3 heartbeats).
	Heartbeat time.Duration
	// RetryInitial is the wait before the first redelivery of an
	// unacknowledged message (default 2 s).
	RetryInitial time.Duration
	// RetryMax caps the wait between redeliveries (default 30 s); the wait
	// doubles after each attempt.
	RetryMax time.Duration
	// Window is the most messages delivered and not yet acknowledged per
	// device (default 32).
	Window int
	// WindowBytes bounds the bytes of the messages delivered and not yet
	// acknowledged per device (default 256 KiB; one message always fits),
	// and the bytes of one PULL_ACK's messages. A message counts as its
	// whole stored entry (EntryBytes: payload, ids, sender, times) plus a
	// frame header, which bounds the frame that carries it, so that no
	// burst can fill the gate's per-connection queue whatever the entries
	// contain.
	WindowBytes int
	// C2CTTL is the expiry of C2C messages (default 7 days).
	C2CTTL time.Duration
	// InboxMaxMessages is the most unacknowledged stored pushes from
	// app-servers per identity (default 1000). Beyond it new pushes are
	// refused (RESOURCE_EXHAUSTED): accepted messages are never dropped to
	// make room. C2C messages have their own budget (C2CMaxMessages), so
	// what devices send never fills the app-servers' room.
	InboxMaxMessages int
	// InboxMaxBytes is the most bytes of stored pushes from app-servers
	// per identity, counted as EntryBytes (default 4 MiB), with the same
	// policy.
	InboxMaxBytes int
	// C2CMaxMessages is the most unacknowledged C2C messages per receiver
	// (default 1000). Beyond it new ones are refused (INBOX_FULL to the
	// sender).
	C2CMaxMessages int
	// C2CMaxBytes is the most bytes of unacknowledged C2C messages per
	// receiver, counted as EntryBytes (default 4 MiB).
	C2CMaxBytes int
	// C2CSenderMaxMessages is the share of a receiver's C2C budget one
	// sender may hold: its unacknowledged messages to that receiver
	// (default 100), so that one user cannot fill another's inbox alone.
	C2CSenderMaxMessages int
	// C2CSenderMaxBytes is the same share in bytes (default 512 KiB).
	C2CSenderMaxBytes int
	// IdempotencyTTL is how long idempotency keys and C2C client message
	// ids are remembered (default 24 h); C2C client message ids at least
	// as long as their message lives (C2CTTL).
	IdempotencyTTL time.Duration
	// PullPage is the most messages one PULL_ACK carries (default 100).
	PullPage int
	// MaxFrameSize is the largest body the server sends a device (default
	// 64 KiB, the gate's frame limit, which the node sets here): a
	// PULL_ACK's page ends before it, and a C2C whose delivery would not
	// fit is refused with MESSAGE_TOO_LARGE. Devices written from the
	// protocol size their readers to the frame limit.
	MaxFrameSize int
	// ExpirySweep is how often the node looks through the inbox store for
	// expired messages of identities that are not in memory (devices that
	// never came back), and has their actors drop them (default 10 min;
	// 0 disables).
	ExpirySweep time.Duration
	// PassivateAfter is the idle time after which an identity with nothing
	// in flight leaves memory (default 30 s), online or not. It comes back
	// from the store on its next message (a read of its meta and inbox).
	PassivateAfter time.Duration
	// MaxPendingWrites bounds the store writes the node's actors have
	// submitted and not yet seen complete (default 4096). When the store
	// falls that far behind, new work that needs a write is refused at
	// once (UNAVAILABLE to the API, STORE_UNAVAILABLE to devices) instead
	// of queueing without bound; what the actors must still write (a
	// session's end, deletions of acknowledged messages) waits for room.
	// The store's commit queue must hold this many writes in any one lane,
	// so that submitting never waits.
	MaxPendingWrites int
	// StoreTimeout bounds one read of the inbox store: loading an identity
	// or looking up an idempotency key (default 5 s). The actor does not
	// wait for it on its worker: envelopes that arrive meanwhile wait in
	// its stash.
	StoreTimeout time.Duration
	// MaxStashed bounds the envelopes one identity holds while it waits
	// for a store read (default 1024: a whole PushMany to one identity
	// fits). Beyond, requests are refused at once (UNAVAILABLE to the
	// API, STORE_UNAVAILABLE to a LOGIN, C2C or PULL) and
	// acknowledgements dropped (the device repeats them); closes are
	// kept.
	MaxStashed int
	// LoginsPerSecond and LoginBurst bound the LOGINs of one identity
	// (default 1 a second, bursts of 10; 0 rate: no bound): beyond,
	// LOGIN_ACK RATE_LIMITED. Each login writes the identity's record,
	// synced, kicks the session before and sends its window again; a
	// device with a valid token could loop on it from many addresses.
	LoginsPerSecond float64
	LoginBurst      int
}

// DefaultConfig returns the defaults documented on Config's fields.
func DefaultConfig() Config {
	return Config{
		Heartbeat:        30 * time.Second,
		RetryInitial:     2 * time.Second,
		RetryMax:         30 * time.Second,
		Window:           32,
		WindowBytes:      256 << 10,
		C2CTTL:           7 * 24 * time.Hour,
		InboxMaxMessages: 1000,
		InboxMaxBytes:    4 << 20,
		C2CMaxMessages:   1000,
		C2CMaxBytes:      4 << 20,
		// One sender may hold a tenth of a receiver's C2C messages and an
		// eighth of its C2C bytes.
		C2CSenderMaxMessages: 100,
		C2CSenderMaxBytes:    512 << 10,
		IdempotencyTTL:       24 * time.Hour,
		PullPage:             100,
		MaxFrameSize:         messages.DefaultMaxBody,
		PassivateAfter:       30 * time.Second,
		ExpirySweep:          10 * time.Minute,
		MaxPendingWrites:     4096,
		StoreTimeout:         5 * time.Second,
		MaxStashed:           1024,
		LoginsPerSecond:      1,
		LoginBurst:           10,
	}
}

// Validate reports the first field that is out of range, by name.
func (c *Config) Validate() error {
	switch {
	case c.Heartbeat < time.Second:
		return fmt.Errorf("actors.heartbeat %v: must be at least 1s", c.Heartbeat)
	case c.LoginsPerSecond != 0 && !(c.LoginsPerSecond >= 0.001 && c.LoginsPerSecond <= 1e6):
		return fmt.Errorf("actors.logins-per-second %v: must be 0 (no bound) or in [0.001, 1000000]", c.LoginsPerSecond)
	case c.LoginsPerSecond > 0 && (c.LoginBurst < 1 || c.LoginBurst > 1e6):
		return fmt.Errorf("actors.login-burst %d: must be in [1, 1000000]", c.LoginBurst)
	case c.RetryInitial <= 0:
		return fmt.Errorf("actors.retry-initial %v: must be positive", c.RetryInitial)
	case c.RetryMax < c.RetryInitial:
		return fmt.Errorf("actors.retry-max %v: must be at least retry-initial %v", c.RetryMax, c.RetryInitial)
	case c.Window < 1 || c.Window > 4096:
		return fmt.Errorf("actors.window %d: must be in [1, 4096]", c.Window)
	case c.WindowBytes < 1024:
		return fmt.Errorf("actors.window-bytes %d: must be at least 1024", c.WindowBytes)
	case c.C2CTTL <= 0:
		return fmt.Errorf("actors.c2c-ttl %v: must be positive", c.C2CTTL)
	case c.InboxMaxMessages < 1:
		return fmt.Errorf("actors.inbox-max-messages %d: must be at least 1", c.InboxMaxMessages)
	case c.InboxMaxBytes < 1024:
		return fmt.Errorf("actors.inbox-max-bytes %d: must be at least 1024", c.InboxMaxBytes)
	case c.C2CMaxMessages < 1:
		return fmt.Errorf("actors.c2c-max-messages %d: must be at least 1", c.C2CMaxMessages)
	case c.C2CMaxBytes < 1024:
		return fmt.Errorf("actors.c2c-max-bytes %d: must be at least 1024", c.C2CMaxBytes)
	case c.C2CSenderMaxMessages < 1 || c.C2CSenderMaxMessages > c.C2CMaxMessages:
		return fmt.Errorf("actors.c2c-sender-max-messages %d: must be in [1, actors.c2c-max-messages %d]", c.C2CSenderMaxMessages, c.C2CMaxMessages)
	case c.C2CSenderMaxBytes < 1024 || c.C2CSenderMaxBytes > c.C2CMaxBytes:
		return fmt.Errorf("actors.c2c-sender-max-bytes %d: must be in [1024, actors.c2c-max-bytes %d]", c.C2CSenderMaxBytes, c.C2CMaxBytes)
	case c.IdempotencyTTL < time.Minute:
		return fmt.Errorf("actors.idempotency-ttl %v: must be at least 1m", c.IdempotencyTTL)
	case c.PullPage < 1 || c.PullPage > 1000:
		return fmt.Errorf("actors.pull-page %d: must be in [1, 1000]", c.PullPage)
	case c.MaxFrameSize < 1024 || c.MaxFrameSize > 16<<20:
		return fmt.Errorf("actors.max-frame-size %d: must be in [1 KiB, 16 MiB]", c.MaxFrameSize)
	case c.ExpirySweep != 0 && c.ExpirySweep < 100*time.Millisecond:
		return fmt.Errorf("actors.expiry-sweep %v: must be 0 (off) or at least 100ms", c.ExpirySweep)
	case c.PassivateAfter < 100*time.Millisecond:
		return fmt.Errorf("actors.passivate-after %v: must be at least 100ms", c.PassivateAfter)
	case c.MaxPendingWrites < 1 || c.MaxPendingWrites > 1<<20:
		return fmt.Errorf("actors.max-pending-writes %d: must be in [1, 1048576]", c.MaxPendingWrites)
	case c.StoreTimeout < 10*time.Millisecond:
		return fmt.Errorf("actors.store-timeout %v: must be at least 10ms", c.StoreTimeout)
	case c.MaxStashed < 1 || c.MaxStashed > 1<<16:
		return fmt.Errorf("actors.max-stashed %d: must be in [1, 65536]", c.MaxStashed)
	}
	return nil
}
