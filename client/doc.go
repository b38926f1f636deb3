// Package client is a Go client of Courier's device protocol
// (docs/protocol.md), for apps, tools and tests: it connects to a gate (an
// address, or the gates a discovery endpoint lists), logs in with a token
// from the app-server, keeps the session alive on the interval LOGIN_ACK
// gives, and hands the app the pushes it receives (S2C from app-servers,
// C2C_PUSH from other users), acknowledging each once the app handled it:
// when the app calls Recv (or Pull) again after Recv returned it, or Ack
// (with Config.ManualAck, only Ack; one not acknowledged is returned again
// when the server redelivers it). The app sends C2S upstream and C2C to
// other users; each send waits for its answer and is resent with the same
// client message id until it comes. Bodies are zstd-compressed both ways
// when the server agrees.
//
// When the connection drops, the client reconnects with jittered
// exponential backoff, logs in again, PULLs what came after the last seq
// the app received (so there is no gap), resends unanswered sends and
// unconfirmed C2C_PUSH_ACKs, and drops the duplicates the server's
// redeliveries bring (by msg_id). What it sends of its own accord is paced
// under the gate's per-connection limits (Config.FrameRate, ByteRate): a
// client that reconnects with a full outbox sends it over seconds rather
// than be closed with RATE_LIMITED. A message Pull returns is not returned
// by Recv too, though the server pushes it as well. When a write fails,
// the client reads what the server sent before it closed, so a KICKOUT is
// not missed for a broken pipe. After KICKOUT SERVER_SHUTDOWN it
// reconnects within a short random delay; after LOGGED_IN_ELSEWHERE,
// KICKED_BY_OPERATOR, KICKED_BY_APP_SERVER and UID_BLACKLISTED, and after a
// login refusal that retrying cannot fix, it stops: Recv returns the
// *KickedError or *LoginError.
//
// Goroutines: a Client has one goroutine that owns all its state (the
// connection, the outbox, the received queue), a reader goroutine per
// connection, and one per connection attempt; the API's methods talk to
// the owner through channels and may be called from any goroutine; with
// OnState, one more calls it. Close (or Logout) ends them all before it
// returns, except two it cannot wait for: OnState's when Close is called
// from OnState, and a TokenSource call that ignores its context (it is
// abandoned after DialTimeout; its goroutine ends when it returns).
//
// What may be lost where: nothing acknowledged by the server is lost by
// the client. Messages received but not yet returned by Recv when the
// client stops are not acknowledged, nor (by default) those Recv or Pull
// returned since the app's last call of either, so the server delivers
// them again to the next session. The de-duplication memory
// (Config.DedupSize ids) and LastSeq live in memory only: an app that must
// not see a message twice across restarts persists the ids it handled and
// LastSeq (pass it as Config.ResumeSeq). A send whose context ends before
// its answer may or may not have been accepted; resend it with the same
// client message id; one that protobuf cannot encode (a string not valid
// UTF-8) is refused before it is queued (ErrNotUTF8).
// The connection is read all the time, answers included, however far
// behind the app is: past Config.RecvBuffer waiting messages a stored one
// is left unacknowledged (the server delivers it again) and a
// fire-and-forget push, which nothing keeps, is dropped and counted
// (DroppedPushes; they may fill three quarters of the buffer).
//
// Conn is the layer below: one connection's framing, compression and body
// codecs, for tests and tools that need to write arbitrary frames.
package client
