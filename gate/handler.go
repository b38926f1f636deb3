package gate

import (
	"net/netip"
	"time"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

// ConnID names a connection inside one gate process. IDs are never reused
// by a process.
type ConnID uint64

// ConnInfo describes a connection to the Handler.
type ConnInfo struct {
	ID     ConnID
	Remote netip.AddrPort
	// AppCode and UID are the identity of the (attempted) login.
	AppCode uint16
	UID     string
	// Epoch is the session epoch the Handler assigned at login (0 while the
	// login is in progress).
	Epoch uint64
	// DeviceID as the client reported it at login.
	DeviceID string
	// LoginDeadline, given with Login only, is when the gate gives up on
	// the login: its login timeout after the connection opened.
	LoginDeadline time.Time
}

// CloseReason says why a connection ended.
type CloseReason uint8

// Reasons a connection ends.
const (
	CloseClient       CloseReason = iota + 1 // the client closed or reset it
	CloseLogout                              // LOGOUT
	CloseIdle                                // silent past the idle timeout
	CloseLoginTimeout                        // no login in time
	CloseProtocol                            // a fatal protocol error
	CloseRateLimited                         // over its rate for too long
	CloseSlowClient                          // its outbound queue stayed full
	CloseKicked                              // the Handler asked (kickout, failed login)
	CloseShutdown                            // the gate is shutting down
	CloseBlocked                             // its uid or IP was put on a list
	CloseLoginFailed                         // the gate refused its LOGIN (uid, token, uid blacklist)
)

var closeReasonNames = [...]string{
	CloseClient:       "client",
	CloseLogout:       "logout",
	CloseIdle:         "idle",
	CloseLoginTimeout: "login_timeout",
	CloseProtocol:     "protocol_error",
	CloseRateLimited:  "rate_limited",
	CloseSlowClient:   "slow_client",
	CloseKicked:       "kicked",
	CloseShutdown:     "shutdown",
	CloseBlocked:      "blocked",
	CloseLoginFailed:  "login_failed",
}

func (r CloseReason) String() string {
	if int(r) < len(closeReasonNames) && closeReasonNames[r] != "" {
		return closeReasonNames[r]
	}
	return "unknown"
}

// Handler is the rest of the node as the gate sees it. The gate calls it
// from its event loops: implementations must not block (hand the work to
// an actor and return). Byte slices passed in are only valid during the
// call.
type Handler interface {
	// Login is called for a LOGIN frame whose token verified for
	// (AppCode, UID). The Handler answers later with Gate.Deliver carrying a
	// LoginOutcome (and the LOGIN_ACK frame); until then the connection
	// accepts no other frame. If no answer comes within the login timeout
	// the connection is closed.
	Login(c ConnInfo, frameSeq uint32, login *devicepb.Login)
	// Frame is called for every frame of a logged-in connection that the
	// gate does not answer itself (all but KEEPALIVE and LOGOUT): C2S, S2C_ACK,
	// C2C, C2C_PUSH_ACK, PULL. The body is decompressed; it has not been
	// unmarshalled.
	Frame(c ConnInfo, h messages.Header, body []byte)
	// Closed is called once for every connection that reached Login, when
	// it ends, whatever the reason (LOGOUT included: the gate answers
	// LOGOUT_ACK and closes). A connection that ends while its login is
	// pending is reported with Epoch 0; if a successful LoginOutcome for
	// it arrives afterwards, Deliver calls Closed a second time with the
	// outcome's identity and epoch (reason CloseClient), so the node never
	// keeps a session online for a connection that is gone. Implementations
	// must therefore treat Closed as idempotent per (ID, Epoch). Closed is
	// called on an event loop, or on the goroutine calling Deliver.
	Closed(c ConnInfo, reason CloseReason)
}
