package api

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
)

// errNoLists: the node serving the call has no gate, hence no lists. The
// API answers it as FAILED_PRECONDITION.
var errNoLists = errors.New("this node has no gate")

// RetryAfterOverload is the google.rpc.RetryInfo delay of a
// NODE_OVERLOADED refusal: the least a caller should wait before it
// retries (then doubling, as docs/api.md says).
const RetryAfterOverload = 10 * time.Millisecond

// refusal is a status of code with a google.rpc.ErrorInfo detail that
// gives reason (apipb.Reason*) and, if not empty, the setting that bounds
// it, for programs that should not parse messages; a NODE_OVERLOADED one
// also carries a google.rpc.RetryInfo (RetryAfterOverload), which gRPC
// client libraries that honour it wait for.
func refusal(code codes.Code, reason, setting, msg string) error {
	st := status.New(code, msg)
	info := &errdetails.ErrorInfo{Reason: reason, Domain: apipb.ErrorDomain}
	if setting != "" {
		info.Metadata = map[string]string{apipb.SettingKey: setting}
	}
	details := []protoadapt.MessageV1{info}
	if reason == apipb.ReasonNodeOverloaded {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(RetryAfterOverload)})
	}
	if d, err := st.WithDetails(details...); err == nil {
		st = d
	}
	return st.Err()
}

// refusalf is refusal with a formatted message.
func refusalf(code codes.Code, reason, setting, format string, args ...any) error {
	return refusal(code, reason, setting, fmt.Sprintf(format, args...))
}

// failureReason is the reason of an actor's Failure: its own, or, from a
// node of a version that gave none, NODE_OVERLOADED for a refusal for a
// late gate.
func failureReason(f *actorpb.Failure) (reason, setting string) {
	switch {
	case f.GetReason() != "":
		return f.GetReason(), f.GetSetting()
	case f.GetGateLate():
		return apipb.ReasonNodeOverloaded, "api.max-gate-backlog"
	}
	return "", ""
}
