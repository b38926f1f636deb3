package faults

import (
	"errors"
	"fmt"
	"google.golang.org/protobuf/proto"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/courier-im/courier/cluster"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// TestRequestsToLeaselessOwnerAnswered: a device's LOGIN, C2C and PULL
// are on their way to the node that owns their identity when it loses
// its membership lease (frozen past the TTL) and cannot rejoin at once
// (it cannot reach Consul when it wakes). Each is answered promptly with
// a retryable code, not left to the gate's login timeout (LOGIN) or
// forever (C2C, PULL); once the node rejoins, the device logs in.
func TestRequestsToLeaselessOwnerAnswered(t *testing.T) {
	c := testkit.StartCluster(t, testkit.ClusterOptions{Roles: []string{"gate,api", "actors"}})
	consul := newCutProxy(t, c.Consul.Addr)
	n1, n2 := c.Node("node1"), c.Node("node2")
	n3 := c.AddNode("actors", "--cluster.consul", consul.addr())
	c.WaitConverged()
	dumpOnFailure(t, c, "lease", "rejoin", "refus", "level=WARN", "level=ERROR")

	actorAddrs := []string{n2.ClusterAddr, n3.ClusterAddr}
	owned := func(by *testkit.Node, prefix string) string {
		t.Helper()
		for i := range 1000 {
			uid := fmt.Sprintf("%s-%d", prefix, i)
			if cluster.OwnerOf(actorAddrs, 1, uid) == by.ClusterAddr {
				return uid
			}
		}
		t.Fatalf("no uid owned by %s", by.Name())
		return ""
	}
	loginUID, pullUID, senderUID, receiverUID := owned(n3, "login"), owned(n3, "pull"), owned(n2, "sender"), owned(n3, "receiver")
	dev := func() *testkit.Device {
		return testkit.Dial(t, n1.GateAddr, testkit.DeviceConfig{AppCode: 1, Timeout: 6 * time.Second})
	}
	puller, sender := dev(), dev()
	for _, x := range []struct {
		d   *testkit.Device
		uid string
	}{{puller, pullUID}, {sender, senderUID}} {
		if ack := x.d.Login(x.uid, testkit.Token(t, 1, x.uid), false); ack.Code != devicepb.Code_OK {
			t.Fatalf("login %s: %v", x.uid, ack)
		}
	}
	login := dev()

	// node3 freezes; what the devices send now is on its way to it (the
	// others take it for live for another TTL).
	n3.Pause()
	paused := true
	t.Cleanup(func() {
		if paused {
			n3.Resume()
		}
	})
	consul.cut(true)
	loginSeq, pullSeq, c2cSeq := login.NextSeq(), puller.NextSeq(), sender.NextSeq()
	login.Send(messages.CmdLogin, loginSeq, &devicepb.Login{Uid: loginUID, Token: testkit.Token(t, 1, loginUID),
		DeviceId: "dev-" + loginUID, Platform: devicepb.Platform_ANDROID, AppVersion: "test"})
	puller.Send(messages.CmdPull, pullSeq, &devicepb.Pull{AfterSeq: 0, Limit: proto.Uint32(10)})
	sender.Send(messages.CmdC2C, c2cSeq, &devicepb.C2C{ToUid: receiverUID, ClientMsgId: "c2c-1", Payload: []byte("hello")})
	time.Sleep(3 * time.Second) // three TTLs: node3's lease lapsed, the others took it for gone

	// node3 wakes without its lease and cannot rejoin (no Consul).
	n3.Resume()
	paused = false
	woke := time.Now()
	answer := func(d *testkit.Device, what string, cmd messages.Cmd, seq uint32) any {
		t.Helper()
		for {
			f, err := d.ReadFrame()
			if err != nil {
				t.Fatalf("%s: no answer %v after node3 woke without its lease: %v", what, time.Since(woke).Round(time.Millisecond), err)
			}
			if f.Cmd == cmd && f.Seq == seq {
				if took := time.Since(woke); took > 3*time.Second {
					t.Errorf("%s answered only %v after node3 woke", what, took.Round(time.Millisecond))
				}
				t.Logf("%s answered %v after node3 woke: %v", what, time.Since(woke).Round(time.Millisecond), f.Msg)
				return f.Msg
			}
		}
	}
	// Not OK: node3 serves nothing without its lease (actors.Leaseless
	// turns its answers into refusals), and the others sent nothing of
	// these to another owner.
	retryable := map[devicepb.Code]bool{devicepb.Code_STORE_UNAVAILABLE: true}
	if ack := answer(login, "LOGIN", messages.CmdLoginAck, loginSeq).(*devicepb.LoginAck); !retryable[ack.Code] {
		t.Errorf("LOGIN_ACK %v", ack)
	}
	if ack := answer(puller, "PULL", messages.CmdPullAck, pullSeq).(*devicepb.PullAck); !retryable[ack.Code] {
		t.Errorf("PULL_ACK %v", ack)
	}
	if ack := answer(sender, "C2C", messages.CmdC2CAck, c2cSeq).(*devicepb.C2CAck); !retryable[ack.Code] || ack.ClientMsgId != "c2c-1" {
		t.Errorf("C2C_ACK %v", ack)
	}

	// The fault took: node3 woke without its lease (else quick OKs above
	// would pass without testing anything).
	// (Its answers refuse as soon as its lease ran out by the clock; its
	// refresher counts the loss when it next runs.)
	testkit.Eventually(t, 5*time.Second, func() bool {
		lost, _ := n3.Metric("courier_cluster_lease_lost_total")
		return lost >= 1
	}, "node3 did not lose its lease (courier_cluster_lease_lost_total 0)")

	// Consul again: node3 rejoins as a new instance, and the device that
	// was refused logs in.
	consul.cut(false)
	c.WaitConverged()
	testkit.Eventually(t, 30*time.Second, func() bool {
		d := dev()
		defer d.Close()
		seq := d.NextSeq()
		d.Send(messages.CmdLogin, seq, &devicepb.Login{Uid: loginUID, Token: testkit.Token(t, 1, loginUID),
			DeviceId: "dev-" + loginUID, Platform: devicepb.Platform_ANDROID, AppVersion: "test"})
		f, err := d.ReadFrame()
		return err == nil && f.Cmd == messages.CmdLoginAck && f.Msg.(*devicepb.LoginAck).Code == devicepb.Code_OK
	}, "%s to log in once node3 rejoined", loginUID)
}

// cutProxy forwards TCP connections to a fixed address until cut: then
// it closes the ones open and every new one at once (the node behind it
// cannot reach that address), until it is mended.
type cutProxy struct {
	t  *testing.T
	l  net.Listener
	to string

	mu    sync.Mutex
	isCut bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newCutProxy(t *testing.T, to string) *cutProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{t: t, l: l, to: to, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		l.Close()
		p.cut(true)
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) addr() string { return p.l.Addr().String() }

// cut closes every connection through the proxy and refuses new ones
// (on), or lets them through again (off).
func (p *cutProxy) cut(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.isCut = on
	if on {
		for c := range p.conns {
			c.Close()
		}
	}
}

// track records c, unless the proxy is cut (then c is closed).
func (p *cutProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.isCut {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *cutProxy) forget(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.l.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil || !p.track(in) {
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.forget(in)
			out, err := net.DialTimeout("tcp", p.to, 5*time.Second)
			if err != nil || !p.track(out) {
				return
			}
			defer p.forget(out)
			done := make(chan struct{})
			go func() {
				_, _ = io.Copy(out, in)
				out.Close()
				close(done)
			}()
			_, _ = io.Copy(in, out)
			in.Close()
			<-done
		}()
	}
}
