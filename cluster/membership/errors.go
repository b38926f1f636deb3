package membership

import "errors"

var (
	// ErrNotJoined is returned by calls that need Join first.
	ErrNotJoined = errors.New("membership: not joined")
	// ErrJoinTimeout: the node registered but did not see itself live in
	// the cluster in time.
	ErrJoinTimeout = errors.New("membership: did not see this node live in the cluster")
	// ErrClosed is returned after Leave.
	ErrClosed = errors.New("membership: closed")
)
