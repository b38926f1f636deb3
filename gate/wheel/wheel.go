package wheel

// Node links a value into a Wheel. Embed it in the value and set Value to
// the value itself; the zero Node is not linked.
type Node[T any] struct {
	prev, next *Node[T]
	slot       int32 // slot index + 1; 0 when not linked
	Value      *T
}

// Linked reports whether n is scheduled.
func (n *Node[T]) Linked() bool { return n.slot != 0 }

// Wheel holds nodes in len(slots) buckets, one per tick.
type Wheel[T any] struct {
	slots []*Node[T]
	now   int64 // last tick processed by Advance
	n     int
}

// New returns a wheel of size slots (at least 2) whose current tick is now.
func New[T any](size int, now int64) *Wheel[T] {
	if size < 2 {
		size = 2
	}
	return &Wheel[T]{slots: make([]*Node[T], size), now: now}
}

// Len returns how many nodes are scheduled.
func (w *Wheel[T]) Len() int { return w.n }

// Now returns the last tick Advance processed.
func (w *Wheel[T]) Now() int64 { return w.now }

// Schedule (re)schedules n to fire at tick at. A tick at or before the
// wheel's current tick fires at the next Advance; one beyond the span
// fires early, at the end of the span.
func (w *Wheel[T]) Schedule(n *Node[T], at int64) {
	w.Remove(n)
	span := int64(len(w.slots))
	switch {
	case at <= w.now:
		at = w.now + 1
	case at-w.now >= span:
		at = w.now + span - 1
	}
	i := int32(at % span)
	head := w.slots[i]
	n.prev, n.next, n.slot = nil, head, i+1
	if head != nil {
		head.prev = n
	}
	w.slots[i] = n
	w.n++
}

// Remove unlinks n if it is scheduled.
func (w *Wheel[T]) Remove(n *Node[T]) {
	if n.slot == 0 {
		return
	}
	if n.prev != nil {
		n.prev.next = n.next
	} else {
		w.slots[n.slot-1] = n.next
	}
	if n.next != nil {
		n.next.prev = n.prev
	}
	n.prev, n.next, n.slot = nil, nil, 0
	w.n--
}

// Advance moves the wheel to tick now and calls fire for every node of
// every slot passed, unlinked first. fire may schedule the node again
// (or any other node, or remove nodes). Ticks missed by more than the span
// visit each slot once.
func (w *Wheel[T]) Advance(now int64, fire func(*T)) {
	if now <= w.now {
		return
	}
	span := int64(len(w.slots))
	t := w.now + 1
	if now-w.now > span {
		t = now - span + 1
	}
	for ; t <= now; t++ {
		w.now = t
		i := t % span
		for n := w.slots[i]; n != nil; n = w.slots[i] {
			w.Remove(n)
			fire(n.Value)
		}
	}
}

// Each calls f for every scheduled node's value. f must not schedule or
// remove nodes; collect them first.
func (w *Wheel[T]) Each(f func(*T)) {
	for _, n := range w.slots {
		for ; n != nil; n = n.next {
			f(n.Value)
		}
	}
}
