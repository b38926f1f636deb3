package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// tlsFlags are the TLS settings of a connection courierctl makes.
type tlsFlags struct {
	on         bool
	ca         string
	cert, key  string
	serverName string
}

// bind declares --tls, --tls-ca, --tls-cert, --tls-key and
// --tls-server-name; env is the prefix of their environment variables
// (COURIERCTL_API: COURIERCTL_API_TLS_CA, ...).
func (f *tlsFlags) bind(c *cobra.Command, what, env string) {
	fs := c.Flags()
	envBool(fs, &f.on, "tls", env+"_TLS", "connect to "+what+" with TLS (env "+env+"_TLS=true; implied by the other --tls-* flags)")
	envString(fs, &f.ca, "tls-ca", env+"_TLS_CA", "", "PEM file of the CA that signed the server's certificate (default: the system's roots)", false)
	envString(fs, &f.cert, "tls-cert", env+"_TLS_CERT", "", "PEM client certificate, for servers that require one", false)
	envString(fs, &f.key, "tls-key", env+"_TLS_KEY", "", "PEM key of --tls-cert", false)
	c.Flags().StringVar(&f.serverName, "tls-server-name", "", "name to verify the server's certificate against (default: the host dialled)")
}

// config returns the TLS configuration, or nil for plaintext.
func (f *tlsFlags) config() (*tls.Config, error) {
	if !f.on && f.ca == "" && f.cert == "" && f.key == "" && f.serverName == "" {
		return nil, nil
	}
	if (f.cert == "") != (f.key == "") {
		return nil, usageError{fmt.Errorf("--tls-cert and --tls-key go together")}
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.serverName}
	if f.ca != "" {
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", f.ca)
		}
		cfg.RootCAs = pool
	}
	if f.cert != "" {
		pair, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}
