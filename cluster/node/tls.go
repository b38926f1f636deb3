package node

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// apiTLS returns the API's TLS configuration from the api.tls-* settings,
// or nil when the API is plaintext.
func (c *Config) apiTLS() (*tls.Config, error) {
	switch {
	case c.APITLSCert == "" && c.APITLSKey == "" && c.APITLSClientCA == "":
		return nil, nil
	case c.APITLSCert == "" || c.APITLSKey == "":
		return nil, fmt.Errorf("node: api.tls-cert and api.tls-key: set both or neither")
	}
	pair, err := tls.LoadX509KeyPair(c.APITLSCert, c.APITLSKey)
	if err != nil {
		return nil, fmt.Errorf("node: api.tls-cert/api.tls-key: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	if c.APITLSClientCA != "" {
		pem, err := os.ReadFile(c.APITLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("node: api.tls-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("node: api.tls-client-ca %s: no PEM certificate in it", c.APITLSClientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
