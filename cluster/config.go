package cluster

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// ProviderMemory is the in-process membership of a single node (and of
// tests). It never detects a dead member.
const ProviderMemory = "memory"

// Config configures a node's cluster membership and its actor routing.
type Config struct {
	// Name of the cluster; nodes join the cluster of the same name
	// (default "courier").
	Name string
	// Bind is the host:port of the node's actor remoting endpoint (default
	// "127.0.0.1:0", a free port). It must be a loopback address: the
	// endpoint does not authenticate its peers (checkRemotingExposure).
	Bind string
	// Advertise is the host:port other nodes use to reach this one
	// (default: the bound address). Required when Bind is 0.0.0.0.
	Advertise string
	// Provider is the membership provider: "memory" (default, one node).
	Provider string
	// Shards is the number of host actors per node among which identities
	// are spread (default 8). All nodes of a cluster must use the same.
	Shards int
	// RequestTimeout bounds a request to an identity's actor when the
	// caller's context has no earlier deadline (default 5 s).
	RequestTimeout time.Duration
	// MaxHops is how often an envelope may be forwarded while nodes
	// disagree about ownership during a topology change (default 3).
	MaxHops int
}

// DefaultConfig returns the defaults documented on Config's fields.
func DefaultConfig() Config {
	return Config{
		Name:           "courier",
		Bind:           "127.0.0.1:0",
		Provider:       ProviderMemory,
		Shards:         8,
		RequestTimeout: 5 * time.Second,
		MaxHops:        3,
	}
}

func (c *Config) validate() error {
	if c.Name == "" {
		return fmt.Errorf("cluster.name: must not be empty")
	}
	host, port, err := net.SplitHostPort(c.Bind)
	if err != nil {
		return fmt.Errorf("cluster.bind %q: %v", c.Bind, err)
	}
	if _, err := strconv.Atoi(port); err != nil {
		return fmt.Errorf("cluster.bind %q: bad port", c.Bind)
	}
	if err := checkRemotingExposure(c); err != nil {
		return err
	}
	if (host == "" || host == "0.0.0.0" || host == "::") && c.Advertise == "" {
		return fmt.Errorf("cluster.advertise: required when bind is %q", c.Bind)
	}
	if c.Provider != ProviderMemory {
		return fmt.Errorf("cluster.provider %q: must be %q", c.Provider, ProviderMemory)
	}
	if c.Shards < 1 || c.Shards > 256 {
		return fmt.Errorf("cluster.shards %d: must be in [1, 256]", c.Shards)
	}
	if c.RequestTimeout <= 0 {
		return fmt.Errorf("cluster.request-timeout %v: must be positive", c.RequestTimeout)
	}
	if c.MaxHops < 1 {
		return fmt.Errorf("cluster.max-hops %d: must be at least 1", c.MaxHops)
	}
	return nil
}

// checkRemotingExposure refuses a remoting endpoint other machines could
// reach. The remoting port accepts any envelope from whoever connects
// (logins, pushes, kicks: everything the API's keys and the devices'
// tokens guard), so until members authenticate each other with mutual
// TLS it may only listen on a loopback address. This is the one place
// to lift the rule once mutual TLS is configured.
func checkRemotingExposure(c *Config) error {
	host, _, _ := net.SplitHostPort(c.Bind)
	if host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("cluster.bind %q: must be a loopback address (127.0.0.1, ::1 or localhost): "+
		"the actor remoting port accepts unauthenticated envelopes, so it must not be reachable from "+
		"other machines until members use mutual TLS (docs/operating.md)", c.Bind)
}
