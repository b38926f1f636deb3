package farm

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// Config describes a farm's devices. Devices have global indices First to
// First+Count-1 across all of a run's farms; device g logs in as uid
// UIDPrefix+g.
type Config struct {
	// Gate is the gate's address (IPv4).
	Gate netip.AddrPort
	// AppCode of every device (default 1).
	AppCode uint16
	// Secret signs the devices' HS256 tokens.
	Secret []byte
	// UIDPrefix is prepended to the device index to form its uid.
	UIDPrefix string
	// First and Count: the global indices of this farm's devices.
	First, Count int
	// Sources are the local addresses to dial from, used round-robin by
	// global device index (default: the kernel chooses).
	Sources []netip.Addr
	// Loops is the number of event loops (default 1).
	Loops int
	// WorkerID identifies the farm in message indices (0-255).
	WorkerID int
	// RunID is written in every payload and checked in every payload read.
	RunID uint32
	// MsgType of C2C and C2S frames.
	MsgType uint16
	// PayloadSize of C2C and C2S payloads (default 128).
	PayloadSize int
	// LoginTimeout bounds connect + LOGIN_ACK (default 15 s).
	LoginTimeout time.Duration
	// Keepalive overrides the heartbeat interval of LOGIN_ACK (0: use it).
	Keepalive time.Duration
	// DropEvery, for testing the bench's accounting: devices acknowledge
	// but do not record S2C pushes whose index is a multiple of it (0: off).
	DropEvery uint64
}

func (c *Config) setDefaults() {
	if c.AppCode == 0 {
		c.AppCode = 1
	}
	if c.Loops <= 0 {
		c.Loops = 1
	}
	if c.PayloadSize <= 0 {
		c.PayloadSize = 128
	}
	if c.LoginTimeout <= 0 {
		c.LoginTimeout = 15 * time.Second
	}
}

func (c *Config) validate() error {
	switch {
	case !c.Gate.IsValid() || !c.Gate.Addr().Is4():
		return fmt.Errorf("farm: gate %v: an IPv4 address and port are required", c.Gate)
	case len(c.Secret) == 0:
		return errors.New("farm: no token secret")
	case c.Count < 0 || c.First < 0:
		return fmt.Errorf("farm: devices [%d, +%d)", c.First, c.Count)
	case c.WorkerID < 0 || c.WorkerID > 255:
		return fmt.Errorf("farm: worker id %d", c.WorkerID)
	}
	for _, s := range c.Sources {
		if !s.Is4() {
			return fmt.Errorf("farm: source %v: IPv4 only", s)
		}
	}
	return nil
}

// UID returns the uid of global device g.
func UID(prefix string, g int) string { return prefix + strconv.Itoa(g) }
