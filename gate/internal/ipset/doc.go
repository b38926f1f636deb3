// Package ipset matches IP addresses against a set of addresses and CIDR
// prefixes in O(number of distinct prefix lengths), whatever the size of
// the set. A Set is immutable and safe for concurrent use.
package ipset
