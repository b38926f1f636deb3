package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// consulBackend registers members as instances of one Consul service (the
// cluster's name), each with a TTL check, and watches that service's
// health with blocking queries.
type consulBackend struct {
	client   *api.Client
	service  string
	ttl      time.Duration
	dereg    time.Duration
	wait     time.Duration   // a blocking query's longest wait
	badMeta  map[string]bool // owned by the watcher goroutine
	addrDesc string
	log      *slog.Logger
}

func newConsulBackend(cfg *Config, log *slog.Logger) (*consulBackend, error) {
	// The defaults read Consul's own variables (CONSUL_HTTP_TOKEN,
	// CONSUL_CACERT, CONSUL_CLIENT_CERT, ...): kept unless a setting says
	// otherwise.
	ccfg := api.DefaultConfig()
	ccfg.Address = cfg.Consul
	if cfg.ConsulToken != "" {
		ccfg.Token = cfg.ConsulToken
	}
	// Blocking queries wait up to 10 s; the client must wait longer. The
	// client is built as the api package would (its TLS settings kept),
	// with that timeout.
	hc, err := api.NewHttpClient(ccfg.Transport, ccfg.TLSConfig)
	if err != nil {
		return nil, fmt.Errorf("cluster.consul %q: TLS settings (CONSUL_CACERT, ...): %w", cfg.Consul, err)
	}
	hc.Timeout = 20 * time.Second
	ccfg.HttpClient = hc
	c, err := api.NewClient(ccfg)
	if err != nil {
		return nil, fmt.Errorf("cluster.consul %q: %w", cfg.Consul, err)
	}
	return &consulBackend{client: c, service: cfg.Cluster, ttl: cfg.TTL, dereg: cfg.DeregisterAfter,
		wait: 10 * time.Second, badMeta: map[string]bool{}, addrDesc: cfg.Consul, log: log}, nil
}

func checkID(id string) string { return "courier:" + id }

func (b *consulBackend) register(ctx context.Context, self *Member) error {
	host, portStr, err := net.SplitHostPort(self.Address)
	if err != nil {
		return fmt.Errorf("remoting address %q: %w", self.Address, err)
	}
	port, _ := strconv.Atoi(portStr)
	reg := &api.AgentServiceRegistration{
		ID:      self.ID,
		Name:    b.service,
		Tags:    strings.Split(self.Roles.String(), ","),
		Address: host,
		Port:    port,
		Meta:    encodeMeta(self),
		Check: &api.AgentServiceCheck{
			CheckID:                        checkID(self.ID),
			Name:                           "courier member " + self.Name,
			TTL:                            b.ttl.String(),
			Status:                         api.HealthPassing,
			DeregisterCriticalServiceAfter: b.dereg.String(),
		},
	}
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	return b.client.Agent().ServiceRegisterOpts(reg, opts)
}

func (b *consulBackend) pass(ctx context.Context, id string) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	return b.client.Agent().UpdateTTLOpts(checkID(id), "", api.HealthPassing, q)
}

// reach asks the agent for the servers' leader, which a client agent
// forwards to the servers: it fails when they cannot be reached (a server
// agent answers it itself, as one of them).
func (b *consulBackend) reach(ctx context.Context) error {
	leader, err := b.client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("consul at %s: %w", b.addrDesc, err)
	}
	if leader == "" {
		return fmt.Errorf("consul at %s: no leader", b.addrDesc)
	}
	return nil
}

func (b *consulBackend) deregister(ctx context.Context, id string) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	return b.client.Agent().ServiceDeregisterOpts(id, q)
}

func (b *consulBackend) watch(ctx context.Context, index uint64, wait time.Duration) ([]Member, uint64, error) {
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: min(wait, b.wait)}).WithContext(ctx)
	entries, meta, err := b.client.Health().Service(b.service, "", false, q)
	if err != nil {
		return nil, 0, fmt.Errorf("consul at %s: %w", b.addrDesc, err)
	}
	if meta.ResultsFilteredByACLs {
		// The token may not read every member (service:read, node:read):
		// taken as the truth, the list would have every node block the
		// members it cannot see, itself included, and rejoin for ever.
		return nil, 0, fmt.Errorf("consul at %s: the ACL token (cluster.consul-token) may not read every registration of service %q: it needs service:read on it and node:read", b.addrDesc, b.service)
	}
	out := make([]Member, 0, len(entries))
	for _, e := range entries {
		m, err := decodeMeta(e.Service.Meta, net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port)))
		if err != nil {
			// Not a Courier member (or an incompatible one): leave it out,
			// once said.
			if !b.badMeta[e.Service.ID] {
				b.badMeta[e.Service.ID] = true
				b.log.Warn("membership: a registration of the cluster's service is not a Courier member; ignored",
					"service_id", e.Service.ID, "err", err)
			}
			continue
		}
		m.Health = memberChecks(e.Checks, e.Service.ID).AggregatedStatus()
		out = append(out, m)
	}
	return out, meta.LastIndex, nil
}

// memberChecks are the checks that say whether the member of service
// registration id is live: those of the registration itself (its TTL
// check, a service maintenance), the agent's liveness (serfHealth) and a
// node maintenance. Other node checks (an operator's disk or load
// check) are left out: going warning or critical, they took every member
// on the machine for gone, blocked for good, while the members' own
// refreshes kept their leases running.
func memberChecks(all api.HealthChecks, id string) api.HealthChecks {
	out := make(api.HealthChecks, 0, len(all))
	for _, c := range all {
		if c.ServiceID == id || c.CheckID == "serfHealth" || c.CheckID == "_node_maintenance" {
			out = append(out, c)
		}
	}
	return out
}

func (b *consulBackend) canExpire() bool { return true }

// isGone reports whether err says the agent does not know the instance
// (its registration expired or the agent restarted without it).
func isGone(err error) bool {
	var se api.StatusError
	if errors.As(err, &se) {
		return se.Code == http.StatusNotFound || strings.Contains(se.Body, "does not have associated TTL") ||
			strings.Contains(se.Body, "Unknown check")
	}
	return errors.Is(err, errUnknownInstance)
}
