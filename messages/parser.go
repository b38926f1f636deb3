package messages

import (
	"errors"
	"io"
)

// Frame is a header and its body as read from the wire (still compressed if
// the header says so).
type Frame struct {
	Header
	Body []byte
}

// Parser splits a byte stream that arrives in arbitrary chunks into frames.
// It is what clients, the load generator and the tests use; the gate parses
// straight from gnet's buffers with ParseHeader. A Parser is not safe for
// concurrent use.
type Parser struct {
	buf     []byte
	off     int
	maxBody uint32
	err     error // sticky fatal error
}

// NewParser returns a parser that refuses bodies longer than maxBody.
func NewParser(maxBody uint32) *Parser {
	return &Parser{maxBody: maxBody}
}

// Feed appends p to the parser's input. p is copied.
func (p *Parser) Feed(b []byte) {
	if p.off > 0 && p.off == len(p.buf) {
		p.buf, p.off = p.buf[:0], 0
	} else if p.off > 4096 && p.off > len(p.buf)/2 {
		n := copy(p.buf, p.buf[p.off:])
		p.buf, p.off = p.buf[:n], 0
	}
	p.buf = append(p.buf, b...)
}

// Buffered returns how many bytes are waiting to be parsed.
func (p *Parser) Buffered() int { return len(p.buf) - p.off }

// Next returns the next complete frame. ok is false when more input is
// needed. A fatal error (bad magic, unsupported version, frame too large) is
// returned with the header as far as it was decoded, and again on every
// later call. ErrBadFlags is returned with a whole frame, which is consumed:
// the caller answers it and calls Next again. The frame's body aliases the
// parser's buffer and is valid until the next Feed.
func (p *Parser) Next() (f Frame, ok bool, err error) {
	if p.err != nil {
		return Frame{}, false, p.err
	}
	in := p.buf[p.off:]
	h, err := ParseHeader(in, p.maxBody)
	switch {
	case errors.Is(err, ErrShortHeader):
		return Frame{}, false, nil
	case err != nil && !errors.Is(err, ErrBadFlags):
		p.err = err
		return Frame{Header: h}, false, err
	}
	end := HeaderSize + int(h.Length)
	if len(in) < end {
		return Frame{}, false, nil
	}
	p.off += end
	return Frame{Header: h, Body: in[HeaderSize:end:end]}, true, err
}

// Reader reads frames from an io.Reader, for blocking clients.
type Reader struct {
	r       io.Reader
	p       *Parser
	scratch []byte
}

// NewReader returns a Reader of r that refuses bodies above maxBody.
func NewReader(r io.Reader, maxBody uint32) *Reader {
	return &Reader{r: r, p: NewParser(maxBody), scratch: make([]byte, 32<<10)}
}

// ReadFrame blocks until a whole frame has arrived. The body is valid until
// the next call. A stream that ends inside a frame returns ErrTruncated; one
// that ends between frames returns io.EOF.
func (r *Reader) ReadFrame() (Frame, error) {
	for {
		f, ok, err := r.p.Next()
		if ok || err != nil {
			return f, err
		}
		n, rerr := r.r.Read(r.scratch)
		if n > 0 {
			r.p.Feed(r.scratch[:n])
		}
		if rerr != nil && n == 0 {
			if errors.Is(rerr, io.EOF) && r.p.Buffered() > 0 {
				return Frame{}, ErrTruncated
			}
			return Frame{}, rerr
		}
	}
}
