package gate_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

// admitted dials from ip and reports whether the gate kept the connection
// (a login succeeds) or closed it at once without a word.
func admitted(t *testing.T, tg *testGate, ip string) bool {
	t.Helper()
	d := testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: app1, LocalAddr: ip})
	defer d.Close()
	uid := "probe-" + ip
	d.Send(messages.CmdLogin, 1, &devicepb.Login{Uid: uid, Token: token(t, app1, uid)})
	f, err := d.ReadFrame()
	switch {
	case err == nil && f.Cmd == messages.CmdLoginAck:
		return true
	case testkit.Closed(err):
		return false
	}
	t.Fatalf("probe from %s: %v %v", ip, f.Cmd, err)
	return false
}

func TestIPBlacklist(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) {
		c.Lists.IPBlacklist = []string{"127.0.0.7", "127.0.1.0/24"}
	})
	for ip, want := range map[string]bool{"127.0.0.7": false, "127.0.1.9": false, "127.0.0.8": true, "127.0.2.1": true} {
		if got := admitted(t, tg, ip); got != want {
			t.Errorf("%s admitted=%v, want %v", ip, got, want)
		}
	}
	tg.waitMetric(t, 2, "courier_gate_list_hits_total", "list", "ip_blacklist")
}

func TestIPWhitelistMode(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) {
		c.Lists.WhitelistMode = true
		c.Lists.IPWhitelist = []string{"127.0.0.9", "127.0.3.0/24"}
		c.Lists.IPBlacklist = []string{"127.0.3.3"} // deny wins
	})
	for ip, want := range map[string]bool{"127.0.0.9": true, "127.0.3.4": true, "127.0.3.3": false, "127.0.0.1": false} {
		if got := admitted(t, tg, ip); got != want {
			t.Errorf("%s admitted=%v, want %v", ip, got, want)
		}
	}
	tg.waitMetric(t, 1, "courier_gate_list_hits_total", "list", "ip_not_whitelisted")
}

func TestListsChangeAtRuntime(t *testing.T) {
	tg := startGate(t, nil)
	victim, _ := tg.login(t, "victim", false)
	bystander, _ := tg.login(t, "bystander", false)
	fromIP := testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: app1, LocalAddr: "127.0.0.10"})
	if ack := fromIP.Login("roamer", token(t, app1, "roamer"), false); ack.Code != devicepb.Code_OK {
		t.Fatal(ack.Code)
	}

	err := tg.Lists().Modify(func(s *gate.ListsSnapshot) {
		s.UIDBlacklist = map[uint16][]string{app1: {"victim"}}
		s.IPBlacklist = append(s.IPBlacklist, "127.0.0.10")
	})
	if err != nil {
		t.Fatal(err)
	}
	if f := victim.Expect(messages.CmdKickout); f.Msg.(*devicepb.Kickout).Reason != devicepb.KickReason_UID_BLACKLISTED {
		t.Fatalf("KICKOUT %v", f.Msg)
	}
	victim.ExpectClosed()
	if f := fromIP.Expect(messages.CmdKickout); f.Msg.(*devicepb.Kickout).Reason != devicepb.KickReason_KICKED_BY_OPERATOR {
		t.Fatalf("KICKOUT %v", f.Msg)
	}
	fromIP.ExpectClosed()
	bystander.Keepalive()
	testkit.Eventually(t, wait, func() bool { return len(tg.h.closedFor("victim")) == 1 }, "Closed for victim")
	if r := tg.h.closedFor("victim")[0].reason; r != gate.CloseBlocked {
		t.Fatalf("reason %v", r)
	}
	d := tg.dial(t)
	if ack := d.Login("victim", token(t, app1, "victim"), false); ack.Code != devicepb.Code_UID_BLOCKED {
		t.Fatalf("re-login: %v", ack.Code)
	}

	snap := tg.Lists().Snapshot()
	snap.UIDBlacklist[app1][0] = "changed" // a copy: the gate's lists do not change
	if got := tg.Lists().Snapshot().UIDBlacklist[app1][0]; got != "victim" {
		t.Fatalf("Snapshot aliases the gate's lists: %q", got)
	}
	if err := tg.Lists().Update(gate.ListsSnapshot{IPBlacklist: []string{"300.1.1.1"}}); !errors.Is(err, gate.ErrBadLists) {
		t.Fatalf("bad update: %v", err)
	}
	if err := tg.Lists().Update(gate.ListsSnapshot{}); err != nil {
		t.Fatal(err)
	}
	tg.login(t, "victim", false)
}

func TestListsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lists.json")
	write := func(s string) {
		t.Helper()
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"ip_blacklist": ["127.0.0.11"], "uid_blacklist": {"1": ["eve"]}}`)
	tg := startGate(t, func(c *gate.Config) {
		c.ListsFile = path
		c.ListsPollInterval = 20 * time.Millisecond
	})
	if admitted(t, tg, "127.0.0.11") {
		t.Fatal("127.0.0.11 admitted at start")
	}
	d := tg.dial(t)
	if ack := d.Login("eve", token(t, app1, "eve"), false); ack.Code != devicepb.Code_UID_BLOCKED {
		t.Fatalf("eve: %v", ack.Code)
	}

	// The file changes: 127.0.0.11 is free, 127.0.0.12 blocked.
	write(`{"ip_blacklist": ["127.0.0.12"]}`)
	testkit.Eventually(t, wait, func() bool { return admitted(t, tg, "127.0.0.11") }, "127.0.0.11 admitted after the file changed")
	if admitted(t, tg, "127.0.0.12") {
		t.Fatal("127.0.0.12 admitted")
	}
	// A broken file is refused and the current lists stay.
	write(`{"ip_blacklist": ["127.0.0.12"], "typo_field": true}`)
	tg.waitMetric(t, 1, "courier_gate_list_updates_total", "source", "file", "result", "error")
	if admitted(t, tg, "127.0.0.12") {
		t.Fatal("lists reset by a broken file")
	}
	if got := tg.Lists().Snapshot().IPBlacklist; len(got) != 1 || got[0] != "127.0.0.12" {
		t.Fatalf("lists %v", got)
	}
}

func TestListsFileMustParseAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lists.json")
	if err := os.WriteFile(path, []byte(`{"ip_blacklist": ["nonsense"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.ListsFile = path
	if _, err := gate.New(cfg, &fakeHandler{}, nil, testLogger()); !errors.Is(err, gate.ErrBadLists) {
		t.Fatalf("New with a bad lists file: %v", err)
	}
	cfg.ListsFile = filepath.Join(t.TempDir(), "missing.json")
	if _, err := gate.New(cfg, &fakeHandler{}, nil, testLogger()); !errors.Is(err, gate.ErrBadLists) {
		t.Fatalf("New with a missing lists file: %v", err)
	}
}
