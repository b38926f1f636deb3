package gate

import "errors"

// Errors returned by the gate. Wrapped errors keep these as their cause:
// test with errors.Is.
var (
	// ErrInvalidConfig: a Config field is out of range; the message names
	// the field.
	ErrInvalidConfig = errors.New("gate: invalid config")
	// ErrStarted: Start or Run was called on a gate that was already
	// started.
	ErrStarted = errors.New("gate: already started")
	// ErrClosed: the gate is shutting down or has stopped.
	ErrClosed = errors.New("gate: closed")
	// ErrEngineStopped: the gnet engine stopped without Shutdown being
	// called (for example accept failing). The gate is dead; the node
	// must treat this as fatal.
	ErrEngineStopped = errors.New("gate: event engine stopped unexpectedly")

	// ErrUnknownConn: Deliver named a connection that this gate does not
	// hold (never did, already closed, or closing).
	ErrUnknownConn = errors.New("gate: unknown connection")
	// ErrStaleEpoch: Deliver carried an epoch older than the connection's
	// session; it was dropped.
	ErrStaleEpoch = errors.New("gate: stale epoch")
	// ErrNoLoginPending: Deliver carried a LoginOutcome for a connection
	// that has no login in progress; nothing was done.
	ErrNoLoginPending = errors.New("gate: no login pending on the connection")
	// ErrSlowClient: the connection's outbound queue was full; the frames
	// were dropped and the client is being disconnected.
	ErrSlowClient = errors.New("gate: slow client disconnected")
	// ErrBadFrame: Deliver carried a frame the gate may not send (a command
	// that is not a server command).
	ErrBadFrame = errors.New("gate: bad outgoing frame")

	// ErrAuthFailed: a token is malformed, wrongly signed or issued for
	// another (appcode, uid). Authenticators return it (or wrap it).
	ErrAuthFailed = errors.New("gate: authentication failed")
	// ErrTokenExpired: a token's expiry has passed.
	ErrTokenExpired = errors.New("gate: token expired")
	// ErrUnknownApp: no credentials are configured for the appcode.
	ErrUnknownApp = errors.New("gate: unknown app")

	// ErrBadLists: a lists update (or the lists file) does not parse.
	ErrBadLists = errors.New("gate: bad lists")
)
