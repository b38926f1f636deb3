package membership

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Roles are what a node runs. Any subset is valid except none.
type Roles uint8

const (
	// RoleGate: the node holds devices' TCP connections.
	RoleGate Roles = 1 << iota
	// RoleActors: the node hosts identities' actors; placement considers
	// only members with this role.
	RoleActors
	// RoleAPI: the node serves the gRPC API and gate discovery.
	RoleAPI

	// AllRoles is the default: a node that does everything.
	AllRoles = RoleGate | RoleActors | RoleAPI
)

var roleNames = []struct {
	r    Roles
	name string
}{{RoleGate, "gate"}, {RoleActors, "actors"}, {RoleAPI, "api"}}

// ParseRoles parses a comma-separated list of role names ("gate,api").
func ParseRoles(s string) (Roles, error) {
	var r Roles
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		found := false
		for _, n := range roleNames {
			if n.name == part {
				r |= n.r
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown role %q (want gate, actors, api)", part)
		}
	}
	if r == 0 {
		return 0, fmt.Errorf("no role in %q (want any of gate, actors, api)", s)
	}
	return r, nil
}

// Has reports whether r includes every role of o.
func (r Roles) Has(o Roles) bool { return r&o == o }

// String lists the roles, comma-separated, in a fixed order.
func (r Roles) String() string {
	var names []string
	for _, n := range roleNames {
		if r.Has(n.r) {
			names = append(names, n.name)
		}
	}
	return strings.Join(names, ",")
}

// Load is what a member reports about how busy it is.
type Load struct {
	// Conns is the gate's current connections; MaxConns its cap.
	Conns, MaxConns int
	// Actors is the identity actors in memory.
	Actors int
}

// Member is one node instance as the cluster sees it.
type Member struct {
	// ID names this instance of the node: new at every start and every
	// rejoin, never reused.
	ID string
	// Name is the node's name (--name).
	Name string
	// Address is the actor remoting address (host:port) other members
	// send to.
	Address string
	Roles   Roles
	Version string
	// GateID is the gate's instance id (gate role), GateAddr its public
	// address for devices.
	GateID, GateAddr string
	// Apps are the appcodes whose devices the gate accepts (it has their
	// token secrets); empty means every app.
	Apps []uint16
	// APIAddr is the gRPC API (api role); HTTPAddr serves metrics, health
	// and gate discovery.
	APIAddr, HTTPAddr string
	Load              Load
	// StartedAt is when this instance joined.
	StartedAt time.Time
	// Draining: the node is moving everything off before it stops. It
	// stays live (its gate's sessions go on until its devices move), but
	// takes no new devices and hosts no identity (Serving).
	Draining bool
	// GateProbes: the node answers the probes of the way to its gate
	// (cluster/gatebacklog.go). A node of an earlier version does not
	// know the message, and its remoting would drop the connection it
	// came on: it is never sent one.
	GateProbes bool
	// Shards is how many host actors the member runs (cluster.shards);
	// members route an identity to the host its owner's count picks, so
	// that nodes with different settings agree. 0: not published (an
	// earlier version; the same as this node's is assumed).
	Shards int

	// Set by the provider in a View, not by the member itself.

	// Health is the provider's verdict: "passing", "warning" or
	// "critical" (Consul's check status).
	Health string
	// Blocked: the instance was seen not live once and is never taken
	// back.
	Blocked bool
	// Grace: the provider does not say the instance is passing, but it
	// was live before an outage of the provider (or another member
	// vouched for it) and has a grace to refresh: it is taken as live.
	Grace bool
}

// AcceptsApp reports whether the member's gate accepts devices of app.
func (m *Member) AcceptsApp(app uint16) bool {
	return len(m.Apps) == 0 || slices.Contains(m.Apps, app)
}

// Live reports whether the member takes part in the cluster.
func (m *Member) Live() bool { return (m.Health == HealthPassing || m.Grace) && !m.Blocked }

// Health values.
const (
	HealthPassing  = "passing"
	HealthWarning  = "warning"
	HealthCritical = "critical"
)

// sameShape reports whether a and b differ only in load (and health
// bookkeeping), which changes nobody's placement.
func sameShape(a, b *Member) bool {
	return a.ID == b.ID && a.Name == b.Name && a.Address == b.Address && a.Roles == b.Roles &&
		a.Version == b.Version && a.GateID == b.GateID && a.GateAddr == b.GateAddr &&
		a.APIAddr == b.APIAddr && a.HTTPAddr == b.HTTPAddr && slices.Equal(a.Apps, b.Apps) && a.Draining == b.Draining &&
		a.GateProbes == b.GateProbes
}

// Meta keys of a member's registration. Consul allows 64 keys of at most
// 128 bytes with values of at most 512 bytes.
const (
	metaID       = "id"
	metaName     = "name"
	metaRoles    = "roles"
	metaVersion  = "version"
	metaGateID   = "gate_id"
	metaGateAddr = "gate_addr"
	metaAPIAddr  = "api_addr"
	metaHTTPAddr = "http_addr"
	metaConns    = "conns"
	metaMaxConns = "max_conns"
	metaActors   = "actors"
	metaStarted  = "started_ms"
	metaApps     = "apps"
	metaDraining = "draining"
	metaProbes   = "gate_probes"
	metaShards   = "shards"
)

// maxMetaValue is Consul's limit on a meta value.
const maxMetaValue = 512

// encodeMeta turns m into a registration's metadata.
func encodeMeta(m *Member) map[string]string {
	return map[string]string{
		metaID: m.ID, metaName: m.Name, metaRoles: m.Roles.String(), metaVersion: m.Version,
		metaGateID: m.GateID, metaGateAddr: m.GateAddr, metaAPIAddr: m.APIAddr, metaHTTPAddr: m.HTTPAddr,
		metaConns: strconv.Itoa(m.Load.Conns), metaMaxConns: strconv.Itoa(m.Load.MaxConns),
		metaActors: strconv.Itoa(m.Load.Actors), metaStarted: strconv.FormatInt(m.StartedAt.UnixMilli(), 10),
		metaApps: encodeApps(m.Apps), metaDraining: encodeBool(m.Draining), metaProbes: encodeBool(m.GateProbes),
		metaShards: strconv.Itoa(m.Shards),
	}
}

func encodeBool(b bool) string {
	if b {
		return "1"
	}
	return ""
}

func encodeApps(apps []uint16) string {
	parts := make([]string, len(apps))
	for i, a := range apps {
		parts[i] = strconv.Itoa(int(a))
	}
	return strings.Join(parts, ",")
}

func decodeApps(s string) []uint16 {
	var out []uint16
	for _, p := range strings.Split(s, ",") {
		if n, err := strconv.ParseUint(p, 10, 16); err == nil && n > 0 {
			out = append(out, uint16(n))
		}
	}
	return out
}

// decodeMeta reads a registration's metadata and remoting address. A
// registration that is not a Courier member's (another service of the
// same name, a member of an incompatible version) is an error.
func decodeMeta(meta map[string]string, address string) (Member, error) {
	m := Member{ID: meta[metaID], Name: meta[metaName], Address: address, Version: meta[metaVersion],
		GateID: meta[metaGateID], GateAddr: meta[metaGateAddr], APIAddr: meta[metaAPIAddr], HTTPAddr: meta[metaHTTPAddr]}
	if m.ID == "" || address == "" {
		return m, fmt.Errorf("registration without a member id or address (meta %v)", meta)
	}
	var err error
	if m.Roles, err = ParseRoles(meta[metaRoles]); err != nil {
		return m, fmt.Errorf("member %s: %v", m.ID, err)
	}
	num := func(k string) int {
		n, _ := strconv.Atoi(meta[k])
		return n
	}
	m.Load = Load{Conns: num(metaConns), MaxConns: num(metaMaxConns), Actors: num(metaActors)}
	m.Apps = decodeApps(meta[metaApps])
	m.Draining = meta[metaDraining] == "1"
	m.GateProbes = meta[metaProbes] == "1"
	m.Shards = num(metaShards)
	if ms, err := strconv.ParseInt(meta[metaStarted], 10, 64); err == nil {
		m.StartedAt = time.UnixMilli(ms)
	}
	return m, nil
}

// validate checks what a node is about to publish about itself.
func (m *Member) validate() error {
	if m.Name == "" {
		return fmt.Errorf("name: must not be empty")
	}
	if m.Address == "" {
		return fmt.Errorf("cluster.advertise: the remoting address is unknown")
	}
	if m.Roles == 0 || m.Roles&^AllRoles != 0 {
		return fmt.Errorf("roles: %d is not a set of gate, actors, api", m.Roles)
	}
	if m.Roles.Has(RoleGate) && (m.GateID == "" || m.GateAddr == "") {
		return fmt.Errorf("a member with the gate role needs its gate id and public address")
	}
	if m.Roles.Has(RoleAPI) && m.APIAddr == "" {
		return fmt.Errorf("a member with the api role needs its API address")
	}
	for k, v := range encodeMeta(m) {
		if len(v) > maxMetaValue {
			return fmt.Errorf("%s: %d bytes, at most %d", k, len(v), maxMetaValue)
		}
	}
	return nil
}

// View is the cluster as one node sees it at one moment. A View is
// immutable.
type View struct {
	// Self is this node's current instance (with the health its
	// registration has in this view).
	Self Member
	// Members are every registered instance, live or not, sorted by ID.
	Members []Member
	// Seq numbers the views a Membership published (1, 2, ...).
	Seq uint64
}

// Live returns the live members with all of roles, sorted by ID.
func (v *View) Live(roles Roles) []Member {
	var out []Member
	for _, m := range v.Members {
		if m.Live() && m.Roles.Has(roles) {
			out = append(out, m)
		}
	}
	return out
}

// Serving returns the live members with all of roles that are not
// draining: those that take new devices (gate) and host identities
// (actors). Sorted by ID.
func (v *View) Serving(roles Roles) []Member {
	var out []Member
	for _, m := range v.Live(roles) {
		if !m.Draining {
			out = append(out, m)
		}
	}
	return out
}

// Find returns the member with id, or nil.
func (v *View) Find(id string) *Member {
	for i := range v.Members {
		if v.Members[i].ID == id {
			return &v.Members[i]
		}
	}
	return nil
}

// SameShape reports whether v and o have the same live members with the
// same roles and addresses: only load or the non-live members differ.
// Placement and gate liveness need recomputing only when it is false.
func (v *View) SameShape(o *View) bool {
	if o == nil {
		return false
	}
	a, b := v.Live(0), o.Live(0)
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !sameShape(&a[i], &b[i]) {
			return false
		}
	}
	return true
}
