package apipb

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// The reasons of failures, for programs: PushItemResult.reason, and the
// reason of the google.rpc.ErrorInfo (domain ErrorDomain) in a failed
// call's status details, with the setting that bounds it in its metadata
// under "setting". Each says what to do where the gRPC code alone does
// not: NODE_OVERLOADED and INBOX_FULL are both RESOURCE_EXHAUSTED, and
// STORE_BUSY tells an UNAVAILABLE that accepted nothing from one that may
// have taken effect.
const (
	// ReasonNodeOverloaded: the node, or the gate holding the device's
	// connection, is behind; nothing was accepted. Retry soon, backing
	// off, with the same idempotency keys.
	ReasonNodeOverloaded = "NODE_OVERLOADED"
	// ReasonInboxFull: the identity's inbox holds too many stored pushes
	// waiting for acknowledgement; nothing was accepted. Retry much
	// later: the device must come online and acknowledge.
	ReasonInboxFull = "INBOX_FULL"
	// ReasonLimitReached: a per-node cap on connections or streams
	// (api.max-connections, api.max-upstream-streams,
	// api.max-unauthenticated-calls): share connections, go to another
	// node, or retry later.
	ReasonLimitReached = "LIMIT_REACHED"
	// ReasonStoreBusy (UNAVAILABLE): the inbox store is behind or stalled
	// for the identity (writes in flight at their bound, a commit stalled,
	// reads queued at their bound, the identity's queue of work waiting
	// for the store full); nothing was done. Retry later, backing off,
	// with the same idempotency keys.
	ReasonStoreBusy = "STORE_BUSY"
)

// ErrorDomain is the domain of Courier's google.rpc.ErrorInfo details.
const ErrorDomain = "courier.im"

// SettingKey is the ErrorInfo metadata key that names the setting.
const SettingKey = "setting"

// ErrorInfo returns the google.rpc.ErrorInfo of Courier's domain among
// the status details of err (a gRPC error), nil if it has none.
func ErrorInfo(err error) *errdetails.ErrorInfo {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == ErrorDomain {
			return info
		}
	}
	return nil
}
