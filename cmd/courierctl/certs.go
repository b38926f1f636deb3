package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/courier-im/courier/cluster/mtls"
)

// certsCmd makes a development CA and node certificates for the mutual
// TLS between members.
func certsCmd() *cobra.Command {
	var dir, nodes, hosts string
	var validity time.Duration
	c := &cobra.Command{
		Use:   "certs",
		Short: "Make a development cluster CA and node certificates for mutual TLS between members",
		Long: `Writes DIR/ca.pem and DIR/ca-key.pem (kept if they exist, so that more nodes
can be added later) and, for each node, DIR/NAME.pem and DIR/NAME-key.pem,
valid for the given hosts (the addresses other members dial). Start each node
with the flags printed. For production, issue certificates from your own PKI:
any CA works, as long as node certificates allow server and client
authentication and name the hosts other members dial.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			names := splitList(nodes)
			hostList := splitList(hosts)
			if len(names) == 0 {
				return usageError{fmt.Errorf("--nodes: name at least one node")}
			}
			if len(hostList) == 0 {
				return usageError{fmt.Errorf("--hosts: name at least one host (IP or DNS name)")}
			}
			if validity <= 0 {
				return usageError{fmt.Errorf("--validity %v: must be positive", validity)}
			}
			// Every name is checked before anything is written: a bad one
			// late in the list left a CA and the first nodes' files behind.
			for _, name := range names {
				if strings.ContainsAny(name, `/\`) {
					return usageError{fmt.Errorf("--nodes: %q is not a file name", name)}
				}
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			ca, err := loadOrMakeCA(out, dir, validity)
			if err != nil {
				return err
			}
			caPath := filepath.Join(dir, "ca.pem")
			for _, name := range names {
				p, err := mtls.IssueNode(ca, name, hostList, validity)
				if err != nil {
					return err
				}
				cert, key := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
				if err := p.Write(cert, key); err != nil {
					return err
				}
				fmt.Fprintf(out, "%s: --cluster.tls-ca %s --cluster.tls-cert %s --cluster.tls-key %s\n", name, caPath, cert, key)
			}
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "certs", "directory to write to")
	c.Flags().StringVar(&nodes, "nodes", "node1", "node names, comma-separated: one certificate each")
	c.Flags().StringVar(&hosts, "hosts", "127.0.0.1,localhost", "hosts (IP addresses, DNS names) the certificates are valid for, comma-separated")
	c.Flags().DurationVar(&validity, "validity", 365*24*time.Hour, "how long the certificates are valid")
	return c
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// loadOrMakeCA reads DIR/ca.pem and DIR/ca-key.pem, or makes and writes
// them.
func loadOrMakeCA(out io.Writer, dir string, validity time.Duration) (mtls.PEM, error) {
	certPath, keyPath := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	cert, errC := os.ReadFile(certPath)
	key, errK := os.ReadFile(keyPath)
	switch {
	case errC == nil && errK == nil:
		fmt.Fprintf(out, "using the CA in %s\n", certPath)
		return mtls.PEM{Cert: cert, Key: key}, nil
	case !errors.Is(errC, fs.ErrNotExist) && errC != nil:
		return mtls.PEM{}, errC
	case errC == nil || errK == nil:
		return mtls.PEM{}, fmt.Errorf("%s and %s: one exists without the other", certPath, keyPath)
	}
	ca, err := mtls.NewCA("Courier development cluster CA", validity)
	if err != nil {
		return mtls.PEM{}, err
	}
	if err := ca.Write(certPath, keyPath); err != nil {
		return mtls.PEM{}, err
	}
	fmt.Fprintf(out, "made a CA: %s (its key %s signs node certificates: keep it off the nodes)\n", certPath, keyPath)
	return ca, nil
}
