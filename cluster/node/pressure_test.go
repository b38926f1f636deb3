package node_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// TestSlowDiskRefusesNewWorkAndServesTheRest runs a node on a disk whose
// fsync takes seconds (a FUSE loopback the test slows down from outside
// the node). The node keeps at most its budget of writes waiting for the
// disk: beyond it, stored pushes are refused at once with UNAVAILABLE
// and C2C with STORE_UNAVAILABLE, while what needs no write goes on
// (presence, fire-and-forget to an online device, upstream); once the
// disk is fast again, stored pushes are accepted again.
func TestSlowDiskRefusesNewWorkAndServesTheRest(t *testing.T) {
	disk := testkit.NewSlowDisk(t)
	n := testkit.StartNode(t, testkit.NodeOptions{DataDir: disk.Dir, Pebble: true, Args: []string{"--actors.max-pending-writes", "8"}})
	api := n.API(t)
	calm := n.Device(t, 1, "calm")
	sender := n.Device(t, 1, "sender")

	disk.SetSyncDelay(12 * time.Second)
	const pushes = 100
	type result struct {
		err  error
		took time.Duration
	}
	results := make(chan result, pushes)
	var wg sync.WaitGroup
	for i := range pushes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			_, err := api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: fmt.Sprint("busy-", i), Payload: []byte("x")})
			results <- result{err, time.Since(start)}
		}()
	}
	// Meanwhile, what needs no write is served at once.
	start := time.Now()
	pr, err := api.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{"calm"}})
	if err != nil || !pr.Entries[0].Online {
		t.Fatalf("presence while the disk is slow: %v %v", pr, err)
	}
	r, err := api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: "calm", Payload: []byte("gps"),
		Delivery: apipb.Delivery_DELIVERY_FIRE_AND_FORGET})
	if err != nil || !r.Online {
		t.Fatalf("fire-and-forget while the disk is slow: %v %v", r, err)
	}
	if _, m := expectS2C(t, calm); string(m.Payload) != "gps" {
		t.Fatalf("fire-and-forget payload %q", m.Payload)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("presence and fire-and-forget took %v while the disk was slow", took)
	}
	wg.Wait()
	close(results)
	quick := 0
	for res := range results {
		if status.Code(res.err) == codes.Unavailable && strings.Contains(status.Convert(res.err).Message(), "overloaded") && res.took < 5*time.Second {
			quick++
		}
	}
	if quick < pushes/2 {
		t.Fatalf("%d of %d pushes were refused at once as overloaded while the disk was slow", quick, pushes)
	}
	// A C2C while the writes of the pushes above are still waiting (the
	// slow fsync lasts 12 s each) is refused too, at once.
	for i := range 8 {
		go func() {
			_, _ = api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: fmt.Sprint("busy-again-", i), Payload: []byte("x")})
		}()
	}
	time.Sleep(500 * time.Millisecond) // they take the budget
	seq := sendC2C(sender, "busy-0", "c-1", "hello")
	if ack := expectC2CAck(t, sender, seq); ack.Code != devicepb.Code_STORE_UNAVAILABLE {
		t.Fatalf("C2C while the disk is slow: %v %q", ack.Code, ack.Reason)
	}

	disk.SetSyncDelay(0)
	testkit.Eventually(t, 30*time.Second, func() bool {
		_, err := api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: "after", Payload: []byte("x")})
		return err == nil
	}, "stored pushes were not accepted again once the disk was fast")
	calm.Send(messages.CmdKeepalive, calm.NextSeq(), nil)
	calm.Expect(messages.CmdKeepaliveAck)
}

// TestHungDiskMakesTheNodeUnready runs a node on a disk whose fsync hangs
// for 8 s. Once a commit has waited store.stall-after, the node refuses
// new stored pushes at once with UNAVAILABLE naming the setting (they
// would otherwise wait for the disk until their callers' deadlines),
// /readyz fails naming the store and the wait shows in
// courier_store_commit_wait_seconds; once the commit completes, the node
// is ready again and accepts stored pushes, and the push that waited was
// delivered.
func TestHungDiskMakesTheNodeUnready(t *testing.T) {
	disk := testkit.NewSlowDisk(t)
	n := testkit.StartNode(t, testkit.NodeOptions{DataDir: disk.Dir, Pebble: true, Args: []string{"--store.stall-after", "1s", "--cluster.request-timeout", "20s"}})
	api := n.API(t)

	disk.SetSyncDelay(8 * time.Second)
	waited := make(chan error, 1)
	go func() {
		_, err := api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: "first", Payload: []byte("held")})
		waited <- err
	}()
	testkit.Eventually(t, 5*time.Second, func() bool {
		code, body := readyz(t, n)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "store.stall-after")
	}, "/readyz did not fail while a commit hung")
	if w, ok := n.Metric("courier_store_commit_wait_seconds"); !ok || w < 1 {
		t.Errorf("courier_store_commit_wait_seconds while a commit hangs: %v (exposed %v), want at least 1", w, ok)
	}
	start := time.Now()
	_, err := api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: "second", Payload: []byte("x")})
	if took := time.Since(start); status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "store.stall-after") || took > 2*time.Second {
		t.Fatalf("a stored push while a commit hangs: %v after %v, want UNAVAILABLE naming store.stall-after at once", err, took)
	}
	if info := apipb.ErrorInfo(err); info.GetReason() != apipb.ReasonStoreBusy || info.GetMetadata()[apipb.SettingKey] != "store.stall-after" {
		t.Fatalf("the refusal's ErrorInfo %v, want STORE_BUSY and store.stall-after", info)
	}
	if v, ok := n.Metric(`courier_actors_refused_total{why="store_stalled"}`); !ok || v < 1 {
		t.Errorf(`courier_actors_refused_total{why="store_stalled"} = %v (exposed %v), want at least 1`, v, ok)
	}

	disk.SetSyncDelay(0)
	if err := <-waited; err != nil {
		t.Fatalf("the push whose commit hung: %v", err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool {
		code, _ := readyz(t, n)
		return code == http.StatusOK
	}, "/readyz did not recover once the commit completed")
	if _, err := api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: "second", Payload: []byte("y")}); err != nil {
		t.Fatalf("a stored push once the disk is back: %v", err)
	}
	d := n.Device(t, 1, "first")
	if _, m := expectS2C(t, d); string(m.Payload) != "held" {
		t.Fatalf("the push whose commit hung delivered %q", m.Payload)
	}
}

func readyz(t *testing.T, n *testkit.Node) (int, string) {
	t.Helper()
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + n.HTTPAddr + "/readyz")
	if err != nil {
		t.Fatalf("/readyz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
