package messages

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Zstd compresses and decompresses frame bodies (flag bit 0). It is safe for
// concurrent use; one per process is enough.
type Zstd struct {
	enc *zstd.Encoder
	dec *zstd.Decoder
	max int
}

// NewZstd returns a codec whose decompressed bodies are capped at maxBody
// bytes. A bomb costs at most maxBody plus one zstd block (128 KiB) of
// memory before it is refused.
func NewZstd(maxBody uint32) (*Zstd, error) {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1),
		zstd.WithLowerEncoderMem(true),
		zstd.WithZeroFrames(true))
	if err != nil {
		return nil, fmt.Errorf("messages: zstd encoder: %w", err)
	}
	window := uint64(maxBody)
	if window < zstd.MinWindowSize {
		window = zstd.MinWindowSize
	}
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(uint64(maxBody)),
		zstd.WithDecoderMaxWindow(window),
		zstd.WithDecoderLowmem(true))
	if err != nil {
		return nil, fmt.Errorf("messages: zstd decoder: %w", err)
	}
	return &Zstd{enc: enc, dec: dec, max: int(maxBody)}, nil
}

// Compress appends the compressed form of src to dst.
func (z *Zstd) Compress(dst, src []byte) []byte {
	return z.enc.EncodeAll(src, dst)
}

// Decompress appends the decompressed form of src to dst. It returns
// ErrDecompress if src is not zstd or decompresses to more than the cap.
func (z *Zstd) Decompress(dst, src []byte) ([]byte, error) {
	start := len(dst)
	out, err := z.dec.DecodeAll(src, dst)
	if err != nil || len(out)-start > z.max {
		return dst, ErrDecompress
	}
	return out, nil
}
