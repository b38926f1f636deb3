package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Lists implements Store.
func (s *Pebble) Lists(context.Context) (uint64, []byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return 0, nil, ErrClosed
	}
	v, closer, err := s.db.Get([]byte{prefixLists})
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("%w: lists: %v", ErrUnavailable, err)
	}
	defer closer.Close()
	if len(v) < 8 {
		return 0, nil, fmt.Errorf("store: corrupt lists record (%d bytes)", len(v))
	}
	return binary.BigEndian.Uint64(v), bytes.Clone(v[8:]), nil
}

// SetLists implements Store. The lists record is written with a sync of
// its own (it does not go through the commit lanes: it belongs to no
// identity).
func (s *Pebble) SetLists(ctx context.Context, prev uint64, doc []byte) (uint64, error) {
	s.listsMu.Lock()
	defer s.listsMu.Unlock()
	cur, _, err := s.Lists(ctx)
	if err != nil {
		return 0, err
	}
	if cur != prev {
		return 0, fmt.Errorf("%w: lists are at version %d, not %d", ErrConflict, cur, prev)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return 0, ErrClosed
	}
	v := binary.BigEndian.AppendUint64(nil, cur+1)
	if err := s.db.Set([]byte{prefixLists}, append(v, doc...), pebble.Sync); err != nil {
		return 0, fmt.Errorf("%w: lists: %v", ErrUnavailable, err)
	}
	return cur + 1, nil
}
