// Package gate is Courier's TCP edge: gnet v2 event loops that hold the
// devices' long-lived connections and speak the device protocol. It decodes
// frames, enforces limits (frame size, rates, connection cap, black and
// white lists, login and idle timeouts) and hands logins and frames to the
// rest of the node through a narrow interface. It owns connections, not
// business state.
//
// Event-loop callbacks never block. Compressed bodies are decoded by one
// zstd decoder per loop (made at the loop's first compressed frame) into
// the loop's buffer, so decoder memory grows with the loops, never with
// the connections; bodies sent are compressed on the caller of Deliver,
// each caller with its own encoder. Other goroutines write to a connection
// only through its bounded outbound queue, which the connection's loop
// drains in batches.
//
// The node implements Handler (called on the event loops, must not block)
// and answers through Gate.Deliver (any goroutine): a login's outcome with
// its LOGIN_ACK, frames to write, a close. Logins are verified at the edge
// (Authenticator; HS256 JWTs by default, see MintToken) and checked
// against the uid blacklist before the Handler sees them. Timeouts run on
// one timing wheel per loop, so a tick costs the connections that came due,
// not all of them. Gate.Backlog says how long frames queued by Deliver
// have lately waited for their loops (the smallest drain delay over
// 100 ms, DelayWindow, while frames still wait): the node stops accepting
// pushes while it is high.
// Black and white lists change at runtime through
// Gate.Lists or a JSON file (ListsSnapshot documents the format). Counters
// are courier_gate_* on the Prometheus registerer given to New.
//
// Beyond PROTOCOL.md, clients may see: an ERROR with seq 0 right after
// connecting, SERVER_BUSY (connection cap reached, or the gate is
// draining or refusing new connections: Refuse, MoveOff) or RATE_LIMITED (too many new connections from the address),
// then a close; a close without any frame when the source address is
// refused by the IP lists; ERROR RATE_LIMITED answering the frame that ran
// a per-connection rate dry, then a close (acks of what the gate delivered
// and one KEEPALIVE per half heartbeat pass the frame rate on credit, see
// ackcredit.go); KICKOUT SLOW_CLIENT when its outbound queue overflowed
// (after a LOGIN_ACK still queued, never instead of it), KICKOUT
// UID_BLACKLISTED or KICKED_BY_OPERATOR when a list update refuses a
// connected client, and KICKOUT SERVER_SHUTDOWN on Shutdown; LOGIN_ACK
// BAD_LOGIN_FIELD for a LOGIN whose device_id, app_version or token is
// over its limit (MaxDeviceIDLen, MaxAppVersionLen, MaxTokenLen).
// APP_MISMATCH is checked after "command known" and before "body
// decodes".
//
// Behind load balancers (Config.ProxyProtocol), a connection from a
// trusted balancer (Config.ProxyFrom) starts with a PROXY protocol header
// (version 2 or 1, internal/proxyproto), read from gnet's buffer without
// waiting on the loop; the client address it names is the connection's
// from then on (IP lists, per-IP rate, logs, ConnInfo.Remote). A PROXY
// header from anyone else is refused.
package gate
