package messages

import (
	"encoding/binary"

	"google.golang.org/protobuf/proto"
)

// Wire constants of protocol version 1.
const (
	// Magic opens every frame.
	Magic uint16 = 0xC0DE
	// Version is the only protocol version this package speaks.
	Version uint8 = 1
	// HeaderSize is the fixed size of a frame header in bytes.
	HeaderSize = 18
	// DefaultMaxBody is the default limit on a frame's body length (64 KiB).
	DefaultMaxBody = 64 << 10
)

// Flag bits of the header's flags byte.
const (
	// FlagZstd marks a zstd-compressed body.
	FlagZstd uint8 = 1 << 0
	// flagsReserved are bits 1-7, which must be zero.
	flagsReserved uint8 = 0xFE
)

// Header is a decoded frame header. It is a plain value: decoding one
// allocates nothing.
type Header struct {
	Version uint8
	Cmd     Cmd
	Flags   uint8
	AppCode uint16
	MsgType uint16
	Seq     uint32
	// Length is the body's length on the wire.
	Length uint32
}

// Compressed reports whether the body is zstd-compressed.
func (h Header) Compressed() bool { return h.Flags&FlagZstd != 0 }

// ParseHeader decodes the header at the start of b and checks it in the
// protocol's order: magic, version, length against maxBody, flags. It returns
// the first failure as one of ErrShortHeader, ErrBadMagic,
// ErrUnsupportedVersion, ErrFrameTooLarge or ErrBadFlags. Past the magic
// check the returned header is filled in even on error, so the caller can
// echo its seq. ErrBadFlags leaves the frame well delimited: the caller may
// skip its body and go on.
func ParseHeader(b []byte, maxBody uint32) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, ErrShortHeader
	}
	if binary.BigEndian.Uint16(b[0:2]) != Magic {
		return Header{}, ErrBadMagic
	}
	h := Header{
		Version: b[2],
		Cmd:     Cmd(b[3]),
		Flags:   b[4],
		AppCode: binary.BigEndian.Uint16(b[6:8]),
		MsgType: binary.BigEndian.Uint16(b[8:10]),
		Seq:     binary.BigEndian.Uint32(b[10:14]),
		Length:  binary.BigEndian.Uint32(b[14:18]),
	}
	switch {
	case h.Version != Version:
		return h, ErrUnsupportedVersion
	case h.Length > maxBody:
		return h, ErrFrameTooLarge
	case h.Flags&flagsReserved != 0:
		return h, ErrBadFlags
	}
	return h, nil
}

// PutHeader writes h into b[:HeaderSize] with the magic and h.Version (or
// Version when h.Version is zero). b must be at least HeaderSize long.
func PutHeader(b []byte, h Header) {
	_ = b[HeaderSize-1]
	v := h.Version
	if v == 0 {
		v = Version
	}
	binary.BigEndian.PutUint16(b[0:2], Magic)
	b[2] = v
	b[3] = byte(h.Cmd)
	b[4] = h.Flags
	b[5] = 0
	binary.BigEndian.PutUint16(b[6:8], h.AppCode)
	binary.BigEndian.PutUint16(b[8:10], h.MsgType)
	binary.BigEndian.PutUint32(b[10:14], h.Seq)
	binary.BigEndian.PutUint32(b[14:18], h.Length)
}

// AppendHeader appends the encoding of h to dst.
func AppendHeader(dst []byte, h Header) []byte {
	n := len(dst)
	dst = grow(dst, HeaderSize)
	PutHeader(dst[n:n+HeaderSize], h)
	return dst
}

// AppendFrame appends a whole frame to dst: h with its Length set to the
// size of body, then body as-is.
func AppendFrame(dst []byte, h Header, body []byte) []byte {
	h.Length = uint32(len(body))
	dst = AppendHeader(dst, h)
	return append(dst, body...)
}

// AppendMessage appends a whole frame whose body is msg marshalled in
// place (nil msg: empty body). h.Length is ignored and computed.
func AppendMessage(dst []byte, h Header, msg proto.Message) ([]byte, error) {
	start := len(dst)
	dst = grow(dst, HeaderSize)
	if msg != nil {
		var err error
		dst, err = proto.MarshalOptions{}.MarshalAppend(dst, msg)
		if err != nil {
			return dst[:start], err
		}
	}
	h.Length = uint32(len(dst) - start - HeaderSize)
	PutHeader(dst[start:start+HeaderSize], h)
	return dst, nil
}

// grow extends dst by n bytes (contents unspecified) without a second
// allocation when capacity allows.
func grow(dst []byte, n int) []byte {
	if cap(dst)-len(dst) < n {
		nb := make([]byte, len(dst), 2*cap(dst)+n)
		copy(nb, dst)
		dst = nb
	}
	return dst[:len(dst)+n]
}
