package gate

// Hooks for the external tests (package gate_test).

// SetCompressing has fn called before each body g compresses.
func SetCompressing(g *Gate, fn func()) { g.compressing = fn }

// ConnLocked reports whether connection id's lock is held now.
func ConnLocked(g *Gate, id ConnID) bool {
	s := g.reg.get(id)
	if s == nil || !s.mu.TryLock() {
		return s != nil
	}
	s.mu.Unlock()
	return false
}

// HeldConns counts the connections with frames held back by the rate
// limits and a timer set to read them again.
func HeldConns(g *Gate) int {
	n := 0
	g.eachLoop(func(l *loop) {
		l.heldMu.Lock()
		n += len(l.held)
		l.heldMu.Unlock()
	})
	return n
}
