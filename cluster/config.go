package cluster

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/courier-im/courier/cluster/membership"
	"github.com/courier-im/courier/cluster/mtls"
)

// Membership providers (membership.ProviderMemory and ProviderConsul).
const (
	// ProviderMemory is the in-process membership of a single node (and of
	// tests). It never detects a dead member.
	ProviderMemory = membership.ProviderMemory
	// ProviderConsul registers the node in a Consul agent.
	ProviderConsul = membership.ProviderConsul
)

// Config configures a node's cluster membership and its actor routing.
type Config struct {
	// Name of the cluster; nodes join the cluster of the same name
	// (default "courier").
	Name string
	// Bind is the host:port of the node's actor remoting endpoint (default
	// "127.0.0.1:0", a free port). Without TLS it must be a loopback
	// address: a plaintext endpoint does not authenticate its peers
	// (checkRemotingExposure).
	Bind string
	// Advertise is the host:port other nodes use to reach this one
	// (default: the bound address). Required when Bind is 0.0.0.0.
	Advertise string
	// Provider is the membership provider: "memory" (default, one node) or
	// "consul".
	Provider string
	// Consul is the Consul agent's HTTP address (default
	// "127.0.0.1:8500"); ConsulToken its ACL token, if any.
	Consul      string
	ConsulToken string
	// TTL is how long a member stays live without refreshing its Consul
	// check (default 3 s); DeregisterAfter removes a member critical this
	// long (default 1 m); LoadInterval is the most often the node
	// publishes its load (default 1 s); JoinTimeout bounds joining
	// (default 30 s).
	TTL, DeregisterAfter, LoadInterval, JoinTimeout time.Duration
	// TLS secures remoting between members with mutual TLS. Without it
	// remoting is plaintext and may only bind a loopback address.
	TLS mtls.Files
	// Shards is the number of host actors per node among which identities
	// are spread (default 8). Each node publishes its own; the others
	// route by it.
	Shards int
	// RequestTimeout bounds a request to an identity's actor when the
	// caller's context has no earlier deadline (default 5 s).
	RequestTimeout time.Duration
	// MaxHops is how often an envelope may be forwarded while nodes
	// disagree about ownership during a topology change (default 3);
	// beyond, a request fails with a retryable error.
	MaxHops int
}

// DefaultConfig returns the defaults documented on Config's fields.
func DefaultConfig() Config {
	m := membership.DefaultConfig()
	return Config{
		Name:            "courier",
		Bind:            "127.0.0.1:0",
		Provider:        ProviderMemory,
		Consul:          m.Consul,
		TTL:             m.TTL,
		DeregisterAfter: m.DeregisterAfter,
		LoadInterval:    m.LoadInterval,
		JoinTimeout:     m.JoinTimeout,
		Shards:          8,
		RequestTimeout:  5 * time.Second,
		MaxHops:         3,
	}
}

// membership returns the membership provider's part of the settings.
func (c *Config) membership() membership.Config {
	return membership.Config{Provider: c.Provider, Cluster: c.Name, Consul: c.Consul, ConsulToken: c.ConsulToken,
		TTL: c.TTL, DeregisterAfter: c.DeregisterAfter, LoadInterval: c.LoadInterval, JoinTimeout: c.JoinTimeout}
}

// Validate reports the first setting that is wrong, by name. Start calls
// it; a node calls it first, to tell a mistake in its settings from a
// failure to join.
func (c *Config) Validate() error {
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
	if err := c.TLS.Validate(); err != nil {
		return err
	}
	// Exposure first: a bind other machines reach, without TLS, is the
	// mistake to name, whatever else is missing.
	if err := checkRemotingExposure(c); err != nil {
		return err
	}
	if (host == "" || host == "0.0.0.0" || host == "::") && c.Advertise == "" {
		return fmt.Errorf("cluster.advertise: required when bind is %q", c.Bind)
	}
	if c.Advertise != "" {
		if _, p, err := net.SplitHostPort(c.Advertise); err != nil || p == "0" {
			return fmt.Errorf("cluster.advertise %q: want host:port with the port other nodes reach", c.Advertise)
		}
	}
	m := c.membership()
	if err := m.Validate(); err != nil {
		return err
	}
	if c.Shards < 1 || c.Shards > maxShards {
		return fmt.Errorf("cluster.shards %d: must be in [1, %d]", c.Shards, maxShards)
	}
	if c.RequestTimeout <= 0 {
		return fmt.Errorf("cluster.request-timeout %v: must be positive", c.RequestTimeout)
	}
	if c.MaxHops < 1 {
		return fmt.Errorf("cluster.max-hops %d: must be at least 1", c.MaxHops)
	}
	return nil
}

// checkRemotingExposure refuses a plaintext remoting endpoint other
// machines could reach. The remoting port accepts actor envelopes
// (logins, pushes, kicks: everything the API's keys and the devices'
// tokens guard), so without mutual TLS between members (cluster.tls-*) it
// may only listen on a loopback address.
func checkRemotingExposure(c *Config) error {
	if c.TLS.Enabled() {
		return nil
	}
	host, _, _ := net.SplitHostPort(c.Bind)
	if host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("cluster.bind %q: must be a loopback address (127.0.0.1, ::1 or localhost) without mutual TLS: "+
		"the actor remoting port accepts envelopes from whoever connects, so set cluster.tls-ca, cluster.tls-cert "+
		"and cluster.tls-key before other machines may reach it (docs/operating.md)", c.Bind)
}

// maxShards bounds cluster.shards (and what a member's registration may
// say of its own).
const maxShards = 256
