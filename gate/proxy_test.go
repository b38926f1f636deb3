package gate_test

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// The trusted load balancer dials from proxyIP; others from elsewhere.
const (
	proxyIP = "127.0.0.20"
	otherIP = "127.0.0.21"
)

func proxied(c *gate.Config) {
	c.ProxyProtocol = true
	c.ProxyFrom = []string{proxyIP + "/32", "10.99.0.0/16"}
}

// headerV2 is a PROXY protocol version 2 header relaying a TCP connection
// from src (cmd 1: PROXY, 0: LOCAL), with tlv bytes of TLVs.
func headerV2(src netip.AddrPort, cmd byte, tlv int) []byte {
	b := []byte("\r\n\r\n\x00\r\nQUIT\n")
	var addr []byte
	fam := byte(0x11)
	if src.Addr().Is4() {
		s, d := src.Addr().As4(), [4]byte{127, 0, 0, 1}
		addr = append(append(addr, s[:]...), d[:]...)
	} else {
		fam = 0x21
		s, d := src.Addr().As16(), netip.IPv6Loopback().As16()
		addr = append(append(addr, s[:]...), d[:]...)
	}
	addr = binary.BigEndian.AppendUint16(addr, src.Port())
	addr = binary.BigEndian.AppendUint16(addr, 7000)
	addr = append(addr, make([]byte, tlv)...)
	b = append(b, 0x20|cmd, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(addr)))
	return append(b, addr...)
}

func loginFrame(t *testing.T, uid string) []byte {
	b, err := messages.AppendMessage(nil, messages.Header{Cmd: messages.CmdLogin, AppCode: app1, Seq: 1},
		&devicepb.Login{Uid: uid, Token: token(t, app1, uid)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// viaProxy dials from ip, writes pre (a PROXY header, or anything) and a
// LOGIN of uid, and returns the device.
func viaProxy(t *testing.T, tg *testGate, ip string, pre []byte, uid string) *testkit.Device {
	t.Helper()
	d := testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: app1, LocalAddr: ip})
	d.SendRaw(append(append([]byte{}, pre...), loginFrame(t, uid)...))
	return d
}

// remoteOf is the client address the handler saw at uid's login.
func (tg *testGate) remoteOf(t *testing.T, uid string) netip.AddrPort {
	t.Helper()
	return tg.connOf(t, uid).Remote
}

func TestProxyProtocolTrusted(t *testing.T) {
	tg := startGate(t, proxied)
	client4 := netip.MustParseAddrPort("203.0.113.7:4242")
	client6 := netip.MustParseAddrPort("[2001:db8::7]:4343")
	tests := []struct {
		uid  string
		pre  []byte
		want netip.AddrPort
	}{
		{"v2-ipv4", headerV2(client4, 1, 0), client4},
		{"v2-ipv6-with-tlvs", headerV2(client6, 1, 40), client6},
		{"v1", []byte("PROXY TCP4 198.51.100.9 10.0.0.1 5555 7000\r\n"), netip.MustParseAddrPort("198.51.100.9:5555")},
		// LOCAL (the balancer's own connection) and v1 UNKNOWN relay no
		// client: the connection stays the balancer's.
		{"v2-local", headerV2(client4, 0, 0), netip.MustParseAddrPort(proxyIP + ":0")},
		{"v1-unknown", []byte("PROXY UNKNOWN\r\n"), netip.MustParseAddrPort(proxyIP + ":0")},
	}
	for _, tt := range tests {
		t.Run(tt.uid, func(t *testing.T) {
			d := viaProxy(t, tg, proxyIP, tt.pre, tt.uid)
			if f := d.Expect(messages.CmdLoginAck); f.Msg.(*devicepb.LoginAck).Code != devicepb.Code_OK {
				t.Fatalf("login: %v", f.Msg)
			}
			got := tg.remoteOf(t, tt.uid)
			if tt.want.Port() == 0 {
				if got.Addr() != tt.want.Addr() {
					t.Fatalf("remote %v, want the proxy's %v", got, tt.want.Addr())
				}
				return
			}
			if got != tt.want {
				t.Fatalf("remote %v, want %v", got, tt.want)
			}
		})
	}
}

// TestProxyHeaderInPieces: a header that arrives a few bytes at a time
// is waited for (without blocking the loop: another connection is served
// meanwhile), and one that never completes ends at the login timeout.
func TestProxyHeaderInPieces(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { proxied(c); c.LoginTimeout = 500 * time.Millisecond })
	client := netip.MustParseAddrPort("203.0.113.8:1000")
	hdr := headerV2(client, 1, 0)
	d := testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: app1, LocalAddr: proxyIP})
	for _, piece := range [][]byte{hdr[:5], hdr[5:14], hdr[14:20]} {
		d.SendRaw(piece)
		time.Sleep(20 * time.Millisecond)
	}
	tg.login(t, "meanwhile", false) // the loop is not held up
	d.SendRaw(append(append([]byte{}, hdr[20:]...), loginFrame(t, "pieces")...))
	if f := d.Expect(messages.CmdLoginAck); f.Msg.(*devicepb.LoginAck).Code != devicepb.Code_OK {
		t.Fatalf("login: %v", f.Msg)
	}
	if got := tg.remoteOf(t, "pieces"); got != client {
		t.Fatalf("remote %v", got)
	}
	// Truncated for good: closed, without a word, at the login timeout.
	cut := testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: app1, LocalAddr: proxyIP})
	cut.SendRaw(hdr[:20])
	cut.ExpectClosed()
	v1 := testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: app1, LocalAddr: proxyIP})
	v1.SendRaw([]byte("PROXY TCP4 203.0.113.8 10.0.0.1 1"))
	v1.ExpectClosed()
}

func TestProxyProtocolRefusals(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) {
		proxied(c)
		c.Lists.IPBlacklist = []string{"203.0.113.66"}
	})
	client := netip.MustParseAddrPort("203.0.113.9:1")
	badVersion := headerV2(client, 1, 0)
	badVersion[12] = 0x31
	tests := []struct {
		name   string
		ip     string
		pre    []byte
		metric []string
	}{
		// A balancer that forgot the header is a misconfiguration.
		{"trusted without a header", proxyIP, nil, []string{"courier_gate_refusals_total", "reason", "proxy_missing"}},
		{"malformed v2", proxyIP, badVersion, []string{"courier_gate_refusals_total", "reason", "proxy_bad_header"}},
		{"malformed v1", proxyIP, []byte("PROXY TCP4 203.0.113.9 nonsense\r\n"), []string{"courier_gate_refusals_total", "reason", "proxy_bad_header"}},
		{"header above the limit", proxyIP, headerV2(client, 1, gate.MaxProxyHeader), []string{"courier_gate_refusals_total", "reason", "proxy_bad_header"}},
		// The client address, not the balancer's, meets the IP lists.
		{"blacklisted client", proxyIP, headerV2(netip.MustParseAddrPort("203.0.113.66:1"), 1, 0), []string{"courier_gate_list_hits_total", "list", "ip_blacklist"}},
		// Whoever is not a trusted balancer cannot claim an address.
		{"untrusted v2", otherIP, headerV2(client, 1, 0), []string{"courier_gate_protocol_errors_total", "code", "PROXY_UNTRUSTED"}},
		{"untrusted v1", otherIP, []byte("PROXY TCP4 203.0.113.9 10.0.0.1 1 7000\r\n"), []string{"courier_gate_protocol_errors_total", "code", "PROXY_UNTRUSTED"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tg.metric(t, tt.metric[0], tt.metric[1:]...)
			d := viaProxy(t, tg, tt.ip, tt.pre, "refused")
			d.ExpectClosed()
			tg.waitMetric(t, before+1, tt.metric[0], tt.metric[1:]...)
		})
	}
	// A direct client (not a balancer) needs no header and keeps its own
	// address.
	d := testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: app1, LocalAddr: otherIP})
	if ack := d.Login("direct", token(t, app1, "direct"), false); ack.Code != devicepb.Code_OK {
		t.Fatalf("direct login: %v", ack)
	}
	if got := tg.remoteOf(t, "direct"); got.Addr().String() != otherIP {
		t.Fatalf("direct client's remote %v", got)
	}
}

// TestProxyPerIPRate: the per-IP connection rate counts the clients
// behind the balancer, not the balancer.
func TestProxyPerIPRate(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) {
		proxied(c)
		c.NewConnsPerIP, c.NewConnsPerIPBurst = 0.001, 1
	})
	a := netip.MustParseAddrPort("203.0.113.10:1")
	first := viaProxy(t, tg, proxyIP, headerV2(a, 1, 0), "a1")
	first.Expect(messages.CmdLoginAck)
	second := viaProxy(t, tg, proxyIP, headerV2(netip.AddrPortFrom(a.Addr(), 2), 1, 0), "a2")
	second.ExpectError(devicepb.Code_RATE_LIMITED, 0)
	second.ExpectClosed()
	// Another client through the same balancer is let in.
	other := viaProxy(t, tg, proxyIP, headerV2(netip.MustParseAddrPort("203.0.113.11:1"), 1, 0), "b1")
	if f := other.Expect(messages.CmdLoginAck); f.Msg.(*devicepb.LoginAck).Code != devicepb.Code_OK {
		t.Fatalf("other client: %v", f.Msg)
	}
}

// TestProxyProtocolOff: by default no PROXY header is believed.
func TestProxyProtocolOff(t *testing.T) {
	tg := startGate(t, nil)
	d := viaProxy(t, tg, proxyIP, headerV2(netip.MustParseAddrPort("203.0.113.7:1"), 1, 0), "x")
	d.ExpectClosed()
	tg.waitMetric(t, 1, "courier_gate_protocol_errors_total", "code", "PROXY_UNTRUSTED")
}

func TestProxyConfig(t *testing.T) {
	for _, tt := range []struct {
		mut  func(*gate.Config)
		want string
	}{
		{func(c *gate.Config) { c.ProxyProtocol = true }, "Config.ProxyFrom: empty"},
		{func(c *gate.Config) { c.ProxyProtocol, c.ProxyFrom = true, []string{"10.0.0.0/33"} }, "Config.ProxyFrom"},
	} {
		cfg := testConfig()
		tt.mut(&cfg)
		if _, err := gate.New(cfg, &fakeHandler{}, nil, testLogger()); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("error %v, want %q", err, tt.want)
		}
	}
}
