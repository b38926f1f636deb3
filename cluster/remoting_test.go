package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/courier-im/courier/cluster/mtls"
)

// With mutual TLS remoting may bind any address (without it, loopback
// only: TestRemotingRefusesNonLoopbackBind).
func TestRemotingExposedWithTLS(t *testing.T) {
	dir := t.TempDir()
	ca, _ := mtls.NewCA("ca", time.Hour)
	node, _ := mtls.IssueNode(ca, "n", []string{"10.0.0.5"}, time.Hour)
	files := mtls.Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "n.pem"), Key: filepath.Join(dir, "n-key.pem")}
	if err := os.WriteFile(files.CA, ca.Cert, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := node.Write(files.Cert, files.Key); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		bind, advertise string
		tls             bool
		ok              bool
	}{
		{"0.0.0.0:7100", "10.0.0.5:7100", false, false},
		{"0.0.0.0:7100", "10.0.0.5:7100", true, true},
		{"10.0.0.5:7100", "", true, true},
	} {
		cfg := DefaultConfig()
		cfg.Bind, cfg.Advertise = tc.bind, tc.advertise
		if tc.tls {
			cfg.TLS = files
		}
		err := cfg.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("bind %s tls %v: %v", tc.bind, tc.tls, err)
		}
		if err != nil && !strings.Contains(err.Error(), "cluster.bind") {
			t.Errorf("bind %s: error does not name cluster.bind: %v", tc.bind, err)
		}
	}
}
