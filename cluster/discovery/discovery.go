package discovery

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
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

// Spread orders gates (least loaded first, as Gates returns them) at
// random, weighted by their free capacity (1 - load): a gate with twice
// the room comes first twice as often, and a full one last. Loads are up
// to a load interval old, so every device asking within it would
// otherwise get the same first gate: the devices of a gate that died (or
// of a new cluster) would pile onto the least loaded one, past its cap,
// and retry in a storm. rnd returns a number in [0, 1) (rand.Float64).
func Spread(gates []Gate, rnd func() float64) []Gate {
	// Efraimidis-Spirakis: sorted by u^(1/w) descending is a weighted
	// random order.
	keys := make([]float64, len(gates))
	for i, g := range gates {
		w := 1 - g.Load
		if g.MaxConns == 0 {
			w = 1 // cap unknown
		}
		if w <= 0 {
			keys[i] = -1 // full: last, in load order
			continue
		}
		keys[i] = math.Pow(rnd(), 1/w)
	}
	idx := make([]int, len(gates))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(keys[b], keys[a]) })
	out := make([]Gate, len(gates))
	for i, j := range idx {
		out[i] = gates[j]
	}
	return out
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
		gates := Spread(Gates(view(), uint16(app)), rand.Float64)
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
// without the path) for app's gates, in the order it answers (Spread).
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
