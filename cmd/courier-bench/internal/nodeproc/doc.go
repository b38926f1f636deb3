// Package nodeproc starts a fresh courier node for a benchmark run: the
// given binary in development mode on free loopback ports, with a
// temporary data directory, the gate's per-connection and per-IP limits
// off, and pprof on. Stop ends it and removes the directory.
package nodeproc
