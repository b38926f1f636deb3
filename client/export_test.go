package client

import (
	"context"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

// SendC2SUnchecked is SendC2S without the checks made before a send is
// queued: it lets a test reach the writer with a body that does not
// encode, which the API refuses.
func (c *Client) SendC2SUnchecked(ctx context.Context, msgtype uint16, id string, payload []byte) error {
	_, err := c.enqueue(ctx, messages.CmdC2S, msgtype, id, &devicepb.C2S{ClientMsgId: id, Payload: payload})
	return err
}
