package gate_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
)

func TestLoginSuccess(t *testing.T) {
	tg := startGate(t, nil)
	d, ack := tg.login(t, "erin", false)
	if ack.Epoch == 0 || ack.Zstd {
		t.Fatalf("ack %v", ack)
	}
	c := tg.connOf(t, "erin")
	if c.AppCode != app1 || c.DeviceID != "dev-erin" || c.Epoch != 0 || !c.Remote.Addr().IsLoopback() {
		t.Fatalf("Login got %+v", c)
	}
	d.Keepalive()
	tg.waitMetric(t, 1, "courier_gate_logins_total")
	tg.waitMetric(t, 1, "courier_gate_connections")
}

func TestLoginFailures(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) {
		c.Lists.UIDBlacklist = map[uint16][]string{app1: {"mallory"}}
	})
	expired, err := gate.MintToken(secret1, app1, "frank", -time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tooLong, err := gate.MintToken(secret1, app1, "frank", gate.DefaultConfig().MaxTokenLifetime+time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		app   uint16
		uid   string
		token string
		code  devicepb.Code
	}{
		{"garbage token", app1, "frank", "not-a-jwt", devicepb.Code_AUTH_FAILED},
		{"token for another uid", app1, "frank", token(t, app1, "grace"), devicepb.Code_AUTH_FAILED},
		{"token of another app", app1, "frank", mustToken(t, secret1, app2, "frank"), devicepb.Code_AUTH_FAILED},
		{"token signed with another secret", app1, "frank", mustToken(t, secret2, app1, "frank"), devicepb.Code_AUTH_FAILED},
		{"expired token", app1, "frank", expired, devicepb.Code_TOKEN_EXPIRED},
		{"token lifetime over the maximum", app1, "frank", tooLong, devicepb.Code_AUTH_FAILED},
		{"unknown app", 9, "frank", mustToken(t, secret1, 9, "frank"), devicepb.Code_UNKNOWN_APP},
		{"empty uid", app1, "", token(t, app1, ""), devicepb.Code_BAD_UID},
		{"uid too long", app1, strings.Repeat("u", 129), token(t, app1, strings.Repeat("u", 129)), devicepb.Code_BAD_UID},
		{"blacklisted uid", app1, "mallory", token(t, app1, "mallory"), devicepb.Code_UID_BLOCKED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testkit.Dial(t, tg.addr, testkit.DeviceConfig{AppCode: tt.app})
			ack := d.Login(tt.uid, tt.token, false)
			if ack.Code != tt.code {
				t.Fatalf("LOGIN_ACK %v (%q), want %v", ack.Code, ack.Reason, tt.code)
			}
			d.ExpectClosed()
		})
	}
	// None of them reached the node.
	if n := len(tg.h.Logins()); n != 0 {
		t.Fatalf("handler saw %d logins", n)
	}
	tg.waitMetric(t, 5, "courier_gate_login_failures_total", "reason", "AUTH_FAILED")
	tg.waitMetric(t, 1, "courier_gate_login_failures_total", "reason", "TOKEN_EXPIRED")
	tg.waitMetric(t, 1, "courier_gate_list_hits_total", "list", "uid_blacklist")
	tg.waitMetric(t, 10, "courier_gate_closes_total", "reason", "login_failed")
	// A 128-byte uid is fine.
	long := strings.Repeat("v", 128)
	d := tg.dial(t)
	if ack := d.Login(long, token(t, app1, long), false); ack.Code != devicepb.Code_OK {
		t.Fatalf("128-byte uid: %v", ack.Code)
	}
}

func mustToken(t testing.TB, secret []byte, app uint16, uid string) string {
	t.Helper()
	tok, err := gate.MintToken(secret, app, uid, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestLoginFieldsOverTheirLimitAreRefused: a LOGIN whose device_id,
// app_version or token is over its documented limit gets LOGIN_ACK
// BAD_LOGIN_FIELD naming the field, and never reaches the node; fields at
// their limit pass.
func TestLoginFieldsOverTheirLimitAreRefused(t *testing.T) {
	tg := startGate(t, nil)
	login := func(uid string) *devicepb.Login {
		return &devicepb.Login{Uid: uid, Token: token(t, app1, uid), DeviceId: "d", AppVersion: "1.0"}
	}
	tests := []struct {
		field string
		mut   func(*devicepb.Login)
	}{
		{"device_id", func(l *devicepb.Login) { l.DeviceId = strings.Repeat("d", gate.MaxDeviceIDLen+1) }},
		{"app_version", func(l *devicepb.Login) { l.AppVersion = strings.Repeat("v", gate.MaxAppVersionLen+1) }},
		// A token padded past the limit: the size is refused before the
		// signature is looked at.
		{"token", func(l *devicepb.Login) { l.Token += strings.Repeat("=", gate.MaxTokenLen+1-len(l.Token)) }},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			d := tg.dial(t)
			m := login("olga")
			tt.mut(m)
			ack := d.LoginWith(m)
			if ack.Code != devicepb.Code_BAD_LOGIN_FIELD || !strings.Contains(ack.Reason, tt.field) {
				t.Fatalf("LOGIN_ACK %v %q, want BAD_LOGIN_FIELD naming %s", ack.Code, ack.Reason, tt.field)
			}
			d.ExpectClosed()
		})
	}
	if n := len(tg.h.Logins()); n != 0 {
		t.Fatalf("handler saw %d logins", n)
	}
	tg.waitMetric(t, 3, "courier_gate_login_failures_total", "reason", "BAD_LOGIN_FIELD")
	// At the limits the login goes through.
	m := login("petra")
	m.DeviceId, m.AppVersion = strings.Repeat("d", gate.MaxDeviceIDLen), strings.Repeat("v", gate.MaxAppVersionLen)
	if ack := tg.dial(t).LoginWith(m); ack.Code != devicepb.Code_OK {
		t.Fatalf("fields at their limits: %v %q", ack.Code, ack.Reason)
	}
}

func TestLoginRejectedByNode(t *testing.T) {
	tg := startGate(t, nil)
	tg.h.reject.Store(true)
	d := tg.dial(t)
	if ack := d.Login("heidi", token(t, app1, "heidi"), false); ack.Code != devicepb.Code_UNAVAILABLE {
		t.Fatalf("LOGIN_ACK %v", ack.Code)
	}
	d.ExpectClosed()
	testkit.Eventually(t, wait, func() bool { return len(tg.h.closedFor("heidi")) == 1 }, "Closed for heidi")
	if c := tg.h.closedFor("heidi")[0]; c.reason != gate.CloseKicked {
		t.Fatalf("Closed reason %v", c.reason)
	}
	tg.waitMetric(t, 1, "courier_gate_login_failures_total", "reason", "REJECTED")
}

func TestLoginTimeout(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.LoginTimeout = 150 * time.Millisecond })
	// A socket that never logs in.
	idle := tg.dial(t)
	// A login the node never answers.
	tg.h.hold.Store(true)
	pending := tg.dial(t)
	pending.Send(messages.CmdLogin, 1, &devicepb.Login{Uid: "ivan", Token: token(t, app1, "ivan")})
	start := time.Now()
	idle.ExpectClosed()
	pending.ExpectClosed()
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Fatalf("closed after %v, before the login timeout", el)
	}
	testkit.Eventually(t, wait, func() bool { return len(tg.h.closedFor("ivan")) == 1 }, "Closed for ivan")
	if c := tg.h.closedFor("ivan")[0]; c.reason != gate.CloseLoginTimeout {
		t.Fatalf("Closed reason %v", c.reason)
	}
	tg.waitMetric(t, 2, "courier_gate_closes_total", "reason", "login_timeout")
	// A late answer for the gone connection: the gate reports it closed
	// again, with the epoch, so the node does not think ivan online.
	err := tg.h.answer(tg.connOf(t, "ivan"), 1, false, true)
	if !errors.Is(err, gate.ErrUnknownConn) {
		t.Fatalf("late login answer: %v", err)
	}
	calls := tg.h.closedFor("ivan")
	if len(calls) != 2 || calls[1].info.Epoch == 0 || calls[1].info.AppCode != app1 {
		t.Fatalf("Closed calls %+v", calls)
	}
}

func TestIdleTimeout(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.IdleTimeout, c.HeartbeatInterval = 200*time.Millisecond, 100*time.Millisecond })
	busy, _ := tg.login(t, "judy", false)
	quiet, _ := tg.login(t, "ken", false)
	// busy keeps talking for several idle timeouts and stays.
	start := time.Now()
	for time.Since(start) < 600*time.Millisecond {
		busy.Keepalive()
		time.Sleep(20 * time.Millisecond) // pacing the client, not synchronisation
	}
	quiet.ExpectClosed()
	busy.Keepalive()
	calls := tg.h.closedFor("ken")
	if len(calls) != 1 || calls[0].reason != gate.CloseIdle {
		t.Fatalf("Closed for ken %+v", calls)
	}
	if n := len(tg.h.closedFor("judy")); n != 0 {
		t.Fatalf("busy connection closed")
	}
}

// TestIdleTimeoutSparesAFrameStillArriving: a large frame trickling in
// over a slow link for several idle timeouts is not silence (PROTOCOL.md:
// a connection silent for longer than the idle timeout is closed); it
// arrives whole, and the connection stays.
func TestIdleTimeoutSparesAFrameStillArriving(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.IdleTimeout, c.HeartbeatInterval = 300*time.Millisecond, 150*time.Millisecond })
	d, _ := tg.login(t, "slow", false)
	f := frame(messages.Header{Cmd: messages.CmdC2S, AppCode: app1, Seq: 7}, mustMarshal(&devicepb.C2S{ClientMsgId: "slow-1", Payload: make([]byte, 200)}))
	start := time.Now()
	for i := 0; i < len(f); i += 4 {
		d.SendRaw(f[i:min(i+4, len(f))])
		time.Sleep(20 * time.Millisecond) // a slow link: 200 B/s
	}
	if took := time.Since(start); took < 3*300*time.Millisecond {
		t.Fatalf("the frame took only %v to send: not several idle timeouts", took)
	}
	testkit.Eventually(t, time.Second, func() bool { return len(tg.h.Frames()) == 1 }, "the C2S does not reach the handler")
	d.Keepalive()
	if calls := tg.h.closedFor("slow"); len(calls) != 0 {
		t.Fatalf("closed while its frame arrived: %+v", calls)
	}
}

func TestJWTAuthenticator(t *testing.T) {
	a := gate.NewJWTAuthenticator(map[uint16][]byte{app1: secret1}, gate.DefaultConfig().MaxTokenLifetime)
	if err := a.Verify(app1, "u", mustToken(t, secret1, app1, "u")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		app  uint16
		tok  string
		want error
	}{
		{app1, mustToken(t, secret2, app1, "u"), gate.ErrAuthFailed},
		{app1, mustToken(t, secret1, app1, "v"), gate.ErrAuthFailed},
		{app2, mustToken(t, secret1, app2, "u"), gate.ErrUnknownApp},
		{app1, "", gate.ErrAuthFailed},
	} {
		if err := a.Verify(tt.app, "u", tt.tok); !errors.Is(err, tt.want) {
			t.Errorf("Verify: %v, want %v", err, tt.want)
		}
	}
	// alg=none and other algorithms are refused.
	none := "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwiYXBwIjoxLCJleHAiOjk5OTk5OTk5OTl9."
	if err := a.Verify(app1, "u", none); !errors.Is(err, gate.ErrAuthFailed) {
		t.Errorf("alg none: %v", err)
	}
}

// Custom authenticators plug in through Config.Authenticator.
type denyAll struct{}

func (denyAll) Verify(uint16, string, string) error { return gate.ErrTokenExpired }

func TestCustomAuthenticator(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.Authenticator = denyAll{}; c.AppSecrets = nil })
	d := tg.dial(t)
	if ack := d.Login("u", "whatever", false); ack.Code != devicepb.Code_TOKEN_EXPIRED {
		t.Fatalf("LOGIN_ACK %v", ack.Code)
	}
}

// TestLoginDeadlineCountsFromTheOpening: the Handler is told when the gate
// gives up on a LOGIN: its login timeout after the connection opened, not
// after the LOGIN arrived (a node judging a late LOGIN by the latter
// took one held up for most of a login timeout as on time).
func TestLoginDeadlineCountsFromTheOpening(t *testing.T) {
	tg := startGate(t, func(c *gate.Config) { c.LoginTimeout = 2 * time.Second })
	opened := time.Now()
	d := tg.dial(t)
	time.Sleep(700 * time.Millisecond)
	if ack := d.Login("late-lucy", token(t, app1, "late-lucy"), false); ack.Code != devicepb.Code_OK {
		t.Fatalf("login: %v", ack.Code)
	}
	dl := tg.connOf(t, "late-lucy").LoginDeadline
	want := opened.Add(2 * time.Second)
	if diff := dl.Sub(want); diff < -200*time.Millisecond || diff > 300*time.Millisecond {
		t.Fatalf("login deadline %v after the opening, want about 2s", dl.Sub(opened))
	}
}
