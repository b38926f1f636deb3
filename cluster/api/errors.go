package api

import (
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/apipb"
)

// errNoLists: the node serving the call has no gate, hence no lists. The
// API answers it as FAILED_PRECONDITION.
var errNoLists = errors.New("this node has no gate")

// refusal is a status of code with a google.rpc.ErrorInfo detail that
// gives reason (apipb.Reason*) and, if not empty, the setting that bounds
// it, for programs that should not parse messages.
func refusal(code codes.Code, reason, setting, msg string) error {
	st := status.New(code, msg)
	info := &errdetails.ErrorInfo{Reason: reason, Domain: apipb.ErrorDomain}
	if setting != "" {
		info.Metadata = map[string]string{apipb.SettingKey: setting}
	}
	if d, err := st.WithDetails(info); err == nil {
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
