package actors

import (
	"crypto/rand"
	"strconv"
	"sync/atomic"
)

// IDGen makes message ids unique across nodes and restarts: a random
// prefix drawn at start, then a counter. Safe for concurrent use.
type IDGen struct {
	prefix string
	n      atomic.Uint64
}

const idAlphabet = "0123456789abcdefghijklmnopqrstuv"

// NewIDGen returns a generator with a fresh 12-character random prefix
// (60 bits).
func NewIDGen() *IDGen {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("actors: no randomness: " + err.Error())
	}
	for i := range b {
		b[i] = idAlphabet[b[i]&31]
	}
	return &IDGen{prefix: string(b[:]) + "-"}
}

// Next returns a new id such as "k3j9x2a0qv1m-1a".
func (g *IDGen) Next() string {
	var b [40]byte // the prefix (13) and a base-36 uint64 (at most 13): one allocation, the string's
	return string(strconv.AppendUint(append(b[:0], g.prefix...), g.n.Add(1), 36))
}
