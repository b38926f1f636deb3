// Package messages is Courier's wire contract in code: the frame codec of the
// device protocol (an 18-byte header, then a protobuf body), the command
// codes, zstd body compression, and, in its sub-packages, the generated
// protobuf code of every schema:
//
//   - devicepb: frame bodies and the wire's result/error codes;
//   - apipb: the gRPC API app-servers use (package courier.v1);
//   - actorpb: what gates, device actors and the API send each other.
//
// The .proto sources live under proto/; `make proto` regenerates the Go code
// and `make check` fails when it is stale.
//
// Header decoding allocates nothing and checks the body length before any of
// the body is read. Functions here are safe for concurrent use; a Parser or a
// Reader belongs to one goroutine.
package messages
