package api

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/courier-im/courier/messages/apipb"
)

// codec is the server's gRPC codec: protobuf, as gRPC's own, but for two
// things.
//
// A request with a string field that is not valid UTF-8 is not a decoding
// failure: gRPC would answer it INTERNAL ("failed to unmarshal"), which
// tells a client to retry what can never succeed. The codec leaves the
// message empty but for a mark (badMark, an unknown field holding the
// reason); the interceptors answer the call INVALID_ARGUMENT naming the
// field, before any handler sees it. The mark lives and dies with the
// message: nothing is kept for a call that ends before an interceptor
// sees it.
//
// Answers larger than gRPC's pooling threshold (1 KiB) are counted in
// unread from their encoding until the transport has written them to the
// connection (or dropped them, with the connection). A client that does not read its answers (its HTTP/2 window
// kept shut) leaves them queued in the node after its calls ended and gave
// their slots back; admission refuses new calls with a key while more
// than Limits.MaxUnreadAnswerBytes wait so. Upstream deliveries are not
// counted: their stream's window bounds them.
type codec struct {
	unread atomic.Int64
}

// badMark is the field number of the mark of a request the codec refuses
// (the largest a field may have; no Courier message uses it), and
// badPrefix starts its value.
const (
	badMark   = protowire.MaxValidNumber
	badPrefix = "courier: refused: "
)

var _ encoding.CodecV2 = (*codec)(nil)

func (*codec) Name() string { return "proto" }

// appAnswer is the answer of a unary call with a key (codec.unary): its
// bytes are counted in its app's share too.
type appAnswer struct {
	proto.Message
	sh *share
}

func (c *codec) Marshal(v any) (mem.BufferSlice, error) {
	var sh *share
	if a, ok := v.(*appAnswer); ok {
		v, sh = a.Message, a.sh
	}
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("api: cannot marshal %T: not a protobuf message", v)
	}
	size := proto.Size(m)
	opts := proto.MarshalOptions{UseCachedSize: true} // the size was just computed
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	if _, upstream := v.(*apipb.UpstreamDelivery); upstream {
		pool := mem.DefaultBufferPool()
		buf := pool.Get(size)
		b, err := opts.MarshalAppend((*buf)[:0], m)
		if err != nil {
			pool.Put(buf)
			return nil, err
		}
		*buf = b
		return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
	}
	b, err := opts.MarshalAppend(make([]byte, 0, size), m)
	if err != nil {
		return nil, err
	}
	p := &b
	a := &answer{c: c, sh: sh, size: int64(cap(b))}
	c.unread.Add(a.size)
	if sh != nil {
		sh.unread.Add(a.size)
	}
	// The transport frees the buffer once it has written it, or when
	// the stream ends first; buffers of a connection that closes with
	// them queued are dropped unfreed, and counted out when collected.
	runtime.AddCleanup(p, (*answer).settle, a)
	return mem.BufferSlice{mem.NewBuffer(p, a)}, nil
}

// answer is the pool of one encoded answer's buffer: its Put (the buffer
// freed) or the buffer's collection counts it out of codec.unread, once.
type answer struct {
	c       *codec
	sh      *share // its app's, nil for none
	size    int64
	settled atomic.Bool
}

func (a *answer) Get(n int) *[]byte {
	b := make([]byte, n)
	return &b
}

func (a *answer) Put(*[]byte) { a.settle() }

func (a *answer) settle() {
	if a.settled.CompareAndSwap(false, true) {
		a.c.unread.Add(-a.size)
		if a.sh != nil {
			a.sh.unread.Add(-a.size)
		}
	}
}

func (c *codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("api: cannot unmarshal into %T: not a protobuf message", v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	err := proto.Unmarshal(buf.ReadOnlyData(), m)
	if err == nil {
		return nil
	}
	if field := invalidUTF8(buf.ReadOnlyData(), m.ProtoReflect().Descriptor(), ""); field != "" {
		proto.Reset(m)
		mark := protowire.AppendTag(nil, badMark, protowire.BytesType)
		mark = protowire.AppendString(mark, badPrefix+field+": not valid UTF-8 (string fields must be); nothing of the request was done")
		m.ProtoReflect().SetUnknown(mark)
		return nil
	}
	return err
}

// refused returns the status of a request the codec marked as bad, nil
// for any other.
func (c *codec) refused(req any) error {
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	u := m.ProtoReflect().GetUnknown()
	if len(u) == 0 {
		return nil
	}
	if num, typ, n := protowire.ConsumeTag(u); num == badMark && typ == protowire.BytesType {
		if v, k := protowire.ConsumeBytes(u[n:]); k > 0 && strings.HasPrefix(string(v), badPrefix) {
			return status.Error(codes.InvalidArgument, strings.TrimPrefix(string(v), badPrefix))
		}
	}
	return nil
}

// unary answers a bad request before the other interceptors and the
// handler see it.
func (c *codec) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := c.refused(req); err != nil {
		return nil, err
	}
	resp, err := h(ctx, req)
	if m, ok := resp.(proto.Message); ok && err == nil {
		if sh := scopeOf(ctx).sh; sh != nil {
			return &appAnswer{m, sh}, nil
		}
	}
	return resp, err
}

// stream has every message a stream receives checked as unary's requests.
func (c *codec) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, checkedStream{ss, c})
}

type checkedStream struct {
	grpc.ServerStream
	c *codec
}

func (s checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.c.refused(m)
}

// invalidUTF8 names the first string field in b, an encoded message of
// md, that is not valid UTF-8 ("" if none, or if b does not parse): the
// path of field names from the request, dot-separated.
func invalidUTF8(b []byte, md protoreflect.MessageDescriptor, prefix string) string {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		if fd := md.Fields().ByNumber(num); fd != nil && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return ""
			}
			b = b[n:]
			name := prefix + string(fd.Name())
			switch fd.Kind() {
			case protoreflect.StringKind:
				if !utf8.Valid(v) {
					return name
				}
			case protoreflect.MessageKind:
				if field := invalidUTF8(v, fd.Message(), name+"."); field != "" {
					return field
				}
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return ""
		}
		b = b[n:]
	}
	return ""
}
