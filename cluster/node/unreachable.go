package node

import (
	"google.golang.org/grpc/codes"

	"github.com/courier-im/courier/actors"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
)

// undeliverable answers an envelope that could not reach its identity's
// node (cluster.System.OnUndeliverable): a request fails UNAVAILABLE, a
// login, C2C or PULL gets STORE_UNAVAILABLE (the device retries), at once
// rather than at its deadline.
func (n *Node) undeliverable(env *actorpb.Envelope) {
	conn, tc, r := actors.Refusal(env, codes.Unavailable, devicepb.Code_STORE_UNAVAILABLE,
		"the node that owns the identity cannot be reached; retry")
	if tc != nil {
		n.sys.SendToConn(conn, tc)
	}
	if r != nil && env.ReqId != 0 {
		r.ReqId = env.ReqId
		n.sys.Reply(env.ReplyAddress, r)
	}
}
