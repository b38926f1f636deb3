// Package wheel is a hashed timing wheel over intrusive nodes, for
// expiring many timers at a coarse granularity in O(expired) work per tick.
//
// A timer that is further away than the wheel's span is parked in the
// furthest slot and fires early; callers keep the real deadline themselves,
// check it when a node fires and schedule the node again if it is not yet
// due. The same lazy check lets callers move a deadline later (on activity)
// without touching the wheel at all. A Wheel is not safe for concurrent
// use: each of the gate's event loops owns one, and the device actors'
// idle checks share one under a lock (actors/idle.go). It lives under gate,
// where it began, but outside gate/internal so that actors may import it;
// it imports nothing of the project.
package wheel
