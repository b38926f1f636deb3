// Package proxyproto parses the PROXY protocol header (HAProxy's
// specification, versions 1 and 2) that a load balancer puts before a
// connection's own bytes to say whose connection it relays. It is a pure
// parser over the bytes received so far: it never reads, so an event loop
// can call it on its buffer and wait for more when a header is incomplete.
// It is safe for concurrent use.
package proxyproto
