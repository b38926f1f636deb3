package gate

import (
	"errors"
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
