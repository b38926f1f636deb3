// Package faults holds no production code: its tests apply the faults a
// Courier cluster must survive to real node processes on a real Consul
// (testkit.StartCluster) under a steady workload (testkit/workload), and
// check the ledger: nothing the platform accepted is lost, stored twice or
// delivered out of order, and each fault's interruption is measured and
// logged. One file per fault: drain, a killed gate, a killed actor node, a
// paused node, a network partition, a restarted Consul, a restarted
// PostgreSQL, a rolling upgrade of the actor nodes, and (rejoin) devices'
// requests on their way to a node that wakes without its lease.
//
// The longest scenarios run only without -short... see each test.
package faults
