package node

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/courier-im/courier/cluster/mtls"
)

// TestCertExpiryExposed: the node exposes when its certificates expire
// and warns at start about one that expires within 30 days.
func TestCertExpiryExposed(t *testing.T) {
	dir := t.TempDir()
	ca, err := mtls.NewCA("test CA", 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	node, err := mtls.IssueNode(ca, "node1", []string{"127.0.0.1"}, 10*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, "node1.pem"), filepath.Join(dir, "node1-key.pem")
	if err := node.Write(cert, key); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Cluster.TLS.Cert = cert
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	certExpiry(cfg, reg, slog.New(slog.NewTextHandler(&logs, nil)))
	want, _ := certNotAfter(cert)
	if got := testutil.ToFloat64(mustGauge(t, reg)); int64(got) != want.Unix() || time.Until(want) > 11*24*time.Hour {
		t.Fatalf("courier_tls_cert_expiry_timestamp_seconds{cert=cluster} = %v, want %v", got, want.Unix())
	}
	if !strings.Contains(logs.String(), "expires soon") || !strings.Contains(logs.String(), "cluster.tls-cert") {
		t.Fatalf("no warning for a certificate that expires in 10 days:\n%s", logs.String())
	}
}

func mustGauge(t *testing.T, reg *prometheus.Registry) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || len(mfs[0].Metric) != 1 || mfs[0].Metric[0].Label[0].GetValue() != "cluster" {
		t.Fatalf("gathered %v, %v", mfs, err)
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
	g.Set(mfs[0].Metric[0].GetGauge().GetValue())
	return g
}

// TestNodeCertificateNotPastTheCA: a node certificate asked for longer
// than its CA lives ends with the CA.
func TestNodeCertificateNotPastTheCA(t *testing.T) {
	dir := t.TempDir()
	ca, err := mtls.NewCA("short CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	node, err := mtls.IssueNode(ca, "node1", []string{"127.0.0.1"}, 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, caPath := filepath.Join(dir, "node1.pem"), filepath.Join(dir, "ca.pem")
	if err := node.Write(cert, filepath.Join(dir, "node1-key.pem")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caPath, ca.Cert, 0o644); err != nil {
		t.Fatal(err)
	}
	nodeEnd, _ := certNotAfter(cert)
	caEnd, _ := certNotAfter(caPath)
	if nodeEnd.After(caEnd) {
		t.Fatalf("node certificate ends %v, after its CA (%v)", nodeEnd, caEnd)
	}
}
