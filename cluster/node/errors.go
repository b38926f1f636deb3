package node

import (
	"errors"
	"fmt"
	"syscall"
)

// Errors of starting a node. Test with errors.Is.
var (
	// ErrConfig: a setting is wrong (out of range, malformed, a file it
	// names cannot be read); the message names the setting.
	ErrConfig = errors.New("node: invalid configuration")
	// ErrDataDirInUse: another process (another node) holds the data
	// directory's lock.
	ErrDataDirInUse = errors.New("node: data directory in use by another process")
)

// configError marks err as a configuration mistake (ErrConfig) without
// changing its message.
type configError struct{ err error }

func (e configError) Error() string        { return e.err.Error() }
func (e configError) Unwrap() error        { return e.err }
func (e configError) Is(target error) bool { return target == ErrConfig }

func asConfigError(err error) error {
	if err == nil {
		return nil
	}
	return configError{err}
}

// storeOpenError says plainly when the data directory is locked by
// another process (Pebble's lock answers EAGAIN, "resource temporarily
// unavailable").
func storeOpenError(dir string, err error) error {
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK) {
		return fmt.Errorf("%w: %s is locked (is another courier running on it?): %v", ErrDataDirInUse, dir, err)
	}
	return err
}
