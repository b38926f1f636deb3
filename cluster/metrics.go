package cluster

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	members         prometheus.Gauge
	active          prometheus.Gauge
	activations     prometheus.Counter
	passivations    prometheus.Counter
	moved           prometheus.Counter
	retired         prometheus.Counter
	gates           prometheus.Gauge
	forwarded       prometheus.Counter
	hopsExceeded    prometheus.Counter
	handoffs        prometheus.Counter
	handingOff      prometheus.Gauge
	requestTimeouts prometheus.Counter
	undeliverable   prometheus.Counter
	staleConns      prometheus.Counter
	leaseRefused    prometheus.Counter
	unreachable     prometheus.Counter
	gateBehind      prometheus.Counter
	seenOut         prometheus.Counter
	releaseAsked    prometheus.Counter
	releaseLate     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		members: prometheus.NewGauge(prometheus.GaugeOpts{Name: "courier_cluster_device_hosts",
			Help: "Members of the cluster that host device actors."}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "courier_actors_active",
			Help: "Identity actors in memory on this node."}),
		activations: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_actors_activations_total",
			Help: "Identity actors activated on this node."}),
		passivations: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_actors_passivations_total",
			Help: "Identity actors that left memory after being idle."}),
		moved: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_actors_moved_total",
			Help: "Identity actors stopped here because another member owns them now."}),
		retired: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_actors_retired_total",
			Help: "Identity actors stopped because another activation claimed their identity in the store."}),
		gates: prometheus.NewGauge(prometheus.GaugeOpts{Name: "courier_cluster_gates",
			Help: "Gate instances this node knows to be alive; sessions on any other are ended."}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_forwarded_total",
			Help: "Envelopes this node sent on to the member that owns their identity."}),
		handoffs: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_handoffs_total",
			Help: "Identity actors told to hand their identity off (another member owns it now, or this node is leaving)."}),
		handingOff: prometheus.NewGauge(prometheus.GaugeOpts{Name: "courier_cluster_handoffs_in_progress",
			Help: "Identity actors completing what they have in flight before they stop."}),
		hopsExceeded: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_hops_exceeded_total",
			Help: "Envelopes refused because members disagreed about their owner for more than cluster.max-hops forwards."}),
		requestTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_request_timeouts_total",
			Help: "Requests to identities whose reply did not come in time."}),
		undeliverable: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_undeliverable_total",
			Help: "One-way envelopes dropped because no member hosts identities."}),
		staleConns: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_stale_conn_deliveries_total",
			Help: "Deliveries to connections that were gone; the identity's actor was told."}),
		leaseRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_lease_refused_total",
			Help: "Envelopes refused and frames not delivered for this node's identities while it held no membership lease."}),
		unreachable: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_unreachable_total",
			Help: "Requests answered UNAVAILABLE at once because the member they were sent to could not be reached."}),
		gateBehind: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_pushes_refused_gate_backlog_total",
			Help: "Pushes this node's identity actors refused with RESOURCE_EXHAUSTED because deliveries to the gate holding the device's connection (on another node, or pushed through another node's API) stood later than api.max-gate-backlog."}),
		seenOut: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_seen_out_sent_total",
			Help: "Notices this node sent a member whose instance its view blocks (taken for gone) while the provider listed it passing, telling it to rejoin as a new instance."}),
		releaseAsked: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_release_asked_total",
			Help: "Activations that asked the identity's previous owner (draining, or the owner before this node joined) to finish its handoff before loading."}),
		releaseLate: prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_cluster_release_late_total",
			Help: "Of those, the identities loaded without the previous owner's release (no answer within 2 s, or still held): writes of its handoff may be fenced."}),
	}
	if reg != nil {
		reg.MustRegister(m.members, m.active, m.activations, m.passivations, m.moved, m.retired, m.gates, m.forwarded,
			m.hopsExceeded, m.handoffs, m.handingOff,
			m.requestTimeouts, m.undeliverable, m.staleConns, m.leaseRefused, m.unreachable, m.gateBehind, m.seenOut, m.releaseAsked, m.releaseLate)
	}
	return m
}
