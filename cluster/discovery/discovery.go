package discovery

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/courier-im/courier/cluster/membership"
)

// Path is where the gate list is served.
const Path = "/v1/gates"

// Gate is one gate in the answer.
type Gate struct {
	// Addr is the gate's public address (host:port) for devices.
	Addr string `json:"addr"`
	// Node is the name of the node that runs it.
	Node string `json:"node"`
	// Conns and MaxConns are its connections and its cap; Load is
	// Conns/MaxConns (0 when the cap is unknown).
	Conns    int     `json:"conns"`
	MaxConns int     `json:"max_conns"`
	Load     float64 `json:"load"`
}

// Response is the body of a successful answer.
type Response struct {
	App   uint16 `json:"app"`
	Gates []Gate `json:"gates"`
}

type errorBody struct {
	Error string `json:"error"`
}

// Gates returns the live gates of v that accept app's devices and are not
// draining, least loaded first (then by fewer connections, then by
// address).
func Gates(v *membership.View, app uint16) []Gate {
	var out []Gate
	for _, m := range v.Serving(membership.RoleGate) {
		if !m.AcceptsApp(app) {
			continue
		}
		g := Gate{Addr: m.GateAddr, Node: m.Name, Conns: m.Load.Conns, MaxConns: m.Load.MaxConns}
		if g.MaxConns > 0 {
			g.Load = float64(g.Conns) / float64(g.MaxConns)
		}
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b Gate) int {
		return cmp.Or(cmp.Compare(a.Load, b.Load), cmp.Compare(a.Conns, b.Conns), cmp.Compare(a.Addr, b.Addr))
	})
	return out
}

// TieLoad is how close two gates' loads (connections / cap) are for an
// answer to list them in random order: half a percent of capacity, a few
// dozen connections on a gate of 20,000. Loads are up to a load interval
// old, so every device asking within it would otherwise get the same
// first gate: all the devices of a gate that died, or of a fresh cluster,
// would pile onto one gate.
const TieLoad = 0.005

// SpreadTies shuffles runs of gates whose loads are within TieLoad of the
// run's least loaded one, with intn (rand.IntN), and keeps the order
// between runs. gates must be least loaded first.
func SpreadTies(gates []Gate, intn func(int) int) []Gate {
	for i := 0; i < len(gates); {
		j := i + 1
		for j < len(gates) && gates[j].Load-gates[i].Load < TieLoad {
			j++
		}
		run := gates[i:j]
		for k := len(run) - 1; k > 0; k-- {
			l := intn(k + 1)
			run[k], run[l] = run[l], run[k]
		}
		i = j
	}
	return gates
}

// Handler serves Path from view (the node's latest membership view).
func Handler(view func() *membership.View) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			reply(w, http.StatusMethodNotAllowed, errorBody{"only GET"})
			return
		}
		app, err := strconv.ParseUint(r.URL.Query().Get("app"), 10, 16)
		if err != nil || app == 0 {
			reply(w, http.StatusBadRequest, errorBody{fmt.Sprintf("app %q: want the appcode, 1 to 65535", r.URL.Query().Get("app"))})
			return
		}
		gates := SpreadTies(Gates(view(), uint16(app)), rand.IntN)
		if len(gates) == 0 {
			reply(w, http.StatusServiceUnavailable, errorBody{fmt.Sprintf("no live gate accepts app %d: retry later", app)})
			return
		}
		reply(w, http.StatusOK, Response{App: uint16(app), Gates: gates})
	})
}

func reply(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

// Fetch asks the discovery endpoint at base ("http://host:port", with or
// without the path) for app's gates, least loaded first.
func Fetch(ctx context.Context, base string, app uint16) ([]Gate, error) {
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("discovery URL %q: want http://host:port", base)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = Path
	}
	q := u.Query()
	q.Set("app", strconv.Itoa(int(app)))
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Do(req)
	if err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return nil, fmt.Errorf("discovery: %s: %s", resp.Status, strings.TrimSpace(e.Error))
	}
	var body Response
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	if len(body.Gates) == 0 {
		return nil, errors.New("discovery: no gate in the answer")
	}
	return body.Gates, nil
}
