// Package actors holds the device actor: the single owner of one identity's
// (appcode + uid) state — its session, its inbox of unacknowledged messages,
// its retry timers and its deduplication records. Logins, logouts, pushes,
// acknowledgements and pulls are all messages to it, so they never race.
//
// The logic is a plain state machine without I/O, tested without a
// cluster; the Proto.Actor wrapper performs what the state machine asks
// for (store writes, frames to gates, replies). The durable inbox store is
// in the store sub-package.
package actors
