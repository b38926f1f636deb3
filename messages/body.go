package messages

import (
	"github.com/courier-im/courier/messages/devicepb"
	"google.golang.org/protobuf/proto"
)

// NewBody returns an empty message of the body type of cmd, or nil for the
// commands whose body is empty (LOGOUT, LOGOUT_ACK, KEEPALIVE,
// KEEPALIVE_ACK) and for unknown commands.
func NewBody(cmd Cmd) proto.Message {
	switch cmd {
	case CmdLogin:
		return &devicepb.Login{}
	case CmdLoginAck:
		return &devicepb.LoginAck{}
	case CmdKickout:
		return &devicepb.Kickout{}
	case CmdC2S:
		return &devicepb.C2S{}
	case CmdC2SAck:
		return &devicepb.C2SAck{}
	case CmdS2C:
		return &devicepb.S2C{}
	case CmdS2CAck:
		return &devicepb.S2CAck{}
	case CmdC2C:
		return &devicepb.C2C{}
	case CmdC2CAck:
		return &devicepb.C2CAck{}
	case CmdC2CPush:
		return &devicepb.C2CPush{}
	case CmdC2CPushAck:
		return &devicepb.C2CPushAck{}
	case CmdC2CPushAckAck:
		return &devicepb.C2CPushAckAck{}
	case CmdPull:
		return &devicepb.Pull{}
	case CmdPullAck:
		return &devicepb.PullAck{}
	case CmdError:
		return &devicepb.Error{}
	}
	return nil
}

// DecodeBody unmarshals an (uncompressed) body of cmd. Commands with an
// empty body accept only an empty body.
func DecodeBody(cmd Cmd, body []byte) (proto.Message, error) {
	m := NewBody(cmd)
	if m == nil {
		if len(body) != 0 {
			return nil, ErrBodyNotEmpty
		}
		return nil, nil
	}
	if err := proto.Unmarshal(body, m); err != nil {
		return nil, err
	}
	return m, nil
}
