package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeSelfSigned writes a certificate for a name that is not the loopback
// address the commands dial, and its key.
func writeSelfSigned(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// While serve holds the ledger and serves HTTPS, the ledger commands reach
// its admin API over HTTPS, trusting exactly the configured certificate even
// though it does not name 127.0.0.1; a server presenting another
// certificate is not trusted.
func TestLedgerCommandsOverTLS(t *testing.T) {
	e := ltNewEnv(t)
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir, "registry.example")
	e.cfg.TLS.Cert, e.cfg.TLS.Key = cert, key
	e.serve(t)
	defer e.stop(t)
	writeTLSConf := func(cert, key string) {
		y := fmt.Sprintf("listen: %s\ndata: %s\nupstream:\n  url: %s\nlog:\n  level: error\ntls:\n  cert: %s\n  key: %s\n",
			e.srv.Addr(), e.data, e.up.url, cert, key)
		if err := os.WriteFile(e.conf, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeTLSConf(cert, key)
	e.mustRun(t, 0, "ledger", "check")

	otherCert, otherKey := writeSelfSigned(t, dir, "other.example")
	writeTLSConf(otherCert, otherKey)
	_, errs, code := e.run(t, "ledger", "check")
	if code == 0 || !strings.Contains(errs, "does not present tls.cert") {
		t.Fatalf("with another certificate configured: exit %d, stderr %q; want a failure naming tls.cert", code, errs)
	}
}
