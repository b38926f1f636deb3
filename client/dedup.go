package client

// seenSet remembers the ids of the last n messages received, to drop
// duplicates (redeliveries after a lost ack, pushes that a PULL already
// returned) and to tell a redelivery the app must see again (ManualAck,
// not acknowledged) from one it must not. The oldest id is forgotten
// first. It belongs to the client's goroutine.
type seenSet struct {
	max   int
	state map[string]seenEntry
	order []string // ring of ids, oldest at head
	head  int
}

// seenEntry is what the client knows of a message id.
type seenEntry struct {
	// acked: the app acknowledged it (or, by default, it was
	// acknowledged for the app): every later delivery is only acked again.
	acked bool
	// handed: Recv or Pull gave it to the app, not yet acknowledged;
	// false while it waits in the queue.
	handed bool
	// pushed is the session (loop.gen) of the last push of it the client
	// took in, 0: none (a message Pull returned). A push on the same
	// session again is the server's redelivery (deliver).
	pushed uint64
}

func newSeenSet(max int) *seenSet {
	return &seenSet{max: max, state: make(map[string]seenEntry, min(max, 1024))}
}

// add records id as received (not yet acknowledged). It reports false if
// id was already known.
func (s *seenSet) add(id string) bool {
	if _, ok := s.state[id]; ok {
		return false
	}
	if s.max <= 0 {
		return true
	}
	if len(s.order) < s.max {
		s.order = append(s.order, id)
	} else {
		delete(s.state, s.order[s.head])
		s.order[s.head] = id
		s.head = (s.head + 1) % s.max
	}
	s.state[id] = seenEntry{}
	return true
}

// lookup reports whether id is known and whether it was acknowledged.
func (s *seenSet) lookup(id string) (known, acked bool) {
	e, known := s.state[id]
	return known, e.acked
}

// get returns what is known of id.
func (s *seenSet) get(id string) (seenEntry, bool) {
	e, ok := s.state[id]
	return e, ok
}

// update changes a known id's entry with f (an unknown id is left so).
func (s *seenSet) update(id string, f func(*seenEntry)) {
	if e, ok := s.state[id]; ok {
		f(&e)
		s.state[id] = e
	}
}

// acked marks a known id as acknowledged.
func (s *seenSet) acked(id string) {
	s.update(id, func(e *seenEntry) { e.acked, e.handed = true, false })
}

func (s *seenSet) len() int { return len(s.state) }
