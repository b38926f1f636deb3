// Package ipc runs device farms in worker processes and talks to them.
// The coordinator re-executes its own binary with EnvWorker set; the
// worker reads commands on stdin and writes events on stdout: JSON
// messages and binary batches of farm records, each in a frame of a
// 4-byte little-endian length and a 1-byte type. A worker ends when its
// stdin closes or it is told to stop, and is killed if the coordinator
// dies (Pdeathsig).
//
// A Worker (the coordinator's handle) is safe for concurrent use.
package ipc
