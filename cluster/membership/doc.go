// Package membership says which nodes are in the cluster and what each
// offers: its roles (gate, actors, api), its remoting address, its gate's
// instance id and public address, its API and HTTP addresses, its version
// and its load. A node joins by registering itself; every node watches the
// registrations and derives the same View.
//
// Two providers: "memory" (a single node that is its own cluster) and
// "consul", a service per member instance in a Consul agent with a TTL
// check the node refreshes (github.com/hashicorp/consul/api, our own
// registration rather than the actor library's provider: docs/operating.md
// says why). A member is live while its checks pass. A member instance that
// stopped being live is blocked for good: it is not taken back if its
// registration passes again, because while it was out other nodes took
// over its identities. The node itself notices that it may have been out
// (it could not refresh its check within the TTL, or it sees its own
// registration failing) and rejoins as a new instance; Rejoined tells the
// rest of the node to drop what it held.
//
// A node acts as a member only while it holds its lease (lease.go): until
// a TTL after the last refresh the provider took, so that a paused or cut
// off node has stopped before anyone takes over from it. While the
// provider cannot be reached at all (Consul restarting), the members
// vouch for each other instead, and after such an outage each member has
// a grace to refresh before it is taken for gone: a Consul restart moves
// nothing and reconnects no device.
//
// Goroutines: a Membership owns two, started by Join and waited for by
// Leave: the refresher (the TTL check, load updates, rejoining) and the
// watcher (a blocking query of the registrations; it publishes each new
// View to the subscribers, in order, on its own goroutine, so subscribers
// must not block). Nothing here holds a message: what a lost Consul costs
// is stale views (nodes keep routing by the last one); a member that
// cannot have every other member vouch for it stops serving after the TTL
// and rejoins as a new instance when Consul is back.
package membership
