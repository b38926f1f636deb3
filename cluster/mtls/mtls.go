package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// ErrNoCerts: none of the files is configured.
var ErrNoCerts = errors.New("mtls: no certificates configured")

// Files names the PEM files of a member's mutual TLS.
type Files struct {
	// CA is the cluster CA's certificate: peers must present a
	// certificate it signed.
	CA string
	// Cert and Key are this node's certificate (signed by the CA, valid
	// for the hosts other members dial) and its private key.
	Cert, Key string
}

// Enabled reports whether any file is configured.
func (f Files) Enabled() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

// Validate checks that the files are all set or all empty and that they
// load. Errors name the node's settings.
func (f Files) Validate() error {
	if !f.Enabled() {
		return nil
	}
	_, err := f.Config()
	return err
}

// Config loads the files into a TLS configuration for both ends of a
// remoting connection: it presents the node's certificate, requires and
// verifies the peer's against the CA, and verifies the server's name
// against the address dialed. TLS 1.3 only.
func (f Files) Config() (*tls.Config, error) {
	switch {
	case !f.Enabled():
		return nil, ErrNoCerts
	case f.CA == "":
		return nil, fmt.Errorf("cluster.tls-ca: required with cluster.tls-cert and cluster.tls-key")
	case f.Cert == "":
		return nil, fmt.Errorf("cluster.tls-cert: required with cluster.tls-ca")
	case f.Key == "":
		return nil, fmt.Errorf("cluster.tls-key: required with cluster.tls-cert")
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("cluster.tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("cluster.tls-ca %s: no PEM certificate in it", f.CA)
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("cluster.tls-cert %s / cluster.tls-key %s: %w", f.Cert, f.Key, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("cluster.tls-cert %s: %w", f.Cert, err)
	}
	// A member is a server to the members that dial it and a client of
	// those it dials: its certificate must allow both (Verify accepts a
	// chain that allows any one of the usages it is given).
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		opts := x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}}
		if _, err := leaf.Verify(opts); err != nil {
			return nil, fmt.Errorf("cluster.tls-cert %s: not a node certificate of the CA in cluster.tls-ca (it must allow both server and client authentication): %w", f.Cert, err)
		}
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}, nil
}
