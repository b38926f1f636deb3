// Package bucket is a token bucket small enough to embed in every
// connection: 16 bytes, no lock, no allocation. The rate and burst are
// passed on each call (they are the same for every connection), and time
// is a caller-supplied monotonic clock in nanoseconds. A Bucket is not safe
// for concurrent use.
package bucket
