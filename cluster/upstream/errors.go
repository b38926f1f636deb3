package upstream

import "errors"

var (
	// ErrNoSubscriber: nobody is subscribed to the message's appcode and
	// msgtype.
	ErrNoSubscriber = errors.New("upstream: no subscriber")
	// ErrFull: the queue of the message's appcode and msgtype is full.
	ErrFull = errors.New("upstream: queue full")
	// ErrOverBudget: the router already holds as many bytes as allowed
	// for the message's appcode (Config.AppMaxBytes) or for the node
	// (Config.MaxBytes).
	ErrOverBudget = errors.New("upstream: byte budget full")
	// ErrDeviceOverBudget: the router already holds as many bytes as
	// allowed for the message's device, its appcode and uid
	// (Config.UIDMaxBytes): one device does not take its app's budget.
	ErrDeviceOverBudget = errors.New("upstream: the device's byte budget full")
	// ErrTooLarge: the message is larger than MaxMessageSize.
	ErrTooLarge = errors.New("upstream: message too large")
	// ErrClosed: the router is shut down.
	ErrClosed = errors.New("upstream: closed")
)
