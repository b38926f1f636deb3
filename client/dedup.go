package client

// seenSet remembers the ids of the last n messages received, to drop
// duplicates (redeliveries after a lost ack, pushes that a PULL already
// returned). The oldest id is forgotten first. It belongs to the client's
// goroutine.
type seenSet struct {
	max   int
	state map[string]bool // msg id -> acknowledged
	order []string        // ring of ids, oldest at head
	head  int
}

func newSeenSet(max int) *seenSet {
	return &seenSet{max: max, state: make(map[string]bool, min(max, 1024))}
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
	s.state[id] = false
	return true
}

// lookup reports whether id is known and whether it was acknowledged.
func (s *seenSet) lookup(id string) (known, acked bool) {
	acked, known = s.state[id]
	return known, acked
}

// acked marks a known id as acknowledged.
func (s *seenSet) acked(id string) {
	if _, ok := s.state[id]; ok {
		s.state[id] = true
	}
}

func (s *seenSet) len() int { return len(s.state) }
