package stats

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descMessages = prometheus.NewDesc("courier_messages_total",
		"Messages by appcode, msgtype and event: accepted, delivered (first write to a connection), acked, retried, expired, dropped, upstream_received, upstream_acked.",
		[]string{"app", "msgtype", "event"}, nil)
	descArrival = prometheus.NewDesc("courier_arrival_rate",
		"Acknowledged / accepted stored messages since the node started, by appcode and msgtype.",
		[]string{"app", "msgtype"}, nil)
	descLatency = prometheus.NewDesc("courier_ack_latency_microseconds",
		"Acceptance-to-acknowledgement latency since the node started, by appcode, msgtype and quantile.",
		[]string{"app", "msgtype", "quantile"}, nil)
)

// Describe implements prometheus.Collector.
func (r *Recorder) Describe(ch chan<- *prometheus.Desc) {
	ch <- descMessages
	ch <- descArrival
	ch <- descLatency
}

func msgtypeLabel(m uint32) string {
	if m == OtherMsgtype {
		return "other"
	}
	return strconv.FormatUint(uint64(m), 10)
}

// Collect implements prometheus.Collector: the counters are read at
// scrape time, not kept twice.
func (r *Recorder) Collect(ch chan<- prometheus.Metric) {
	r.mu.RLock()
	keys := make([]Key, 0, len(r.series))
	ss := make([]*series, 0, len(r.series))
	for k, s := range r.series {
		keys = append(keys, k)
		ss = append(ss, s)
	}
	r.mu.RUnlock()
	for i, k := range keys {
		s := ss[i]
		s.mu.Lock()
		c := s.total
		lat := s.totalH.summary()
		s.mu.Unlock()
		app, mt := strconv.Itoa(int(k.App)), msgtypeLabel(k.Msgtype)
		for _, e := range []struct {
			name string
			v    uint64
		}{
			{"accepted", c.Accepted}, {"delivered", c.Delivered}, {"acked", c.Acked}, {"retried", c.Retried},
			{"expired", c.Expired}, {"dropped", c.Dropped}, {"upstream_received", c.UpstreamReceived}, {"upstream_acked", c.UpstreamAcked},
		} {
			ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(e.v), app, mt, e.name)
		}
		ch <- prometheus.MustNewConstMetric(descArrival, prometheus.GaugeValue, c.ArrivalRate(), app, mt)
		for _, q := range []struct {
			name string
			v    uint64
		}{{"0.5", lat.P50}, {"0.9", lat.P90}, {"0.99", lat.P99}, {"0.999", lat.P999}, {"1", lat.Max}} {
			ch <- prometheus.MustNewConstMetric(descLatency, prometheus.GaugeValue, float64(q.v), app, mt, q.name)
		}
	}
}
