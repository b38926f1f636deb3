package farm

import "encoding/binary"

// Kind says what a Record witnessed.
type Kind uint8

// Record kinds.
const (
	RecvS2C     Kind = 1 // an S2C push arrived (first or retried delivery)
	SentC2C     Kind = 2 // a device sent C2C (T: when it was due, by the rate)
	AckC2C      Kind = 3 // the sender got C2C_ACK (Code is its result)
	RecvC2C     Kind = 4 // the receiver got C2C_PUSH
	SentC2S     Kind = 5 // a device sent C2S (T: when it was due, by the rate)
	AckC2S      Kind = 6 // the device got C2S_ACK (Code is its result)
	RecvForeign Kind = 7 // an S2C or C2C_PUSH whose payload is not this run's (Idx 0)
)

// Record is one message event seen by a device.
type Record struct {
	Kind Kind
	Code uint8  // result code of an ack (devicepb.Code, saturated at 255)
	Dev  uint32 // global device index
	Seq  uint32 // the frame's seq (inbox seq of stored pushes)
	Idx  uint64 // message index from the payload or client message id
	Hash uint64 // wire.Hash of the platform's message id (0 if none)
	T    int64  // when it happened, Unix nanoseconds
}

// RecordSize is the encoded size of a Record.
const RecordSize = 34

// AppendRecords encodes rs after dst.
func AppendRecords(dst []byte, rs []Record) []byte {
	for _, r := range rs {
		var b [RecordSize]byte
		b[0] = byte(r.Kind)
		b[1] = r.Code
		binary.LittleEndian.PutUint32(b[2:], r.Dev)
		binary.LittleEndian.PutUint32(b[6:], r.Seq)
		binary.LittleEndian.PutUint64(b[10:], r.Idx)
		binary.LittleEndian.PutUint64(b[18:], r.Hash)
		binary.LittleEndian.PutUint64(b[26:], uint64(r.T))
		dst = append(dst, b[:]...)
	}
	return dst
}

// DecodeRecords decodes what AppendRecords wrote, appending to rs. A
// trailing partial record is ignored.
func DecodeRecords(rs []Record, b []byte) []Record {
	for ; len(b) >= RecordSize; b = b[RecordSize:] {
		rs = append(rs, Record{
			Kind: Kind(b[0]),
			Code: b[1],
			Dev:  binary.LittleEndian.Uint32(b[2:]),
			Seq:  binary.LittleEndian.Uint32(b[6:]),
			Idx:  binary.LittleEndian.Uint64(b[10:]),
			Hash: binary.LittleEndian.Uint64(b[18:]),
			T:    int64(binary.LittleEndian.Uint64(b[26:])),
		})
	}
	return rs
}
