package node_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"google.golang.org/protobuf/proto"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/courier-im/courier/client"
	"github.com/courier-im/courier/cluster"
	"github.com/courier-im/courier/cluster/discovery"
	"github.com/courier-im/courier/cluster/mtls"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// These tests run a real Consul and three node processes with different
// roles: node1 gate+api, node2 actors, node3 everything.

// uidOwnedBy returns a uid of app 1, starting with prefix, whose actor
// lives on owner (among the cluster's actor nodes).
func uidOwnedBy(t *testing.T, c *testkit.Cluster, owner *testkit.Node, prefix string) string {
	t.Helper()
	var actorAddrs []string
	for _, n := range c.Running() {
		if n.Roles() == "gate,actors,api" || n.Roles() == "actors" {
			actorAddrs = append(actorAddrs, n.ClusterAddr)
		}
	}
	for i := range 1000 {
		uid := fmt.Sprintf("%s-%d", prefix, i)
		if cluster.OwnerOf(actorAddrs, 1, uid) == owner.ClusterAddr {
			return uid
		}
	}
	t.Fatalf("no uid owned by %s", owner.Name())
	return ""
}

func TestClusterFlowsAcrossNodes(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", ""}})
	n1, n2, n3 := c.Node("node1"), c.Node("node2"), c.Node("node3")
	if n2.GateAddr != "" || n2.APIAddr != "" || n1.GateAddr == "" {
		t.Fatalf("roles not honoured: node2 gate %q api %q", n2.GateAddr, n2.APIAddr)
	}
	api1, api3 := n1.API(t), n3.API(t)

	t.Run("S2C: device on node1, actor on node2, API on node3", func(t *testing.T) {
		uid := uidOwnedBy(t, c, n2, "s2c")
		d := testkit.Dial(t, n1.GateAddr, testkit.DeviceConfig{AppCode: 1})
		if ack := d.Login(uid, testkit.Token(t, 1, uid), false); ack.Code != devicepb.Code_OK {
			t.Fatalf("login: %v", ack)
		}
		pr, err := api3.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{uid}})
		if err != nil || !pr.Entries[0].Online || pr.Entries[0].Session.GateAddr != n1.GateAddr {
			t.Fatalf("presence from node3: %v %v", pr, err)
		}
		r := push(t, api3, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: uid, Payload: []byte("order 1")})
		if !r.Online || r.Seq != 1 {
			t.Fatalf("push: %v", r)
		}
		seq, m := expectS2C(t, d)
		if seq != 1 || string(m.Payload) != "order 1" || m.MsgId != r.MsgId {
			t.Fatalf("S2C seq %d %v", seq, m)
		}
		// Not acknowledged: delivered again, same seq and id.
		if seq2, m2 := expectS2C(t, d); seq2 != 1 || m2.MsgId != m.MsgId {
			t.Fatalf("redelivery seq %d %v", seq2, m2)
		}
		ackS2C(d, m.MsgId)
		testkit.Eventually(t, 10*time.Second, func() bool {
			pr, err := api1.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{uid}})
			return err == nil && pr.Entries[0].Pending == 0
		}, "the acked message left the inbox")
		if v, _ := n2.Metric("courier_actors_active"); v < 1 {
			t.Fatalf("node2 holds no actor (%v)", v)
		}
	})

	t.Run("offline inbox, then login on another gate and PULL", func(t *testing.T) {
		uid := uidOwnedBy(t, c, n2, "inbox")
		for i := range 3 {
			push(t, api1, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: uid, Payload: []byte(fmt.Sprint(i))})
		}
		d := testkit.Dial(t, n3.GateAddr, testkit.DeviceConfig{AppCode: 1})
		if ack := d.Login(uid, testkit.Token(t, 1, uid), false); ack.Pending != 3 {
			t.Fatalf("pending %d", ack.Pending)
		}
		seq := d.NextSeq()
		d.Send(messages.CmdPull, seq, &devicepb.Pull{AfterSeq: 0, Limit: proto.Uint32(10)})
		for {
			f, err := d.ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			if f.Cmd == messages.CmdPullAck {
				if pa := f.Msg.(*devicepb.PullAck); len(pa.Messages) != 3 || pa.Messages[2].Seq != 3 {
					t.Fatalf("PULL_ACK %v", pa)
				}
				break
			}
		}
	})

	t.Run("C2C between gates of node1 and node3, actors on node2 and node3", func(t *testing.T) {
		from := uidOwnedBy(t, c, n3, "rider")
		to := uidOwnedBy(t, c, n2, "driver")
		rider := testkit.Dial(t, n1.GateAddr, testkit.DeviceConfig{AppCode: 1})
		rider.Login(from, testkit.Token(t, 1, from), false)
		driver := testkit.Dial(t, n3.GateAddr, testkit.DeviceConfig{AppCode: 1})
		driver.Login(to, testkit.Token(t, 1, to), false)
		ack := expectC2CAck(t, rider, sendC2C(rider, to, "c-1", "where are you?"))
		if ack.Code != devicepb.Code_OK {
			t.Fatalf("C2C_ACK %v", ack)
		}
		p := driver.Expect(messages.CmdC2CPush).Msg.(*devicepb.C2CPush)
		if p.FromUid != from || p.MsgId != ack.MsgId {
			t.Fatalf("C2C_PUSH %v", p)
		}
		driver.Send(messages.CmdC2CPushAck, driver.NextSeq(), &devicepb.C2CPushAck{MsgId: p.MsgId})
		driver.Expect(messages.CmdC2CPushAckAck)
	})

	t.Run("login on a second gate kicks the first; kick from the API", func(t *testing.T) {
		uid := uidOwnedBy(t, c, n2, "kick")
		first := testkit.Dial(t, n1.GateAddr, testkit.DeviceConfig{AppCode: 1})
		first.Login(uid, testkit.Token(t, 1, uid), false)
		second := testkit.Dial(t, n3.GateAddr, testkit.DeviceConfig{AppCode: 1})
		if ack := second.Login(uid, testkit.Token(t, 1, uid), false); ack.Code != devicepb.Code_OK {
			t.Fatalf("second login %v", ack)
		}
		if k := first.Expect(messages.CmdKickout).Msg.(*devicepb.Kickout); k.Reason != devicepb.KickReason_LOGGED_IN_ELSEWHERE {
			t.Fatalf("kickout %v", k)
		}
		first.ExpectClosed()
		r, err := api1.Kick(testkit.Ctx(t, testkit.App1Key), &apipb.KickRequest{AppCode: 1, Uid: uid, Reason: "ops"})
		if err != nil || !r.WasOnline {
			t.Fatalf("kick: %v %v", r, err)
		}
		second.Expect(messages.CmdKickout)
		second.ExpectClosed()
	})

	t.Run("a uid blacklisted through node1 is refused at node3's gate, and at a gate that joins later", func(t *testing.T) {
		_, err := api1.UpdateAccessList(testkit.Ctx(t, testkit.App1Key), &apipb.UpdateAccessListRequest{
			List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: []string{"banned"}})
		if err != nil {
			t.Fatal(err)
		}
		// The call returned: every gate has the list.
		d := testkit.Dial(t, n3.GateAddr, testkit.DeviceConfig{AppCode: 1})
		if ack := d.Login("banned", testkit.Token(t, 1, "banned"), false); ack.Code != devicepb.Code_UID_BLOCKED {
			t.Fatalf("login at node3: %v", ack)
		}
		lists, err := api3.GetAccessLists(testkit.Ctx(t, testkit.App1Key), &apipb.GetAccessListsRequest{AppCode: 1})
		if err != nil || len(lists.UidBlacklists) != 1 || lists.UidBlacklists[0].Uids[0] != "banned" {
			t.Fatalf("lists at node3: %v %v", lists, err)
		}
		// node4 sends heartbeats every 5 s, the others every 30 s.
		n4 := c.AddNode("gate", "--gate.heartbeat-interval", "5s")
		c.WaitConverged()
		d = testkit.Dial(t, n4.GateAddr, testkit.DeviceConfig{AppCode: 1})
		if ack := d.Login("banned", testkit.Token(t, 1, "banned"), false); ack.Code != devicepb.Code_UID_BLOCKED {
			t.Fatalf("login at the new node4: %v", ack)
		}
		// LOGIN_ACK announces the interval of the gate that closes the
		// connection after 3 silent ones, not the actor's node's.
		uid := uidOwnedBy(t, c, n2, "beat")
		d = testkit.Dial(t, n4.GateAddr, testkit.DeviceConfig{AppCode: 1})
		if ack := d.Login(uid, testkit.Token(t, 1, uid), false); ack.Code != devicepb.Code_OK || ack.HeartbeatSeconds != 5 {
			t.Fatalf("login at node4, its actor on node2: %v", ack)
		}
		n4.Stop(syscall.SIGTERM)
		c.WaitConverged()
	})

	t.Run("statistics summed across nodes", func(t *testing.T) {
		on2, on3 := uidOwnedBy(t, c, n2, "stats"), uidOwnedBy(t, c, n3, "stats")
		for i := range 5 {
			uid := on2
			if i >= 3 {
				uid = on3
			}
			push(t, api1, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: uid, Msgtype: 42, Payload: []byte("x")})
		}
		d := testkit.Dial(t, n1.GateAddr, testkit.DeviceConfig{AppCode: 1})
		d.Login(on3, testkit.Token(t, 1, on3), false)
		for range 2 {
			_, m := expectS2C(t, d)
			ackS2C(d, m.MsgId)
		}
		// node1 hosts no actor: every count comes from node2 and node3.
		testkit.Eventually(t, 10*time.Second, func() bool {
			st, err := api1.Stats(testkit.Ctx(t, testkit.App1Key), &apipb.StatsRequest{AppCode: 1, Msgtypes: []uint32{42}})
			return err == nil && len(st.NodesMissing) == 0 && st.All.Total.Accepted == 5 && st.All.Total.Acked == 2 &&
				st.All.AckLatencyTotal.Count == 2
		}, "node1's Stats sums the three nodes")
	})
}

// remotingConnect opens the actor remoting stream of addr with creds and
// says hello as a member would; it returns the error of the first answer.
func remotingConnect(addr string, creds credentials.TransportCredentials) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := remote.NewRemotingClient(conn).Receive(ctx)
	if err != nil {
		return err
	}
	err = stream.Send(&remote.RemoteMessage{MessageType: &remote.RemoteMessage_ConnectRequest{ConnectRequest: &remote.ConnectRequest{
		ConnectionType: &remote.ConnectRequest_ServerConnection{ServerConnection: &remote.ServerConnection{SystemId: "rogue", Address: "127.0.0.1:1"}}}}})
	if err != nil {
		return err
	}
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	if m.GetConnectResponse() == nil {
		return fmt.Errorf("unexpected answer %v", m)
	}
	return nil
}

// TestClusterMutualTLS runs members over mutual TLS and shows that the
// remoting port refuses every peer without a certificate of the cluster's
// CA: plaintext, TLS without a client certificate, and a certificate of
// another CA.
func TestClusterMutualTLS(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors"}, TLS: true})
	n1, n2 := c.Node("node1"), c.Node("node2")
	uid := uidOwnedBy(t, c, n2, "tls")
	d := testkit.Dial(t, n1.GateAddr, testkit.DeviceConfig{AppCode: 1})
	d.Login(uid, testkit.Token(t, 1, uid), false)
	r := push(t, n1.API(t), testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: uid, Payload: []byte("over TLS")})
	if _, m := expectS2C(t, d); m.MsgId != r.MsgId {
		t.Fatalf("S2C %v", m)
	}

	load := func(args []string) *tls.Config {
		t.Helper()
		files := mtls.Files{CA: args[1], Cert: args[3], Key: args[5]}
		tc, err := files.Config()
		if err != nil {
			t.Fatal(err)
		}
		return tc
	}
	member := load(c.NodeCertArgs("extra"))
	if err := remotingConnect(n2.ClusterAddr, credentials.NewTLS(member)); err != nil {
		t.Fatalf("a certificate of the cluster's CA was refused: %v", err)
	}
	if err := remotingConnect(n2.ClusterAddr, insecure.NewCredentials()); err == nil {
		t.Fatal("plaintext peer accepted")
	} else {
		t.Logf("plaintext peer: %v", err)
	}
	noCert := member.Clone()
	noCert.Certificates = nil
	if err := remotingConnect(n2.ClusterAddr, credentials.NewTLS(noCert)); err == nil {
		t.Fatal("peer without a client certificate accepted")
	} else {
		t.Logf("peer without a certificate: %v", err)
	}
	otherCA, err := mtls.NewCA("another CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := mtls.IssueNode(otherCA, "rogue", []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rogueCert, err := tls.X509KeyPair(rogue.Cert, rogue.Key)
	if err != nil {
		t.Fatal(err)
	}
	withRogue := member.Clone()
	// Presented whatever the server asks for (Go's client would otherwise
	// send no certificate the server's CA did not sign).
	withRogue.Certificates = nil
	withRogue.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &rogueCert, nil }
	if err := remotingConnect(n2.ClusterAddr, credentials.NewTLS(withRogue)); err == nil {
		t.Fatal("peer with a certificate of another CA accepted")
	} else {
		t.Logf("peer with another CA's certificate: %v", err)
	}
}

// TestDiscoveryAndMembers: every api node lists the live gates with
// their loads (in an order weighted by free capacity: discovery's own
// tests), and a gate that dies leaves the list within the membership TTL; Members shows every node, and the dead one as blocked.
func TestDiscoveryAndMembers(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", ""}})
	n1, n2, n3 := c.Node("node1"), c.Node("node2"), c.Node("node3")
	ctx := context.Background()
	gates, err := discovery.Fetch(ctx, "http://"+n3.HTTPAddr, 1)
	if err != nil || len(gates) != 2 {
		t.Fatalf("gates from node3: %v %v", gates, err)
	}
	if _, err := discovery.Fetch(ctx, "http://"+n2.HTTPAddr, 1); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("a node without the api role served discovery: %v", err)
	}
	for i := range 3 {
		n1.Device(t, 1, fmt.Sprintf("load-%d", i))
	}
	testkit.Eventually(t, 10*time.Second, func() bool {
		gates, err := discovery.Fetch(ctx, "http://"+n1.HTTPAddr, 1)
		if err != nil || len(gates) != 2 {
			return false
		}
		conns := map[string]int{gates[0].Addr: gates[0].Conns, gates[1].Addr: gates[1].Conns}
		return conns[n1.GateAddr] == 3 && conns[n3.GateAddr] == 0
	}, "the gates' loads not published (node1's gate holds 3 devices)")
	if _, err := discovery.Fetch(ctx, "http://"+n1.HTTPAddr, 3); err == nil {
		t.Fatal("gates listed for an app none of them accepts")
	}

	// The Go client library finds a gate through it.
	cl := n1.Client(t, 1, "found", func(cfg *client.Config) { cfg.Addr, cfg.Discovery = "", "http://"+n3.HTTPAddr+discovery.Path })
	r := push(t, n3.API(t), testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: "found", Payload: []byte("via discovery")})
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	if m, err := cl.Recv(rctx); err != nil || m.MsgID != r.MsgId {
		t.Fatalf("client through discovery: %v %v", m, err)
	}
	cl.Close()

	api1 := n1.API(t)
	if _, err := api1.Members(testkit.Ctx(t, testkit.App1Key), &apipb.MembersRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Members with an app's key: %v", err)
	}
	members := func() map[string]*apipb.Member {
		t.Helper()
		r, err := api1.Members(testkit.Ctx(t, testkit.OperatorKey), &apipb.MembersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*apipb.Member{}
		for _, m := range r.Members {
			out[m.Name] = m
		}
		return out
	}
	ms := members()
	if len(ms) != 3 || !ms["node1"].Live || strings.Join(ms["node2"].Roles, ",") != "actors" || ms["node3"].GateAddr != n3.GateAddr ||
		ms["node1"].ApiAddr != n1.APIAddr || ms["node2"].Address != n2.ClusterAddr || ms["node1"].Conns != 3 || ms["node2"].Version == "" {
		t.Fatalf("members %v", ms)
	}

	n3.Stop(syscall.SIGKILL)
	start := time.Now()
	testkit.Eventually(t, 10*time.Second, func() bool {
		gates, err := discovery.Fetch(ctx, "http://"+n1.HTTPAddr, 1)
		return err == nil && len(gates) == 1 && gates[0].Addr == n1.GateAddr
	}, "the dead gate left the list")
	t.Logf("a killed gate left discovery after %v (TTL 1s)", time.Since(start).Round(10*time.Millisecond))
	if m := members()["node3"]; m == nil || m.Live || !m.Blocked || m.Health != "critical" {
		t.Fatalf("the killed node in Members: %v", m)
	}
}

// loginOutcome is what one racing device saw.
type loginOutcome struct {
	dev    int
	epoch  uint64 // of its LOGIN_ACK OK (0: refused)
	kicked bool   // KICKOUT LOGGED_IN_ELSEWHERE, then closed
	err    error
}

// TestSimultaneousLoginsOnThreeGates: 20 devices log in as the same
// identity at once on three gates of three nodes, for 20 rounds; each
// round leaves exactly one live session cluster-wide (the one presence
// reports), and every other connection, the previous round's survivor
// included, is kicked and closed.
func TestSimultaneousLoginsOnThreeGates(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "gate,actors", ""}})
	gates := []string{c.Node("node1").GateAddr, c.Node("node2").GateAddr, c.Node("node3").GateAddr}
	api := c.Node("node1").API(t)
	const uid, devices, rounds = "racer", 20, 20
	token := testkit.Token(t, 1, uid)
	events := make(chan loginOutcome, devices*rounds*2)
	run := func(dev int, d *testkit.Device) {
		seq := uint32(1)
		if err := d.TrySend(messages.Header{Cmd: messages.CmdLogin, AppCode: 1, Seq: seq},
			&devicepb.Login{Uid: uid, Token: token, DeviceId: fmt.Sprintf("dev-%d", dev), Platform: devicepb.Platform_ANDROID}); err != nil {
			events <- loginOutcome{dev: dev, err: err}
			return
		}
		acked := false
		for {
			f, err := d.ReadFrame()
			switch {
			case err != nil && testkit.Closed(err) && acked:
				return // closed after its KICKOUT
			case err != nil:
				events <- loginOutcome{dev: dev, err: err}
				return
			case f.Cmd == messages.CmdLoginAck:
				ack := f.Msg.(*devicepb.LoginAck)
				if ack.Code != devicepb.Code_OK {
					events <- loginOutcome{dev: dev, err: fmt.Errorf("LOGIN_ACK %v %s", ack.Code, ack.Reason)}
					return
				}
				acked = true
				events <- loginOutcome{dev: dev, epoch: ack.Epoch}
			case f.Cmd == messages.CmdKickout:
				if k := f.Msg.(*devicepb.Kickout); k.Reason != devicepb.KickReason_LOGGED_IN_ELSEWHERE {
					events <- loginOutcome{dev: dev, err: fmt.Errorf("kickout %v", k.Reason)}
					return
				}
				events <- loginOutcome{dev: dev, kicked: true}
			case f.Cmd == messages.CmdKeepaliveAck:
			default:
				events <- loginOutcome{dev: dev, err: fmt.Errorf("unexpected %v", f.Cmd)}
				return
			}
		}
	}
	prevWinner := -1
	for round := range rounds {
		epochs := map[int]uint64{}
		kicked := map[int]bool{}
		ds := make([]*testkit.Device, devices)
		for i := range devices {
			ds[i] = testkit.Dial(t, gates[i%len(gates)], testkit.DeviceConfig{AppCode: 1, Timeout: 60 * time.Second})
		}
		base := round * devices
		for i, d := range ds {
			go run(base+i, d)
		}
		wantKicked := devices - 1
		if prevWinner >= 0 {
			wantKicked++
		}
		deadline := time.After(60 * time.Second)
		for len(epochs) < devices || len(kicked) < wantKicked {
			select {
			case ev := <-events:
				switch {
				case ev.err != nil:
					t.Fatalf("round %d, device %d: %v", round, ev.dev, ev.err)
				case ev.kicked:
					kicked[ev.dev] = true
				default:
					epochs[ev.dev] = ev.epoch
				}
			case <-deadline:
				t.Fatalf("round %d: %d LOGIN_ACKs, %d kicked of %d", round, len(epochs), len(kicked), wantKicked)
			}
		}
		if prevWinner >= 0 && !kicked[prevWinner] {
			t.Fatalf("round %d: the previous round's survivor was not kicked", round)
		}
		winner := -1
		for dev, e := range epochs {
			if !kicked[dev] {
				if winner >= 0 {
					t.Fatalf("round %d: devices %d and %d both live", round, winner, dev)
				}
				winner = dev
				pr, err := api.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{uid}})
				if err != nil || !pr.Entries[0].Online || pr.Entries[0].Session.Epoch != e {
					t.Fatalf("round %d: presence %v %v, survivor's epoch %d", round, pr, err, e)
				}
			}
		}
		// The survivor's session works.
		ds[winner-base].Send(messages.CmdKeepalive, 2, nil)
		prevWinner = winner
	}
	// No other event arrived: nothing was kicked twice or refused late.
	select {
	case ev := <-events:
		t.Fatalf("late event %+v", ev)
	case <-time.After(500 * time.Millisecond):
	}
}

// TestUpstreamAcrossNodes: a device's C2S at node1's gate reaches
// app-servers subscribed on node1's and node3's APIs, shared between them,
// acked; when node3 dies holding deliveries it did not acknowledge, they
// go to the subscriber on node1.
func TestUpstreamAcrossNodes(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", ""}})
	n1, n3 := c.Node("node1"), c.Node("node3")
	// node3's app-server takes deliveries and never acks them.
	far := subscribe(t, n3, 1, []uint32{9}, 4, false)
	d := n1.Device(t, 1, "gps")
	testkit.Eventually(t, 10*time.Second, func() bool {
		ack := sendC2S(t, d, 9, "probe")
		return ack.Code == devicepb.Code_OK
	}, "the subscription on node3 reached node1's gate")
	testkit.Eventually(t, 10*time.Second, func() bool { return far.count() == 1 }, "node3's app-server got the probe")
	far.mu.Lock()
	m := far.got[0]
	far.mu.Unlock()
	if m.Uid != "gps" || m.Msgtype != 9 || m.AppCode != 1 {
		t.Fatalf("delivery %v", m)
	}
	near := subscribe(t, n1, 1, []uint32{9}, 100, true)
	for i := range 20 {
		if ack := sendC2S(t, d, 9, fmt.Sprint(i)); ack.Code != devicepb.Code_OK {
			t.Fatalf("C2S %d: %v", i, ack)
		}
	}
	// Shared between the two (node3 holds at most its window of 4,
	// unacknowledged, the probe among them).
	testkit.Eventually(t, 10*time.Second, func() bool { return far.count()+near.count() == 21 }, "shared: %d on node3, %d on node1", far.count(), near.count())
	if f := far.count(); f < 1 || f > 4 {
		t.Fatalf("node3's app-server holds %d, more than its window", f)
	}
	n3.Stop(syscall.SIGKILL)
	// What node3 held comes to node1: every C2S acked by an app-server once.
	testkit.Eventually(t, 15*time.Second, func() bool { return near.count() == 21 }, "node3's deliveries redelivered to node1 (%d)", near.count())
	ids := near.ids()
	for i := range 20 {
		if ids[fmt.Sprint(i)] != 1 {
			t.Fatalf("C2S %d reached node1's app-server %d times", i, ids[fmt.Sprint(i)])
		}
	}
	if ids["probe"] != 1 {
		t.Fatalf("the probe reached node1 %d times", ids["probe"])
	}
}

// TestSessionsOnDepartedGateEnd: when the node of a gate dies, the
// sessions on that gate are offline on every identity's actor, wherever
// it lives, within the membership TTL + 1 s.
func TestSessionsOnDepartedGateEnd(t *testing.T) {
	const ttl = time.Second // testkit's --cluster.ttl
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate", "actors", ""}})
	n1, n2, n3 := c.Node("node1"), c.Node("node2"), c.Node("node3")
	uids := []string{uidOwnedBy(t, c, n2, "on-dead-gate"), uidOwnedBy(t, c, n3, "on-dead-gate")}
	for _, uid := range uids {
		n1.Device(t, 1, uid)
	}
	survivor := uidOwnedBy(t, c, n2, "on-live-gate")
	n3.Device(t, 1, survivor)
	api := n3.API(t)
	online := func() map[string]bool {
		pr, err := api.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: append(uids, survivor)})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, e := range pr.Entries {
			out[e.Uid] = e.Online
		}
		return out
	}
	if o := online(); !o[uids[0]] || !o[uids[1]] || !o[survivor] {
		t.Fatalf("before: %v", o)
	}
	n1.Stop(syscall.SIGKILL)
	killed := time.Now()
	for {
		o := online()
		if !o[uids[0]] && !o[uids[1]] {
			if !o[survivor] {
				t.Fatal("the session on a live gate ended too")
			}
			break
		}
		if time.Since(killed) > 10*time.Second {
			t.Fatalf("sessions on the dead gate still online after 10s: %v", o)
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(killed)
	t.Logf("sessions on the killed gate offline cluster-wide after %v (TTL %v)", took.Round(time.Millisecond), ttl)
	// What this rules out is waiting for Consul's deregistration (a
	// minute); 3 s of margin for a loaded machine's Consul.
	if took > ttl+3*time.Second {
		t.Fatalf("took %v, more than the TTL + 3 s", took)
	}
}

// TestPausedNodeRejoins: a node frozen for longer than the membership TTL
// is taken for gone (its instance blocked, its gate's sessions ended);
// when it runs again it notices, rejoins as a new instance without a
// restart, tells its devices to reconnect (KICKOUT SERVER_SHUTDOWN), and
// serves again, with the access lists edited while it was out.
func TestPausedNodeRejoins(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", ""}})
	n1, n2, n3 := c.Node("node1"), c.Node("node2"), c.Node("node3")
	uid := uidOwnedBy(t, c, n2, "frozen")
	d := n1.Device(t, 1, uid)
	api3 := n3.API(t)
	members := func() map[string][]*apipb.Member {
		r, err := api3.Members(testkit.Ctx(t, testkit.OperatorKey), &apipb.MembersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]*apipb.Member{}
		for _, m := range r.Members {
			out[m.Name] = append(out[m.Name], m)
		}
		return out
	}
	old := members()["node1"][0].Id

	n1.Pause()
	testkit.Eventually(t, 10*time.Second, func() bool {
		pr, err := api3.Presence(testkit.Ctx(t, testkit.App1Key), &apipb.PresenceRequest{AppCode: 1, Uids: []string{uid}})
		return err == nil && !pr.Entries[0].Online
	}, "the frozen gate's session still online")
	// A ban made while node1 is out reaches only the live gates (node3);
	// node1 keeps its lists in its own Pebble and must copy the others'
	// before it lets devices in again. Accepted once node1 is out of the
	// others' view (until then, node1 cannot confirm it: UNAVAILABLE).
	testkit.Eventually(t, 10*time.Second, func() bool {
		_, err := api3.UpdateAccessList(testkit.Ctx(t, testkit.App1Key), &apipb.UpdateAccessListRequest{
			List: apipb.AccessList_UID_BLACKLIST, AppCode: 1, Add: []string{"troll"}})
		return err == nil
	}, "the ban through node3 not accepted while node1 is out")
	time.Sleep(time.Second) // well past the TTL
	n1.Resume()

	// The device hears it must reconnect.
	if k := d.Expect(messages.CmdKickout).Msg.(*devicepb.Kickout); k.Reason != devicepb.KickReason_SERVER_SHUTDOWN {
		t.Fatalf("kickout %v", k)
	}
	d.ExpectClosed()
	testkit.Eventually(t, 15*time.Second, func() bool {
		ms := members()["node1"]
		live, blocked := 0, 0
		for _, m := range ms {
			if m.Live && m.Id != old {
				live++
			}
			if m.Id == old && m.Blocked {
				blocked++
			}
		}
		return live == 1 && (blocked == 1 || len(ms) == 1)
	}, "node1 back as a new instance, its old one blocked or gone")
	// It serves again: a login on its gate (which refuses new connections
	// with SERVER_BUSY until node1 holds its own lease again, a moment
	// after the others see it back: a client reconnects later, as this
	// one does), a push through node3.
	d = deviceOnceAccepting(t, n1, uid, 15*time.Second)
	if c := loginCode(t, n1, "troll"); c != devicepb.Code_UID_BLOCKED {
		t.Fatalf("a uid banned while node1 was out logs in on node1 once it serves again: %v, want UID_BLOCKED", c)
	}
	r := push(t, api3, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: uid, Payload: []byte("after the pause")})
	if _, m := expectS2C(t, d); m.MsgId != r.MsgId {
		t.Fatalf("S2C %v", m)
	}
	if v, _ := n1.Metric("courier_cluster_rejoins_total"); v < 1 {
		t.Fatalf("rejoins %v", v)
	}
}

// deviceOnceAccepting logs uid in on n's gate as a client does: a
// connection refused at open with SERVER_BUSY is retried after a pause,
// until within has passed.
func deviceOnceAccepting(t *testing.T, n *testkit.Node, uid string, within time.Duration) *testkit.Device {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		d := testkit.Dial(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
		seq := d.NextSeq()
		d.Send(messages.CmdLogin, seq, &devicepb.Login{Uid: uid, Token: testkit.Token(t, 1, uid), DeviceId: "dev-" + uid,
			Platform: devicepb.Platform_ANDROID, AppVersion: "test"})
		f, err := d.ReadFrame()
		if err != nil {
			t.Fatalf("login of %s on %s: %v", uid, n.Name(), err)
		}
		if e, ok := f.Msg.(*devicepb.Error); ok && f.Cmd == messages.CmdError && e.Code == devicepb.Code_SERVER_BUSY && time.Now().Before(deadline) {
			d.Close()
			time.Sleep(200 * time.Millisecond)
			continue
		}
		ack, ok := f.Msg.(*devicepb.LoginAck)
		if f.Cmd != messages.CmdLoginAck || !ok || f.Seq != seq || ack.Code != devicepb.Code_OK {
			t.Fatalf("login of %s on %s: %v seq %d %v", uid, n.Name(), f.Cmd, f.Seq, f.Msg)
		}
		return d
	}
}

// TestConsulOutage: while Consul is down the nodes keep serving by the
// last view they had; when it is back (with its data) they rejoin and
// serve again.
func TestConsulOutage(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors", ""}})
	n1, n2, n3 := c.Node("node1"), c.Node("node2"), c.Node("node3")
	uid := uidOwnedBy(t, c, n2, "outage")
	d := n1.Device(t, 1, uid)
	api := n3.API(t)
	c.Consul.Stop()
	// Routing goes on without Consul.
	r := push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: uid, Payload: []byte("during")})
	if _, m := expectS2C(t, d); m.MsgId != r.MsgId {
		t.Fatalf("S2C during the outage %v", m)
	}
	ackS2C(d, r.MsgId)
	time.Sleep(2 * time.Second) // past the TTL
	// Still down, past the TTL: each node's lease lives on the others'
	// vouches, and routing goes on.
	r = push(t, api, testkit.App1Key, &apipb.PushRequest{AppCode: 1, Uid: uid, Payload: []byte("past the TTL")})
	if _, m := expectS2C(t, d); m.MsgId != r.MsgId {
		t.Fatalf("S2C past the TTL of the outage %v", m)
	}
	vouched := 0.0
	for _, n := range []*testkit.Node{n1, n2, n3} {
		v, _ := n.Metric("courier_cluster_lease_vouched_total")
		vouched += v
	}
	if vouched == 0 {
		t.Fatal("no lease was vouched for while Consul was down past the TTL")
	}
	c.Consul.Restart()
	c.WaitConverged()
	// The nodes rejoined as new instances (a slow agent just after its
	// restart may make some rejoin more than once); devices log in again
	// and everything flows.
	testkit.Eventually(t, 30*time.Second, func() bool { return loginAndReceive(t, n1, api, uid) }, "a push delivered after Consul came back")
}

// loginAndReceive logs uid in at n's gate and pushes to it through api;
// it reports whether the push arrived (false on any failure on the way).
func loginAndReceive(t *testing.T, n *testkit.Node, api apipb.CourierClient, uid string) bool {
	d, err := testkit.DialErr(t, n.GateAddr, testkit.DeviceConfig{AppCode: 1})
	if err != nil {
		return false
	}
	defer d.Close()
	if err := d.TrySend(messages.Header{Cmd: messages.CmdLogin, AppCode: 1, Seq: 1},
		&devicepb.Login{Uid: uid, Token: testkit.Token(t, 1, uid), DeviceId: "d"}); err != nil {
		return false
	}
	if f, err := d.ReadFrame(); err != nil || f.Cmd != messages.CmdLoginAck || f.Msg.(*devicepb.LoginAck).Code != devicepb.Code_OK {
		return false
	}
	r, err := api.Push(testkit.Ctx(t, testkit.App1Key), &apipb.PushRequest{AppCode: 1, Uid: uid, Payload: []byte("after")})
	if err != nil {
		return false
	}
	for {
		f, err := d.ReadFrame()
		if err != nil || f.Cmd != messages.CmdS2C {
			return false
		}
		m := f.Msg.(*devicepb.S2C)
		_ = d.TrySend(messages.Header{Cmd: messages.CmdS2CAck, AppCode: 1, Seq: 2}, &devicepb.S2CAck{MsgId: m.MsgId})
		if m.MsgId == r.MsgId {
			return true
		}
	}
}
