package gate

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
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
// appcode, exp the expiry (required), iat the issue time (required when
// a maximum lifetime is set), nbf optional.
type tokenClaims struct {
	App uint16 `json:"app"`
	jwt.RegisteredClaims
}

// MaxIssuedAtSkew is how far in the future a token's iat may be (the
// app-server's clock ahead of the gate's) when a maximum lifetime is set.
const MaxIssuedAtSkew = time.Minute

// JWTAuthenticator verifies HS256 JWTs signed with a per-app secret. The
// token's claims must be sub = uid, app = appcode, an exp in the future,
// an nbf (if present) in the past, and, when a maximum lifetime is set,
// an iat at most MaxIssuedAtSkew ahead of now with exp - iat at most the
// maximum. It is safe for concurrent use.
//
// It checks what golang-jwt's parser (HS256 only, exp required) checks,
// in a cheaper way, since every LOGIN pays for it on an event loop
// (jwt.go): the signature is verified with a reused HMAC per app before
// the claims are decoded, and the header of the last accepted token is
// remembered instead of being decoded again.
type JWTAuthenticator struct {
	apps        map[uint16]*appKey
	validator   *jwt.Validator
	maxLifetime time.Duration
	header      atomic.Pointer[string] // base64 header segment last found to say alg HS256
}

// NewJWTAuthenticator returns an authenticator for the apps in secrets
// (appcode → HS256 secret). The map is copied. maxLifetime > 0 refuses
// tokens without iat or whose exp - iat exceeds it; 0 accepts any
// lifetime.
func NewJWTAuthenticator(secrets map[uint16][]byte, maxLifetime time.Duration) *JWTAuthenticator {
	a := &JWTAuthenticator{
		apps: make(map[uint16]*appKey, len(secrets)),
		// The leeway is for nbf (and iat): an app-server whose clock runs
		// a little ahead of the gate's, minting tokens valid from "now",
		// locked its users out (AUTH_FAILED, which a client stops on).
		// exp is checked without it in Verify.
		validator:   jwt.NewValidator(jwt.WithExpirationRequired(), jwt.WithLeeway(MaxIssuedAtSkew)),
		maxLifetime: maxLifetime,
	}
	for app, secret := range secrets {
		a.apps[app] = newAppKey(slices.Clone(secret))
	}
	return a
}

// Verify implements Authenticator.
func (a *JWTAuthenticator) Verify(appCode uint16, uid, token string) error {
	key, ok := a.apps[appCode]
	if !ok {
		return fmt.Errorf("%w: appcode %d", ErrUnknownApp, appCode)
	}
	var claims tokenClaims
	err := a.parse(token, key, &claims)
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return fmt.Errorf("%w: %v", ErrTokenExpired, err)
	case err != nil:
		return fmt.Errorf("%w: %v", ErrAuthFailed, err)
	case !time.Now().Before(claims.ExpiresAt.Time):
		return fmt.Errorf("%w: %v", ErrTokenExpired, jwt.ErrTokenExpired)
	case claims.Subject != uid:
		return fmt.Errorf("%w: token is for another uid", ErrAuthFailed)
	case claims.App != appCode:
		return fmt.Errorf("%w: token is for appcode %d", ErrAuthFailed, claims.App)
	}
	return a.checkLifetime(&claims)
}

// checkLifetime refuses a token that may live longer than the maximum:
// without iat, with an iat in the future (which would stretch the
// lifetime), or with exp - iat above the maximum. exp is known present.
func (a *JWTAuthenticator) checkLifetime(c *tokenClaims) error {
	if a.maxLifetime == 0 {
		return nil
	}
	if c.IssuedAt == nil {
		return fmt.Errorf("%w: token has no iat (required with a maximum token lifetime)", ErrAuthFailed)
	}
	iat, exp := c.IssuedAt.Time, c.ExpiresAt.Time
	if iat.After(time.Now().Add(MaxIssuedAtSkew)) {
		return fmt.Errorf("%w: token iat is in the future", ErrAuthFailed)
	}
	if life := exp.Sub(iat); life > a.maxLifetime {
		return fmt.Errorf("%w: token lifetime %v (exp - iat) above the maximum %v", ErrAuthFailed, life, a.maxLifetime)
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
