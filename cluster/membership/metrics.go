package membership

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	live    *prometheus.GaugeVec
	blocked prometheus.Gauge
	changes prometheus.Counter
	rejoins prometheus.Counter
	errors  prometheus.Counter
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
	}
	if reg != nil {
		reg.MustRegister(m.live, m.blocked, m.changes, m.rejoins, m.errors)
	}
	return m
}

func (m *metrics) set(v *View, blocked int) {
	for _, r := range roleNames {
		m.live.WithLabelValues(r.name).Set(float64(len(v.Live(r.r))))
	}
	m.blocked.Set(float64(blocked))
}
