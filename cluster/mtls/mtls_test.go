package mtls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
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
	// A web server's certificate of the same CA: server authentication
	// only (its node could not dial the others).
	caCert, caKey, err := parse(ca)
	if err != nil {
		t.Fatal(err)
	}
	wKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "web"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, DNSNames: []string{"web"}}, caCert, &wKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	web, err := encode(der, wKey)
	if err != nil {
		t.Fatal(err)
	}
	wCert, wKeyPath := write(t, dir, "web.pem", web.Cert), write(t, dir, "web-key.pem", web.Key)

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
		"server-only cert":   {Files{CA: caPath, Cert: wCert, Key: wKeyPath}, "both server and client authentication"},
		"CA file not a cert": {Files{CA: key, Cert: cert, Key: key}, "no PEM certificate"},
	} {
		err := tc.f.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %q", name, err, tc.want)
		}
	}
}
