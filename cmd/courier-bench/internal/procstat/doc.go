// Package procstat measures processes: CPU time and resident memory of a
// local process from /proc, or of a node from its Prometheus /metrics,
// and a node's forced GC through its pprof endpoint. Functions are safe
// for concurrent use.
package procstat
