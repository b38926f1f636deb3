package gate

import (
	"net/netip"
	"sync"

	"github.com/courier-im/courier/gate/internal/bucket"
	"github.com/courier-im/courier/gate/wheel"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/panjf2000/gnet/v2"
)

// connState is where a connection is in the login state machine.
type connState uint8

const (
	stateNew      connState = iota // no whole frame yet: the next is the first
	stateFresh                     // frames, but no LOGIN accepted yet
	statePending                   // LOGIN handed to the Handler, no answer yet
	stateLoggedIn                  // the Handler accepted the login
)

// conn is the gate's state of one connection. It is kept small: an idle
// logged-in connection costs this struct, its registry entry and gnet's
// own conn. Queues are allocated only while frames wait.
//
// Fields in the first group are set in OnOpen and never change (but
// remote, once, on the loop, when a PROXY header names the client: before
// any frame is read, so before anyone else can know the connection). The
// second group belongs to the connection's event loop. The third is
// shared with Deliver (any goroutine) and guarded by mu.
type conn struct {
	node   wheel.Node[conn] // the loop's timer wheel
	id     ConnID
	c      gnet.Conn
	loop   *loop
	remote netip.AddrPort

	// event loop only
	uid, deviceID string
	epoch         uint64
	// lastActive is a tick: when the connection opened until it is
	// logged in (the login timeout counts from it), then of the last
	// bytes received (the idle timeout: a frame still arriving, a large
	// one over a slow link, is not silence).
	lastActive    int64
	frameTokens   bucket.Bucket
	byteTokens    bucket.Bucket
	freeKeepalive int64 // nanos from which a KEEPALIVE passes the frame limit free
	app           uint16
	state         connState
	zstd          bool // compression negotiated
	reachedLogin  bool // the Handler saw Login: it gets Closed
	proxyWait     bool // from a trusted proxy, its PROXY header not yet read
	closed        bool
	closeReason   CloseReason

	// shared with Deliver, under mu
	mu            sync.Mutex
	out           *[]byte // encoded frames waiting for the loop (outbuf.go); nil when empty
	outFrames     int32
	outBytes      int32
	sEpoch        uint64                // session epoch (Deliver's staleness check)
	pendingLogin  *actorpb.LoginOutcome // for the loop to apply after out
	sApp          uint16                // appcode for headers of queued frames
	sLoginPending bool
	sAskedZstd    bool // the client asked for zstd in LOGIN
	sZstd         bool // compress queued frames
	sClosed       bool // OnClose ran
	drainQueued   bool // the connection is on its loop's drain list
	sCloseReq     CloseReason
	sAckCredit    int16 // ack credit of the queued frames (at most maxAckCredit), moved to ackCredit by drain
	// ackCredit is the event loop's (beside sAckCredit, to share its word):
	// acks the client owes for what was written to it (ackcredit.go).
	ackCredit int16
	sPulledTo uint32 // the highest seq a PULL_ACK queued on the connection carried (ackcredit.go)
	// loginAckAt and loginAckEnd are where the queued LOGIN_ACK frame is
	// in out, until drained (loginAckEnd 0: none).
	loginAckAt, loginAckEnd int32
}

// info describes the connection to the Handler (event loop only).
func (s *conn) info() ConnInfo {
	return ConnInfo{ID: s.id, Remote: s.remote, AppCode: s.app, UID: s.uid, Epoch: s.epoch, DeviceID: s.deviceID}
}

// registry maps connection ids to connections for Deliver. gnet's own
// conn.Context is not safe off the event loop, so the gate keeps this.
type registry struct {
	shards [64]struct {
		mu sync.RWMutex
		m  map[ConnID]*conn
		_  [32]byte // keep shards on separate cache lines
	}
}

func newRegistry() *registry {
	r := &registry{}
	for i := range r.shards {
		r.shards[i].m = make(map[ConnID]*conn)
	}
	return r
}

func (r *registry) get(id ConnID) *conn {
	sh := &r.shards[id%64]
	sh.mu.RLock()
	s := sh.m[id]
	sh.mu.RUnlock()
	return s
}

func (r *registry) put(s *conn) {
	sh := &r.shards[s.id%64]
	sh.mu.Lock()
	sh.m[s.id] = s
	sh.mu.Unlock()
}

func (r *registry) del(id ConnID) {
	sh := &r.shards[id%64]
	sh.mu.Lock()
	delete(sh.m, id)
	sh.mu.Unlock()
}
