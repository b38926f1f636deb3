package discovery

import (
	"context"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/courier-im/courier/cluster/membership"
)

func view() *membership.View {
	live := membership.HealthPassing
	return &membership.View{Members: []membership.Member{
		{ID: "a", Name: "busy", Roles: membership.RoleGate, GateAddr: "10.0.0.1:7000", Health: live, Apps: []uint16{1, 2}, Load: membership.Load{Conns: 500, MaxConns: 1000}},
		{ID: "b", Name: "idle", Roles: membership.AllRoles, GateAddr: "10.0.0.2:7000", Health: live, Apps: []uint16{1, 2}, Load: membership.Load{Conns: 10, MaxConns: 1000}},
		{ID: "c", Name: "big", Roles: membership.RoleGate, GateAddr: "10.0.0.3:7000", Health: live, Apps: []uint16{1, 2}, Load: membership.Load{Conns: 100, MaxConns: 100000}},
		{ID: "d", Name: "dead", Roles: membership.RoleGate, GateAddr: "10.0.0.4:7000", Health: membership.HealthCritical},
		{ID: "e", Name: "zombie", Roles: membership.RoleGate, GateAddr: "10.0.0.5:7000", Health: live, Blocked: true},
		{ID: "f", Name: "app2 only", Roles: membership.RoleGate, GateAddr: "10.0.0.6:7000", Health: live, Apps: []uint16{2}},
		{ID: "g", Name: "actors", Roles: membership.RoleActors, Health: live},
	}}
}

func TestGatesLeastLoadedFirst(t *testing.T) {
	var addrs []string
	for _, g := range Gates(view(), 1) {
		addrs = append(addrs, g.Node)
	}
	if got := strings.Join(addrs, ","); got != "big,idle,busy" {
		t.Fatalf("app 1 gates %s", got)
	}
	if g := Gates(view(), 2); len(g) != 4 || g[0].Node != "app2 only" {
		t.Fatalf("app 2 gates %v", g)
	}
}

func TestHandlerAndFetch(t *testing.T) {
	v := view()
	srv := httptest.NewServer(Handler(func() *membership.View { return v }))
	defer srv.Close()
	gates, err := Fetch(context.Background(), srv.URL, 1)
	if err != nil || len(gates) != 3 {
		t.Fatalf("fetch: %v %v", gates, err)
	}
	loads := map[string]float64{}
	for _, g := range gates {
		loads[g.Addr] = g.Load
	}
	if loads["10.0.0.3:7000"] != 0.001 || loads["10.0.0.2:7000"] != 0.01 || loads["10.0.0.1:7000"] != 0.5 {
		t.Fatalf("fetch: %v", gates)
	}
	for q, code := range map[string]int{"": 400, "?app=0": 400, "?app=70000": 400, "?app=x": 400, "?app=9": 503} {
		resp, err := http.Get(srv.URL + Path + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Errorf("%q: %d, want %d", q, resp.StatusCode, code)
		}
	}
	if _, err := Fetch(context.Background(), srv.URL, 9); err == nil || !strings.Contains(err.Error(), "no live gate accepts app 9") {
		t.Fatalf("fetch of an app without gates: %v", err)
	}
	resp, _ := http.Post(srv.URL+Path+"?app=1", "text/plain", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	resp.Body.Close()
}

// Spread orders the gates at random, weighted by free capacity, so that
// devices asking at once do not all pick the same gate: the least loaded
// comes first most often but not always, a gate with twice the room
// about twice as often, and a full gate last.
func TestSpread(t *testing.T) {
	gates := []Gate{{Addr: "a", Load: 0.10, MaxConns: 1}, {Addr: "b", Load: 0.12, MaxConns: 1},
		{Addr: "c", Load: 0.55, MaxConns: 1}, {Addr: "full", Load: 1, MaxConns: 1}}
	first := map[string]int{}
	const n = 20000
	for range n {
		g := Spread(gates, rand.Float64)
		first[g[0].Addr]++
		if g[3].Addr != "full" {
			t.Fatalf("a full gate not last: %v", g)
		}
	}
	// Weights 0.90, 0.88, 0.45: a and b about 39% each, c about 22%.
	if a := float64(first["a"]) / n; a > 0.5 || a < 0.3 {
		t.Fatalf("the least loaded gate first %.0f%% of the time: %v", 100*a, first)
	}
	if c := float64(first["c"]) / n; c < 0.12 || c > 0.3 {
		t.Fatalf("the gate with half the room first %.0f%% of the time: %v", 100*c, first)
	}
	if gates[0].Addr != "a" {
		t.Fatal("Spread changed its argument")
	}
}
