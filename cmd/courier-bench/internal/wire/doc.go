// Package wire is the load generator's side of the device protocol: the
// frame bodies a simulated device sends and reads, encoded and decoded by
// hand with protowire so that the hot path allocates nothing, and the
// bench payload that carries a message's index and send time from the
// sender to the receiver.
//
// Everything here is a pure function over byte slices and is safe for
// concurrent use.
package wire
