package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// gatesAnswer is the JSON of a discovery endpoint (GET /v1/gates): the
// healthy gates, best first. Fields other than addr are ignored.
type gatesAnswer struct {
	Gates []struct {
		Addr string `json:"addr"`
	} `json:"gates"`
}

// maxDiscoveryAnswer bounds the discovery answer read (1 MiB).
const maxDiscoveryAnswer = 1 << 20

// discover asks the discovery endpoint for gate addresses.
func discover(ctx context.Context, hc *http.Client, endpoint string, app uint16) ([]string, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("client: discovery %q: %w", endpoint, err)
	}
	q := u.Query()
	if q.Get("app") == "" {
		q.Set("app", strconv.Itoa(int(app)))
		u.RawQuery = q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("client: discovery: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("client: discovery: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDiscoveryAnswer))
	if err != nil {
		return nil, fmt.Errorf("client: discovery %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("client: discovery %s: %s: %.200s", u, resp.Status, body)
	}
	var a gatesAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, fmt.Errorf("client: discovery %s: %w", u, err)
	}
	var addrs []string
	for _, g := range a.Gates {
		if g.Addr != "" {
			addrs = append(addrs, g.Addr)
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("client: discovery %s: no gate: %w", u, ErrNoGate)
	}
	return addrs, nil
}
