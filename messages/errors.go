package messages

import (
	"errors"

	"github.com/courier-im/courier/messages/devicepb"
)

// Errors of frame decoding. Each maps to the wire answer the protocol names
// (see WireCode and Fatal).
var (
	// ErrShortHeader: fewer than HeaderSize bytes are available. Not a
	// protocol violation: read more.
	ErrShortHeader = errors.New("messages: short header")
	// ErrBadMagic: the first two bytes are not 0xC0DE. The connection is
	// closed without an answer.
	ErrBadMagic = errors.New("messages: bad magic")
	// ErrUnsupportedVersion: the version byte is not 1.
	ErrUnsupportedVersion = errors.New("messages: unsupported version")
	// ErrFrameTooLarge: the length is above the limit. The body is not read.
	ErrFrameTooLarge = errors.New("messages: frame too large")
	// ErrBadFlags: a reserved flag bit is set.
	ErrBadFlags = errors.New("messages: bad flags")
	// ErrTruncated: the stream ended inside a header or a body.
	ErrTruncated = errors.New("messages: truncated frame")
	// ErrDecompress: a compressed body does not decompress, or decompresses
	// to more than the limit.
	ErrDecompress = errors.New("messages: body does not decompress within the limit")
	// ErrBodyNotEmpty: a command whose body must be empty has one.
	ErrBodyNotEmpty = errors.New("messages: body must be empty")
)

// WireCode returns the ERROR code the protocol gives a decoding error, and
// OK for errors that get no ERROR frame (bad magic, short input).
func WireCode(err error) devicepb.Code {
	switch {
	case errors.Is(err, ErrUnsupportedVersion):
		return devicepb.Code_UNSUPPORTED_VERSION
	case errors.Is(err, ErrFrameTooLarge):
		return devicepb.Code_FRAME_TOO_LARGE
	case errors.Is(err, ErrBadFlags):
		return devicepb.Code_BAD_FLAGS
	case errors.Is(err, ErrDecompress), errors.Is(err, ErrBodyNotEmpty):
		return devicepb.Code_BAD_BODY
	}
	return devicepb.Code_OK
}

// Fatal reports whether a decoding error ends the connection: bad magic,
// unsupported version, oversized length and truncation do; bad flags,
// bodies that do not decompress or must be empty, and a short header
// (read more) do not.
func Fatal(err error) bool {
	return err != nil && !errors.Is(err, ErrBadFlags) && !errors.Is(err, ErrDecompress) &&
		!errors.Is(err, ErrBodyNotEmpty) && !errors.Is(err, ErrShortHeader)
}
