package cluster

import (
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"

	"github.com/asynkron/protoactor-go/actor"
)

// cell runs one identity's actor on this node: its mailbox, and the run
// that hands the actor its messages one at a time on the worker pool. It
// takes the place of the library's actor process for the identities'
// actors, which use none of what makes that one heavy (supervision,
// middleware, receive timeouts, watchers, children): posting a message is
// one lock and an append, a run takes every waiting message at once, and
// an idle actor costs this struct instead of the library's process,
// context, mailbox and its two queues (about 1.5 KiB less per identity in
// memory, and a tenth of a stored push's CPU).
//
// Everything addressed to a cell's PID (the actor's own timers and store
// callbacks, Poison from routing) reaches it as it would reach the
// library's process, as long as it goes through that *actor.PID, which
// caches the cell (spawnCell): routing hands out no other, and the actor
// knows itself by ctx.Self(). A PID made anew from its id would not find
// it. Its actor sees *actor.Started first and *actor.Stopping last, and
// its context answers Message, Self and ActorSystem (cellContext).
//
// Goroutines: posts come from any goroutine; runs happen on the pool, at
// most one at a time per cell, and yield after cellRunLimit messages so
// that a busy identity does not hold a worker. After the cell has stopped
// (actor.PoisonPill handled, or Stop), messages posted to it are dropped:
// routing stops an actor only once it has received every envelope sent
// to it (Passivate), so what is dropped are timer ticks and completions
// of a stopped actor.
type cell struct {
	sys *System
	pid *actor.PID
	ctx cellContext

	mu      sync.Mutex
	queue   []any
	active  bool // a run is scheduled or running
	stopped bool
}

// cellRunLimit is the most messages a run handles before it yields its
// worker (and schedules itself again).
const cellRunLimit = 256

// cellQueueKeep is the largest mailbox capacity a cell keeps between
// runs; a bigger one (after a burst) is left to the garbage collector.
const cellQueueKeep = 16

// spawnCell starts a cell running an actor made by s.newChild and returns
// its PID.
func (s *System) spawnCell() *actor.PID {
	c := &cell{sys: s}
	c.ctx = cellContext{c: c, a: s.newChild()}
	// The first send through a PID caches its process in it (PID.ref
	// keeps any process but the library's own dead ones): sends through
	// this PID (routing's, and the actor's own Self) then reach the cell
	// without the registry. So the cell is registered only for that first
	// send, under one fixed id (the registry's maps never shrink: a new id
	// per cell would leave a few hundred bytes behind per identity ever
	// activated), and the PID gets its own unique id afterwards.
	reg := s.actors.ProcessRegistry
	cellSpawnMu.Lock()
	pid, _ := reg.Add(c, cellSpawnID)
	s.actors.Root.Send(pid, cacheProbe{}) // dropped by the cell
	reg.Remove(pid)
	cellSpawnMu.Unlock()
	pid.Id = reg.NextId()
	c.pid = pid
	c.post(startedMessage)
	return pid
}

// cacheProbe is what spawnCell sends to make a PID cache its cell.
type cacheProbe struct{}

// cellSpawnID is the id under which a cell is registered for its first
// message (spawnCell); cellSpawnMu makes one cell at a time use it.
const cellSpawnID = "courier-cell-spawning"

var cellSpawnMu sync.Mutex

var (
	startedMessage  = &actor.Started{}
	stoppingMessage = &actor.Stopping{}
)

// post appends m to the mailbox and schedules a run unless one is
// pending.
func (c *cell) post(m any) {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.queue = append(c.queue, m)
	schedule := !c.active
	c.active = true
	c.mu.Unlock()
	if schedule {
		c.sys.dispatcher.schedule(c)
	}
}

// Run is a run (runner): it hands the actor what waits, batch by batch,
// until the mailbox is empty, the cell stops or the run limit is reached.
func (c *cell) Run() {
	handled := 0
	for {
		c.mu.Lock()
		if c.stopped || len(c.queue) == 0 {
			c.active = false
			c.mu.Unlock()
			return
		}
		if handled >= cellRunLimit {
			c.mu.Unlock()
			c.sys.dispatcher.schedule(c) // still active: nobody else schedules it
			return
		}
		batch := c.queue
		c.queue = nil
		if n := cellRunLimit - handled; len(batch) > n {
			batch, c.queue = batch[:n:n], batch[n:]
		}
		c.mu.Unlock()
		for i, m := range batch {
			batch[i] = nil
			if !c.stopped {
				c.invoke(m)
			}
		}
		handled += len(batch)
		if cap(batch) <= cellQueueKeep {
			c.mu.Lock()
			if c.queue == nil {
				c.queue = batch[:0]
			}
			c.mu.Unlock()
		}
	}
}

// invoke hands m to the actor (on the cell's run only).
func (c *cell) invoke(m any) {
	if _, ok := m.(*actor.PoisonPill); ok {
		c.stop()
		return
	}
	defer func() {
		// Device actors recover their own panics; one that escapes is a
		// bug, and must not take the worker (and the node) with it.
		if r := recover(); r != nil {
			c.sys.log.Error("cluster: panic in an actor", "pid", c.pid.Id, "message", fmt.Sprintf("%T", m),
				"panic", r, "stack", string(debug.Stack()))
		}
	}()
	c.ctx.msg = m
	c.ctx.a.Receive(&c.ctx)
	c.ctx.msg = nil
}

// stop ends the cell (on its run): the actor hears Stopping, and what is
// still posted is dropped.
func (c *cell) stop() {
	c.mu.Lock()
	c.stopped = true
	c.queue = nil
	c.mu.Unlock()
	c.invoke(stoppingMessage)
}

// SendUserMessage implements actor.Process.
func (c *cell) SendUserMessage(_ *actor.PID, m any) {
	if _, ok := m.(cacheProbe); !ok {
		c.post(m)
	}
}

// SendSystemMessage implements actor.Process. The library's system
// messages concern watchers, children and supervision, which cells do
// not have; only a stop is acted on.
func (c *cell) SendSystemMessage(pid *actor.PID, m any) {
	if _, ok := m.(*actor.Stop); ok {
		c.Stop(pid)
	}
}

// Stop implements actor.Process: the cell stops after the message being
// handled; messages still waiting are dropped (as the library's Stop
// does).
func (c *cell) Stop(*actor.PID) {
	c.mu.Lock()
	c.queue = nil
	c.mu.Unlock()
	c.post(&actor.PoisonPill{})
}

// cellContext is the actor.Context of a cell's actor. It answers what
// identity actors use: Message, Self, ActorSystem, Logger, Send and
// Poison. Any other method of actor.Context panics (the nil embedded
// interface); the actor's own recovery reports it.
type cellContext struct {
	actor.Context
	c   *cell
	a   actor.Actor
	msg any
}

func (x *cellContext) Message() any                     { return x.msg }
func (x *cellContext) Self() *actor.PID                 { return x.c.pid }
func (x *cellContext) ActorSystem() *actor.ActorSystem  { return x.c.sys.actors }
func (x *cellContext) Logger() *slog.Logger             { return x.c.sys.log }
func (x *cellContext) Actor() actor.Actor               { return x.a }
func (x *cellContext) Send(pid *actor.PID, message any) { x.c.sys.actors.Root.Send(pid, message) }
func (x *cellContext) Poison(pid *actor.PID)            { x.c.sys.actors.Root.Poison(pid) }
func (x *cellContext) Sender() *actor.PID               { return nil }
