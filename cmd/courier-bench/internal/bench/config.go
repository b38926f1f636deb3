package bench

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/courier-im/courier/cmd/courier-bench/internal/procstat"
)

// Config is what every scenario shares: the node, the devices, the
// app-server's credentials and where results go.
type Config struct {
	// Gate, API: the node's device and gRPC addresses. Metrics is the
	// host:port of its /metrics, Pprof of its pprof server (optional);
	// NodePID a local node's process id (optional: CPU and RSS then come
	// from /proc). Spawn, if set, is a courier binary to start fresh for
	// the run (the addresses and PID are then its own); SpawnArgs are
	// extra flags for it.
	Gate, API, Metrics, Pprof string
	// Discover, if set, is an api node's HTTP address (http://HOST:PORT):
	// the gates come from its gate discovery instead of Gate, and the
	// workers spread over them (worker i on gate i mod their number,
	// in the order discovery gives them).
	Discover string
	NodePID  int
	// MorePIDs are the other local node processes of a cluster: their CPU
	// is added to the node's, so that CPU per message is the cluster's.
	MorePIDs  []int
	Spawn     string
	SpawnArgs []string
	// DBPID is the process id of the node's database server (the
	// PostgreSQL postmaster): its CPU and its backends' are reported.
	DBPID int

	// AppCode, Secret (device tokens) and APIKey (app-server).
	AppCode uint16
	Secret  string
	APIKey  string

	// Devices is the number of simulated devices (default 1000).
	Devices int
	// PerWorker is the most devices per worker process (default 16,000,
	// under the 20,000 open files of a process); Workers forces a count
	// (0: as many as Devices needs). Loops are event loops per worker
	// (default 1).
	PerWorker, Workers, Loops int
	// Sources are the addresses devices dial from (default: 32
	// addresses in a random 127.x.y.0/24, so TIME_WAIT of earlier runs
	// never collides).
	Sources []netip.Addr
	// UIDPrefix of device uids (default "b<run id>-", fresh per run).
	UIDPrefix string
	// LoginRate is the login rate of the setup phase (0: as fast as
	// LoginInflight allows); LoginInflight bounds logins in progress
	// (default 1000).
	LoginRate     float64
	LoginInflight int
	// Keepalive overrides the node's heartbeat interval for devices.
	Keepalive time.Duration
	// MsgType of pushes, C2C and C2S (default 1).
	MsgType uint16
	// PayloadSize of every message (default 128 bytes).
	PayloadSize int
	// Drain bounds the wait for messages in flight after sending stops
	// (default 30 s); DrainIdle ends it early when nothing has arrived
	// for that long (default 3 s).
	Drain, DrainIdle time.Duration

	// Progress receives a line per second while running (nil: none).
	Progress io.Writer
	// Command is recorded in the result (os.Args).
	Command []string
	// OnMeasure, if set, is called as the measured phase starts (after
	// the setup logins), with the node being measured; e.g. to profile it.
	OnMeasure func(node procstat.Node)

	// Testing hooks: DropEvery makes devices acknowledge but not record
	// pushes whose index is a multiple of it; InjectDelay makes the
	// app-server wait that long between stamping a push and calling the
	// API.
	DropEvery   uint64
	InjectDelay time.Duration

	runID uint32
}

// DefaultConfig returns the defaults documented on Config, for a node in
// development mode (cmd/courier --dev) on this machine.
func DefaultConfig() Config {
	return Config{
		Gate: "127.0.0.1:7000", API: "127.0.0.1:7001", Metrics: "127.0.0.1:7002",
		AppCode: 1, Secret: "courier-dev-secret-app-1", APIKey: "courier-dev-api-key-0001",
		Devices: 1000, PerWorker: 16000, Loops: 1, LoginInflight: 1000,
		MsgType: 1, PayloadSize: 128, Drain: 30 * time.Second, DrainIdle: 3 * time.Second,
	}
}

func (c *Config) setDefaults() error {
	d := DefaultConfig()
	if c.AppCode == 0 {
		c.AppCode = d.AppCode
	}
	if c.Devices <= 0 {
		c.Devices = d.Devices
	}
	if c.PerWorker <= 0 {
		c.PerWorker = d.PerWorker
	}
	if c.Loops <= 0 {
		c.Loops = d.Loops
	}
	if c.LoginInflight <= 0 {
		c.LoginInflight = d.LoginInflight
	}
	if c.MsgType == 0 {
		c.MsgType = d.MsgType
	}
	if c.PayloadSize <= 0 {
		c.PayloadSize = d.PayloadSize
	}
	if c.Drain <= 0 {
		c.Drain = d.Drain
	}
	if c.DrainIdle <= 0 {
		c.DrainIdle = d.DrainIdle
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	c.runID = binary.BigEndian.Uint32(b[:4])
	if c.UIDPrefix == "" {
		c.UIDPrefix = fmt.Sprintf("b%08x-", c.runID)
	}
	if len(c.Sources) == 0 {
		// A random /24 in 127.0.0.0/8 other than 127.0.0.x.
		x, y := b[4], b[5]
		if x == 0 {
			x = 1
		}
		for i := range 32 {
			c.Sources = append(c.Sources, netip.AddrFrom4([4]byte{127, x, y, byte(2 + i)}))
		}
	}
	return c.validate()
}

func (c *Config) validate() error {
	switch {
	case c.Secret == "":
		return errors.New("bench: no --secret for device tokens")
	case c.APIKey == "":
		return errors.New("bench: no --api-key")
	case c.Workers < 0 || c.Workers > 255:
		return fmt.Errorf("bench: --workers %d: 0 to 255", c.Workers)
	}
	return nil
}

// ParseSources parses a list of source addresses: comma-separated
// addresses or ranges "127.0.0.2-127.0.0.40".
func ParseSources(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := netip.ParseAddr(lo)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("bench: source %q: want an IPv4 address", lo)
		}
		if !isRange {
			out = append(out, a)
			continue
		}
		b, err := netip.ParseAddr(hi)
		if err != nil || !b.Is4() || b.Less(a) {
			return nil, fmt.Errorf("bench: source range %q", part)
		}
		for x := a; !b.Less(x); x = x.Next() {
			out = append(out, x)
			if len(out) > 65536 {
				return nil, fmt.Errorf("bench: source range %q is too large", part)
			}
		}
	}
	return out, nil
}
