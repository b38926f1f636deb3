// Package farm runs many simulated devices in one process: each event
// loop owns an epoll instance and a share of the devices, dials from a
// spread of source addresses, logs devices in at a paced rate, keeps them
// alive, acknowledges everything they receive and sends C2C or C2S traffic
// at a paced rate. Receipts are recorded per message (kind, device, seq,
// message index, message-id hash, time) for the coordinator's exact
// accounting.
//
// A loop is one goroutine running non-blocking sockets through raw epoll
// (Linux only), so a farm of 15,000 devices costs a few goroutines and
// one 64 KiB read buffer per loop; a frame parser is borrowed only by a
// device holding a partial frame. Farm methods are safe for concurrent
// use; they hand work to the loops through a locked queue and an eventfd.
package farm
