// Package api serves the gRPC API app-servers use (package courier.v1):
// push to one identity or many, kick, presence, delivery statistics, the
// devices' upstream traffic, and the gate's access lists. Every call is
// authenticated by an API key that acts for one appcode (or, for an
// operator key, all of them). Handlers turn calls into requests to the
// identities' actors through the cluster layer; they hold no state of
// their own beyond the node's push admission: pushes in flight are counted
// and, beyond Limits.MaxPushesInFlight, while calls queue longer than
// MaxPushDelay, or while the local gate is more than MaxGateBacklog behind,
// new push calls are refused with RESOURCE_EXHAUSTED (admitPushes; at once,
// but for the gate's backlog, which a call waits out for up to
// MaxGateBacklog first). Gates on other nodes are the actors' to watch
// (cluster/gatebacklog.go): a push to a device on one that is behind comes
// back from its actor refused, and is answered so, item by item.
//
// Admission (admission.go) happens before a call's request is read: the
// key is checked in gRPC's tap handle, on the connection's reader
// goroutine (it never blocks), and Server.Listener caps the connections
// gRPC serves. What a client without a key can make the node hold is
// thereby bounded by Limits (MaxConnections, MaxUnauthenticatedCalls,
// MaxRequestBytes) and a fixed bound on a call's headers; what a client
// with a key can, by MaxCallsInFlight and MaxUpstreamStreams, counted
// in the tap too, node-wide, and one app's keys by their shares of them
// (MaxAppCallsInFlight, MaxAppUpstreamStreams; MaxAppPushesInFlight of
// the pushes). gRPC owns the
// goroutines of connections and calls; the only ones this package starts
// are timers that close connections over the cap, and the tap's releases
// of the slots of calls when they end.
package api
