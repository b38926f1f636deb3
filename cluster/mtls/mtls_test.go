package mtls

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFilesConfig(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	node, err := IssueNode(ca, "n1", []string{"127.0.0.1", "node1.internal"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewCA("other CA", time.Hour)
	stranger, _ := IssueNode(other, "x", []string{"127.0.0.1"}, time.Hour)
	caPath := write(t, dir, "ca.pem", ca.Cert)
	cert, key := write(t, dir, "n1.pem", node.Cert), write(t, dir, "n1-key.pem", node.Key)
	sCert, sKey := write(t, dir, "x.pem", stranger.Cert), write(t, dir, "x-key.pem", stranger.Key)

	if (Files{}).Enabled() || (Files{}).Validate() != nil {
		t.Fatal("empty files: enabled or invalid")
	}
	tc, err := Files{CA: caPath, Cert: cert, Key: key}.Config()
	if err != nil {
		t.Fatal(err)
	}
	if tc.ClientAuth.String() != "RequireAndVerifyClientCert" || tc.ClientCAs == nil || tc.RootCAs == nil {
		t.Fatalf("config %+v", tc)
	}
	for name, tc := range map[string]struct {
		f    Files
		want string
	}{
		"no CA":              {Files{Cert: cert, Key: key}, "cluster.tls-ca"},
		"no key":             {Files{CA: caPath, Cert: cert}, "cluster.tls-key"},
		"no cert":            {Files{CA: caPath}, "cluster.tls-cert"},
		"missing CA file":    {Files{CA: caPath + ".gone", Cert: cert, Key: key}, "cluster.tls-ca"},
		"key of another":     {Files{CA: caPath, Cert: cert, Key: sKey}, "cluster.tls-cert"},
		"another CA's cert":  {Files{CA: caPath, Cert: sCert, Key: sKey}, "not a node certificate of the CA"},
		"CA file not a cert": {Files{CA: key, Cert: cert, Key: key}, "no PEM certificate"},
	} {
		err := tc.f.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %q", name, err, tc.want)
		}
	}
}
