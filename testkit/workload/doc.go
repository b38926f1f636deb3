// Package workload drives a Courier cluster the way its users do while
// faults are applied to it, and keeps the exact ledger of what happened:
// devices that stay connected, acknowledge what they receive and
// reconnect through gate discovery when they lose their gate;
// app-servers that push at a steady rate and retry retryable failures
// with the same idempotency key on another API node; C2C between pairs of
// devices and C2S to an upstream subscriber. The fault tests
// (cluster/faults) and `courier-bench chaos` use it.
//
// The ledger (Ledger) counts, per kind of message: what the platform
// accepted, what was delivered, what was lost (accepted, never delivered),
// what was stored twice (two platform ids for one idempotency key or one
// client message id: beyond the at-least-once contract), redeliveries of
// one id (within the contract), first deliveries out of seq order per
// identity, and seqs reused for another message. For each fault marked
// with Fault it measures how long the fault interrupted service.
//
// Goroutines: one per device (connect, log in, read; it writes its acks),
// one per pacing loop (pushes, fire-and-forget, C2C, C2S), the pushes in
// flight, one per upstream subscriber, and one maintenance loop
// (keepalives, resends). Stop ends every one of them and waits. Nothing
// here talks to anything but the addresses in Config; it is meant for
// loopback clusters.
package workload
