package actors

import "time"

// Stats receives the delivery events of device actors, per app and
// msgtype. Implementations must be cheap and safe for concurrent use: every
// actor calls them from its own goroutine.
type Stats interface {
	// Accepted: a message was accepted for delivery (stored reports
	// whether it went to the inbox; fire-and-forget did not).
	Accepted(app uint16, msgtype uint32, stored bool)
	// Delivered: a message was written to a connection for the first time.
	Delivered(app uint16, msgtype uint32)
	// Acked: the device acknowledged a stored message, latency after it was
	// accepted.
	Acked(app uint16, msgtype uint32, latency time.Duration)
	// Retried: a message was written again because no ack came.
	Retried(app uint16, msgtype uint32)
	// Expired: a stored message expired before an ack.
	Expired(app uint16, msgtype uint32)
	// Dropped: a message was not delivered and will not be (fire-and-forget
	// to an offline device).
	Dropped(app uint16, msgtype uint32)
}

// NopStats discards every event.
type NopStats struct{}

func (NopStats) Accepted(uint16, uint32, bool)       {}
func (NopStats) Delivered(uint16, uint32)            {}
func (NopStats) Acked(uint16, uint32, time.Duration) {}
func (NopStats) Retried(uint16, uint32)              {}
func (NopStats) Expired(uint16, uint32)              {}
func (NopStats) Dropped(uint16, uint32)              {}
