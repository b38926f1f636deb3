package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

// Requests from the API's goroutines to the client's goroutine.
type (
	sendReq struct {
		ctx     context.Context
		cmd     messages.Cmd // CmdC2C or CmdC2S
		msgtype uint16
		id      string
		body    proto.Message
		res     chan sendResult // buffered 1
		seq     uint32          // frame seq on the current connection, 0: not sent on it
		sentAt  time.Time
	}
	sendResult struct {
		msgID string
		err   error
	}
	pullReq struct {
		ctx          context.Context
		after, limit uint32
		res          chan pullResult // buffered 1
		seq          uint32
		sentAt       time.Time
	}
	pullResult struct {
		msgs    []*Message
		hasMore bool
		err     error
	}
	// ackReq is an explicit Ack.
	ackReq struct{ msg *Message }
	// releaseReq: the app called Recv or Pull again, so it is done with
	// what they returned before (default mode: acknowledged now).
	releaseReq struct{}
	// pullTaken ends the hand-over of a pull's messages: Pull returned
	// them to the app (they are marked seen, and, unless ManualAck,
	// acknowledged at the app's next call), or, with abandoned, its
	// context ended first (the messages stay the server's to deliver
	// again).
	pullTaken struct {
		p         *pullReq
		msgs      []*Message
		abandoned bool
	}
	logoutReq struct{}
)

type outKey struct {
	cmd messages.Cmd
	id  string
}

// dialResult is what a connection attempt produced.
type dialResult struct {
	conn  *Conn
	addr  string
	login *devicepb.Login
	ack   *devicepb.LoginAck
	addrs []string // from discovery: the gates to try next
	err   error
}

// readResult is one frame (or the error that ended reading).
type readResult struct {
	f   Frame
	err error
}

// session is one logged-in connection.
type session struct {
	conn       *Conn
	addr       string
	frames     chan readResult
	stop       chan struct{} // closed to stop the reader
	readerDone chan struct{}
	heartbeat  time.Duration
	started    time.Time
	lastRecv   time.Time
	lastPing   time.Time // the last KEEPALIVE sent
	seq        uint32    // last frame seq used
	kicked     *devicepb.Kickout
	resumeSeq  uint32 // frame seq of the client's own PULL, 0: none
	logoutSeq  uint32
	// resumeWant: the client's own PULL (after resumeAfter) waits for
	// its turn (pacing).
	resumeWant  bool
	resumeAfter uint32
	// resumeRetry: the resume PULL was refused (the store busy); it is
	// asked again at this time (resendDue), 0: not. resumeRefused counts
	// the refusals in a row: the wait doubles from a second, to
	// BackoffMax, with jitter (every device of a node comes back at once).
	resumeRetry   time.Time
	resumeRefused int
	// broken is the write error that ended the session: the client
	// writes nothing more and reads what the server sent before it
	// closed (a KICKOUT decides what comes next) until the reader ends.
	broken error
	// frames and bytes pace what the client sends of its own accord
	// (Config.FrameRate, ByteRate); a fresh connection starts full, as
	// the gate's buckets do.
	frameTokens, byteTokens *rate.Limiter
}

// loop is the state of the client's goroutine. Everything here belongs to
// it; the API talks to it through Client.reqs and Client.out.
type loop struct {
	c   *Client
	cfg *Config
	log *slog.Logger
	bo  *backoff
	// notes carries state changes to OnState's goroutine (notify), so
	// that the callback may call the Client (which waits for this loop).
	notes chan stateNote

	ctx    context.Context // cancelled when the client stops
	cancel context.CancelFunc

	sess      *session
	dialing   chan dialResult // non-nil while an attempt runs
	wait      *time.Timer     // non-nil while waiting to reconnect
	keepalive *time.Timer
	resend    *time.Ticker

	outbox   map[outKey]*sendReq
	order    []*sendReq // outbox in the order of the sends
	inflight map[uint32]*sendReq
	pulls    []*pullReq // user pulls, sent or waiting for a connection
	seen     *seenSet
	queue    []*Message // received, waiting for Recv
	// handed: in the default mode, what Recv and Pull returned since the
	// app's last call of either; acknowledged at its next (releaseReq),
	// when it has handled them, or by Ack. Not at Close: the server
	// delivers them again to the next session.
	handed []*Message
	// redelivered counts the Redelivered copies (ManualAck) in queue: an
	// Ack of the message drops them (the app has handled it).
	redelivered int
	// unconf: C2C_PUSH_ACKs the server has not confirmed, with the
	// session (gen) they were last sent on; they are sent again on each
	// new session until C2C_PUSH_ACK_ACK.
	unconf     map[string]uint64
	gen        uint64 // sessions so far
	unconfSent uint64 // every unconf entry was sent on this session
	// handing: pulls whose messages are on their way to the app (Pull has
	// them or is about to), by id. Until Pull says it took them (or gave
	// up), Recv waits and pushes of those ids are not queued: the app
	// gets each message from one of the two only.
	// The value is the session of a push of the id that came meanwhile
	// (0: none), for seenEntry.pushed.
	handing map[*pullReq]map[string]uint64
	pace    *time.Timer // non-nil while frames wait for their turn
	// c2cTokens paces C2C sends (Config.C2CRate), across sessions: the
	// gate's C2C rate is the identity's and survives a reconnect.
	c2cTokens *rate.Limiter
	c2cPace   *time.Timer // non-nil while a C2C waits for its token

	addrs []string // gates to try, from Discovery
	// tokenCalls counts the TokenSource calls running, those abandoned
	// past DialTimeout included (fetchToken).
	tokenCalls atomic.Int32
	// authRetry, expiredRetry: a login failed with AUTH_FAILED, with
	// TOKEN_EXPIRED: each gets one immediate retry with a fresh token
	// until a login succeeds.
	authRetry, expiredRetry bool
	firstDone               bool
	logout                  bool
	terminal                error
	// droppedLogged: when the last warning about dropped fire-and-forget
	// pushes was logged (at most one a minute).
	droppedLogged time.Time
	// refusedSeq is the lowest seq of a stored message left out because
	// the queue was full (0: none), since refusedAt: later stored
	// messages are left out too until it is in, so that the app gets
	// first deliveries in seq order (the server delivers each again), for
	// at most refusedHold.
	refusedSeq uint32
	refusedAt  time.Time
}

func newLoop(c *Client) *loop {
	ctx, cancel := context.WithCancel(context.Background())
	return &loop{
		c: c, cfg: &c.cfg, log: c.cfg.Logger.With("uid", c.cfg.UID, "app", c.cfg.AppCode),
		bo:  newBackoff(c.cfg.BackoffInitial, c.cfg.BackoffMax),
		ctx: ctx, cancel: cancel,
		outbox:    map[outKey]*sendReq{},
		inflight:  map[uint32]*sendReq{},
		seen:      newSeenSet(c.cfg.DedupSize),
		unconf:    map[string]uint64{},
		handing:   map[*pullReq]map[string]uint64{},
		c2cTokens: rate.NewLimiter(rate.Limit(c.cfg.C2CRate), c.cfg.C2CBurst),
	}
}

func (l *loop) run() {
	defer close(l.c.done)
	if l.cfg.OnState != nil {
		l.notes = make(chan stateNote, stateNotesMax)
		go notify(l.notes, l.cfg.OnState, l.c.notified)
		defer close(l.notes)
	}
	tick := min(max(l.cfg.ResendAfter/4, 50*time.Millisecond), time.Second)
	l.resend = time.NewTicker(tick)
	defer l.resend.Stop()
	l.startDial()
	for l.terminal == nil {
		var frames chan readResult
		// The connection is read whatever the queue holds: the answers
		// to sends and pulls come on it too, and an app that waits for
		// one before it takes the next message must get it (deliver says
		// what happens to messages past RecvBuffer).
		if l.sess != nil {
			frames = l.sess.frames
		}
		var out chan *Message
		var head *Message
		if len(l.queue) > 0 && len(l.handing) == 0 {
			out, head = l.c.out, l.queue[0]
		}
		var waitC, kaC, paceC <-chan time.Time
		if l.wait != nil {
			waitC = l.wait.C
		}
		if l.keepalive != nil {
			kaC = l.keepalive.C
		}
		if l.pace != nil {
			paceC = l.pace.C
		}
		var c2cPaceC <-chan time.Time
		if l.c2cPace != nil {
			c2cPaceC = l.c2cPace.C
		}
		select {
		case <-l.c.quit:
			l.terminal = ErrClosed
		case r := <-l.dialing:
			l.dialing = nil
			l.dialed(r)
		case <-waitC:
			l.wait = nil
			l.startDial()
		case r := <-frames:
			if r.err != nil {
				if l.sess.broken != nil {
					r.err = l.sess.broken
				}
				l.disconnect(r.err)
			} else {
				l.sess.lastRecv = time.Now()
				l.handle(r.f)
			}
		case out <- head:
			l.queue[0] = nil
			l.queue = l.queue[1:]
			if head.Redelivered {
				l.redelivered--
			}
			l.handOut(head)
			if l.sess != nil && l.sess.resumeWant {
				l.flush() // a resume page may fit now
			}
		case r := <-l.c.reqs:
			l.request(r)
		case <-kaC:
			l.keepaliveDue()
		case <-l.resend.C:
			l.resendDue()
		case <-paceC:
			l.pace = nil
			l.flush()
		case <-c2cPaceC:
			l.c2cPace = nil
			l.flush()
		}
	}
	l.stop()
}

// stateNote is a state change for OnState.
type stateNote struct {
	s   State
	err error
}

// stateNotesMax bounds the state changes waiting for OnState; past it
// (a callback that blocks), the oldest waiting is dropped.
const stateNotesMax = 64

// notify calls fn with each state change, in order, until notes closes;
// then it closes done (Close waits for it).
func notify(notes <-chan stateNote, fn func(State, error), done chan<- struct{}) {
	defer close(done)
	for n := range notes {
		fn(n.s, n.err)
	}
}

// notifyName is notify's name in stack frames (onNotifyGoroutine).
var notifyName = runtime.FuncForPC(reflect.ValueOf(notify).Pointer()).Name()

// onNotifyGoroutine reports whether the caller runs on a goroutine of
// notify, i.e. in an OnState callback: Close called there cannot wait for
// that goroutine to end (it is the caller). Go has no goroutine identity
// to ask; the stack is the goroutine's own, and notify is at its bottom.
// Close of one client from another's OnState is taken for one from its
// own: it does not wait for OnState's goroutine either, as documented.
func onNotifyGoroutine() bool {
	pcs := make([]uintptr, 64)
	for {
		n := runtime.Callers(2, pcs)
		if n < len(pcs) {
			pcs = pcs[:n]
			break
		}
		pcs = make([]uintptr, 2*len(pcs))
	}
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		if f.Function == notifyName {
			return true
		}
		if !more {
			return false
		}
	}
}

// setState records and reports a state change.
func (l *loop) setState(s State, err error) {
	if State(l.c.state.Swap(int32(s))) == s && err == nil {
		return
	}
	if l.notes == nil {
		return
	}
	for {
		select {
		case l.notes <- stateNote{s, err}:
			return
		default:
		}
		select {
		case <-l.notes:
			l.log.Warn("client: OnState is behind; a state change was not reported")
		default:
		}
	}
}

// startDial starts a connection attempt on its own goroutine, which the
// loop waits for (dialing).
func (l *loop) startDial() {
	l.setState(StateConnecting, nil)
	ch := make(chan dialResult, 1)
	l.dialing = ch
	addrs := l.addrs
	if len(addrs) > 0 {
		l.addrs = addrs[1:]
	}
	login := &devicepb.Login{Uid: l.cfg.UID, DeviceId: l.cfg.DeviceID, Platform: l.cfg.Platform,
		AppVersion: l.cfg.AppVersion, Zstd: !l.cfg.NoCompression}
	go func() { ch <- l.connect(l.ctx, addrs, login) }()
}

// connect resolves a gate, dials it and logs in. It runs on its own
// goroutine and touches nothing of the loop's but what it was given (and
// the atomic tokenCalls).
func (l *loop) connect(ctx context.Context, addrs []string, login *devicepb.Login) (r dialResult) {
	r.login = login
	cfg := l.cfg
	switch {
	case len(addrs) > 0:
		r.addr = addrs[0]
	case cfg.Discovery != "":
		// Bounded like a connect: an endpoint that takes the connection
		// and never answers (with an HTTPClient without a Timeout) must
		// not hold the client in StateConnecting for good.
		dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
		found, err := discover(dctx, cfg.HTTPClient, cfg.Discovery, cfg.AppCode)
		cancel()
		switch {
		case err == nil:
			// The others are tried next (the loop keeps them).
			r.addr, r.addrs = found[0], found[1:]
		case cfg.Addr != "":
			l.log.Warn("client: gate discovery failed; using Addr", "err", err, "addr", cfg.Addr)
			r.addr = cfg.Addr
		default:
			r.err = err
			return r
		}
	default:
		r.addr = cfg.Addr
	}
	token := cfg.Token
	if cfg.TokenSource != nil {
		t, err := l.fetchToken(ctx)
		if err != nil {
			r.err = err
			return r
		}
		token = t
	}
	login.Token = token
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	conn, err := DialConn(dctx, r.addr, ConnConfig{AppCode: cfg.AppCode, MaxBody: cfg.MaxBody,
		CompressThreshold: cfg.CompressThreshold, WriteTimeout: cfg.WriteTimeout, TLS: cfg.TLS})
	cancel()
	if err != nil {
		r.err = err
		return r
	}
	// Close stops a login in progress when the client stops.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	ack, err := conn.Login(login, 1, cfg.LoginTimeout)
	if !stop() {
		err = ErrClosed
	}
	if err != nil {
		conn.Close()
		r.err = err
		return r
	}
	r.conn, r.ack = conn, ack
	return r
}

// maxTokenCalls bounds the TokenSource calls running at once: the one of
// this attempt, and one that an earlier attempt gave up on (a source that
// ignores its context may hang in a call that one more call would get
// past). Beyond, an attempt fails at once, and the next one, after a
// backoff, tries again: abandoned calls do not pile up.
const maxTokenCalls = 2

// fetchToken asks TokenSource for a token, for at most DialTimeout (like
// discovery: an app-server that takes the request and never answers must
// not hold the client in StateConnecting for good), or until the client
// stops. A call that outlasts it is abandoned, not waited for: Close and
// Dial return on time even if the source ignores its context; its
// goroutine ends when the call returns, and its token is dropped. It runs
// on the connection attempt's goroutine.
func (l *loop) fetchToken(ctx context.Context) (string, error) {
	if n := l.tokenCalls.Load(); n >= maxTokenCalls {
		return "", fmt.Errorf("client: TokenSource: %d calls that passed DialTimeout have not returned (does it ignore its context?)", n)
	}
	l.tokenCalls.Add(1)
	tctx, cancel := context.WithTimeout(ctx, l.cfg.DialTimeout)
	type answer struct {
		token string
		err   error
	}
	got := make(chan answer, 1)
	go func() {
		defer l.tokenCalls.Add(-1)
		defer cancel()
		t, err := l.cfg.TokenSource(tctx)
		got <- answer{t, err}
	}()
	select {
	case a := <-got:
		switch {
		case a.err != nil:
			return "", fmt.Errorf("client: TokenSource: %w", a.err)
		case !utf8.ValidString(a.token):
			// It would not encode in LOGIN; the next call may do better.
			return "", fmt.Errorf("%w: the token from TokenSource", ErrNotUTF8)
		}
		return a.token, nil
	case <-tctx.Done():
		if ctx.Err() != nil {
			return "", ErrClosed
		}
		return "", fmt.Errorf("client: TokenSource did not answer within DialTimeout (%v): %w", l.cfg.DialTimeout, tctx.Err())
	}
}

// dialed handles the outcome of a connection attempt.
func (l *loop) dialed(r dialResult) {
	if r.addrs != nil {
		l.addrs = r.addrs
	}
	if r.conn != nil && l.cfg.OnFrame != nil {
		l.cfg.OnFrame(true, messages.Header{Cmd: messages.CmdLogin, AppCode: l.cfg.AppCode, Seq: 1}, redactToken(r.login))
		l.cfg.OnFrame(false, messages.Header{Cmd: messages.CmdLoginAck, AppCode: l.cfg.AppCode, Seq: 1}, r.ack)
	}
	if r.err != nil {
		var se *ServerError
		if errors.As(r.err, &se) && clientBug(se.Code) {
			// The LOGIN itself was refused as malformed: the next one
			// would be too (docs/protocol.md: do not reconnect in a loop
			// after a fatal error caused by a client bug).
			l.fail(r.err)
			return
		}
		l.failed(r.err)
		return
	}
	if r.ack.Code != devicepb.Code_OK {
		r.conn.Close()
		err := &LoginError{Code: r.ack.Code, Reason: r.ack.Reason}
		if err.Permanent() {
			retried := &l.authRetry
			if err.Code == devicepb.Code_TOKEN_EXPIRED {
				retried = &l.expiredRetry
			}
			tokenCode := err.Code == devicepb.Code_AUTH_FAILED || err.Code == devicepb.Code_TOKEN_EXPIRED
			if tokenCode && l.cfg.TokenSource != nil && !*retried {
				// docs/protocol.md §6: fetch a fresh token and try once more.
				*retried = true
				l.c.setLastErr(err)
				l.log.Info("client: login refused; retrying with a fresh token", "code", err.Code)
				l.startDial()
				return
			}
			if err.Code == devicepb.Code_TOKEN_EXPIRED && l.cfg.TokenSource != nil {
				// Expired again (a refresh still under way, a clock
				// behind): fetch again after a backoff; only AUTH_FAILED
				// twice in a row stops (docs/protocol.md §6).
				l.failed(err)
				return
			}
			l.fail(err)
			return
		}
		l.failed(err)
		return
	}
	l.authRetry, l.expiredRetry = false, false
	l.connected(r)
}

// clientBug reports whether an ERROR answering a LOGIN says the client
// sends what no server version 1 takes: trying again cannot help.
func clientBug(c devicepb.Code) bool {
	switch c {
	case devicepb.Code_UNSUPPORTED_VERSION, devicepb.Code_BAD_FLAGS,
		devicepb.Code_UNKNOWN_COMMAND, devicepb.Code_BAD_BODY, devicepb.Code_APP_MISMATCH:
		// Not FRAME_TOO_LARGE: the limit is each gate's setting (a token
		// may fit another gate's).
		return true
	}
	return false
}

// failed handles an attempt that failed in a way a later one may not.
func (l *loop) failed(err error) {
	l.c.setLastErr(err)
	if errors.Is(err, ErrClosed) {
		return
	}
	d := l.bo.next()
	l.log.Debug("client: connection failed", "err", err, "retry_in", d)
	l.waitFor(d, err)
}

func (l *loop) waitFor(d time.Duration, err error) {
	l.setState(StateWaiting, err)
	l.wait = time.NewTimer(d)
}

// fail stops the client for good with err.
func (l *loop) fail(err error) {
	l.terminal = err
}

func redactToken(login *devicepb.Login) *devicepb.Login {
	c := proto.Clone(login).(*devicepb.Login)
	if c.Token != "" {
		c.Token = "…"
	}
	return c
}

// connected starts a session on a logged-in connection.
func (l *loop) connected(r dialResult) {
	now := time.Now()
	hb := time.Duration(min(r.ack.HeartbeatSeconds, maxHeartbeatSeconds)) * time.Second
	if hb <= 0 {
		hb = 30 * time.Second
	}
	s := &session{conn: r.conn, addr: r.addr, frames: make(chan readResult, 64), stop: make(chan struct{}),
		readerDone: make(chan struct{}), heartbeat: hb, started: now, lastRecv: now, lastPing: now, seq: 1,
		frameTokens: rate.NewLimiter(rate.Limit(l.cfg.FrameRate), l.cfg.FrameBurst),
		byteTokens:  rate.NewLimiter(rate.Limit(l.cfg.ByteRate), l.cfg.ByteBurst)}
	l.sess = s
	l.c.conn.Store(r.conn)
	select {
	case <-l.c.quit: // Close came while this connection was being made
		r.conn.interrupt()
	default:
	}
	l.gen++
	l.addrs = nil // the next connection asks discovery again
	l.c.epoch.Store(r.ack.Epoch)
	l.c.frameLimit.Store(r.ack.MaxFrameSize)
	go s.read()
	l.keepalive = time.NewTimer(hb)
	l.log.Debug("client: logged in", "gate", r.addr, "epoch", r.ack.Epoch, "pending", r.ack.Pending,
		"last_seq", r.ack.LastSeq, "zstd", r.ack.Zstd)
	// Connected before Dial returns: its caller may read State at once.
	l.setState(StateConnected, nil)
	if !l.firstDone {
		l.firstDone = true
		l.c.first <- nil
	}

	// Resume: fetch what came after the last seq handed to the app.
	last := l.c.lastSeq.Load()
	if r.ack.LastSeq < last {
		// docs/protocol.md §9.6: our seq is not valid for this server.
		l.log.Warn("client: the server's last seq is below ours; pulling from 0", "server", r.ack.LastSeq, "ours", last)
		l.c.lastSeq.Store(0)
		last = 0
	}
	if r.ack.LastSeq > last {
		s.resumeWant, s.resumeAfter = true, last
	}
	// Then what waits: unconfirmed acks, the sends, the pulls, as fast
	// as the gate's limits let them go (flush).
	l.flush()
}

// read is the session's reader goroutine. It ends when the connection
// fails or is closed, or when stop is closed.
func (s *session) read() {
	defer close(s.readerDone)
	for {
		f, err := s.conn.ReadFrame()
		select {
		case s.frames <- readResult{f, err}:
		case <-s.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

// closeSession closes the connection and waits for its reader.
func (l *loop) closeSession() *session {
	s := l.sess
	if s == nil {
		return nil
	}
	l.sess = nil
	l.c.conn.Store(nil)
	s.conn.Close()
	close(s.stop)
	<-s.readerDone
	if l.keepalive != nil {
		l.keepalive.Stop()
		l.keepalive = nil
	}
	if l.pace != nil {
		l.pace.Stop()
		l.pace = nil
	}
	if l.c2cPace != nil {
		l.c2cPace.Stop()
		l.c2cPace = nil
	}
	clear(l.inflight)
	// The next gate announces its own limit; until then sends are checked
	// against Config.MaxFrameSize alone (and at flush against it).
	l.c.frameLimit.Store(0)
	for _, r := range l.order {
		r.seq, r.sentAt = 0, time.Time{}
	}
	for _, p := range l.pulls {
		p.seq, p.sentAt = 0, time.Time{}
	}
	return s
}

// disconnect ends the session after a connection failure or a kickout and
// decides what comes next.
func (l *loop) disconnect(cause error) {
	s := l.closeSession()
	if s == nil {
		return
	}
	if l.logout {
		l.fail(ErrClosed)
		return
	}
	if time.Since(s.started) >= l.cfg.BackoffReset {
		l.bo.reset()
	}
	if k := s.kicked; k != nil {
		switch k.Reason {
		case devicepb.KickReason_LOGGED_IN_ELSEWHERE, devicepb.KickReason_KICKED_BY_OPERATOR,
			devicepb.KickReason_KICKED_BY_APP_SERVER, devicepb.KickReason_UID_BLACKLISTED:
			l.fail(&KickedError{Reason: k.Reason, Detail: k.Detail})
			return
		case devicepb.KickReason_SERVER_SHUTDOWN:
			d := l.bo.soon(l.cfg.ShutdownJitter)
			l.log.Info("client: the gate is shutting down; reconnecting", "in", d)
			l.waitFor(d, &KickedError{Reason: k.Reason, Detail: k.Detail})
			return
		}
		cause = &KickedError{Reason: k.Reason, Detail: k.Detail}
	}
	d := l.bo.next()
	l.log.Info("client: disconnected; reconnecting", "err", cause, "in", d)
	l.c.setLastErr(cause)
	l.waitFor(d, cause)
}

// stop ends everything the loop owns; the client has stopped.
func (l *loop) stop() {
	err := l.terminal
	l.closeSession()
	l.cancel()
	if l.dialing != nil {
		if r := <-l.dialing; r.conn != nil {
			r.conn.Close()
		}
	}
	if l.wait != nil {
		l.wait.Stop()
	}
	if l.cfg.ownHTTP {
		l.cfg.HTTPClient.CloseIdleConnections()
	}
	l.c.setErr(err)
	for _, s := range l.order {
		s.res <- sendResult{err: err}
	}
	for _, p := range l.pulls {
		p.res <- pullResult{err: err}
	}
	l.order, l.pulls = nil, nil
	if !l.firstDone {
		l.firstDone = true
		l.c.first <- err
	}
	l.setState(StateClosed, err)
	if !errors.Is(err, ErrClosed) {
		l.log.Warn("client: stopped", "err", err)
	}
}

// nextSeq returns the next frame seq of the session.
func (l *loop) nextSeq() uint32 {
	l.sess.seq++
	if l.sess.seq == 0 {
		l.sess.seq = 1
	}
	return l.sess.seq
}

// write sends a frame on the session, if there is one, and returns its
// seq (0 when nothing was sent). It is for frames the gate does not count
// against the connection's frame rate (acks of what it delivered, a
// KEEPALIVE per heartbeat) or that must go now (LOGOUT); their bytes
// still count. A write error breaks the session (see session.broken).
// Its bodies are the client's own (ids the server sent, decoded, so
// valid UTF-8): one that does not encode is logged and not sent.
func (l *loop) write(cmd messages.Cmd, msgtype uint16, body proto.Message) uint32 {
	s := l.sess
	if s == nil || s.broken != nil {
		return 0
	}
	s.byteTokens.ReserveN(time.Now(), min(messages.HeaderSize+proto.Size(body), l.cfg.ByteBurst))
	seq, err := l.writeNow(cmd, msgtype, body)
	if err != nil {
		l.log.Error("client: a frame of the client's own does not encode; not sent", "cmd", cmd, "err", err)
	}
	return seq
}

// writePaced sends a frame the gate counts against the connection's
// frame rate if the pacing lets it go now: sent is false when it must
// wait its turn (flush sends it later). seq is 0 when nothing was sent for
// another reason: no session, a write error (the session is broken), or
// a body that does not encode (err; the session goes on, the caller
// fails that one request).
func (l *loop) writePaced(cmd messages.Cmd, msgtype uint16, body proto.Message) (seq uint32, sent bool, err error) {
	s := l.sess
	if s == nil || s.broken != nil {
		return 0, true, nil
	}
	now := time.Now()
	n := min(messages.HeaderSize+proto.Size(body), l.cfg.ByteBurst)
	c2c := cmd == messages.CmdC2C
	if s.frameTokens.TokensAt(now) < 1 || s.byteTokens.TokensAt(now) < float64(n) || c2c && l.c2cTokens.TokensAt(now) < 1 {
		return 0, false, nil
	}
	s.frameTokens.AllowN(now, 1)
	s.byteTokens.AllowN(now, n)
	if c2c {
		l.c2cTokens.AllowN(now, 1)
	}
	seq, err = l.writeNow(cmd, msgtype, body)
	return seq, true, err
}

// writeNow writes a frame. A write error breaks the session (seq 0, nil
// error); a body that does not encode is returned as err: nothing was
// written, the link is fine, and breaking the session for it would
// reconnect in a loop with the same frame at the head of the outbox.
func (l *loop) writeNow(cmd messages.Cmd, msgtype uint16, body proto.Message) (uint32, error) {
	s := l.sess
	seq := l.nextSeq()
	h, err := s.conn.writeFrame(messages.Header{Cmd: cmd, AppCode: l.cfg.AppCode, MsgType: msgtype, Seq: seq}, body)
	if ee := (*encodeError)(nil); errors.As(err, &ee) {
		return 0, err
	}
	if err != nil {
		l.breakSession(err)
		return 0, nil
	}
	if l.cfg.OnFrame != nil {
		l.cfg.OnFrame(true, h, body)
	}
	return seq, nil
}

// breakSession handles a write that failed. The server may have closed
// the connection right after a KICKOUT the client has not read yet (it
// stops reading while the app is behind): ending the session now would
// lose it, and reconnecting after LOGGED_IN_ELSEWHERE kicks the user's
// other device. So the client writes nothing more and reads what is left,
// for at most brokenReadFor, before it decides (disconnect).
func (l *loop) breakSession(err error) {
	s := l.sess
	s.broken = err
	s.conn.setReadDeadline(time.Now().Add(brokenReadFor))
	l.log.Debug("client: write failed; reading what the server sent before deciding", "err", err)
}

// resumePage is the most messages the client's own resume PULL asks for
// (the server's default page).
const resumePage = 100

// brokenReadFor bounds the reading of a connection whose writes failed.
const brokenReadFor = 2 * time.Second

// flush sends what waits for the connection, in this order, as far as the
// pacing lets it: the client's own resume PULL, C2C_PUSH_ACKs the server
// has not confirmed, sends (C2C, C2S) not sent on this connection, pulls.
// The rest goes when the pace timer fires: a client with a full outbox
// that reconnects would otherwise send it all back to back: the gate
// holds frames past its rate (their answers come late) and closes a
// connection that keeps sending while more than 128 KiB of them wait
// (docs/protocol.md §13), again at every reconnect.
func (l *loop) flush() {
	s := l.sess
	if s == nil || s.broken != nil || l.pace != nil {
		return
	}
	blocked := false
	if room := l.cfg.RecvBuffer - len(l.queue); s.resumeWant && room >= min(resumePage, max(l.cfg.RecvBuffer/4, 1)) {
		// A page no larger than the queue has room for, once it has room
		// for a page or a quarter of itself (asked again as the app takes
		// messages: run's Recv case), not a PULL per message taken.
		seq, sent, _ := l.writePaced(messages.CmdPull, 0, &devicepb.Pull{AfterSeq: s.resumeAfter, Limit: proto.Uint32(uint32(max(min(room, resumePage), 1)))})
		if !sent {
			l.waitTurn()
			return
		}
		s.resumeWant, s.resumeSeq = false, seq
	}
	if l.unconfSent != l.gen {
		for id, gen := range l.unconf {
			if gen == l.gen {
				continue
			}
			seq, sent, err := l.writePaced(messages.CmdC2CPushAck, 0, &devicepb.C2CPushAck{MsgId: id})
			if !sent {
				l.waitTurn()
				return
			}
			if err != nil {
				delete(l.unconf, id) // never sendable: not tried at every flush
				continue
			}
			if seq == 0 {
				return
			}
			l.unconf[id] = l.gen
		}
		l.unconfSent = l.gen
	}
	// By index: a send that fails is deleted from l.order on the way.
	// C2C sends past the C2C rate wait, in their order, while the other
	// sends and the pulls go on (the gate holds no order between them).
	c2cWait := time.Duration(0)
	for i := 0; i < len(l.order); i++ {
		r := l.order[i]
		if r.seq != 0 {
			continue
		}
		if r.ctx.Err() != nil {
			continue // dropped at the next resend check
		}
		if r.cmd == messages.CmdC2C {
			if c2cWait > 0 {
				continue
			}
			if now := time.Now(); l.c2cTokens.TokensAt(now) < 1 {
				c2cWait = max(time.Duration((1-l.c2cTokens.TokensAt(now))/l.cfg.C2CRate*float64(time.Second)), time.Millisecond)
				continue
			}
		}
		if lim := l.c.frameLimit.Load(); lim != 0 && proto.Size(r.body) > int(lim) {
			// Queued before this session's gate announced a smaller
			// limit: written, the gate would close the connection, and
			// every session after it on the same frame.
			l.dropSend(r)
			i--
			r.res <- sendResult{err: fmt.Errorf("%w: %d-byte body, the gate's limit %d", ErrTooLarge, proto.Size(r.body), lim)}
			continue
		}
		before := l.sess.seq
		seq, sent, err := l.writePaced(r.cmd, r.msgtype, r.body)
		if !sent {
			blocked = true
			break
		}
		if err != nil {
			// This send fails, not the session: resent, it would fail
			// again (Client.send refuses what it can tell before).
			l.dropSend(r)
			i--
			r.res <- sendResult{err: err}
			continue
		}
		if seq == 0 {
			if s := l.sess; s != nil && s.broken != nil && s.seq != before {
				// Its write failed: the gate may have closed on this very
				// frame (FRAME_TOO_LARGE from a gate whose limit was not
				// announced). Recorded under its seq, the ERROR read
				// before the session ends fails it, rather than the
				// send going first again on every session.
				r.seq, r.sentAt = s.seq, time.Now()
				l.inflight[s.seq] = r
			}
			return
		}
		r.seq, r.sentAt = seq, time.Now()
		l.inflight[seq] = r
	}
	for i := 0; i < len(l.pulls); i++ {
		p := l.pulls[i]
		if blocked {
			break
		}
		if p.seq != 0 || p.ctx.Err() != nil {
			continue
		}
		seq, sent, err := l.writePaced(messages.CmdPull, 0, &devicepb.Pull{AfterSeq: p.after, Limit: pullLimit(p.limit)})
		if !sent {
			blocked = true
			break
		}
		if err != nil {
			l.dropPull(p)
			i--
			p.res <- pullResult{err: err}
			continue
		}
		if seq == 0 {
			return
		}
		p.seq, p.sentAt = seq, time.Now()
	}
	if blocked {
		l.waitTurn()
	}
	if c2cWait > 0 && l.c2cPace == nil {
		// A timer of its own: flush waits for the frame pace alone, so
		// the other sends and pulls do not wait for the next C2C.
		l.c2cPace = time.NewTimer(c2cWait)
	}
}

// waitTurn arms the pace timer: flush goes on when a frame may go.
func (l *loop) waitTurn() {
	d := time.Duration(float64(time.Second) / float64(l.cfg.FrameRate))
	l.pace = time.NewTimer(max(d, 5*time.Millisecond))
}

func (l *loop) request(r any) {
	switch r := r.(type) {
	case *sendReq:
		k := outKey{r.cmd, r.id}
		if old := l.outbox[k]; old != nil && old.ctx.Err() != nil {
			// Its caller gave up: this send of the same id replaces it.
			l.dropSend(old)
		}
		switch {
		case l.outbox[k] != nil:
			r.res <- sendResult{err: errors.New("client: client message id " + r.id + " is already waiting for its answer")}
			return
		case len(l.order) >= l.cfg.MaxOutbox:
			r.res <- sendResult{err: ErrOutboxFull}
			return
		}
		l.outbox[k] = r
		l.order = append(l.order, r)
		l.flush()
	case *pullReq:
		l.pulls = append(l.pulls, r)
		l.flush()
	case *pullTaken:
		if _, ok := l.handing[r.p]; !ok {
			// Abandoned before its answer came: it is not asked for again.
			l.dropPull(r.p)
			return
		}
		pushed := l.handing[r.p]
		delete(l.handing, r.p)
		if r.abandoned {
			return // the messages stay the server's, pushed again
		}
		for _, m := range r.msgs {
			if !l.seen.add(m.MsgID) {
				// Pushed too: the app has it now, Recv must not return it.
				l.queue = slices.DeleteFunc(l.queue, func(q *Message) bool {
					if q.MsgID != m.MsgID {
						return false
					}
					if q.Redelivered {
						l.redelivered--
					}
					return true
				})
				if _, acked := l.seen.lookup(m.MsgID); acked {
					continue
				}
			}
			if gen := pushed[m.MsgID]; gen != 0 {
				l.seen.update(m.MsgID, func(e *seenEntry) { e.pushed = gen })
			}
			l.handOut(m)
		}
	case releaseReq:
		l.release()
	case *ackReq:
		if !l.cfg.ManualAck {
			// Acknowledged at the app's next Recv or Pull, or now: the
			// app says it is handled.
			// By id: the app may pass a copy of the Message.
			if i := slices.IndexFunc(l.handed, func(m *Message) bool { return m.MsgID == r.msg.MsgID }); i >= 0 {
				l.ack(l.handed[i])
				l.handed = slices.Delete(l.handed, i, i+1)
			}
			return
		}
		l.ack(r.msg)
		if l.redelivered > 0 {
			// A redelivery queued while the app was handling it is
			// not handed again: it is handled.
			l.queue = slices.DeleteFunc(l.queue, func(q *Message) bool {
				if q.Redelivered && q.MsgID == r.msg.MsgID {
					l.redelivered--
					return true
				}
				return false
			})
		}
	case *logoutReq:
		l.logout = true
		if l.sess == nil {
			l.fail(ErrClosed)
			return
		}
		if seq := l.write(messages.CmdLogout, 0, nil); l.sess != nil {
			l.sess.logoutSeq = seq
			l.sess.frameTokens.ReserveN(time.Now(), 1)
		}
	}
}

func (l *loop) dropSend(r *sendReq) {
	delete(l.outbox, outKey{r.cmd, r.id})
	if r.seq != 0 {
		delete(l.inflight, r.seq)
	}
	if i := slices.Index(l.order, r); i >= 0 {
		l.order = slices.Delete(l.order, i, i+1)
	}
}

func (l *loop) dropPull(p *pullReq) {
	if i := slices.Index(l.pulls, p); i >= 0 {
		l.pulls = slices.Delete(l.pulls, i, i+1)
	}
}

// handOut records that Recv or Pull gave m to the app. In the default
// mode it is acknowledged when the app calls either again (release): by
// then it has handled m. Acknowledged as it is handed, a message the app
// was handling when it crashed or was killed would be gone; an ack that
// waits for the app's next call costs it only the redelivery of what it
// was handling, which it de-duplicates by MsgID.
func (l *loop) handOut(m *Message) {
	l.seen.update(m.MsgID, func(e *seenEntry) { e.handed = true })
	if !l.cfg.ManualAck {
		l.handed = append(l.handed, m)
	}
}

// release acknowledges what the app was handed before its current call
// of Recv or Pull (default mode).
func (l *loop) release() {
	for _, m := range l.handed {
		if _, acked := l.seen.lookup(m.MsgID); !acked {
			l.ack(m)
		}
	}
	clear(l.handed)
	l.handed = l.handed[:0]
}

// ack acknowledges m (sent now if connected; otherwise the server's
// redelivery is acknowledged again, see deliver).
func (l *loop) ack(m *Message) {
	l.seen.acked(m.MsgID)
	switch {
	case m.Kind == KindC2C:
		if len(l.unconf) >= l.cfg.DedupSize {
			for id := range l.unconf { // forget one: its push will come again and be acked again
				delete(l.unconf, id)
				break
			}
		}
		l.unconf[m.MsgID] = 0
		if l.writeAck(m, messages.CmdC2CPushAck, &devicepb.C2CPushAck{MsgId: m.MsgID}) != 0 {
			l.unconf[m.MsgID] = l.gen
		}
	case m.Seq != 0:
		l.writeAck(m, messages.CmdS2CAck, &devicepb.S2CAck{MsgId: m.MsgID})
	}
	// A fire-and-forget push (seq 0) is not stored: nothing to acknowledge.
}

// writeAck writes an acknowledgement: at once for a message received on
// this connection (the gate credits it), else within the frame pacing
// like any other frame, or not now (the server delivers the message
// again, and its ack then goes at once). It returns the frame's seq, 0
// if not written.
func (l *loop) writeAck(m *Message, cmd messages.Cmd, body proto.Message) uint32 {
	if m.gen == l.gen {
		return l.write(cmd, 0, body)
	}
	seq, _, err := l.writePaced(cmd, 0, body)
	if err != nil {
		l.log.Error("client: an ack does not encode; not sent", "cmd", cmd, "err", err)
	}
	return seq
}

// deliver queues a received message for Recv unless it is a duplicate.
// With ManualAck, a message the app was handed and did not acknowledge
// is not one when the server delivers it again on the session that
// delivered it before: that is the server's redelivery (from 2 s after,
// docs/protocol.md §9.3), and an app that did not acknowledge wants it
// again (or its window of unacknowledged messages would stall). The first
// push of it on a session after a Pull returned it, or after a reconnect,
// is dropped: the server pushes what a PULL returns, and delivers again
// from the lowest seq at every login, while the app may still be
// handling it.
//
// pushed says m came in a push (S2C, C2C_PUSH), not in the answer to the
// client's own resume PULL.
func (l *loop) deliver(m *Message, pushed bool) {
	m.gen = l.gen
	e, known := l.seen.get(m.MsgID)
	if known && e.acked {
		l.ack(m) // our earlier ack may have been lost
		return
	}
	for _, ids := range l.handing {
		if _, ok := ids[m.MsgID]; ok {
			if pushed {
				ids[m.MsgID] = l.gen
			}
			return // a pull is handing it to the app (pullTaken)
		}
	}
	if known {
		switch {
		case !pushed:
			return // pulled again
		case e.handed && l.cfg.ManualAck && e.pushed == l.gen:
			m.Redelivered = true // handed again, below
		default:
			// Waiting in the queue; or handed, and in the default mode
			// acknowledged at the app's next call. With ManualAck, the
			// next delivery on this session is the redelivery.
			l.seen.update(m.MsgID, func(e *seenEntry) { e.pushed = l.gen })
			return
		}
	}
	// Fire-and-forget pushes may fill only three quarters of the queue:
	// the rest is for stored messages, which a stream of them would
	// otherwise keep out (each would come again, and again find it full).
	limit := l.cfg.RecvBuffer
	if m.Seq == 0 {
		limit -= l.cfg.RecvBuffer / 4
	}
	if m.Seq != 0 && l.refusedSeq != 0 {
		if time.Since(l.refusedAt) > refusedHold {
			l.refusedSeq = 0 // it does not come again (expired, or gone)
		} else if m.Seq > l.refusedSeq {
			return // after one left out: it comes again, after it
		}
	}
	if len(l.queue) >= limit {
		if m.Seq != 0 && (l.refusedSeq == 0 || m.Seq < l.refusedSeq) {
			l.refusedSeq, l.refusedAt = m.Seq, time.Now()
		}
		// The app is that far behind. A stored message is left
		// unacknowledged: the server delivers it again later (it sends at
		// most its window of them unacknowledged, so they are few). A
		// fire-and-forget push is dropped, and counted: nothing keeps it,
		// and the alternative, to stop reading, would hold the answers
		// the app may be waiting for and have the gate disconnect the
		// device as a slow client, dropping its queue anyway.
		if m.Seq == 0 {
			l.c.dropped.Add(1)
			if time.Since(l.droppedLogged) >= time.Minute {
				l.droppedLogged = time.Now()
				l.log.Warn("client: the app is RecvBuffer messages behind; fire-and-forget pushes are dropped", "recv_buffer", l.cfg.RecvBuffer, "dropped_so_far", l.c.dropped.Load())
			}
		}
		return
	}
	if m.Seq != 0 {
		// Only stored messages come again; a fire-and-forget push's id
		// would only push out the ids that matter.
		l.seen.add(m.MsgID)
		l.seen.update(m.MsgID, func(e *seenEntry) {
			e.handed = false
			if pushed {
				e.pushed = l.gen
			}
		})
		if m.Seq == l.refusedSeq {
			l.refusedSeq = 0
		}
	}
	if m.Redelivered {
		l.redelivered++
	}
	l.queue = append(l.queue, m)
}

// refusedHold bounds how long stored messages wait behind one left out
// of a full queue for it to come again.
const refusedHold = 30 * time.Second

func (l *loop) keepaliveDue() {
	s := l.sess
	if s == nil {
		return
	}
	now := time.Now()
	if now.Sub(s.lastRecv) >= 2*s.heartbeat {
		l.disconnect(errors.New("client: nothing from the server for two heartbeats"))
		return
	}
	if now.Sub(s.lastPing) >= s.heartbeat-heartbeatSlack {
		l.write(messages.CmdKeepalive, 0, nil)
		s.lastPing = now
	}
	if l.keepalive != nil {
		// Wake for the next KEEPALIVE, or when the silence reaches two
		// heartbeats, whichever comes first (checked only with each
		// KEEPALIVE, a link that died just after an answer was noticed
		// after three).
		next := min(s.lastPing.Add(s.heartbeat).Sub(now), s.lastRecv.Add(2*s.heartbeat).Sub(now))
		l.keepalive.Reset(max(next, 10*time.Millisecond))
	}
}

// maxHeartbeatSeconds bounds the heartbeat a server may ask for (an
// hour): a larger one would turn keepalives and the detection of a dead
// connection off.
const maxHeartbeatSeconds = 3600

// heartbeatSlack lets a KEEPALIVE go a little early rather than a whole
// wake-up late.
const heartbeatSlack = 50 * time.Millisecond

// resendDue drops sends and pulls whose callers gave up, and sends again
// (flush) those unanswered for ResendAfter.
func (l *loop) resendDue() {
	now := time.Now()
	if s := l.sess; s != nil && !s.resumeRetry.IsZero() && !now.Before(s.resumeRetry) {
		s.resumeRetry, s.resumeWant = time.Time{}, true
		l.flush()
	}
	for _, r := range slices.Clone(l.order) {
		if r.ctx.Err() != nil {
			l.dropSend(r)
			continue
		}
		if r.seq != 0 && now.Sub(r.sentAt) >= l.cfg.ResendAfter {
			delete(l.inflight, r.seq)
			r.seq = 0
		}
	}
	for _, p := range slices.Clone(l.pulls) {
		if p.ctx.Err() != nil {
			l.dropPull(p)
			continue
		}
		if p.seq != 0 && now.Sub(p.sentAt) >= l.cfg.ResendAfter {
			p.seq = 0
		}
	}
	l.flush()
}

// handle acts on a frame from the server.
func (l *loop) handle(f Frame) {
	if l.cfg.OnFrame != nil {
		l.cfg.OnFrame(false, f.Header, f.Msg)
	}
	switch m := f.Msg.(type) {
	case *devicepb.S2C:
		l.deliver(&Message{Kind: KindS2C, Seq: f.Seq, MsgType: f.MsgType, MsgID: m.MsgId, Payload: m.Payload,
			SentAt: msTime(m.SentAtMs), ExpiresAt: msTime(m.ExpiresAtMs)}, true)
	case *devicepb.C2CPush:
		l.deliver(&Message{Kind: KindC2C, Seq: f.Seq, MsgType: f.MsgType, MsgID: m.MsgId, Payload: m.Payload,
			FromUID: m.FromUid, ClientMsgID: m.ClientMsgId, SentAt: msTime(m.SentAtMs)}, true)
	case *devicepb.C2CPushAckAck:
		delete(l.unconf, m.MsgId)
	case *devicepb.C2CAck:
		l.answered(f.Seq, outKey{messages.CmdC2C, m.ClientMsgId}, m.Code, m.Reason, m.MsgId)
	case *devicepb.C2SAck:
		l.answered(f.Seq, outKey{messages.CmdC2S, m.ClientMsgId}, m.Code, m.Reason, m.MsgId)
	case *devicepb.PullAck:
		l.pulled(f.Seq, m)
	case *devicepb.Kickout:
		l.sess.kicked = m
		l.disconnect(nil)
	case *devicepb.Error:
		l.serverError(f.Seq, m)
	default:
		switch f.Cmd {
		case messages.CmdLogoutAck:
			if l.sess.logoutSeq != 0 {
				l.disconnect(nil)
			}
		case messages.CmdKeepaliveAck:
		default:
			l.log.Debug("client: ignoring frame", "cmd", f.Cmd, "seq", f.Seq)
		}
	}
}

func msTime(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// answered resolves a send by its client message id (or, for a server
// that does not echo it, by the frame seq).
func (l *loop) answered(seq uint32, k outKey, code devicepb.Code, reason, msgID string) {
	r := l.outbox[k]
	if r == nil || k.id == "" {
		r = l.inflight[seq]
	}
	if r == nil || r.cmd != k.cmd {
		return // an answer to a send we gave up on, or a duplicate answer
	}
	if code == devicepb.Code_RATE_LIMITED && r.cmd == messages.CmdC2C && r.seq == seq && r.ctx.Err() == nil {
		// Over the identity's C2C rate at the gate (other clients of it,
		// other gates): not stored. Sent again, in its place, once the
		// pacing lets a C2C go, which it now holds back a token's time;
		// the send's ctx bounds the tries.
		delete(l.inflight, r.seq)
		r.seq, r.sentAt = 0, time.Time{}
		l.c2cTokens.ReserveN(time.Now(), 1)
		l.flush()
		return
	}
	l.dropSend(r)
	if code != devicepb.Code_OK {
		r.res <- sendResult{err: &ResultError{Code: code, Reason: reason}}
		return
	}
	r.res <- sendResult{msgID: msgID}
}

func storedMessage(s *devicepb.StoredMessage) *Message {
	k := KindS2C
	if s.Kind == devicepb.Kind_KIND_C2C {
		k = KindC2C
	}
	return &Message{Kind: k, Seq: s.Seq, MsgType: uint16(s.Msgtype), MsgID: s.MsgId, Payload: s.Payload,
		FromUID: s.FromUid, ClientMsgID: s.ClientMsgId, SentAt: msTime(s.SentAtMs), ExpiresAt: msTime(s.ExpiresAtMs)}
}

// resumeRefused schedules the session's resume PULL again after a
// refusal: a second, doubling to BackoffMax, with jitter.
func (l *loop) resumeRefused(s *session, code devicepb.Code) {
	d := min(time.Second<<min(s.resumeRefused, 16), max(l.cfg.BackoffMax, time.Second))
	s.resumeRefused++
	d = d/2 + rand.N(d/2+1)
	s.resumeRetry = time.Now().Add(d)
	l.log.Warn("client: resume PULL refused; asking again later", "code", code, "in", d.Round(time.Millisecond))
}

func (l *loop) pulled(seq uint32, a *devicepb.PullAck) {
	if s := l.sess; s != nil && seq == s.resumeSeq && seq != 0 {
		s.resumeSeq = 0
		if a.Code != devicepb.Code_OK {
			l.resumeRefused(s, a.Code)
			return
		}
		s.resumeRefused = 0
		for _, sm := range a.Messages {
			l.deliver(storedMessage(sm), false)
		}
		if a.HasMore && len(a.Messages) > 0 {
			s.resumeWant, s.resumeAfter = true, a.Messages[len(a.Messages)-1].Seq
			l.flush()
		}
		return
	}
	for _, p := range l.pulls {
		if p.seq == seq && seq != 0 {
			l.dropPull(p)
			if a.Code != devicepb.Code_OK {
				p.res <- pullResult{err: &ResultError{Code: a.Code}}
				return
			}
			msgs := make([]*Message, len(a.Messages))
			ids := make(map[string]uint64, len(msgs))
			for i, sm := range a.Messages {
				msgs[i] = storedMessage(sm)
				msgs[i].gen = l.gen
				ids[sm.MsgId] = 0
			}
			// Until Pull has them (pullTaken), Recv waits and pushes of
			// these ids are not queued.
			l.handing[p] = ids
			p.res <- pullResult{msgs: msgs, hasMore: a.HasMore}
			return
		}
	}
}

// serverError handles an ERROR frame: the answer to one of our frames, or
// a refusal of the connection.
func (l *loop) serverError(seq uint32, e *devicepb.Error) {
	err := &ServerError{Code: e.Code, Reason: e.Reason}
	if s := l.sess; s != nil && seq != 0 && seq == s.resumeSeq && e.Code != devicepb.Code_RATE_LIMITED {
		// The resume PULL refused by an ERROR: the window brings the
		// messages anyway. A client bug's refusal is not sent again.
		s.resumeSeq = 0
		if clientBug(e.Code) {
			l.log.Warn("client: resume PULL refused as malformed; not asked again", "code", e.Code, "reason", e.Reason)
			return
		}
		l.resumeRefused(s, e.Code)
		return
	}
	if e.Code == devicepb.Code_RATE_LIMITED {
		// The gate closes the connection: the frame it answers was not
		// processed, and is sent again on the next connection.
		if r := l.inflight[seq]; r != nil && seq != 0 {
			delete(l.inflight, seq)
			r.seq = 0
		}
		for _, p := range l.pulls {
			if p.seq == seq && seq != 0 {
				p.seq = 0
			}
		}
		l.log.Warn("client: rate limited by the gate; the connection ends", "err", err, "seq", seq)
		return
	}
	if r := l.inflight[seq]; r != nil && seq != 0 {
		// The server refused the frame itself (BAD_BODY, ...): resending
		// it unchanged gets the same answer.
		l.dropSend(r)
		r.res <- sendResult{err: &ResultError{Code: e.Code, Reason: e.Reason}}
		return
	}
	for _, p := range l.pulls {
		if p.seq == seq && seq != 0 {
			l.dropPull(p)
			p.res <- pullResult{err: &ResultError{Code: e.Code, Reason: e.Reason}}
			return
		}
	}
	l.log.Warn("client: server error", "err", err, "seq", seq)
}

// pullLimit is a PULL's limit for Client.Pull's: 0 asks for the
// server's page size (the field left out), not for no message.
func pullLimit(limit uint32) *uint32 {
	if limit == 0 {
		return nil
	}
	return &limit
}
