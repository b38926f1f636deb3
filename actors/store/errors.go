package store

import "errors"

var (
	// ErrClosed is returned by a store that has been closed.
	ErrClosed = errors.New("store: closed")
	// ErrBadIdentity is returned for an empty or too long uid.
	ErrBadIdentity = errors.New("store: bad identity")
	// ErrUnavailable wraps failures of the underlying storage: nothing was
	// written, the caller may retry.
	ErrUnavailable = errors.New("store: unavailable")
	// ErrOverloaded is returned when the commit queue stays full for longer
	// than the submit timeout.
	ErrOverloaded = errors.New("store: commit queue full")
	// ErrFenced is returned for a write whose owner epoch is no longer the
	// identity's: another activation claimed the identity since. Nothing
	// was written; the writer must stop acting for the identity.
	ErrFenced = errors.New("store: identity claimed by another owner")
	// ErrConflict is returned by SetLists when the stored version is no
	// longer the one the change was based on: read again and retry.
	ErrConflict = errors.New("store: version conflict")
	// ErrSchema is returned when the stored data is of a newer format (or
	// schema version) than this binary knows: it must not touch it.
	ErrSchema = errors.New("store: data of a newer version")
)
