// Package stats keeps a node's delivery statistics per appcode and msgtype
// (the business's "arrival rate"): how many messages were accepted,
// delivered, acknowledged, retried, expired and dropped, the upstream
// traffic received and acknowledged by app-servers, and the latency from
// acceptance to acknowledgement, in total and over a recent window.
//
// Each appcode tracks at most 256 msgtypes of its own; the app's
// further msgtypes are summed under OtherMsgtype. Percentiles are
// nearest-rank (the ceil(q × n)-th sample) over logarithmic buckets.
//
// Counters are kept in 10-second slots for the last hour and latencies in
// one-minute slots, so a window is accurate to its slot size. A Recorder is
// safe for concurrent use; it implements actors.Stats and upstream.Stats,
// and is a prometheus.Collector.
package stats
