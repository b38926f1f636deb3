package membership

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	live    *prometheus.GaugeVec
	blocked prometheus.Gauge
	changes prometheus.Counter
	rejoins prometheus.Counter
	errors  prometheus.Counter
	// The lease (lease.go).
	leaseLost prometheus.Counter
	vouched   prometheus.Counter
	grace     prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		live: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "courier_cluster_members",
			Help: "Live members of the cluster by role, as this node sees them."}, []string{"role"}),
		blocked: prometheus.NewGauge(prometheus.GaugeOpts{Name: "courier_cluster_blocked_members",
			Help: "Member instances this node saw leave and will not take back."}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_membership_changes_total",
			Help: "Changes of the live members (joins, departures, new addresses) this node saw."}),
		rejoins: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_rejoins_total",
			Help: "Times this node rejoined as a new instance after it may have been seen out."}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_provider_errors_total",
			Help: "Failed calls to the membership provider (Consul)."}),
		leaseLost: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_lease_lost_total",
			Help: "Times this node lost its lease (it stopped serving until it rejoined)."}),
		vouched: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_lease_vouched_total",
			Help: "Lease extensions granted by every other member while the provider could not be reached."}),
		grace: prometheus.NewGauge(prometheus.GaugeOpts{Name: "courier_cluster_grace_members",
			Help: "Members taken as live on a grace: not passing at the provider after its outage, or vouched for."}),
	}
	if reg != nil {
		reg.MustRegister(m.live, m.blocked, m.changes, m.rejoins, m.errors, m.leaseLost, m.vouched, m.grace)
	}
	return m
}

func (m *metrics) set(v *View, blocked int) {
	for _, r := range roleNames {
		m.live.WithLabelValues(r.name).Set(float64(len(v.Live(r.r))))
	}
	m.blocked.Set(float64(blocked))
	grace := 0
	for i := range v.Members {
		if v.Members[i].Grace {
			grace++
		}
	}
	m.grace.Set(float64(grace))
}
