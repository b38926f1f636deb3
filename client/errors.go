package client

import (
	"errors"
	"fmt"

	"github.com/courier-im/courier/messages/devicepb"
)

// Errors of the client. Wrapped errors keep these as their cause: test
// with errors.Is; the typed errors below carry the server's code.
var (
	// ErrClosed: the client was closed (Close or Logout) or stopped for
	// good; Err says why.
	ErrClosed = errors.New("client: closed")
	// ErrProtocol: the server sent something the protocol does not allow
	// (a frame that does not decode, compression that was not agreed).
	// The connection is dropped and the client reconnects.
	ErrProtocol = errors.New("client: protocol violation by the server")
	// ErrTooLarge: a payload does not fit the gate's frame limit
	// (Config.MaxFrameSize); nothing was sent.
	ErrTooLarge = errors.New("client: message larger than the frame limit")
	// ErrOutboxFull: Config.MaxOutbox sends are already waiting for their
	// answer; nothing was queued.
	ErrOutboxFull = errors.New("client: outbox full")
	// ErrNoGate: neither Addr nor Discovery gave an address to connect to.
	ErrNoGate = errors.New("client: no gate address")
	// ErrNotUTF8: a string that goes in a protobuf string field (a
	// client message id, a receiver's uid, a LOGIN field) is not valid
	// UTF-8, which protobuf cannot encode; the error names the field, and
	// nothing was sent or queued.
	ErrNotUTF8 = errors.New("client: not valid UTF-8")
)

// LoginError is a LOGIN_ACK that refused the session.
type LoginError struct {
	Code   devicepb.Code
	Reason string
}

func (e *LoginError) Error() string {
	return fmt.Sprintf("client: login refused: %v %s", e.Code, e.Reason)
}

// Permanent reports whether logging in again cannot help without a change
// (a new token, configuration, or the user's action).
func (e *LoginError) Permanent() bool {
	switch e.Code {
	case devicepb.Code_UID_BLOCKED, devicepb.Code_UNKNOWN_APP, devicepb.Code_BAD_UID,
		devicepb.Code_BAD_LOGIN_FIELD, devicepb.Code_AUTH_FAILED, devicepb.Code_TOKEN_EXPIRED:
		return true
	}
	return false
}

// KickedError is a KICKOUT after which the client does not reconnect by
// itself: LOGGED_IN_ELSEWHERE, KICKED_BY_OPERATOR, KICKED_BY_APP_SERVER,
// UID_BLACKLISTED (docs/protocol.md §7).
type KickedError struct {
	Reason devicepb.KickReason
	Detail string
}

func (e *KickedError) Error() string {
	if e.Detail != "" {
		return fmt.Sprintf("client: kicked out: %v (%s)", e.Reason, e.Detail)
	}
	return fmt.Sprintf("client: kicked out: %v", e.Reason)
}

// ServerError is an ERROR frame that refused the connection at connect
// (SERVER_BUSY, RATE_LIMITED), returned by Dial when it gives up and by
// Conn.Login. An ERROR frame answering a send or a pull is that call's
// *ResultError; a RATE_LIMITED one ends the connection, and the send or
// pull it answers is sent again on the next.
type ServerError struct {
	Code   devicepb.Code
	Reason string
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("client: server error %v: %s", e.Code, e.Reason)
}

// ResultError is a request's answer with a code other than OK: C2C_ACK,
// C2S_ACK or PULL_ACK, or an ERROR frame that refused the request's frame
// (BAD_BODY, FRAME_TOO_LARGE, ...).
type ResultError struct {
	Code   devicepb.Code
	Reason string
}

func (e *ResultError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("client: %v: %s", e.Code, e.Reason)
	}
	return fmt.Sprintf("client: %v", e.Code)
}

// Temporary reports whether the same request (with the same client
// message id) may succeed later: INBOX_FULL, STORE_UNAVAILABLE,
// UPSTREAM_BUSY, UNAVAILABLE, INTERNAL and codes this client does not know.
func (e *ResultError) Temporary() bool {
	switch e.Code {
	case devicepb.Code_NO_SUBSCRIBER, devicepb.Code_BAD_RECEIVER, devicepb.Code_RECEIVER_BLOCKED,
		devicepb.Code_BAD_BODY, devicepb.Code_UNKNOWN_COMMAND, devicepb.Code_APP_MISMATCH,
		devicepb.Code_BAD_FLAGS, devicepb.Code_FRAME_TOO_LARGE, devicepb.Code_CLIENT_MSG_ID_TOO_LONG,
		devicepb.Code_MESSAGE_TOO_LARGE:
		return false
	}
	return true
}
