package gate_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/courier-im/courier/gate"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		field  string
		mutate func(*gate.Config)
	}{
		{"Config.Addr", func(c *gate.Config) { c.Addr = "no-port" }},
		{"Config.Loops", func(c *gate.Config) { c.Loops = -1 }},
		{"Config.MaxFrameSize", func(c *gate.Config) { c.MaxFrameSize = 10 }},
		{"Config.MaxConns", func(c *gate.Config) { c.MaxConns = 1 << 29 }},
		{"Config.FDReserve", func(c *gate.Config) { c.FDReserve = 1 }},
		{"Config.TickInterval", func(c *gate.Config) { c.TickInterval = 0 }},
		{"Config.LoginTimeout", func(c *gate.Config) { c.LoginTimeout = time.Millisecond }},
		{"Config.HeartbeatInterval", func(c *gate.Config) { c.HeartbeatInterval = 0; c.IdleTimeout = time.Second }},
		{"Config.IdleTimeout", func(c *gate.Config) { c.IdleTimeout = -1 }},
		{"Config.IdleTimeout", func(c *gate.Config) { c.HeartbeatInterval, c.IdleTimeout = 30*time.Second, 20*time.Second }},
		{"Config.OutQueueFrames", func(c *gate.Config) { c.OutQueueFrames = 0 }},
		{"Config.OutQueueBytes", func(c *gate.Config) { c.OutQueueBytes = 100 }},
		{"Config.MaxOutboundBuffered", func(c *gate.Config) { c.MaxOutboundBuffered = 100 }},
		{"Config.FrameBurst", func(c *gate.Config) { c.FrameBurst = 0 }},
		{"Config.ByteBurst", func(c *gate.Config) { c.ByteBurst = 1000 }},
		{"Config.NewConnsPerIPBurst", func(c *gate.Config) { c.NewConnsPerIP = 1; c.NewConnsPerIPBurst = 0 }},
		{"Config.Lists", func(c *gate.Config) { c.Lists.IPBlacklist = []string{"x"} }},
		{"Config.AppSecrets", func(c *gate.Config) { c.AppSecrets = nil }},
		{"Config.AppSecrets[1]", func(c *gate.Config) { c.AppSecrets = map[uint16][]byte{1: []byte("short")} }},
		{"Config.ListsPollInterval", func(c *gate.Config) { c.ListsFile = "x"; c.ListsPollInterval = 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			cfg := testConfig()
			tt.mutate(&cfg)
			_, err := gate.New(cfg, &fakeHandler{}, nil, testLogger())
			if !errors.Is(err, gate.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("err %v, want ErrInvalidConfig naming %s", err, tt.field)
			}
		})
	}
	// The defaults (with a secret) are valid, and rate limits may be off.
	cfg := gate.DefaultConfig()
	cfg.AppSecrets = map[uint16][]byte{1: secret1}
	cfg.FramesPerSecond, cfg.BytesPerSecond, cfg.NewConnsPerIP = 0, 0, 0
	if _, err := gate.New(cfg, &fakeHandler{}, nil, nil); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if _, err := gate.New(testConfig(), nil, nil, nil); !errors.Is(err, gate.ErrInvalidConfig) {
		t.Fatalf("nil handler: %v", err)
	}
}

func TestAddressInUse(t *testing.T) {
	tg := startGate(t, nil)
	cfg := testConfig()
	cfg.Addr = tg.addr
	g, err := gate.New(cfg, &fakeHandler{}, nil, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	// SO_REUSEPORT would let a second gate share the port silently; the
	// probe without it must refuse.
	if err := g.Start(); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second gate on %s: %v", tg.addr, err)
	}
}
