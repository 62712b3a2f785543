// SPDX-License-Identifier: MIT

// Package webtest writes what tests of the agent's secured HTTP server need:
// a self-signed certificate and an exporter-toolkit web configuration file
// with TLS and bcrypt-hashed basic auth users.
package webtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/icmplb/icmplb/internal/testenv"
)

// Cert is a self-signed certificate and its key, as files and as the pool a
// client trusts it with.
type Cert struct {
	CertFile, KeyFile string
	Pool              *x509.CertPool
}

// SelfSigned writes a self-signed certificate for hosts (IP addresses or DNS
// names) and its key into dir. It is its own CA, so that a client given
// CertFile as its CA file verifies the server's name as in production.
func SelfSigned(tb testenv.TB, dir string, hosts ...string) Cert {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "icmplb test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	c := Cert{CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem"), Pool: x509.NewCertPool()}
	writePEM(tb, c.CertFile, "CERTIFICATE", der)
	writePEM(tb, c.KeyFile, "PRIVATE KEY", keyDER)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	c.Pool.AddCert(cert)
	return c
}

func writePEM(tb testenv.TB, file, typ string, der []byte) {
	tb.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// WriteConfig writes an exporter-toolkit web configuration file into dir:
// TLS with cert (none when cert is nil), basic auth users with the bcrypt
// hashes of their passwords (none when users is empty), and extra YAML
// appended as it is (e.g. a rate_limit section).
func WriteConfig(tb testenv.TB, dir string, cert *Cert, users map[string]string, extra string) string {
	tb.Helper()
	var b strings.Builder
	if cert != nil {
		fmt.Fprintf(&b, "tls_server_config:\n  cert_file: %s\n  key_file: %s\n", cert.CertFile, cert.KeyFile)
	}
	if len(users) > 0 {
		b.WriteString("basic_auth_users:\n")
		names := make([]string, 0, len(users))
		for u := range users {
			names = append(names, u)
		}
		sort.Strings(names)
		for _, u := range names {
			hash, err := bcrypt.GenerateFromPassword([]byte(users[u]), bcrypt.DefaultCost)
			if err != nil {
				tb.Fatal(err)
			}
			fmt.Fprintf(&b, "  %s: %q\n", u, hash)
		}
	}
	b.WriteString(extra)
	file := filepath.Join(dir, "web-config.yml")
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
	return file
}

// Client is an HTTPS client that trusts only cert and dials with dial (nil:
// the default dialer), e.g. from inside a network namespace.
func Client(cert Cert, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cert.Pool, MinVersion: tls.VersionTLS12}, DialContext: dial}
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}
