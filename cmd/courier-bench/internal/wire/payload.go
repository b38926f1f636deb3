package wire

import (
	"encoding/binary"
	"errors"
)

// Payload kinds: who sent the message the payload travels in.
const (
	KindPush byte = 1 // S2C pushed by the bench's app-server
	KindC2C  byte = 2 // C2C between two simulated devices
	KindC2S  byte = 3 // C2S from a simulated device to the bench's app-server
)

const payloadMagic = 0xCB

// PayloadHeader is the size of the bench's payload header; payloads are
// padded to the size a run asks for, never shorter than this.
//
//	[0]     0xCB
//	[1]     kind
//	[2:6]   run id (big-endian): payloads of other runs are ignored
//	[6:14]  message index, unique in the run
//	[14:22] send time, Unix nanoseconds
const PayloadHeader = 22

// ErrNotBench is returned for a payload the bench did not write.
var ErrNotBench = errors.New("wire: not a bench payload")

// Payload is what the bench puts in every message it sends.
type Payload struct {
	Kind   byte
	RunID  uint32
	Index  uint64
	SentNs int64
}

// AppendPayload appends p padded with 'x' to size bytes (at least
// PayloadHeader).
func AppendPayload(dst []byte, p Payload, size int) []byte {
	size = max(size, PayloadHeader)
	n := len(dst)
	for cap(dst)-n < size {
		dst = append(dst[:cap(dst)], 0)[:n]
	}
	dst = dst[:n+size]
	b := dst[n:]
	b[0] = payloadMagic
	b[1] = p.Kind
	binary.BigEndian.PutUint32(b[2:6], p.RunID)
	binary.BigEndian.PutUint64(b[6:14], p.Index)
	binary.BigEndian.PutUint64(b[14:22], uint64(p.SentNs))
	for i := PayloadHeader; i < size; i++ {
		b[i] = 'x'
	}
	return dst
}

// ParsePayload reads the header of a bench payload.
func ParsePayload(b []byte) (Payload, error) {
	if len(b) < PayloadHeader || b[0] != payloadMagic {
		return Payload{}, ErrNotBench
	}
	return Payload{
		Kind:   b[1],
		RunID:  binary.BigEndian.Uint32(b[2:6]),
		Index:  binary.BigEndian.Uint64(b[6:14]),
		SentNs: int64(binary.BigEndian.Uint64(b[14:22])),
	}, nil
}

// Hash is FNV-1a of b: how the bench compares message ids without keeping
// the strings.
func Hash(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// HashString is Hash of a string, without converting it.
func HashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}
