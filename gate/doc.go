// Package gate is Courier's TCP edge: gnet v2 event loops that hold the
// devices' long-lived connections and speak the device protocol. It decodes
// frames, enforces limits (frame size, rates, connection cap, black and
// white lists, login and idle timeouts) and hands logins and frames to the
// rest of the node through a narrow interface. It owns connections, not
// business state.
//
// Event-loop callbacks never block. Other goroutines write to a connection
// only through its bounded outbound queue, which the connection's loop
// drains in batches.
package gate
