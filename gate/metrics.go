package gate

import (
	"fmt"

	"github.com/courier-im/courier/messages"
	"github.com/prometheus/client_golang/prometheus"
)

// Label values of the counters.
const (
	// refusals (connections closed at open), limit and list hits
	refuseDraining       = "draining"
	refuseConnCap        = "conn_cap"
	refuseIPRate         = "ip_rate"
	listIPBlacklist      = "ip_blacklist"
	listIPNotWhitelisted = "ip_not_whitelisted"
	listUIDBlacklist     = "uid_blacklist"

	limitConnCap     = "conn_cap"
	limitIPRate      = "ip_conn_rate"
	limitFrameRate   = "frame_rate"
	limitByteRate    = "byte_rate"
	limitC2CRate     = "c2c_rate"
	limitFrameSize   = "frame_size"
	limitOutQueue    = "out_queue"
	limitOutBuffered = "out_buffered"
)

// metrics are the gate's Prometheus collectors (names courier_gate_*).
type metrics struct {
	connections    prometheus.Gauge
	opens          prometheus.Counter
	refusals       *prometheus.CounterVec
	logins         prometheus.Counter
	loginFailures  *prometheus.CounterVec
	framesInVec    *prometheus.CounterVec
	framesOutVec   *prometheus.CounterVec
	framesIn       [256]prometheus.Counter
	framesOut      [256]prometheus.Counter
	bytesIn        prometheus.Counter
	bytesOut       prometheus.Counter
	writeBatches   prometheus.Counter
	limitHits      *prometheus.CounterVec
	listHits       *prometheus.CounterVec
	slowClients    prometheus.Counter
	protocolErrors *prometheus.CounterVec
	closes         *prometheus.CounterVec
	deliverDropped *prometheus.CounterVec
	listReloads    *prometheus.CounterVec
	listSizes      *prometheus.GaugeVec
	drainDelay     prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "courier", "gate"
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	vec := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, labels)
	}
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "connections", Help: "Open device connections."}),
		opens:          counter("opens_total", "Connections accepted (not refused)."),
		refusals:       vec("refusals_total", "Connections closed as soon as they opened, by reason.", "reason"),
		logins:         counter("logins_total", "Successful logins."),
		loginFailures:  vec("login_failures_total", "Failed logins, by LOGIN_ACK code (REJECTED: the node refused).", "reason"),
		framesInVec:    vec("frames_in_total", "Frames received from devices, by command.", "cmd"),
		framesOutVec:   vec("frames_out_total", "Frames queued or written to devices, by command.", "cmd"),
		bytesIn:        counter("bytes_in_total", "Bytes of whole frames received from devices."),
		bytesOut:       counter("bytes_out_total", "Bytes written to devices."),
		writeBatches:   counter("write_batches_total", "Batched writes of queued frames (one write each)."),
		limitHits:      vec("limit_hits_total", "Times a limit refused or closed a connection, or (frame_rate, byte_rate) held its frames back, by limit.", "limit"),
		listHits:       vec("list_hits_total", "Connections or logins refused by a list, by list.", "list"),
		slowClients:    counter("slow_client_disconnects_total", "Clients disconnected because their outbound queue or buffer was full."),
		protocolErrors: vec("protocol_errors_total", "Protocol violations, by ERROR code (BAD_MAGIC: closed without an answer).", "code"),
		closes:         vec("closes_total", "Closed connections, by reason.", "reason"),
		deliverDropped: vec("deliver_dropped_total", "Deliver calls dropped, by reason.", "reason"),
		listReloads:    vec("list_updates_total", "Black/white list updates, by source and result.", "source", "result"),
		listSizes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "list_entries", Help: "Entries in each black/white list."}, []string{"list"}),
		drainDelay: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "drain_delay_seconds", Help: "Time frames queued by Deliver waited for their event loop to start writing them.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 14)}),
	}
	for i := range m.framesIn {
		name := "unknown"
		if c := messages.Cmd(i); c.Known() {
			name = c.String()
		}
		m.framesIn[i] = m.framesInVec.WithLabelValues(name)
		m.framesOut[i] = m.framesOutVec.WithLabelValues(name)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.connections, m.opens, m.refusals, m.logins, m.loginFailures,
		m.framesInVec, m.framesOutVec, m.bytesIn, m.bytesOut, m.writeBatches, m.limitHits, m.listHits,
		m.slowClients, m.protocolErrors, m.closes, m.deliverDropped, m.listReloads, m.listSizes, m.drainDelay} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("gate: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) setListSizes(c *compiledLists) {
	m.listSizes.WithLabelValues("ip_whitelist").Set(float64(c.white.Len()))
	m.listSizes.WithLabelValues("ip_blacklist").Set(float64(c.black.Len()))
	n := 0
	for _, s := range c.uids {
		n += len(s)
	}
	m.listSizes.WithLabelValues("uid_blacklist").Set(float64(n))
}
