package client

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	for _, r := range []float64{0, 0.5, 0.999999} {
		b := newBackoff(100*time.Millisecond, 2*time.Second)
		b.rand = func() float64 { return r }
		bound := 100 * time.Millisecond
		for i := range 12 {
			d := b.next()
			if d < 0 || d >= bound || d > 2*time.Second {
				t.Fatalf("rand %v attempt %d: wait %v outside [0, %v)", r, i, d, bound)
			}
			if want := time.Duration(r * float64(bound)); d != want {
				t.Fatalf("rand %v attempt %d: wait %v, want %v", r, i, d, want)
			}
			bound = min(2*bound, 2*time.Second)
			if b.bound() != bound {
				t.Fatalf("attempt %d: bound %v, want %v", i, b.bound(), bound)
			}
		}
		if b.bound() != 2*time.Second {
			t.Fatalf("bound %v did not reach the maximum", b.bound())
		}
		if d := b.soon(2 * time.Second); d != time.Duration(r*float64(2*time.Second)) || b.bound() != 2*time.Second {
			t.Fatalf("soon: %v, bound %v", d, b.bound())
		}
		b.reset()
		if b.bound() != 100*time.Millisecond {
			t.Fatalf("reset: bound %v", b.bound())
		}
	}
	// The real random source stays within the bound too.
	b := newBackoff(time.Millisecond, 8*time.Millisecond)
	for i := range 1000 {
		if d := b.next(); d < 0 || d >= 8*time.Millisecond {
			t.Fatalf("attempt %d: %v", i, d)
		}
	}
}

func TestSeenSet(t *testing.T) {
	s := newSeenSet(3)
	for _, id := range []string{"a", "b", "c"} {
		if !s.add(id) {
			t.Fatalf("%s known before it was added", id)
		}
	}
	if s.add("a") {
		t.Fatal("duplicate a accepted")
	}
	s.acked("b")
	if known, acked := s.lookup("b"); !known || !acked {
		t.Fatalf("b: known %v acked %v", known, acked)
	}
	if !s.add("d") { // forgets a, the oldest
		t.Fatal("d refused")
	}
	if known, _ := s.lookup("a"); known || s.len() != 3 {
		t.Fatalf("a still known (len %d)", s.len())
	}
	if s.add("b") || s.add("c") || s.add("d") {
		t.Fatal("recent ids forgotten")
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Addr: "127.0.0.1:1", AppCode: 1, UID: "u", Token: "t"}
	tests := []struct {
		name string
		mut  func(*Config)
	}{
		{"no appcode", func(c *Config) { c.AppCode = 0 }},
		{"no uid", func(c *Config) { c.UID = "" }},
		{"long uid", func(c *Config) { c.UID = string(make([]byte, 129)) }},
		{"no token", func(c *Config) { c.Token = "" }},
		{"no gate", func(c *Config) { c.Addr = "" }},
		{"bad discovery", func(c *Config) { c.Discovery = "gates.example.com" }},
		{"backoff", func(c *Config) { c.BackoffInitial, c.BackoffMax = 2*time.Second, time.Second }},
		{"byte burst under a frame", func(c *Config) { c.ByteBurst = int(DefaultConfig().MaxFrameSize) }},
		{"long token", func(c *Config) { c.Token = string(make([]byte, MaxTokenLen+1)) }},
		{"negative backoff", func(c *Config) { c.BackoffInitial, c.BackoffMax = -time.Second, -time.Second }},
		{"negative resend", func(c *Config) { c.ResendAfter = -time.Second }},
		{"negative jitter", func(c *Config) { c.ShutdownJitter = -time.Second }},
	}
	c := ok
	c.fill()
	if err := c.validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	// A frame limit raised above the default byte burst raises the burst's
	// default with it.
	c = ok
	c.MaxFrameSize = 1 << 20
	c.fill()
	if err := c.validate(); err != nil || c.ByteBurst < 1<<20+18 {
		t.Fatalf("MaxFrameSize of 1 MiB: burst %d, %v", c.ByteBurst, err)
	}
	for _, tt := range tests {
		c := ok
		tt.mut(&c)
		c.fill()
		if err := c.validate(); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}

// TestConfigRefusesLoginFieldsNotUTF8: LOGIN's fields are protobuf
// strings, which do not encode unless valid UTF-8: every login would fail
// (and the client reconnect in a loop). Dial refuses such a field at
// once, naming it.
func TestConfigRefusesLoginFieldsNotUTF8(t *testing.T) {
	for _, tc := range []struct {
		field string
		mut   func(*Config)
	}{
		{"UID", func(c *Config) { c.UID = "fa\xffy" }},
		{"DeviceID", func(c *Config) { c.DeviceID = "dev-\xfe" }},
		{"AppVersion", func(c *Config) { c.AppVersion = "1.0\xc3" }},
		{"Token", func(c *Config) { c.Token = "t\xff" }},
	} {
		c := Config{Addr: "127.0.0.1:1", AppCode: 1, UID: "u", Token: "t"}
		tc.mut(&c)
		c.fill()
		err := c.validate()
		if !errors.Is(err, ErrNotUTF8) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s not UTF-8: %v, want ErrNotUTF8 naming it", tc.field, err)
		}
	}
}
