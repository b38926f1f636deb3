// Package iprate limits events (new connections) per source IP with one
// golang.org/x/time/rate limiter per address, kept in a bounded LRU so that
// a scan from many addresses costs bounded memory. It is safe for
// concurrent use.
package iprate
