package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/cmd/courier-bench/internal/wire"
	"github.com/courier-im/courier/messages/apipb"
)

// ErrUpstreamUnimplemented is returned by the upstream scenario when the
// node does not serve the Upstream API.
var ErrUpstreamUnimplemented = errors.New("bench: the node does not implement the Upstream API (gRPC Unimplemented): " +
	"C2S cannot reach app-servers, so the upstream scenario cannot run against this node")

// apiConns dials n connections to the node's gRPC API.
func (s *session) apiConns(n int) ([]*grpc.ClientConn, error) {
	var out []*grpc.ClientConn
	for range max(n, 1) {
		c, err := grpc.NewClient(s.cfg.API, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			for _, c := range out {
				c.Close()
			}
			return nil, fmt.Errorf("bench: api %s: %w", s.cfg.API, err)
		}
		out = append(out, c)
	}
	return out, nil
}

func (s *session) authCtx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.cfg.APIKey)
}

// pushStats are the app-server's counters while pushing.
type pushStats struct {
	calls, items, accepted, failed atomic.Int64
	refused                        atomic.Int64 // of failed: refused with RESOURCE_EXHAUSTED because the node is overloaded
	storeBusy                      atomic.Int64 // of failed: refused with UNAVAILABLE STORE_BUSY (nothing accepted)
	other                          atomic.Int64 // of failed: with another status than RESOURCE_EXHAUSTED or STORE_BUSY
	mu                             sync.Mutex
	errors                         map[string]int64
}

// fail counts n pushes of a failed call; a call refused with
// RESOURCE_EXHAUSTED is the node's overload admission.
func (p *pushStats) fail(err error, n int) {
	if status.Code(err) == codes.ResourceExhausted {
		p.refused.Add(int64(n))
	}
	reason := ""
	if info := apipb.ErrorInfo(err); info != nil {
		reason = info.Reason
	}
	p.count(err, n, "", reason)
}

// failItem counts a failed item of an answered call, with its reason
// (PushItemResult.reason), and reports whether it was refused because the
// node is overloaded (the gate of its device is behind): an item's
// RESOURCE_EXHAUSTED is otherwise one identity's limit (its inbox is
// full).
func (p *pushStats) failItem(err error, reason string) bool {
	over := reason == apipb.ReasonNodeOverloaded || reason == "" && overloaded(err)
	key := ""
	if over {
		p.refused.Add(1)
		// The message names the identity and the delay: one line for all.
		key = status.Code(err).String() + ": node overloaded: deliveries to the gate holding the device's connection are late (api.max-gate-backlog)"
	}
	p.count(err, 1, key, reason)
	return over
}

// overloaded reports whether an item's error is the node's overload, from
// a node of a version that gave no reason: docs/api.md starts those
// messages with "node overloaded".
func overloaded(err error) bool {
	return status.Code(err) == codes.ResourceExhausted && strings.HasPrefix(status.Convert(err).Message(), "node overloaded")
}

// maxErrorKinds bounds the distinct error messages kept for the report:
// item errors name their identity, so a run can have as many as pushes.
const maxErrorKinds = 16

// count counts n failed pushes, under key in the report (default: the
// error's code and message).
func (p *pushStats) count(err error, n int, key, reason string) {
	p.failed.Add(int64(n))
	switch {
	case status.Code(err) == codes.Unavailable && reason == apipb.ReasonStoreBusy:
		// The store's admission: nothing was accepted, like an overload.
		p.storeBusy.Add(int64(n))
	case status.Code(err) != codes.ResourceExhausted:
		p.other.Add(int64(n))
	}
	code := status.Code(err).String()
	if key == "" {
		key = code + ": " + status.Convert(err).Message()
	}
	p.mu.Lock()
	if _, ok := p.errors[key]; !ok && len(p.errors) >= maxErrorKinds {
		key = code + ": (other messages)"
	}
	p.errors[key] += int64(n)
	p.mu.Unlock()
}

// pushLoad pushes as PushConfig says and returns when sending is over
// (not when delivery is).
func (s *session) pushLoad(ctx context.Context, pc PushConfig, st *pushStats) error {
	conns, err := s.apiConns(pc.GRPCConns)
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	targets := int64(s.cfg.Devices + pc.Ghosts)
	dev := func(i int64) int32 { return int32(i % targets) }
	delivery := apipb.Delivery_DELIVERY_STORED
	if pc.FireAndForget {
		delivery = apipb.Delivery_DELIVERY_FIRE_AND_FORGET
	}
	actx := s.authCtx(ctx)
	t0 := time.Now()
	end := t0.Add(pc.Duration)
	var ticket atomic.Int64
	var wg sync.WaitGroup
	for g := range pc.Concurrency {
		client := apipb.NewCourierClient(conns[g%len(conns)])
		wg.Add(1)
		go func() {
			defer wg.Done()
			items := make([]*apipb.PushRequest, pc.Batch)
			for i := range items {
				items[i] = &apipb.PushRequest{AppCode: uint32(s.cfg.AppCode), Msgtype: uint32(s.cfg.MsgType),
					Delivery: delivery, TtlMs: pc.TTL.Milliseconds()}
			}
			many := &apipb.PushManyRequest{}
			// A refused call (RESOURCE_EXHAUSTED: the node is overloaded)
			// is followed by a pause, as the API asks of app-servers:
			// 10 ms, doubling to 100 ms while calls are refused.
			var backoff time.Duration
			pause := func(err error) {
				if status.Code(err) != codes.ResourceExhausted {
					backoff = 0
					return
				}
				backoff = min(max(2*backoff, 10*time.Millisecond), 100*time.Millisecond)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
				}
			}
			for ctx.Err() == nil {
				k := ticket.Add(1) - 1
				first := k * int64(pc.Batch)
				n := int64(pc.Batch)
				if pc.Count > 0 {
					if first >= pc.Count {
						return
					}
					n = min(n, pc.Count-first)
				}
				var stamp time.Time
				if pc.Rate > 0 {
					stamp = t0.Add(time.Duration(float64(first) / pc.Rate * float64(time.Second)))
					if !stamp.Before(end) {
						return
					}
					if d := time.Until(stamp); d > 0 {
						select {
						case <-time.After(d):
						case <-ctx.Done():
							return
						}
					}
				} else {
					stamp = time.Now()
					if !stamp.Before(end) {
						return
					}
				}
				idx0 := s.acct.reserve(int(n), stamp.UnixNano(), dev)
				for j := range n {
					it := items[j]
					it.Uid = s.uid(dev(idx0 + j))
					if pc.IdempotencyKeys && !pc.FireAndForget {
						it.IdempotencyKey = fmt.Sprintf("%x-%d", s.cfg.runID, idx0+j)
					}
					it.Payload = wire.AppendPayload(it.Payload[:0], wire.Payload{Kind: wire.KindPush, RunID: s.cfg.runID,
						Index: uint64(idx0 + j), SentNs: stamp.UnixNano()}, s.cfg.PayloadSize)
				}
				if s.cfg.InjectDelay > 0 {
					time.Sleep(s.cfg.InjectDelay)
				}
				st.calls.Add(1)
				st.items.Add(n)
				callStart := time.Now()
				if pc.Batch == 1 {
					r, err := client.Push(actx, items[0])
					callNs := time.Since(callStart).Nanoseconds()
					if err != nil {
						st.fail(err, 1)
						s.acct.answered(idx0, pushFailed, false, 0, 0, 0)
						pause(err)
						continue
					}
					backoff = 0
					s.answer(idx0, r, pc.FireAndForget, callNs, st)
					continue
				}
				many.Items = items[:n]
				r, err := client.PushMany(actx, many)
				callNs := time.Since(callStart).Nanoseconds()
				if err == nil && len(r.Results) != int(n) {
					err = fmt.Errorf("PushMany answered %d results for %d items", len(r.Results), n)
				}
				if err != nil {
					st.fail(err, int(n))
					for j := range n {
						s.acct.answered(idx0+j, pushFailed, false, 0, 0, 0)
					}
					pause(err)
					continue
				}
				var over error
				for j, it := range r.Results {
					if it.Code != 0 {
						if e := status.Error(codes.Code(it.Code), it.Error); st.failItem(e, it.Reason) {
							over = e
						}
						s.acct.answered(idx0+int64(j), pushFailed, false, 0, 0, 0)
						continue
					}
					s.answer(idx0+int64(j), it.Response, pc.FireAndForget, callNs, st)
				}
				// Items refused because their gate is behind ask for the
				// same pause as a refused call.
				pause(over)
			}
		}()
	}
	wg.Wait()
	return ctx.Err()
}

func (s *session) answer(i int64, r *apipb.PushResponse, ff bool, callNs int64, st *pushStats) {
	state := pushAccepted
	if ff && !r.Online {
		state = pushDropped
	}
	st.accepted.Add(1)
	s.acct.answered(i, state, r.Online, r.Seq, wire.HashString(r.MsgId), callNs)
}

// pendingOnNode sums the stored messages not yet acknowledged of the
// devices, as the node's Presence says.
func (s *session) pendingOnNode(ctx context.Context) (int64, error) {
	conns, err := s.apiConns(1)
	if err != nil {
		return 0, err
	}
	defer conns[0].Close()
	client := apipb.NewCourierClient(conns[0])
	var pending int64
	for from := 0; from < s.cfg.Devices; from += 1000 {
		req := &apipb.PresenceRequest{AppCode: uint32(s.cfg.AppCode)}
		for g := from; g < min(from+1000, s.cfg.Devices); g++ {
			req.Uids = append(req.Uids, s.uid(int32(g)))
		}
		cctx, cancel := context.WithTimeout(s.authCtx(ctx), 30*time.Second)
		r, err := client.Presence(cctx, req)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("bench: presence: %w", err)
		}
		for _, e := range r.Entries {
			pending += int64(e.Pending)
		}
	}
	return pending, nil
}

// subscriber is the bench's app-server on the Upstream stream.
type subscriber struct {
	stream apipb.Courier_UpstreamClient
	err    chan error
	recvd  atomic.Int64
}

// subscribe opens n Upstream streams for the app and msgtype and returns
// once they are open (or with ErrUpstreamUnimplemented).
func (s *session) subscribe(ctx context.Context, n int, maxInFlight uint32) ([]*subscriber, func(), error) {
	conns, err := s.apiConns(1)
	if err != nil {
		return nil, nil, err
	}
	sctx, cancel := context.WithCancel(s.authCtx(ctx))
	var wg sync.WaitGroup
	stop := func() {
		cancel()
		wg.Wait()
		conns[0].Close()
	}
	client := apipb.NewCourierClient(conns[0])
	var subs []*subscriber
	for range max(n, 1) {
		st, err := client.Upstream(sctx)
		if err == nil {
			err = st.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Subscribe{Subscribe: &apipb.Subscribe{
				AppCode: uint32(s.cfg.AppCode), Msgtypes: []uint32{uint32(s.cfg.MsgType)}, MaxInFlight: maxInFlight}}})
			if errors.Is(err, io.EOF) {
				// The server ended the stream first (a node without the
				// API answers at once): its status comes with Recv.
				_, err = st.Recv()
			}
		}
		if err != nil {
			stop()
			return nil, nil, upstreamErr(err)
		}
		sub := &subscriber{stream: st, err: make(chan error, 1)}
		subs = append(subs, sub)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub.err <- s.receiveUpstream(sub)
		}()
	}
	// A node without the API answers the first Recv with Unimplemented;
	// one with it stays silent until traffic arrives.
	select {
	case err := <-subs[0].err:
		stop()
		if err == nil {
			err = errors.New("bench: the Upstream stream ended at once")
		}
		return nil, nil, upstreamErr(err)
	case <-time.After(500 * time.Millisecond):
	}
	return subs, stop, nil
}

func upstreamErr(err error) error {
	if status.Code(err) == codes.Unimplemented {
		return ErrUpstreamUnimplemented
	}
	return fmt.Errorf("bench: upstream subscribe: %w", err)
}

// receiveUpstream records and acknowledges every delivery until the
// stream ends.
func (s *session) receiveUpstream(sub *subscriber) error {
	var ids []uint64
	for {
		d, err := sub.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		t := time.Now().UnixNano()
		ids = ids[:0]
		for _, m := range d.Messages {
			ids = append(ids, m.DeliveryId)
			p, err := wire.ParsePayload(m.Payload)
			if err != nil || p.RunID != s.cfg.runID {
				continue
			}
			s.acct.upstream(p.Index, wire.HashString(m.MsgId), m.Uid, t)
			sub.recvd.Add(1)
		}
		if len(ids) > 0 {
			if err := sub.stream.Send(&apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Ack{Ack: &apipb.UpstreamAck{DeliveryIds: ids}}}); err != nil {
				return err
			}
		}
	}
}
