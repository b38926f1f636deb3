package gate

import (
	"testing"
	"unsafe"
)

// connBudget is the most bytes the gate's state of one connection may
// take: the 256-byte size class of Go's allocator. Every idle connection
// holds one, so a field added beyond it costs 32 bytes per connection (the
// next class, 288): make room first (issue 13's third round took it from
// 288 to 256).
const connBudget = 256

func TestConnFitsItsSizeClass(t *testing.T) {
	if got := unsafe.Sizeof(conn{}); got > connBudget {
		t.Fatalf("conn is %d bytes, over its budget of %d (the allocator's size class)", got, connBudget)
	}
}
