// Package mtls secures the actor remoting between members: every member
// holds a certificate issued by the cluster's CA and presents it both as a
// server and as a client, and refuses any peer whose certificate the CA
// did not sign. It loads the CA and a node's certificate from PEM files
// (Files) and makes development ones (NewCA, IssueNode: what `courierctl
// certs` writes).
//
// Without certificates, remoting is plaintext and the cluster package only
// lets it listen on a loopback address. Nothing here runs a goroutine; the
// files are read once, at start.
package mtls
