package cluster

import (
	"github.com/asynkron/protoactor-go/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// remotingOptions configures the actor library's remoting (a gRPC stream
// per pair of members): mutual TLS when certificates are configured (the
// server requires a client certificate from the cluster's CA, and the
// client verifies the server's against the CA and the address it dials),
// plaintext otherwise, which Config.validate allows on loopback only.
func remotingOptions(cfg *Config) ([]remote.ConfigOption, error) {
	creds := insecure.NewCredentials()
	// Batches of up to the writer's batch size must fit gRPC's message
	// limit.
	server := []grpc.ServerOption{grpc.MaxRecvMsgSize(64 << 20)}
	if cfg.TLS.Enabled() {
		tc, err := cfg.TLS.Config()
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(tc)
		server = append(server, grpc.Creds(creds))
	}
	opts := []remote.ConfigOption{
		remote.WithServerOptions(server...),
		remote.WithDialOptions(grpc.WithTransportCredentials(creds), grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20))),
		remote.WithEndpointWriterBatchSize(500),
		// One connection attempt, not the library's five two seconds
		// apart: while it retries, what is sent to the member waits in
		// the writer's mailbox, and requests to a member that died would
		// wait for their deadline. After one failed attempt what waits is
		// dead-lettered, and System.deadLetter answers requests with a
		// retryable failure at once; the next send tries again.
		func(c *remote.Config) { c.MaxRetryCount = 1 },
	}
	if cfg.Advertise != "" {
		opts = append(opts, remote.WithAdvertisedHost(cfg.Advertise))
	}
	return opts, nil
}
