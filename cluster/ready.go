package cluster

// Joined reports whether this member is in the cluster's topology as a
// host of identities (the node's /readyz asks). It turns false when the
// member leaves the topology, as it does when it shuts down.
func (s *System) Joined() bool {
	return s.placement.Load().find(s.address) != nil
}
