package node

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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

// certNotAfter returns when the first certificate of a PEM file expires.
func certNotAfter(path string) (time.Time, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, err
	}
	for {
		var block *pem.Block
		if block, b = pem.Decode(b); block == nil {
			return time.Time{}, fmt.Errorf("%s: no PEM certificate in it", path)
		}
		if block.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return time.Time{}, fmt.Errorf("%s: %w", path, err)
			}
			return c.NotAfter, nil
		}
	}
}

// certExpiry exposes when the node's certificates expire
// (courier_tls_cert_expiry_timestamp_seconds{cert}: "cluster", the
// remoting certificate; "api", the API's) and warns at start about one
// that expires within 30 days: the files are read only at start, and a
// node restarted with an expired remoting certificate does not start.
func certExpiry(cfg Config, reg prometheus.Registerer, log *slog.Logger) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "courier_tls_cert_expiry_timestamp_seconds",
		Help: "When the node's certificate expires (Unix seconds), by cert: cluster (cluster.tls-cert), api (api.tls-cert). Read at start: rotate by restarting the node."}, []string{"cert"})
	found := false
	for _, c := range []struct{ name, path, setting string }{
		{"cluster", cfg.Cluster.TLS.Cert, "cluster.tls-cert"}, {"api", cfg.APITLSCert, "api.tls-cert"}} {
		if c.path == "" {
			continue
		}
		at, err := certNotAfter(c.path)
		if err != nil {
			log.Warn("node: reading the certificate's expiry", "setting", c.setting, "err", err)
			continue
		}
		found = true
		g.WithLabelValues(c.name).Set(float64(at.Unix()))
		if left := time.Until(at); left < 30*24*time.Hour {
			log.Warn("node: a certificate expires soon; rotate it (docs/operating.md, Rotating certificates)", "setting", c.setting,
				"expires", at.UTC().Format(time.RFC3339), "in", left.Round(time.Hour))
		}
	}
	if found {
		reg.MustRegister(g)
	}
}
