package api

import (
	"context"
	"crypto/subtle"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// AllApps is the scope of an operator key: every app and the node-wide
// settings.
const AllApps = -1

// Keys maps an API key to the appcode it acts for (or AllApps).
type Keys map[string]int

type scopeKey struct{}

// scope is what a call's key allows, and the app's share of the node's
// budgets its calls count against (nil where the tap did not run).
type scope struct {
	app int
	sh  *share
}

func (s scope) allows(app uint32) bool { return s.app == AllApps || uint32(s.app) == app }

func (s scope) operator() bool { return s.app == AllApps }

// check returns PERMISSION_DENIED unless the key acts for app.
func (s scope) check(app uint32) error {
	if app == 0 || app > 0xFFFF {
		return status.Errorf(codes.InvalidArgument, "app_code %d: must be in [1, 65535]", app)
	}
	if !s.allows(app) {
		return status.Errorf(codes.PermissionDenied, "this API key acts for appcode %d, not %d", s.app, app)
	}
	return nil
}

// lookup returns the scope of the key in a call's metadata.
func (k Keys) lookup(md metadata.MD) (scope, error) {
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return scope{}, status.Error(codes.Unauthenticated, `missing API key: send metadata "authorization: Bearer <key>"`)
	}
	// The scheme is case-insensitive, followed by one or more spaces
	// (RFC 7235, 9110).
	scheme, key, ok := strings.Cut(vals[0], " ")
	key = strings.TrimLeft(key, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || key == "" {
		return scope{}, status.Error(codes.Unauthenticated, `malformed authorization metadata: want "Bearer <key>"`)
	}
	// Compare against every key in constant time per key, so the time
	// taken does not tell which prefix matched.
	found, app := false, 0
	for k, a := range k {
		if subtle.ConstantTimeCompare([]byte(k), []byte(key)) == 1 {
			found, app = true, a
		}
	}
	if !found {
		return scope{}, status.Error(codes.Unauthenticated, "unknown API key")
	}
	return scope{app: app}, nil
}

// public reports whether a method is served without an API key: the
// standard health service (for load balancers and orchestrators) and
// server reflection (the schema, which is public anyway).
func public(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.v1.ServerReflection/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.v1alpha.ServerReflection/")
}

// authenticated returns ctx with the call's scope: the one the tap
// handle found (admission.tap, before the request was read), or, on a
// server without it, the key's in the metadata.
func (k Keys) authenticated(ctx context.Context) (context.Context, error) {
	if ctx.Value(scopeKey{}) != nil {
		return ctx, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	s, err := k.lookup(md)
	if err != nil {
		return nil, err
	}
	return context.WithValue(ctx, scopeKey{}, s), nil
}

type scopedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s scopedStream) Context() context.Context { return s.ctx }

func (k Keys) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if public(info.FullMethod) {
		return h(srv, ss)
	}
	ctx, err := k.authenticated(ss.Context())
	if err != nil {
		return err
	}
	return h(srv, scopedStream{ss, ctx})
}

// scopeOf returns the call's scope: the tap's (in its call), or the
// interceptors'.
func scopeOf(ctx context.Context) scope {
	switch v := ctx.Value(scopeKey{}).(type) {
	case *call:
		return v.sc
	case scope:
		return v
	}
	return scope{}
}
