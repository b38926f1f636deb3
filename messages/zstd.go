package messages

import (
	"errors"
	"fmt"
	"runtime"
	"slices"

	"github.com/klauspost/compress/zstd"
)

// MaxZstdWindow is the largest window a compressed body's zstd frame may
// declare: 128 MiB (a window log of 27), the most the reference decoder
// accepts by default, so that any standard encoder's output decodes
// without long-distance settings (a streaming encoder that does not know
// the size in advance declares a window of 1–8 MiB even for a few bytes,
// and zstd's --ultra levels 20–22 declare 32–128 MiB). With a frame limit
// above it the limit is accepted too. The window costs no memory of its
// own: bodies are decoded whole into the output buffer, which is capped at
// the frame limit.
const MaxZstdWindow = 128 << 20

// Zstd compresses and decompresses frame bodies (flag bit 0). It is safe
// for concurrent use; one per process is enough. Compressions run on the
// callers' goroutines, each with an encoder of its own: concurrent
// callers never wait for each other. Decompressions share a small pool of
// decoders; a goroutine that decompresses a lot (an event loop) should
// keep its own ZstdDecoder instead.
type Zstd struct {
	max      uint32
	encoders chan *zstd.Encoder // idle encoders, kept for reuse
	decoders chan *ZstdDecoder  // idle decoders, kept for reuse
}

// encoderOptions make each encoder single-goroutine (EncodeAll runs on
// the caller) and small.
var encoderOptions = []zstd.EOption{
	zstd.WithEncoderLevel(zstd.SpeedFastest),
	zstd.WithEncoderConcurrency(1),
	zstd.WithLowerEncoderMem(true),
	zstd.WithZeroFrames(true),
}

// NewZstd returns a codec whose decompressed bodies are capped at maxBody
// bytes. A bomb costs at most maxBody plus one zstd block (128 KiB) of
// memory before it is refused.
func NewZstd(maxBody uint32) (*Zstd, error) {
	enc, err := zstd.NewWriter(nil, encoderOptions...)
	if err != nil {
		return nil, fmt.Errorf("messages: zstd encoder: %w", err)
	}
	// As many idle encoders are kept as goroutines are likely to compress
	// at once (the actors' dispatcher runs 4 per CPU); more callers than
	// that get a fresh encoder that is dropped afterwards.
	z := &Zstd{
		max:      maxBody,
		encoders: make(chan *zstd.Encoder, 4*runtime.GOMAXPROCS(0)),
		decoders: make(chan *ZstdDecoder, runtime.GOMAXPROCS(0)),
	}
	z.encoders <- enc
	return z, nil
}

// Compress appends the compressed form of src to dst (a frame with its
// content size, in one block for a frame body). It never waits for
// another caller.
func (z *Zstd) Compress(dst, src []byte) []byte {
	var enc *zstd.Encoder
	select {
	case enc = <-z.encoders:
	default:
		// The options were checked by NewZstd: this cannot fail.
		enc, _ = zstd.NewWriter(nil, encoderOptions...)
	}
	dst = enc.EncodeAll(src, dst)
	select {
	case z.encoders <- enc:
	default: // enough idle encoders kept
	}
	return dst
}

// Decompress appends the decompressed form of src to dst, like
// ZstdDecoder.Decompress, with a decoder from the codec's pool (made on
// first use).
func (z *Zstd) Decompress(dst, src []byte) ([]byte, error) {
	var d *ZstdDecoder
	select {
	case d = <-z.decoders:
	default:
		var err error
		if d, err = NewZstdDecoder(z.max); err != nil {
			return dst, err
		}
	}
	out, err := d.Decompress(dst, src)
	select {
	case z.decoders <- d:
	default:
	}
	return out, err
}

// ZstdDecoder decompresses frame bodies for one goroutine at a time (the
// gate keeps one per event loop, not per connection). It accepts declared
// windows up to MaxZstdWindow and caps the output at its maxBody; its
// own memory is a few hundred KiB, whatever the window.
type ZstdDecoder struct {
	dec *zstd.Decoder
	max int
}

// NewZstdDecoder returns a decoder whose output is capped at maxBody bytes.
func NewZstdDecoder(maxBody uint32) (*ZstdDecoder, error) {
	window := max(uint64(maxBody), MaxZstdWindow)
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		// The decoder would lower the window limit to the output limit:
		// the output cap is the buffer's capacity instead (below).
		zstd.WithDecoderMaxMemory(window),
		zstd.WithDecoderMaxWindow(window),
		zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return nil, fmt.Errorf("messages: zstd decoder: %w", err)
	}
	return &ZstdDecoder{dec: dec, max: int(maxBody)}, nil
}

// Decompress appends the decompressed form of src to dst. It returns dst
// and ErrDecompress if src is not zstd, declares a window above
// MaxZstdWindow, or decompresses to more than the cap. A frame that
// declares its content size above the cap is refused before decoding;
// one that does not is refused after at most one block (128 KiB) past
// the cap. dst may be reused across calls: its capacity is grown to
// len(dst) plus what the frame declares it holds (or 64 KiB, or 16 times
// src), and to the cap only if that is too little.
func (d *ZstdDecoder) Decompress(dst, src []byte) ([]byte, error) {
	if len(src) == 0 {
		// Not a zstd frame: the decoder would answer with nothing.
		return dst, ErrDecompress
	}
	// Room for what the frame says it holds (a frame that declares more
	// than the cap is refused here), else a guess; the whole cap only
	// when that was too little. A cap of 64 MiB (a client's) must not
	// cost 64 MiB per body of a few hundred bytes.
	room := min(d.max, max(64<<10, 16*len(src)))
	var h zstd.Header
	if h.Decode(src) == nil && h.HasFCS {
		if h.FrameContentSize > uint64(d.max) {
			return dst, ErrDecompress
		}
		room = int(h.FrameContentSize)
	}
	start := len(dst)
	for {
		buf := slices.Grow(dst, room)
		// The decoder stops where the capacity ends.
		out, err := d.dec.DecodeAll(src, buf[:start:start+room])
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) && room < d.max {
			room = d.max // several frames, or a guess too small
			continue
		}
		if err != nil || len(out)-start > d.max {
			return dst, ErrDecompress
		}
		return out, nil
	}
}
