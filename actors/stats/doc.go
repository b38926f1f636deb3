// Package stats keeps a node's delivery statistics per appcode and msgtype
// (the business's "arrival rate"): how many messages were accepted,
// delivered, acknowledged, retried, expired and dropped, the upstream
// traffic received and acknowledged by app-servers, and the latency from
// acceptance to acknowledgement, in total and over a recent window.
//
// Counters are kept in 10-second slots for the last hour and latencies in
// one-minute slots, so a window is accurate to its slot size. A Recorder is
// safe for concurrent use; it implements actors.Stats and upstream.Stats,
// and is a prometheus.Collector.
package stats
