package cluster

import "errors"

var (
	// ErrNoReply: a request's reply did not come before its deadline. The
	// request may or may not have been handled.
	ErrNoReply = errors.New("cluster: no reply")
	// ErrNoGate: the connection's gate is not on this node (or is an
	// earlier run of it).
	ErrNoGate = errors.New("cluster: no such gate on this node")
	// ErrConnGone: the gate no longer has the connection.
	ErrConnGone = errors.New("cluster: connection gone")
)
