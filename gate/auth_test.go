package gate

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestJWTRulesRefuseEveryBadToken has one case per rule of the default
// authenticator: removing any rule (the HS256-only method list, exp
// required, nbf, the maximum lifetime, iat required, the app and sub
// checks) makes its case fail.
func TestJWTRulesRefuseEveryBadToken(t *testing.T) {
	secret := []byte("secret-of-app-one-0123456789abcd")
	other := []byte("secret-of-app-two-0123456789abcd")
	const maxLife = 24 * time.Hour
	a := NewJWTAuthenticator(map[uint16][]byte{1: secret, 2: other}, maxLife)
	now := time.Now()
	unix := func(d time.Duration) int64 { return now.Add(d).Unix() }
	sign := func(m jwt.SigningMethod, key []byte, claims jwt.MapClaims) string {
		t.Helper()
		s, err := jwt.NewWithClaims(m, claims).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	good := func() jwt.MapClaims {
		return jwt.MapClaims{"sub": "alice", "app": 1, "iat": unix(-time.Minute), "exp": unix(time.Hour)}
	}
	with := func(k string, v any) jwt.MapClaims {
		c := good()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	hs256 := jwt.SigningMethodHS256
	tests := []struct {
		name  string
		app   uint16
		token string
		want  error // nil: accepted
	}{
		{"valid token", 1, sign(hs256, secret, good()), nil},
		{"lifetime exactly the maximum", 1, sign(hs256, secret, with("exp", unix(-time.Minute+maxLife))), nil},
		{"no exp", 1, sign(hs256, secret, with("exp", nil)), ErrAuthFailed},
		{"expired", 1, sign(hs256, secret, with("exp", unix(-time.Second))), ErrTokenExpired},
		{"HS384 with the same secret", 1, sign(jwt.SigningMethodHS384, secret, good()), ErrAuthFailed},
		{"HS512 with the same secret", 1, sign(jwt.SigningMethodHS512, secret, good()), ErrAuthFailed},
		{"alg none", 1, func() string {
			s, _ := jwt.NewWithClaims(jwt.SigningMethodNone, good()).SignedString(jwt.UnsafeAllowNoneSignatureType)
			return s
		}(), ErrAuthFailed},
		{"nbf in the future", 1, sign(hs256, secret, with("nbf", unix(time.Hour))), ErrAuthFailed},
		{"nbf passed", 1, sign(hs256, secret, with("nbf", unix(-time.Second))), nil},
		// The issuer's clock runs a little ahead: its "now" is not yet
		// the gate's.
		{"nbf seconds ahead (clock skew)", 1, sign(hs256, secret, with("nbf", unix(5*time.Second))), nil},
		{"no iat", 1, sign(hs256, secret, with("iat", nil)), ErrAuthFailed},
		{"lifetime over the maximum", 1, sign(hs256, secret, with("exp", unix(-time.Minute+maxLife+time.Second))), ErrAuthFailed},
		{"iat in the future", 1, sign(hs256, secret, jwt.MapClaims{"sub": "alice", "app": 1,
			"iat": unix(30 * 24 * time.Hour), "exp": unix(30*24*time.Hour + time.Hour)}), ErrAuthFailed},
		{"wrong app", 1, sign(hs256, secret, with("app", 2)), ErrAuthFailed},
		{"no app", 1, sign(hs256, secret, with("app", nil)), ErrAuthFailed},
		{"wrong sub", 1, sign(hs256, secret, with("sub", "bob")), ErrAuthFailed},
		{"no sub", 1, sign(hs256, secret, with("sub", nil)), ErrAuthFailed},
		{"signed with another app's secret", 1, sign(hs256, other, good()), ErrAuthFailed},
		{"unknown app", 9, sign(hs256, secret, with("app", 9)), ErrUnknownApp},
		{"garbage", 1, "not-a-jwt", ErrAuthFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := a.Verify(tt.app, "alice", tt.token)
			switch {
			case tt.want == nil && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// TestJWTWithoutMaximumLifetime: with the maximum off (0), iat is
// optional and a long-lived token passes; exp stays required.
func TestJWTWithoutMaximumLifetime(t *testing.T) {
	secret := []byte("secret-of-app-one-0123456789abcd")
	a := NewJWTAuthenticator(map[uint16][]byte{1: secret}, 0)
	long, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u", "app": 1,
		"exp": time.Now().Add(10 * 365 * 24 * time.Hour).Unix()}).SignedString(secret)
	if err := a.Verify(1, "u", long); err != nil {
		t.Fatalf("a 10-year token without iat: %v", err)
	}
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u", "app": 1}).SignedString(secret)
	if err := a.Verify(1, "u", noExp); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("no exp: %v", err)
	}
}

// TestJWTCheckMatchesGolangJWT: the gate's own token check (jwt.go)
// accepts exactly the tokens golang-jwt's parser accepts with the same
// rules, and calls the same ones expired, over tokens forged and mangled
// in every part; a remembered header never lets another one through.
func TestJWTCheckMatchesGolangJWT(t *testing.T) {
	secret := []byte("secret-of-app-one-0123456789abcd")
	a := NewJWTAuthenticator(map[uint16][]byte{1: secret}, 0)
	ref := jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired())
	b64 := base64.RawURLEncoding.EncodeToString
	sign := func(header, claims string) string {
		signed := b64([]byte(header)) + "." + b64([]byte(claims))
		mac := hmac.New(sha256.New, secret)
		mac.Write([]byte(signed))
		return signed + "." + b64(mac.Sum(nil))
	}
	exp := time.Now().Add(time.Hour).Unix()
	past := time.Now().Add(-time.Hour).Unix()
	good := fmt.Sprintf(`{"sub":"alice","app":1,"exp":%d}`, exp)
	hs := `{"alg":"HS256","typ":"JWT"}`
	valid := sign(hs, good)
	tokens := []string{
		valid,
		sign(`{"alg":"HS256"}`, good),
		sign(`{"typ":"JWT","alg":"HS256","kid":"k1"}`, good),
		sign(`{"ALG":"HS256"}`, good),
		sign(`{"alg":"HS384"}`, good),
		sign(`{"alg":"none"}`, good),
		sign(`{"alg":"HS256","alg":"none"}`, good),
		sign(`{"alg":"none","alg":"HS256"}`, good),
		sign(`{"alg":["HS256"]}`, good),
		sign(`["HS256"]`, good),
		sign(`null`, good),
		sign(`not json`, good),
		sign(hs, fmt.Sprintf(`{"sub":"alice","app":1,"exp":%d}`, past)),
		sign(hs, fmt.Sprintf(`{"sub":"alice","app":1,"exp":%d,"nbf":%d}`, exp, exp)),
		sign(hs, fmt.Sprintf(`{"sub":"alice","app":1,"exp":"%d"}`, exp)),
		sign(hs, fmt.Sprintf(`{"sub":"alice","app":70000,"exp":%d}`, exp)),
		sign(hs, fmt.Sprintf(`{"sub":"alice","app":1,"exp":%d.5}`, exp)),
		sign(hs, `{"sub":"alice","app":1}`),
		// Claims the fast decoder leaves to encoding/json (jwt.go).
		sign(hs, fmt.Sprintf(`{"SUB":"alice","App":1,"exp":%d}`, exp)),
		sign(hs, fmt.Sprintf(`{"sub":"bob","sub":"alice","app":1,"exp":%d}`, exp)),
		sign(hs, fmt.Sprintf(`{"sub":"al\u0069ce","app":1,"exp":%d,"aud":"x","jti":"j"}`, exp)),
		sign(hs, fmt.Sprintf(`{"sub":"alice","app":1,"exp":%d,"exp":null}`, exp)),
		sign(hs, fmt.Sprintf(`{"sub":"alice","app":1,"exp":%de0}`, exp)),
		sign(hs, fmt.Sprintf(`{"sub":"alice","app":1,"exp":%d} `, exp)),
		sign(hs, `[]`),
		sign(hs, `{"sub":"alice"`),
		valid + ".",
		valid + "=",
		strings.TrimSuffix(valid, valid[len(valid)-2:]),
		valid[:len(valid)-1] + "A",
		strings.Replace(valid, ".", "..", 1),
		b64([]byte(hs)) + "." + b64([]byte(good)) + ".",
		b64([]byte(hs)) + "." + b64([]byte(good)),
		"=" + valid,
		"",
		"..",
		"a.b.c",
	}
	for i, tok := range tokens {
		var claims tokenClaims
		_, refErr := ref.ParseWithClaims(tok, &claims, func(*jwt.Token) (any, error) { return secret, nil })
		err := a.Verify(1, "alice", tok)
		if (refErr == nil) != (err == nil) || errors.Is(refErr, jwt.ErrTokenExpired) != errors.Is(err, ErrTokenExpired) {
			t.Errorf("token %d %q: golang-jwt says %v, the gate %v", i, tok, refErr, err)
		}
		// Again, with the valid token's header remembered in between.
		_ = a.Verify(1, "alice", valid)
		if err2 := a.Verify(1, "alice", tok); (err2 == nil) != (err == nil) {
			t.Errorf("token %d %q: %v, then %v", i, tok, err, err2)
		}
	}
}

// BenchmarkJWTVerify is the gate's cost of verifying one LOGIN's token
// (the default authenticator, a token as MintToken makes it).
func BenchmarkJWTVerify(b *testing.B) {
	secret := []byte("secret-of-app-one-0123456789abcd")
	a := NewJWTAuthenticator(map[uint16][]byte{1: secret}, 30*24*time.Hour)
	tok, err := MintToken(secret, 1, "b1234567-000042", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := a.Verify(1, "b1234567-000042", tok); err != nil {
			b.Fatal(err)
		}
	}
}
