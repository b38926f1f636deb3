package cluster

// Joined reports whether this node is a live member of the cluster (the
// node's /readyz asks): it joined, its current instance is live in its own
// view, and it has not begun to leave.
func (s *System) Joined() bool {
	if s.left.Load() {
		return false
	}
	v := s.view.Load()
	return v.Self.ID != "" && v.Self.Live()
}
