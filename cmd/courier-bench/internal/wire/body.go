package wire

import (
	"errors"

	"google.golang.org/protobuf/encoding/protowire"
)

// ErrBadBody is returned for a body that is not valid protobuf.
var ErrBadBody = errors.New("wire: body does not decode")

// Fields is a decoded frame body: the length-delimited fields (strings,
// bytes) and the varint fields of numbers 1 to 9, aliasing the input.
// Bodies of the device protocol have no other kinds of fields the bench
// reads.
type Fields struct {
	Bytes  [10][]byte
	Varint [10]uint64
}

// Decode fills f from body, clearing it first. Unknown field numbers and
// wire types are skipped.
func (f *Fields) Decode(body []byte) error {
	*f = Fields{}
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 {
			return ErrBadBody
		}
		body = body[n:]
		switch typ {
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(body)
			if m < 0 {
				return ErrBadBody
			}
			if num < 10 {
				f.Bytes[num] = v
			}
			body = body[m:]
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(body)
			if m < 0 {
				return ErrBadBody
			}
			if num < 10 {
				f.Varint[num] = v
			}
			body = body[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, body)
			if m < 0 {
				return ErrBadBody
			}
			body = body[m:]
		}
	}
	return nil
}

// Field numbers of the bodies the bench reads (messages/proto/courier/device/v1).
const (
	S2CMsgID   = 1 // S2C.msg_id
	S2CPayload = 2 // S2C.payload

	AckCode        = 1 // C2SAck.code, C2CAck.code
	AckMsgID       = 2 // C2SAck.msg_id, C2CAck.msg_id
	AckClientMsgID = 3 // C2SAck.client_msg_id, C2CAck.client_msg_id

	C2CPushMsgID   = 1 // C2CPush.msg_id
	C2CPushPayload = 3 // C2CPush.payload

	ErrorCode = 1 // Error.code
)

// AppendBytesField appends field num as a length-delimited field.
func AppendBytesField(dst []byte, num protowire.Number, v []byte) []byte {
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	return protowire.AppendBytes(dst, v)
}

// AppendMsgIDAck appends the body of S2C_ACK or C2C_PUSH_ACK: field 1, the
// message id.
func AppendMsgIDAck(dst, msgID []byte) []byte { return AppendBytesField(dst, 1, msgID) }

// AppendC2C appends a C2C body.
func AppendC2C(dst, toUID, clientMsgID, payload []byte) []byte {
	dst = AppendBytesField(dst, 1, toUID)
	dst = AppendBytesField(dst, 2, clientMsgID)
	return AppendBytesField(dst, 3, payload)
}

// AppendC2S appends a C2S body.
func AppendC2S(dst, clientMsgID, payload []byte) []byte {
	dst = AppendBytesField(dst, 1, clientMsgID)
	return AppendBytesField(dst, 2, payload)
}

// ParseIndex reads a client message id the bench wrote (a decimal index).
func ParseIndex(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		if v > (1<<64-1-uint64(c-'0'))/10 {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, true
}
