package node

import (
	"google.golang.org/grpc/codes"

	"github.com/courier-im/courier/actors"
	"github.com/courier-im/courier/messages/actorpb"
	"github.com/courier-im/courier/messages/devicepb"
)

// undeliverable answers an envelope that could not reach its identity's
// actor (cluster.System.OnUndeliverable): a request fails UNAVAILABLE, a
// login, C2C or PULL gets STORE_UNAVAILABLE (the device retries), at once
// rather than at its deadline.
func (n *Node) undeliverable(env *actorpb.Envelope, why string) {
	conn, tc, r := actors.Refusal(env, codes.Unavailable, devicepb.Code_STORE_UNAVAILABLE, why)
	if tc != nil {
		n.sys.SendToConn(conn, tc)
	}
	if r != nil && env.ReqId != 0 {
		r.ReqId = env.ReqId
		n.sys.Reply(env.ReplyAddress, r)
	}
}
