package testkit

import (
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

// recorder is a testing.TB whose Fatalf records instead of stopping.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
}

func TestEventually(t *testing.T) {
	n := 0
	Eventually(t, time.Second, func() bool { n++; return n == 3 }, "third poll")
	if n != 3 {
		t.Fatalf("polled %d times", n)
	}
	r := &recorder{TB: t}
	start := time.Now()
	Eventually(r, 30*time.Millisecond, func() bool { return false }, "never %s", "true")
	if r.failed == "" || time.Since(start) < 30*time.Millisecond {
		t.Fatalf("no failure on timeout (%q)", r.failed)
	}
	if want := "condition not met within 30ms: never true"; r.failed != want {
		t.Fatalf("message %q, want %q", r.failed, want)
	}
}

// TestDeviceAgainstScriptedServer runs a Device against a tiny scripted
// server: login with compression, a compressed push, a keepalive, close.
func TestDeviceAgainstScriptedServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	z, _ := messages.NewZstd(1 << 20)
	payload := make([]byte, 4096)
	serverErr := make(chan error, 1)
	go func() {
		serverErr <- func() error {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			defer c.Close()
			r := messages.NewReader(c, 1<<20)
			f, err := r.ReadFrame()
			if err != nil || f.Cmd != messages.CmdLogin {
				return fmt.Errorf("want LOGIN: %v %v", f.Cmd, err)
			}
			out, _ := messages.AppendMessage(nil, messages.Header{Cmd: messages.CmdLoginAck, AppCode: 7, Seq: f.Seq},
				&devicepb.LoginAck{Code: devicepb.Code_OK, Zstd: true})
			s2c, _ := messages.AppendMessage(nil, messages.Header{}, &devicepb.S2C{MsgId: "m", Payload: payload})
			out = messages.AppendFrame(out, messages.Header{Cmd: messages.CmdS2C, AppCode: 7, Seq: 9, Flags: messages.FlagZstd},
				z.Compress(nil, s2c[messages.HeaderSize:]))
			if _, err := c.Write(out); err != nil {
				return err
			}
			if f, err = r.ReadFrame(); err != nil || f.Cmd != messages.CmdKeepalive || f.AppCode != 7 {
				return fmt.Errorf("want KEEPALIVE: %v %v", f.Cmd, err)
			}
			out = messages.AppendFrame(nil, messages.Header{Cmd: messages.CmdKeepaliveAck, AppCode: 7, Seq: f.Seq}, nil)
			_, err = c.Write(out)
			return err
		}()
	}()
	d := Dial(t, ln.Addr().String(), DeviceConfig{AppCode: 7, LocalAddr: "127.0.0.1", Timeout: 2 * time.Second})
	if ack := d.Login("u", "t", true); ack.Code != devicepb.Code_OK || !d.Compressing() {
		t.Fatalf("login: %v", ack)
	}
	f := d.Expect(messages.CmdS2C)
	if !f.Compressed() || len(f.Msg.(*devicepb.S2C).Payload) != len(payload) {
		t.Fatalf("S2C %+v", f.Header)
	}
	d.Keepalive()
	d.ExpectClosed()
	if err := <-serverErr; err != nil {
		t.Fatal(err)
	}
}

// TestConsulKeepsDataAcrossRestart starts the real agent, writes a key,
// kills and restarts it, and reads the key back.
func TestConsulKeepsDataAcrossRestart(t *testing.T) {
	c := StartConsul(t)
	put := func() error {
		req, _ := http.NewRequest(http.MethodPut, "http://"+c.Addr+"/v1/kv/testkit/k", strings.NewReader("v1"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("PUT: %s", resp.Status)
		}
		return nil
	}
	if err := put(); err != nil {
		t.Fatal(err)
	}
	c.Stop()
	if _, err := http.Get("http://" + c.Addr + "/v1/status/leader"); err == nil {
		t.Fatal("the agent still answers after Stop")
	}
	c.Restart()
	var kv []struct{ Value []byte }
	Eventually(t, 10*time.Second, func() bool {
		return getJSON("http://"+c.Addr+"/v1/kv/testkit/k", &kv) == nil && len(kv) == 1
	}, "the key written before the restart")
	if string(kv[0].Value) != "v1" {
		t.Fatalf("value %q after restart", kv[0].Value)
	}
}

// A cluster on a Network: each node in a namespace of its own, Consul on
// the cluster network. Cut takes a node's cluster leg down (its remoting
// cannot be reached, its gate can), Heal brings it back.
func TestNetworkCutAndHeal(t *testing.T) {
	nw := NewNetwork(t)
	c := StartCluster(t, ClusterOptions{Roles: []string{"", "actors"}, Network: nw})
	n1, n2 := c.Node("node1"), c.Node("node2")
	if !strings.HasPrefix(n1.GateAddr, "10.213.") || !strings.HasPrefix(n2.ClusterAddr, "10.213.") {
		t.Fatalf("addresses not on the network: gate %s, remoting %s", n1.GateAddr, n2.ClusterAddr)
	}
	reach := func(addr string) bool {
		conn, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
		if err == nil {
			conn.Close()
		}
		return err == nil
	}
	if !reach(n2.ClusterAddr) || !reach(n1.GateAddr) {
		t.Fatal("nodes not reachable before the cut")
	}
	nw.Cut("node2")
	if reach(n2.ClusterAddr) {
		t.Fatal("node2's remoting reachable after the cut")
	}
	if !reach(n2.HTTPAddr) {
		t.Fatal("node2's public leg went down with the cut")
	}
	Eventually(t, 10*time.Second, func() bool {
		v, _ := n1.Metric(`courier_cluster_members{role="actors"}`)
		return v == 1
	}, "node1 saw node2 leave")
	nw.Heal("node2")
	c.WaitConverged()
	if v, _ := n2.Metric("courier_cluster_rejoins_total"); v < 1 {
		t.Fatalf("node2 did not rejoin after the cut (%v)", v)
	}
}

// TestNodeEnvLeavesOutCourierSettings: a developer's exported COURIER_*
// and COURIERCTL_* settings do not reach test nodes; COURIER_TEST_* and
// the rest of the environment do.
func TestNodeEnvLeavesOutCourierSettings(t *testing.T) {
	got := nodeEnv([]string{"PATH=/bin", "COURIER_STORE=postgres", "COURIERCTL_API_KEY=k", "COURIER_TEST_STORE=postgres", "HOME=/root"})
	if want := []string{"PATH=/bin", "COURIER_TEST_STORE=postgres", "HOME=/root"}; !slices.Equal(got, want) {
		t.Fatalf("node environment %q, want %q", got, want)
	}
}
