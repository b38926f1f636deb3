package gate

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The default authenticator's token check, on every LOGIN. golang-jwt's
// parser costs about 10 µs and 47 allocations per token here (a new HMAC,
// the header decoded into a map, then the claims); this does the same
// checks in a third of that. It accepts exactly what
// jwt.NewParser(jwt.WithValidMethods("HS256"), jwt.WithExpirationRequired())
// accepts: three base64url segments (unpadded), a JSON header whose "alg"
// is "HS256", a valid HMAC-SHA256 signature, and claims that decode into
// tokenClaims and pass golang-jwt's own Validator; only the order differs
// (the signature is checked before the claims are decoded, so a forged
// token costs no JSON decoding). Claims of the usual shape are decoded by
// decodeClaimsFast, anything else by encoding/json (BenchmarkJWTVerify:
// 1.0 µs and 6 allocations per token; 4.3 µs and 21 with encoding/json).

// appKey is an app's secret with a pool of HMACs keyed with it.
type appKey struct {
	secret []byte
	macs   sync.Pool // *macState
}

// macState is an HMAC-SHA256 keyed with an app's secret, and scratch
// space for the bytes it reads.
type macState struct {
	mac hash.Hash
	buf []byte
	raw []byte // the decoded claims
}

func newAppKey(secret []byte) *appKey {
	k := &appKey{secret: secret}
	k.macs.New = func() any { return &macState{mac: hmac.New(sha256.New, k.secret)} }
	return k
}

// validSignature reports whether sig (base64url, unpadded) is the
// HMAC-SHA256 of signed with the app's secret.
func (st *macState) validSignature(signed, sig string) bool {
	var want, got [sha256.Size]byte
	if len(sig) != base64.RawURLEncoding.EncodedLen(len(want)) {
		return false
	}
	st.buf = append(st.buf[:0], sig...)
	if n, err := base64.RawURLEncoding.Decode(want[:], st.buf); err != nil || n != len(want) {
		return false
	}
	st.buf = append(st.buf[:0], signed...)
	st.mac.Reset()
	_, _ = st.mac.Write(st.buf)
	st.mac.Sum(got[:0])
	return hmac.Equal(want[:], got[:])
}

// decode decodes seg (base64url, unpadded) into the state's scratch
// space: the result is valid until the state's next use.
func (st *macState) decode(seg string) ([]byte, error) {
	st.buf = append(st.buf[:0], seg...)
	n := base64.RawURLEncoding.DecodedLen(len(seg))
	if cap(st.raw) < n {
		st.raw = make([]byte, n)
	}
	n, err := base64.RawURLEncoding.Decode(st.raw[:n], st.buf)
	return st.raw[:n], err
}

// release returns the state to its app's pool, unless a long token grew
// its scratch space.
func (k *appKey) release(st *macState) {
	if cap(st.buf) > MaxTokenLen || cap(st.raw) > MaxTokenLen {
		st.buf, st.raw = nil, nil
	}
	k.macs.Put(st)
}

// parse verifies token with key and decodes and validates its claims
// (exp required, nbf); errors wrap golang-jwt's (ErrTokenExpired among
// them).
func (a *JWTAuthenticator) parse(token string, key *appKey, claims *tokenClaims) error {
	header, rest, ok := strings.Cut(token, ".")
	payload, sig, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 || strings.Contains(sig, ".") {
		return fmt.Errorf("%w: token contains an invalid number of segments", jwt.ErrTokenMalformed)
	}
	if err := a.checkHeader(header); err != nil {
		return err
	}
	st := key.macs.Get().(*macState)
	defer key.release(st)
	if !st.validSignature(token[:len(header)+1+len(payload)], sig) {
		return fmt.Errorf("%w: %w", jwt.ErrTokenSignatureInvalid, jwt.ErrSignatureInvalid)
	}
	raw, err := st.decode(payload)
	if err != nil {
		return fmt.Errorf("%w: could not base64 decode claim: %v", jwt.ErrTokenMalformed, err)
	}
	if !decodeClaimsFast(raw, claims) {
		*claims = tokenClaims{}
		if err := json.Unmarshal(raw, claims); err != nil {
			return fmt.Errorf("%w: could not JSON decode claim: %v", jwt.ErrTokenMalformed, err)
		}
	}
	if err := a.validator.Validate(claims); err != nil {
		return fmt.Errorf("%w: %w", jwt.ErrTokenInvalidClaims, err)
	}
	return nil
}

// checkHeader accepts a header segment that decodes to a JSON object
// whose "alg" is "HS256" (as golang-jwt reads it: into a map). The last
// one accepted is remembered: tokens minted by one app-server share it.
func (a *JWTAuthenticator) checkHeader(seg string) error {
	if last := a.header.Load(); last != nil && *last == seg {
		return nil
	}
	return a.checkNewHeader(seg)
}

// checkNewHeader is checkHeader of a header not remembered (apart, so
// that the remembered one's check does not move seg to the heap).
func (a *JWTAuthenticator) checkNewHeader(seg string) error {
	raw, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return fmt.Errorf("%w: could not base64 decode header: %v", jwt.ErrTokenMalformed, err)
	}
	var h map[string]any
	if err := json.Unmarshal(raw, &h); err != nil {
		return fmt.Errorf("%w: could not JSON decode header: %v", jwt.ErrTokenMalformed, err)
	}
	if alg, _ := h["alg"].(string); alg != jwt.SigningMethodHS256.Alg() {
		return fmt.Errorf("%w: signing method %q is not HS256", jwt.ErrTokenSignatureInvalid, alg)
	}
	a.header.Store(&seg)
	return nil
}

// decodeClaimsFast decodes the claims of a token as app-servers mint them
// (MintToken, and jwt libraries in other languages): one JSON object whose
// keys are some of "app", "sub", "exp", "iat" and "nbf", each once, spelt
// exactly so, with a plain string (no escapes, ASCII) for sub and plain
// non-negative integers for the others. It sets what encoding/json would
// set from them (golang-jwt's NumericDate of an integer is time.Unix(n, 0)
// truncated to jwt.TimePrecision). For anything else (other or repeated
// keys, case variants, escapes, nulls, fractions, exponents, signs, leading
// zeros, app above 65535, numbers of more than 15 digits, trailing bytes)
// it returns false, having maybe set some fields, and the caller decodes
// raw with encoding/json, which then decides.
func decodeClaimsFast(raw []byte, c *tokenClaims) bool {
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return false
	}
	i = skipSpace(raw, i+1)
	var seen uint8
	if i < len(raw) && raw[i] == '}' {
		return skipSpace(raw, i+1) == len(raw)
	}
	for {
		key, j, ok := plainString(raw, i)
		if !ok {
			return false
		}
		i = skipSpace(raw, j)
		if i >= len(raw) || raw[i] != ':' {
			return false
		}
		i = skipSpace(raw, i+1)
		var bit uint8
		switch string(key) {
		case "sub":
			bit = 1
			v, j, ok := plainString(raw, i)
			if !ok {
				return false
			}
			c.Subject, i = string(v), j
		case "app", "exp", "iat", "nbf":
			n, j, ok := plainInt(raw, i)
			if !ok {
				return false
			}
			i = j
			switch key[0] {
			case 'a':
				if n > 65535 {
					return false
				}
				bit, c.App = 2, uint16(n)
			case 'e':
				bit, c.ExpiresAt = 4, jwt.NewNumericDate(time.Unix(n, 0))
			case 'i':
				bit, c.IssuedAt = 8, jwt.NewNumericDate(time.Unix(n, 0))
			default:
				bit, c.NotBefore = 16, jwt.NewNumericDate(time.Unix(n, 0))
			}
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		i = skipSpace(raw, i)
		if i >= len(raw) {
			return false
		}
		switch raw[i] {
		case ',':
			i = skipSpace(raw, i+1)
		case '}':
			return skipSpace(raw, i+1) == len(raw)
		default:
			return false
		}
	}
}

// skipSpace returns the index of the first byte at or after i that is not
// JSON whitespace.
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString reads a JSON string at b[i:] made of printable ASCII without
// escapes, and returns its contents and the index after it.
func plainString(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, 0, false
		}
	}
	return nil, 0, false
}

// plainInt reads a JSON number at b[i:] that is a non-negative integer of
// at most 15 digits (exact as a float64) without a leading zero, and
// returns it and the index after it.
func plainInt(b []byte, i int) (int64, int, bool) {
	j := i
	var n int64
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		n = n*10 + int64(b[j]-'0')
		j++
	}
	switch {
	case j == i || j-i > 15 || (b[i] == '0' && j-i > 1):
		return 0, 0, false
	case j < len(b) && (b[j] == '.' || b[j] == 'e' || b[j] == 'E'):
		return 0, 0, false
	}
	return n, j, true
}
