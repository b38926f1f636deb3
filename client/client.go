package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

// State is the state of a Client's connection.
type State int32

const (
	// StateConnecting: resolving, dialling or logging in.
	StateConnecting State = iota
	// StateConnected: logged in; messages flow.
	StateConnected
	// StateWaiting: disconnected, waiting before the next attempt.
	StateWaiting
	// StateClosed: stopped for good (Close, Logout, a permanent refusal
	// or kickout); Err says why.
	StateClosed
)

func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateWaiting:
		return "waiting"
	case StateClosed:
		return "closed"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Kind says where a message comes from.
type Kind uint8

const (
	// KindS2C is a push from an app-server (S2C).
	KindS2C Kind = 1
	// KindC2C is a message from another user (C2C_PUSH).
	KindC2C Kind = 2
)

func (k Kind) String() string {
	switch k {
	case KindS2C:
		return "S2C"
	case KindC2C:
		return "C2C"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Message is a message received: an S2C push, a C2C_PUSH, or a stored
// message returned by PULL.
type Message struct {
	Kind Kind
	// Seq is the message's inbox seq; 0 for a fire-and-forget push (not
	// stored, never redelivered, nothing to acknowledge).
	Seq     uint32
	MsgType uint16
	// MsgID is the platform's id: the key of acks and de-duplication.
	MsgID   string
	Payload []byte
	// FromUID and ClientMsgID are the sender's, for C2C messages.
	FromUID     string
	ClientMsgID string
	SentAt      time.Time
	// ExpiresAt is when the platform stops delivering it (zero: never).
	ExpiresAt time.Time
	// Redelivered (ManualAck only): Recv or Pull returned this message
	// before and it was not acknowledged, and the server delivered it
	// again on the same connection (its redelivery, from 2 s after the
	// delivery before, docs/protocol.md §9.3). Ack it once handled. The
	// client tells it from the last Config.DedupSize message ids: a
	// message held unacknowledged while more than that many others came
	// after it comes again unmarked.
	Redelivered bool

	// gen is the session it came on: the gate lets the acks of what it
	// delivered on a connection through beyond the frame rate, and only
	// those (ack).
	gen uint64
}

// C2CResult is the answer to a C2C: the message is stored in the
// receiver's inbox.
type C2CResult struct {
	MsgID       string
	ClientMsgID string
}

// C2SResult is the answer to a C2S: the platform holds the message for the
// app-servers.
type C2SResult struct {
	MsgID       string
	ClientMsgID string
}

// PullResult is a page of stored messages.
type PullResult struct {
	Messages []*Message
	// HasMore: more stored messages follow the last one; Pull again after
	// its seq.
	HasMore bool
}

// SendOption tunes one SendC2C or SendC2S call.
type SendOption func(*sendOpts)

type sendOpts struct{ clientMsgID string }

// WithClientMsgID sets the client message id (default: a new unique one):
// valid UTF-8 (else the send fails with ErrNotUTF8) of at most
// MaxClientMsgIDLen bytes. Reuse the id of an earlier send to resend the
// same message: the server stores a C2C only once per id
// (docs/protocol.md §10).
func WithClientMsgID(id string) SendOption { return func(o *sendOpts) { o.clientMsgID = id } }

// Client is a device's connection to Courier that stays up: it logs in,
// keeps the session alive, reconnects with backoff, resumes where it left
// off, and resends what was not answered. Its methods are safe for
// concurrent use. See the package documentation.
type Client struct {
	cfg  Config
	reqs chan any
	out  chan *Message
	quit chan struct{}
	done chan struct{}

	closeOnce sync.Once
	first     chan error // the first login's outcome, read by Dial
	// notified is closed when OnState's goroutine has made its last call
	// (nil without OnState).
	notified chan struct{}

	mu      sync.Mutex
	err     error // why the client stopped
	lastErr error // the last connection failure, for Dial's error

	// ackDue: Recv or Pull returned messages in the default mode that the
	// app's next call acknowledges (release).
	ackDue  atomic.Bool
	lastSeq atomic.Uint32
	dropped atomic.Uint64 // fire-and-forget pushes dropped past RecvBuffer
	state   atomic.Int32
	epoch   atomic.Uint64
	// frameLimit is the frame limit the last LOGIN_ACK announced (0:
	// none, Config.MaxFrameSize alone).
	frameLimit atomic.Uint32
	ids        atomic.Uint64
	idBase     string
	// conn is the session's connection (nil between sessions): Close
	// cuts short a write blocked on it (a stalled network), which would
	// otherwise hold the client's goroutine, and Close, for WriteTimeout.
	conn atomic.Pointer[Conn]
}

// Dial starts a client and returns once its first login succeeded. Until
// then it retries failed connections with backoff; it gives up when ctx
// ends (returning ctx's error and the last failure) or on a refusal that
// retrying cannot fix (*LoginError). After Dial returns, the client
// reconnects by itself until Close, Logout, or a *KickedError.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	cfg.fill()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	c := &Client{
		cfg:    cfg,
		reqs:   make(chan any),
		out:    make(chan *Message),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
		first:  make(chan error, 1),
		idBase: hex.EncodeToString(b[:]),
	}
	if cfg.OnState != nil {
		c.notified = make(chan struct{})
	}
	c.lastSeq.Store(cfg.ResumeSeq)
	l := newLoop(c)
	go l.run()
	select {
	case err := <-c.first:
		if err != nil {
			<-c.done
			c.joinOnState()
			return nil, err
		}
		return c, nil
	case <-ctx.Done():
		c.Close()
		c.mu.Lock()
		last := c.lastErr
		c.mu.Unlock()
		if last != nil {
			return nil, fmt.Errorf("client: %w (last attempt: %v)", ctx.Err(), last)
		}
		return nil, fmt.Errorf("client: %w", ctx.Err())
	}
}

// Recv returns the next message. In the default mode a message counts as
// handled once the app calls Recv (or Pull) again: the client
// acknowledges it then, or at once when the app calls Ack. Until then the
// server keeps it: the app that stops (a crash, Close) before its next
// call gets it again in a later session, de-duplicated by MsgID. So call
// Recv when done with the message before, from one goroutine (a call from
// any goroutine acknowledges what the others were given); an app that
// handles messages concurrently uses Config.ManualAck. Called in a loop,
// it keeps one message unacknowledged at most, far within the server's
// window. With Config.ManualAck, call Ack once it is handled; one not
// acknowledged comes again when the server redelivers it (Redelivered).
// Other duplicates (the same msg_id again) are not returned. Recv returns
// the client's error once it has stopped.
func (c *Client) Recv(ctx context.Context) (*Message, error) {
	if err := c.release(ctx); err != nil {
		return nil, err
	}
	select {
	case m := <-c.out:
		c.advance(m.Seq)
		if !c.cfg.ManualAck {
			c.ackDue.Store(true)
		}
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.done:
		return nil, c.Err()
	}
}

// Ack acknowledges a message returned by Recv or Pull. With ManualAck,
// call it once the message is handled. In the default mode it
// acknowledges now a message otherwise acknowledged at the app's next
// Recv or Pull (for an app that waits long before its next call), and
// does nothing for one already acknowledged. Acks of a connection that
// drops are sent again when the server redelivers the message.
func (c *Client) Ack(ctx context.Context, m *Message) error {
	return c.request(ctx, &ackReq{msg: m})
}

// SendC2C sends payload to another user of the same app and waits until
// the server has stored it in the receiver's inbox (C2C_ACK OK).
// Unanswered, it is resent with the same client message id after
// ResendAfter and after every reconnect (and after a RATE_LIMITED close);
// the server stores it once. A C2C_ACK RATE_LIMITED (over the identity's
// C2C rate, which Config.C2CRate paces under) sends it again as the
// pacing allows, until ctx ends. A
// C2C_ACK with another code is a *ResultError: if it is Temporary, call
// again later WithClientMsgID(result.ClientMsgID). When ctx ends first
// the message may or may not have been stored; resending it with the same
// id is safe.
func (c *Client) SendC2C(ctx context.Context, toUID string, msgtype uint16, payload []byte, opts ...SendOption) (C2CResult, error) {
	o := c.sendOptions(opts)
	if !utf8.ValidString(toUID) {
		return C2CResult{ClientMsgID: o.clientMsgID}, fmt.Errorf("%w: toUID %q", ErrNotUTF8, toUID)
	}
	body := &devicepb.C2C{ToUid: toUID, ClientMsgId: o.clientMsgID, Payload: payload}
	r, err := c.send(ctx, messages.CmdC2C, msgtype, o.clientMsgID, body)
	if err != nil {
		return C2CResult{ClientMsgID: o.clientMsgID}, err
	}
	return C2CResult{MsgID: r.msgID, ClientMsgID: o.clientMsgID}, nil
}

// SendC2S sends payload upstream to the app-servers subscribed to
// (appcode, msgtype) and waits for C2S_ACK. Unanswered, it is resent like
// a C2C (app-servers may then see it twice: they de-duplicate by
// client_msg_id). A C2S_ACK with another code than OK is a *ResultError.
func (c *Client) SendC2S(ctx context.Context, msgtype uint16, payload []byte, opts ...SendOption) (C2SResult, error) {
	o := c.sendOptions(opts)
	body := &devicepb.C2S{ClientMsgId: o.clientMsgID, Payload: payload}
	r, err := c.send(ctx, messages.CmdC2S, msgtype, o.clientMsgID, body)
	if err != nil {
		return C2SResult{ClientMsgID: o.clientMsgID}, err
	}
	return C2SResult{MsgID: r.msgID, ClientMsgID: o.clientMsgID}, nil
}

func (c *Client) sendOptions(opts []SendOption) sendOpts {
	var o sendOpts
	for _, f := range opts {
		f(&o)
	}
	if o.clientMsgID == "" {
		o.clientMsgID = c.idBase + "-" + strconv.FormatUint(c.ids.Add(1), 36)
	}
	return o
}

// MaxClientMsgIDLen is the longest client message id the server accepts
// (docs/protocol.md).
const MaxClientMsgIDLen = 128

func checkClientMsgID(id string) error {
	if len(id) > MaxClientMsgIDLen {
		return fmt.Errorf("client: client message id of %d bytes: at most %d", len(id), MaxClientMsgIDLen)
	}
	if !utf8.ValidString(id) {
		// proto.Size counts such a string, but Marshal refuses it: queued,
		// it would fail only when written.
		return fmt.Errorf("%w: client message id %q", ErrNotUTF8, id)
	}
	return nil
}

func (c *Client) send(ctx context.Context, cmd messages.Cmd, msgtype uint16, id string, body proto.Message) (sendResult, error) {
	if err := checkClientMsgID(id); err != nil {
		return sendResult{}, err
	}
	limit := c.cfg.MaxFrameSize
	if a := c.frameLimit.Load(); a != 0 && a < limit {
		limit = a // the gate's, smaller than configured
	}
	if n := proto.Size(body); n > int(limit) {
		return sendResult{}, fmt.Errorf("%w: %d-byte body, limit %d", ErrTooLarge, n, limit)
	}
	return c.enqueue(ctx, cmd, msgtype, id, body)
}

// enqueue hands a checked send to the client's goroutine and waits for
// its answer.
func (c *Client) enqueue(ctx context.Context, cmd messages.Cmd, msgtype uint16, id string, body proto.Message) (sendResult, error) {
	s := &sendReq{ctx: ctx, cmd: cmd, msgtype: msgtype, id: id, body: body, res: make(chan sendResult, 1)}
	if err := c.request(ctx, s); err != nil {
		return sendResult{}, err
	}
	select {
	case r := <-s.res:
		return r, r.err
	case <-ctx.Done():
		// The client's goroutine drops the send at its next resend check.
		return sendResult{}, ctx.Err()
	case <-c.done:
		return sendResult{}, c.Err()
	}
}

// Pull fetches stored messages with seq above afterSeq (at most limit; 0:
// the server's page size). It waits for a connection if there is none.
// In the default mode the page counts as handled once the app calls Pull
// (or Recv) again, and is acknowledged then, like a message from Recv;
// with ManualAck, Ack each. Pulled messages are not returned again by
// Recv; Pull itself reads the inbox by seq, so it returns what is stored
// in the range even if Recv (or an earlier Pull) returned it already:
// tell those by MsgID.
func (c *Client) Pull(ctx context.Context, afterSeq, limit uint32) (PullResult, error) {
	if err := c.release(ctx); err != nil {
		return PullResult{}, err
	}
	p := &pullReq{ctx: ctx, after: afterSeq, limit: limit, res: make(chan pullResult, 1)}
	if err := c.request(ctx, p); err != nil {
		return PullResult{}, err
	}
	select {
	case r := <-p.res:
		if r.err != nil {
			return PullResult{}, r.err
		}
		for _, m := range r.msgs {
			c.advance(m.Seq)
		}
		// Mark them seen now that the caller has them; until then Recv
		// waits.
		if c.request(context.WithoutCancel(ctx), &pullTaken{p: p, msgs: r.msgs}) == nil && !c.cfg.ManualAck && len(r.msgs) > 0 {
			c.ackDue.Store(true)
		}
		return PullResult{Messages: r.msgs, HasMore: r.hasMore}, nil
	case <-ctx.Done():
		// An answer that came meanwhile is given back: its messages stay
		// the server's to deliver.
		_ = c.request(context.WithoutCancel(ctx), &pullTaken{p: p, abandoned: true})
		return PullResult{}, ctx.Err()
	case <-c.done:
		return PullResult{}, c.Err()
	}
}

// release tells the client's goroutine that the app is done with what
// Recv and Pull returned before this call (default mode: acknowledged
// now). ackDue spares the round trip when there is nothing to release.
func (c *Client) release(ctx context.Context) error {
	if !c.ackDue.Swap(false) {
		return nil
	}
	// Not cut short by ctx: an app that stops its loop by cancelling
	// ctx has handled what the call before returned (request still ends
	// when the client stops).
	if err := c.request(context.WithoutCancel(ctx), releaseReq{}); err != nil {
		c.ackDue.Store(true)
		return err
	}
	return nil
}

// advance records that the app has the message of inbox seq.
func (c *Client) advance(seq uint32) {
	for seq > 0 {
		cur := c.lastSeq.Load()
		if seq <= cur || c.lastSeq.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// LastSeq returns the highest inbox seq handed to the app (by Recv or
// Pull; a Pull from an earlier seq may have handed it a later one). An
// app that persists it passes it as Config.ResumeSeq on its next start
// (with ManualAck, see ResumeSeq: persist what it acknowledged).
func (c *Client) LastSeq() uint32 { return c.lastSeq.Load() }

// DroppedPushes returns how many fire-and-forget pushes (seq 0) the
// client dropped because RecvBuffer messages were waiting for Recv.
// Stored messages are never dropped: past RecvBuffer they are left
// unacknowledged, and the server delivers them again.
func (c *Client) DroppedPushes() uint64 { return c.dropped.Load() }

// State returns the connection's state now.
func (c *Client) State() State { return State(c.state.Load()) }

// Epoch returns the current (or last) session's epoch.
func (c *Client) Epoch() uint64 { return c.epoch.Load() }

// Done is closed when the client has stopped for good; Err says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the client stopped: ErrClosed after Close or Logout, a
// *KickedError, a *LoginError; nil while it runs.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close stops the client: the connection is closed (the server treats it
// like a LOGOUT without answer), sends waiting for their answer fail with
// ErrClosed, and every goroutine of the client has ended when Close
// returns, OnState's included once its last call (StateClosed) returned
// (so OnState must not wait for what waits for Close), with two
// exceptions: a Close (or a failing Dial) called from any client's
// OnState callback does not wait for OnState's goroutine (the callback
// may be on it), and a TokenSource call still running is not waited for
// (its goroutine ends when it returns, Config.TokenSource). Messages
// received and not yet returned by Recv are not acknowledged, nor, in the
// default mode, those Recv or Pull returned since the app's last call of
// either (it may not have handled them; Logout acknowledges them): the
// server delivers them again to the next session. Safe to call more than
// once.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		close(c.quit)
		if conn := c.conn.Load(); conn != nil {
			conn.interrupt()
		}
	})
	<-c.done
	c.joinOnState()
	return nil
}

// joinOnState waits for OnState's goroutine to end, unless called on it.
func (c *Client) joinOnState() {
	if c.notified != nil && !onNotifyGoroutine() {
		<-c.notified
	}
}

// Logout ends the session with LOGOUT and waits for LOGOUT_ACK (or ctx),
// then closes the client. In the default mode what Recv and Pull
// returned last counts as handled: it is acknowledged before the LOGOUT
// (an app that calls Logout while another goroutine still handles a
// message uses Config.ManualAck, as for concurrent handling).
func (c *Client) Logout(ctx context.Context) error {
	// What Recv and Pull returned is handled: acknowledged before LOGOUT.
	_ = c.release(ctx)
	req := &logoutReq{}
	if err := c.request(ctx, req); err != nil {
		if errors.Is(err, ErrClosed) {
			c.joinOnState()
			return nil
		}
		c.Close()
		return err
	}
	select {
	case <-c.done:
		c.joinOnState()
		return nil
	case <-ctx.Done():
		c.Close()
		return ctx.Err()
	}
}

// request hands r to the client's goroutine.
func (c *Client) request(ctx context.Context, r any) error {
	select {
	case c.reqs <- r:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		if err := c.Err(); err != nil {
			return err
		}
		return ErrClosed
	}
}

func (c *Client) setErr(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

func (c *Client) setLastErr(err error) {
	c.mu.Lock()
	c.lastErr = err
	c.mu.Unlock()
}
