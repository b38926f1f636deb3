package gate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/courier-im/courier/gate/internal/iprate"
	"github.com/courier-im/courier/gate/internal/ipset"
	"github.com/courier-im/courier/gate/wheel"
	"github.com/courier-im/courier/messages"
	"github.com/panjf2000/gnet/v2"
	gerrors "github.com/panjf2000/gnet/v2/pkg/errors"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Gate is a running TCP edge: gnet event loops holding device
// connections. Create it with New, start it with Start or Run, write to
// its connections with Deliver and stop it with Shutdown. Its methods are
// safe for concurrent use.
type Gate struct {
	cfg      Config
	h        Handler
	log      *slog.Logger
	auth     Authenticator
	zstd     *messages.Zstd
	metrics  *metrics
	lists    *Lists
	ipRate   *iprate.Limiter // nil: no per-IP limit
	c2cRate  *c2cRate        // nil: no C2C rate
	proxies  *ipset.Set      // trusted PROXY protocol senders; nil: none
	reg      *registry
	events   *events
	maxConns int64
	start    time.Time // origin of the gate's monotonic clock

	loginTicks, idleTicks int64 // timeouts in ticks, rounded up, plus one

	nextID  atomic.Uint64
	conns   atomic.Int64
	backlog DelayWindow // drain delays of the loops (Backlog)

	compressing func() // tests: called before each body is compressed

	loopsMu sync.Mutex
	loops   atomic.Pointer[[]*loop] // copy-on-write: loops seen by OnOpen

	mu      sync.Mutex // guards started, addr, holder
	started bool
	addr    *net.TCPAddr
	holder  int          // fd holding the port until gnet has bound; -1 when closed
	engine  *gnet.Engine // from OnBoot: stops the engine when no loop is known

	ready        chan struct{} // closed at the first OnTick: every loop listens
	readyOnce    sync.Once
	done         chan struct{} // closed when gnet.Run has returned
	runErr       error         // set before done is closed
	draining     atomic.Bool   // Shutdown began: refuse new connections
	refusing     atomic.Bool   // Refuse: refuse new connections for now
	moveOffTurn  atomic.Uint32 // MoveOff: which loop gets the larger share next
	stopping     atomic.Bool   // stop the engine
	drained      chan struct{} // closed when draining and no connection is left
	drainedOnce  sync.Once
	quit         chan struct{} // stops the lists watcher
	shutdownOnce sync.Once
	wg           sync.WaitGroup // the gnet goroutine and the lists watcher
}

// New returns a gate that is not yet listening. reg may be nil (no
// metrics exported); log may be nil (slog.Default()).
func New(cfg Config, h Handler, reg prometheus.Registerer, log *slog.Logger) (*Gate, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if h == nil {
		return nil, fmt.Errorf("%w: nil Handler", ErrInvalidConfig)
	}
	if log == nil {
		log = slog.Default()
	}
	z, err := messages.NewZstd(cfg.MaxFrameSize)
	if err != nil {
		return nil, fmt.Errorf("gate: %w", err)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	maxConns := cfg.MaxConns
	if maxConns == 0 {
		if maxConns, err = fdConnCap(cfg.FDReserve); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
		}
	}
	g := &Gate{
		cfg:      cfg,
		h:        h,
		log:      log,
		auth:     cfg.Authenticator,
		zstd:     z,
		metrics:  m,
		reg:      newRegistry(),
		maxConns: int64(maxConns),
		start:    time.Now(),
		holder:   -1,
		ready:    make(chan struct{}),
		done:     make(chan struct{}),
		drained:  make(chan struct{}),
		quit:     make(chan struct{}),
	}
	if g.auth == nil {
		g.auth = NewJWTAuthenticator(cfg.AppSecrets, cfg.MaxTokenLifetime)
	}
	ceil := func(d time.Duration) int64 { return int64((d+cfg.TickInterval-1)/cfg.TickInterval) + 1 }
	g.loginTicks, g.idleTicks = ceil(cfg.LoginTimeout), ceil(cfg.idleTimeout())
	if cfg.NewConnsPerIP > 0 {
		g.ipRate = iprate.New(cfg.NewConnsPerIP, cfg.NewConnsPerIPBurst, cfg.IPLimiterSize)
	}
	if cfg.C2CPerSecond > 0 {
		g.c2cRate = newC2CRate(cfg.C2CPerSecond, cfg.C2CBurst)
	}
	if cfg.ProxyProtocol {
		g.proxies, _ = ipset.Parse(cfg.ProxyFrom) // validated
	}
	g.events = &events{g: g}
	g.loops.Store(&[]*loop{})
	g.lists = &Lists{g: g}
	if err := g.lists.update(cfg.Lists, "config"); err != nil {
		return nil, fmt.Errorf("%w: Config.Lists: %v", ErrInvalidConfig, err)
	}
	if cfg.ListsFile != "" {
		if err := g.lists.loadFile(cfg.ListsFile, true); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// Start binds Config.Addr and starts the event loops in the background. It
// returns once the gate accepts connections. A gate starts once.
func (g *Gate) Start() error {
	g.mu.Lock()
	if g.started {
		g.mu.Unlock()
		return ErrStarted
	}
	if g.draining.Load() {
		g.mu.Unlock()
		return ErrClosed
	}
	addr, holder, err := reserveAddr(g.cfg.Addr)
	if err != nil {
		g.mu.Unlock()
		return err
	}
	g.started, g.addr, g.holder = true, addr, holder
	g.mu.Unlock()

	g.wg.Add(1)
	go g.serve("tcp://" + addr.String())
	select {
	case <-g.ready:
	case <-g.done:
		return g.runErr
	}
	if g.cfg.ListsFile != "" {
		g.wg.Add(1)
		go g.watchLists(g.quit)
	}
	g.log.Info("gate: listening", "addr", addr.String(), "loops", g.cfg.loops(), "max_conns", g.maxConns)
	return nil
}

// Run is Start, then waits until the gate stops. It returns nil after
// Shutdown, and an error wrapping ErrEngineStopped if the event engine
// stopped by itself: the gate is then dead and the node must not go on
// as if it served devices.
func (g *Gate) Run() error {
	if err := g.Start(); err != nil {
		return err
	}
	<-g.done
	return g.runErr
}

// Done is closed when the gate's event engine has stopped, after Shutdown
// or by itself; Err then says which.
func (g *Gate) Done() <-chan struct{} { return g.done }

// Err returns nil while the gate runs and after Shutdown, and an error
// wrapping ErrEngineStopped once the engine stopped by itself: the gate is
// then dead. Read it after Done is closed.
func (g *Gate) Err() error {
	select {
	case <-g.done:
		return g.runErr
	default:
		return nil
	}
}

// serve runs gnet until it returns; any return without Shutdown is fatal.
func (g *Gate) serve(addr string) {
	defer g.wg.Done()
	defer close(g.done)
	err := gnet.Run(g.events, addr,
		gnet.WithNumEventLoop(g.cfg.loops()),
		gnet.WithReusePort(true),
		gnet.WithReuseAddr(true),
		gnet.WithTicker(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithLogger(gnetLogger{g.log}),
	)
	g.closeHolder()
	if g.stopping.Load() {
		return
	}
	if err == nil {
		err = errors.New("gnet.Run returned")
	}
	g.runErr = fmt.Errorf("%w: %v", ErrEngineStopped, err)
	g.draining.Store(true)
	g.log.Error("gate: event engine stopped; the gate is dead", "err", err)
}

func (g *Gate) closeHolder() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.holder >= 0 {
		_ = unix.Close(g.holder)
		g.holder = -1
	}
}

// Shutdown stops accepting, sends KICKOUT (SERVER_SHUTDOWN) to every
// connection and closes it, then stops the event loops and waits for
// them. If ctx ends first, the remaining connections are closed without
// waiting for their KICKOUT, and ctx's error is returned. It is safe to
// call more than once (and before Start).
func (g *Gate) Shutdown(ctx context.Context) error {
	g.shutdownOnce.Do(func() {
		g.draining.Store(true)
		close(g.quit)
		if g.conns.Load() == 0 {
			g.signalDrained()
		}
		g.eachLoop(func(l *loop) {
			l.exec(func() { l.kickAll(kickShutdown, CloseShutdown) })
		})
	})
	g.mu.Lock()
	started := g.started
	g.mu.Unlock()
	if started {
		select {
		case <-g.drained:
		case <-g.done:
		case <-ctx.Done():
		}
		g.stopEngine()
		select {
		case <-g.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	g.wg.Wait()
	return nil
}

// stopEngine makes gnet return: at once through a loop that is known, or
// through the engine (a gate that never had a connection knows no loop;
// without this it would wait for the next tick).
func (g *Gate) stopEngine() {
	g.stopping.Store(true)
	for _, l := range *g.loops.Load() {
		err := l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			return gerrors.ErrEngineShutdown
		}))
		if err == nil {
			return
		}
	}
	g.mu.Lock()
	eng := g.engine
	g.mu.Unlock()
	if eng == nil {
		return
	}
	// Engine.Stop signals the engine at once, then polls until it is
	// down; the poll ends when gnet.Run has returned.
	ctx, cancel := context.WithCancel(context.Background())
	g.wg.Add(2)
	go func() { defer g.wg.Done(); _ = eng.Stop(ctx) }()
	go func() { defer g.wg.Done(); <-g.done; cancel() }()
}

func (g *Gate) signalDrained() { g.drainedOnce.Do(func() { close(g.drained) }) }

// Addr returns the address the gate listens on (nil before Start). It is
// known once Start has reserved the port, before the gate accepts
// connections: Start returns when it does.
func (g *Gate) Addr() net.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.addr == nil {
		return nil
	}
	return g.addr
}

// HeartbeatInterval is the keepalive interval clients should use; the
// Handler puts it in LOGIN_ACK.
func (g *Gate) HeartbeatInterval() time.Duration { return g.cfg.HeartbeatInterval }

// Lists returns the gate's black and white lists.
func (g *Gate) Lists() *Lists { return g.lists }

// Conns returns the number of open connections.
func (g *Gate) Conns() int { return int(g.conns.Load()) }

// nanos is the gate's monotonic clock in nanoseconds (always positive).
func (g *Gate) nanos() int64 { return int64(time.Since(g.start)) + 1 }

// nowTick is the gate's monotonic clock in ticks.
func (g *Gate) nowTick() int64 { return int64(time.Since(g.start) / g.cfg.TickInterval) }

// loopOf returns the state of event loop el, creating it on first sight.
func (g *Gate) loopOf(el gnet.EventLoop) *loop {
	for _, l := range *g.loops.Load() {
		if l.el == el {
			return l
		}
	}
	g.loopsMu.Lock()
	defer g.loopsMu.Unlock()
	old := *g.loops.Load()
	for _, l := range old {
		if l.el == el {
			return l
		}
	}
	l := &loop{g: g, el: el, wheel: wheel.New[conn](wheelSlots, g.nowTick())}
	l.drainTask = &drainTask{l}
	next := append(append(make([]*loop, 0, len(old)+1), old...), l)
	g.loops.Store(&next)
	return l
}

// eachLoop calls f for every loop that has had a connection.
func (g *Gate) eachLoop(f func(*loop)) {
	for _, l := range *g.loops.Load() {
		f(l)
	}
}

// enforceLists closes connections the current lists refuse.
func (g *Gate) enforceLists() {
	g.eachLoop(func(l *loop) { l.exec(l.enforceLists) })
}

// MaxConns returns the connection cap (configured, or derived from the
// open-files limit).
func (g *Gate) MaxConns() int { return int(g.maxConns) }

// KickAll sends KICKOUT (SERVER_SHUTDOWN: reconnect) to every connection
// and closes it, and goes on accepting new ones. A node that rejoined the
// cluster as a new instance uses it: the others took its sessions for
// ended.
func (g *Gate) KickAll() {
	g.eachLoop(func(l *loop) {
		l.exec(func() { l.kickAll(kickShutdown, CloseShutdown) })
	})
}
