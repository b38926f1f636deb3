// Package upstream routes the devices' C2S traffic to the app-servers
// subscribed to it over the API's Upstream stream. It does not pass
// through the device actors: high-rate upstream such as GPS reports goes
// from the gate's event loop into a bounded queue per (appcode, msgtype)
// and from there to a subscriber with room.
//
// Subscribers of the same appcode and msgtype share the load: each
// message goes to one of them, the least loaded with room first. A
// subscriber acknowledges what it has processed; what it holds
// unacknowledged when its stream ends goes back to the front of the queue
// and to another subscriber (at-least-once). Without any subscriber a C2S
// is refused (NO_SUBSCRIBER); with a full queue, or when the router holds
// its byte budget for the app or for the node (queued and in flight
// together, Size per message), it is refused (UPSTREAM_BUSY): nothing
// accepted is dropped silently, and memory is bounded whatever the
// number of msgtypes and subscribers. Queued messages
// live in memory: a node that crashes loses what its subscribers had not
// yet acknowledged (docs/operating.md).
//
// Across nodes (Hub): a C2S stays in the router of the gate node that
// received it; an app-server subscribed on any api node is a subscriber
// (a proxy) in every live gate's router, whose deliveries travel to the
// api node over remoting and whose acks travel back. A proxy of an api
// node that left the cluster is closed, and what it held goes to the
// other subscribers.
//
// A Router is safe for concurrent use. Lock order: Router.mu only; in the
// hub, Hub.mu before Router.mu.
package upstream
