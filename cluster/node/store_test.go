package node_test

import (
	"context"
	"fmt"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// What the inbox store promises across restarts, outages and nodes, on
// real node processes: access lists that survive, a PostgreSQL that goes
// away and comes back, two nodes that both believe they own an identity.

func ban(t *testing.T, n *testkit.Node, uid string) {
	t.Helper()
	_, err := n.API(t).UpdateAccessList(testkit.Ctx(t, testkit.App1Key), &apipb.UpdateAccessListRequest{
		List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: []string{uid}})
	if err != nil {
		t.Fatalf("ban %s: %v", uid, err)
	}
}

func loginCode(t *testing.T, n *testkit.Node, uid string) devicepb.Code {
	t.Helper()
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	defer d.Close()
	d.Send(messages.CmdLogin, d.NextSeq(), &devicepb.Login{Uid: uid, Token: testkit.Token(t, 1, uid), DeviceId: "dev-" + uid})
	f, err := d.ReadFrame()
	switch {
	case testkit.Closed(err):
		// The ban came into force while the login was on its way: the
		// connection is closed without a frame (docs/protocol.md §8.2).
		return devicepb.Code_UID_BLOCKED
	case err != nil:
		t.Fatalf("login of %s: %v", uid, err)
	case f.Cmd == messages.CmdKickout && f.Msg.(*devicepb.Kickout).Reason == devicepb.KickReason_UID_BLACKLISTED:
		// The ban came into force right after the login.
		return devicepb.Code_UID_BLOCKED
	case f.Cmd != messages.CmdLoginAck:
		t.Fatalf("login of %s: got %v", uid, f.Cmd)
	}
	return f.Msg.(*devicepb.LoginAck).Code
}

// refusedAtLogin reports whether a login of uid is refused as blocked.
// A login that the ban overtakes is closed (or, logged in, kicked with
// KICKOUT UID_BLACKLISTED) rather than answered: not refused at login
// yet.
func refusedAtLogin(t *testing.T, n *testkit.Node, uid string) bool {
	t.Helper()
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	defer d.Close()
	d.Send(messages.CmdLogin, d.NextSeq(), &devicepb.Login{Uid: uid, Token: testkit.Token(t, 1, uid)})
	f, err := d.ReadFrame()
	if testkit.Closed(err) {
		// Banned while its LOGIN was in flight: closed without a frame
		// (docs/protocol.md §8.2); the next try is refused at login.
		return false
	}
	if err != nil {
		t.Fatalf("login of %s: %v", uid, err)
	}
	switch m := f.Msg.(type) {
	case *devicepb.LoginAck:
		return m.Code == devicepb.Code_UID_BLOCKED
	case *devicepb.Kickout:
		if m.Reason != devicepb.KickReason_UID_BLACKLISTED {
			t.Fatalf("login of %s kicked: %v", uid, m)
		}
		return false
	default:
		t.Fatalf("login of %s: got %v", uid, f.Cmd)
		return false
	}
}

// TestBannedUIDStaysBannedAfterRestart: a uid banned through the API
// cannot log in after the node restarts (issue 9, item 7), on the store
// the suite runs on.
func TestBannedUIDStaysBannedAfterRestart(t *testing.T) {
	n := testkit.StartNode(t, testkit.NodeOptions{})
	if c := loginCode(t, n, "troll"); c != devicepb.Code_OK {
		t.Fatalf("before the ban: %v", c)
	}
	ban(t, n, "troll")
	if c := loginCode(t, n, "troll"); c != devicepb.Code_UID_BLOCKED {
		t.Fatalf("after the ban: %v", c)
	}
	n.Stop(syscall.SIGKILL)
	n.Restart()
	if c := loginCode(t, n, "troll"); c != devicepb.Code_UID_BLOCKED {
		t.Fatalf("after a restart: %v, want UID_BLOCKED", c)
	}
	if c := loginCode(t, n, "fine"); c != devicepb.Code_OK {
		t.Fatalf("another uid after the restart: %v", c)
	}
}

// TestListsChangeReachesEveryNode: two nodes share one PostgreSQL; a ban
// through one node's API is in force on the other within 2 s (each node
// polls the lists' version every second).
func TestListsChangeReachesEveryNode(t *testing.T) {
	dsn := testkit.PostgresDB(t)
	a := testkit.StartNode(t, testkit.NodeOptions{PostgresDSN: dsn})
	b := testkit.StartNode(t, testkit.NodeOptions{PostgresDSN: dsn})
	ban(t, a, "troll")
	start := time.Now()
	testkit.Eventually(t, 3*time.Second, func() bool { return refusedAtLogin(t, b, "troll") },
		"the ban through node a is not in force on node b")
	t.Logf("in force on the other node after %v", time.Since(start).Round(time.Millisecond))
}

// TestRestartAfterSIGKILLOnPostgres: the restart test on PostgreSQL
// whatever store the suite runs on: messages accepted and not delivered
// when the node is killed are all delivered after the restart, in seq
// order.
func TestRestartAfterSIGKILLOnPostgres(t *testing.T) {
	testRestartWith(t, syscall.SIGKILL, testkit.NodeOptions{PostgresDSN: testkit.PostgresDB(t)})
}

// TestPostgresRestartWhilePushesStream: PostgreSQL crashes and restarts
// while an app-server streams stored pushes. Pushes are refused
// (UNAVAILABLE) while it is down and retried with the same idempotency
// key, as docs/api.md tells app-servers; every push is accepted in the
// end and delivered exactly once, in seq order. Meanwhile logins get
// STORE_UNAVAILABLE, and fire-and-forget pushes still reach a device that
// is online.
func TestPostgresRestartWhilePushesStream(t *testing.T) {
	pg := testkit.StartPostgres(t)
	n := testkit.StartNode(t, testkit.NodeOptions{PostgresDSN: pg.CreateDB(t), Args: []string{"--store.timeout", "1s"}})
	api := n.API(t)
	online := n.Device(t, 1, "watcher")

	const total = 300
	type result struct {
		msgID   string
		refused int
	}
	results := make([]result, total)
	var accepted sync.WaitGroup
	progress := make(chan int, total)
	accepted.Add(1)
	go func() {
		defer accepted.Done()
		// Closed however the pushes end: a push that fails for good must
		// not leave the wait below hanging until the package's timeout.
		defer close(progress)
		deadline := time.Now().Add(2 * time.Minute)
		for i := range total {
			req := &apipb.PushRequest{AppCode: 1, Uid: "stream", Payload: []byte(fmt.Sprint(i)), IdempotencyKey: fmt.Sprintf("k%d", i)}
			for {
				if time.Now().After(deadline) {
					t.Errorf("push %d still refused after 2 minutes", i)
					return
				}
				ctx, cancel := context.WithTimeout(testkit.Ctx(t, testkit.App1Key), 10*time.Second)
				r, err := api.Push(ctx, req)
				cancel()
				if err == nil {
					results[i].msgID = r.MsgId
					break
				}
				if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
					t.Errorf("push %d: %v", i, err)
					return
				}
				results[i].refused++
				time.Sleep(50 * time.Millisecond)
			}
			progress <- i
		}
	}()
	for i := range progress {
		if i == total/3 {
			break
		}
	}
	pg.Stop(true)
	// While it is down: a login is refused with STORE_UNAVAILABLE, and a
	// fire-and-forget push reaches the device that is online.
	d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	if ack := d.Login("newcomer", testkit.Token(t, 1, "newcomer"), false); ack.Code != devicepb.Code_STORE_UNAVAILABLE {
		t.Fatalf("login while the database is down: %v", ack.Code)
	}
	ff := &apipb.PushRequest{AppCode: 1, Uid: "watcher", Payload: []byte("gps"), Delivery: apipb.Delivery_DELIVERY_FIRE_AND_FORGET}
	if r := push(t, api, testkit.App1Key, ff); !r.Online {
		t.Fatalf("fire-and-forget while the database is down: %v", r)
	}
	if _, m := expectS2C(t, online); string(m.Payload) != "gps" {
		t.Fatalf("payload %q", m.Payload)
	}
	time.Sleep(2 * time.Second) // pushes keep failing meanwhile
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	accepted.Wait()
	if t.Failed() {
		return
	}
	refused := 0
	for _, r := range results {
		refused += r.refused
	}
	if refused == 0 {
		t.Fatal("no push was refused: the outage was not exercised")
	}
	d = testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	ack := d.Login("stream", testkit.Token(t, 1, "stream"), false)
	if ack.Code != devicepb.Code_OK || ack.Pending != total {
		t.Fatalf("LOGIN_ACK %v pending %d, want %d", ack.Code, ack.Pending, total)
	}
	lastSeq := uint32(0)
	st := newStream(t, d)
	for i := range total {
		seq, m := st.next()
		if seq <= lastSeq || m.MsgId != results[i].msgID || string(m.Payload) != fmt.Sprint(i) {
			t.Fatalf("message %d: seq %d (after %d) id %s payload %q; accepted as %s", i, seq, lastSeq, m.MsgId, m.Payload, results[i].msgID)
		}
		lastSeq = seq
		ackS2C(d, m.MsgId)
	}
	d.Keepalive()
	t.Logf("%d pushes, %d refusals during the outage", total, refused)
}

// TestFencingAcrossTwoNodes: two node processes share one PostgreSQL
// without knowing of each other (as in a split brain), so both activate
// the same identity. Exactly one can write at a time: once the second
// claims the identity the first's next write is refused, and everything
// either accepted is delivered exactly once, in seq order, with no seq
// handed out twice.
func TestFencingAcrossTwoNodes(t *testing.T) {
	dsn := testkit.PostgresDB(t)
	a := testkit.StartNode(t, testkit.NodeOptions{PostgresDSN: dsn})
	b := testkit.StartNode(t, testkit.NodeOptions{PostgresDSN: dsn})
	apis := []apipb.CourierClient{a.API(t), b.API(t)}
	pushVia := func(node, i int) (*apipb.PushResponse, error) {
		return apis[node].Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: "split",
			Payload: []byte(fmt.Sprint(i)), IdempotencyKey: fmt.Sprintf("k%d", i)})
	}
	// a activates the identity and writes; b activates it (claims it)
	// and writes; a's next write is fenced.
	ids := map[int]string{} // payload -> msg id accepted
	for i := range 2 {
		r, err := pushVia(i, i)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = r.MsgId
	}
	if r, err := pushVia(0, 2); status.Code(err) != codes.Unavailable {
		t.Fatalf("a's push after b claimed the identity: %v %v, want UNAVAILABLE", r, err)
	}
	// Its actor stopped: the identity was claimed elsewhere.
	if n := metric(t, a, regexp.MustCompile(`(?m)^courier_store_fenced_writes_total (\d+)`)); n < 1 {
		t.Fatalf("fenced writes counted on a: %d", n)
	}
	if n := metric(t, a, regexp.MustCompile(`(?m)^courier_actors_retired_total (\d+)`)); n < 1 {
		t.Fatalf("node a retired %d actors after a fenced write", n)
	}
	// Both go on accepting pushes in turns, each retried (through the
	// same node) until accepted: a node whose write was fenced claims the
	// identity again, and the other's next write is fenced in turn.
	for i := 2; i < 40; i++ {
		for attempt := 0; ; attempt++ {
			r, err := pushVia(i%2, i)
			if err == nil {
				ids[i] = r.MsgId
				break
			}
			if status.Code(err) != codes.Unavailable || attempt > 10 {
				t.Fatalf("push %d: %v", i, err)
			}
		}
	}
	a.Stop(syscall.SIGKILL)
	b.Stop(syscall.SIGKILL)
	c := testkit.StartNode(t, testkit.NodeOptions{PostgresDSN: dsn})
	d := testkit.Dial(t, c.GateAddr, testkit.DeviceConfig{AppCode: 1})
	ack := d.Login("split", testkit.Token(t, 1, "split"), false)
	if ack.Pending != 40 {
		t.Fatalf("pending %d, want 40", ack.Pending)
	}
	last := uint32(0)
	seen := map[string]bool{}
	st := newStream(t, d)
	for i := range 40 {
		seq, m := st.next()
		if seq <= last || seen[m.MsgId] || string(m.Payload) != fmt.Sprint(i) || ids[i] != m.MsgId {
			t.Fatalf("message %d: seq %d after %d, id %s (seen %v), payload %q", i, seq, last, m.MsgId, seen[m.MsgId], m.Payload)
		}
		last, seen[m.MsgId] = seq, true
		ackS2C(d, m.MsgId)
	}
	d.Keepalive()
}

// TestPostgresPausedKeepsActiveIdentitiesServed: PostgreSQL hangs (its
// processes are paused: connections stay open and nothing is answered,
// unlike a database that refuses connections) while more identities log
// in than the node has workers. Every one of those logins gets
// STORE_UNAVAILABLE within store.timeout, and meanwhile an identity
// already in memory still gets its fire-and-forget pushes and answers
// presence at once: no worker of the node waits for the database. Once
// the database goes on, logins succeed again.
func TestPostgresPausedKeepsActiveIdentitiesServed(t *testing.T) {
	pg := testkit.StartPostgres(t)
	const storeTimeout = 3 * time.Second
	n := testkit.StartNode(t, testkit.NodeOptions{PostgresDSN: pg.CreateDB(t), Args: []string{"--store.timeout", storeTimeout.String()}})
	api := n.API(t)
	online := n.Device(t, 1, "watcher")
	presence := func() *apipb.PresenceEntry {
		t.Helper()
		r, err := api.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{"watcher"}})
		if err != nil || len(r.Entries) != 1 {
			t.Fatalf("presence: %v %v", r, err)
		}
		return r.Entries[0]
	}
	if !presence().Online {
		t.Fatal("the watcher is not online")
	}

	pg.Pause(t)
	// More logins of identities not in memory than the node has workers
	// (4 per core): each needs a load, which the database does not answer.
	const logins = 40
	type result struct {
		code devicepb.Code
		took time.Duration
		err  error
	}
	results := make(chan result, logins)
	for i := range logins {
		go func() {
			start := time.Now()
			d, err := testkit.DialErr(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1, Timeout: 30 * time.Second})
			if err != nil {
				results <- result{err: err}
				return
			}
			defer d.Close()
			uid := fmt.Sprintf("newcomer-%d", i)
			if err := d.TrySend(messages.Header{Cmd: messages.CmdLogin, AppCode: 1, Seq: 1}, &devicepb.Login{Uid: uid, Token: testkit.Token(t, 1, uid)}); err != nil {
				results <- result{err: err}
				return
			}
			f, err := d.ReadFrame()
			if err == nil && f.Cmd != messages.CmdLoginAck {
				err = fmt.Errorf("got %v, want LOGIN_ACK", f.Cmd)
			}
			if err != nil {
				results <- result{err: err}
				return
			}
			results <- result{code: f.Msg.(*devicepb.LoginAck).Code, took: time.Since(start)}
		}()
	}
	time.Sleep(500 * time.Millisecond) // the logins reach their actors

	// The identity in memory is served at once, again and again.
	for i := range 5 {
		start := time.Now()
		if !presence().Online {
			t.Fatal("the watcher went offline")
		}
		ff := &apipb.PushRequest{AppCode: 1, Uid: "watcher", Payload: []byte(fmt.Sprint("gps", i)), Delivery: apipb.Delivery_DELIVERY_FIRE_AND_FORGET}
		if r := push(t, api, testkit.App1Key, ff); !r.Online {
			t.Fatalf("fire-and-forget while the database hangs: %v", r)
		}
		if _, m := expectS2C(t, online); string(m.Payload) != fmt.Sprint("gps", i) {
			t.Fatalf("payload %q", m.Payload)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("presence and a fire-and-forget push took %v while the database hangs", d)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var slowest time.Duration
	for range logins {
		r := <-results
		slowest = max(slowest, r.took)
		switch {
		case r.err != nil:
			t.Fatalf("login while the database hangs: %v", r.err)
		case r.code != devicepb.Code_STORE_UNAVAILABLE:
			t.Fatalf("login while the database hangs: %v, want STORE_UNAVAILABLE", r.code)
		case r.took > storeTimeout+2*time.Second:
			t.Fatalf("a login was answered after %v, store.timeout is %v", r.took, storeTimeout)
		}
	}

	t.Logf("%d logins refused while the database hung, the last after %v", logins, slowest.Round(time.Millisecond))

	pg.Resume()
	resumed := time.Now()
	testkit.Eventually(t, 60*time.Second, func() bool { return loginCode(t, n, "after") == devicepb.Code_OK },
		"logins do not succeed once the database goes on")
	t.Logf("logins succeed again %v after the database went on", time.Since(resumed).Round(time.Millisecond))
}
