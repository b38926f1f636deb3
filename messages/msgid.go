package messages

import (
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// MsgIDBody decodes the body of S2C_ACK, C2C_PUSH_ACK or
// C2C_PUSH_ACK_ACK, whose one field is `string msg_id = 1`, without
// allocating: it returns the msg_id's bytes (inside body) and whether
// body is a valid encoding of such a message. It decides exactly as
// proto.Unmarshal does (FuzzMsgIDBody): the last msg_id wins, other
// fields are skipped if well formed, a msg_id must be UTF-8.
//
// Every stored message's acknowledgement passes through it twice (the
// gate checks the body, the identity's actor reads the id), which is why
// it is not proto.Unmarshal.
func MsgIDBody(body []byte) (id []byte, ok bool) {
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 || num > protowire.MaxValidNumber {
			return nil, false
		}
		body = body[n:]
		if num == 1 && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(body)
			if m < 0 || !utf8.Valid(v) {
				return nil, false
			}
			id, body = v, body[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, body)
		if m < 0 {
			return nil, false
		}
		body = body[m:]
	}
	return id, true
}
