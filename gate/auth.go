package gate

import (
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/courier-im/courier/messages/devicepb"
	"github.com/golang-jwt/jwt/v5"
)

// Authenticator verifies a LOGIN's token for (appCode, uid). Apps plug in
// their own by setting Config.Authenticator.
//
// Verify returns nil if the token proves the identity, or an error that
// is (or wraps) ErrAuthFailed, ErrTokenExpired or ErrUnknownApp; the gate
// answers LOGIN_ACK AUTH_FAILED, TOKEN_EXPIRED or UNKNOWN_APP (any other
// error counts as AUTH_FAILED). It is called on an event loop, for every
// LOGIN, from several loops at once: it must be safe for concurrent use
// and must not block (no network round trips; cache keys instead).
type Authenticator interface {
	Verify(appCode uint16, uid, token string) error
}

// loginCode maps an Authenticator error to the LOGIN_ACK code.
func loginCode(err error) devicepb.Code {
	switch {
	case errors.Is(err, ErrTokenExpired):
		return devicepb.Code_TOKEN_EXPIRED
	case errors.Is(err, ErrUnknownApp):
		return devicepb.Code_UNKNOWN_APP
	}
	return devicepb.Code_AUTH_FAILED
}

// tokenClaims are the claims of a Courier JWT: sub is the uid, app the
// appcode, exp the expiry (required).
type tokenClaims struct {
	App uint16 `json:"app"`
	jwt.RegisteredClaims
}

// JWTAuthenticator verifies HS256 JWTs signed with a per-app secret. The
// token's claims must be sub = uid, app = appcode, and an exp in the
// future. It is safe for concurrent use.
type JWTAuthenticator struct {
	secrets map[uint16][]byte
	parser  *jwt.Parser
}

// NewJWTAuthenticator returns an authenticator for the apps in secrets
// (appcode → HS256 secret). The map is copied.
func NewJWTAuthenticator(secrets map[uint16][]byte) *JWTAuthenticator {
	return &JWTAuthenticator{
		secrets: maps.Clone(secrets),
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
			jwt.WithExpirationRequired(),
		),
	}
}

// Verify implements Authenticator.
func (a *JWTAuthenticator) Verify(appCode uint16, uid, token string) error {
	secret, ok := a.secrets[appCode]
	if !ok {
		return fmt.Errorf("%w: appcode %d", ErrUnknownApp, appCode)
	}
	var claims tokenClaims
	_, err := a.parser.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return secret, nil })
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return fmt.Errorf("%w: %v", ErrTokenExpired, err)
	case err != nil:
		return fmt.Errorf("%w: %v", ErrAuthFailed, err)
	case claims.Subject != uid:
		return fmt.Errorf("%w: token is for another uid", ErrAuthFailed)
	case claims.App != appCode:
		return fmt.Errorf("%w: token is for appcode %d", ErrAuthFailed, claims.App)
	}
	return nil
}

// MintToken returns an HS256 JWT for (app, uid) that expires after ttl,
// as JWTAuthenticator expects it. It is for tools and tests; app-servers
// mint their tokens the same way in their own language.
func MintToken(secret []byte, app uint16, uid string, ttl time.Duration) (string, error) {
	now := time.Now()
	claims := tokenClaims{
		App: app,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   uid,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("gate: mint token: %w", err)
	}
	return s, nil
}
