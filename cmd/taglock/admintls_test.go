package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
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
// it on its admin socket, which TLS has nothing to do with: they work
// whatever certificate their config names, and the HTTPS listener answers
// an admin call with 404 even when it carries the old admin header.
func TestLedgerCommandsWithTLS(t *testing.T) {
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
	e.mustRun(t, 0, "ledger", "check")

	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} // the test's own check of the listener
	req, err := http.NewRequest(http.MethodPost, "https://"+e.srv.Addr()+"/taglock/v1/admin/ledger/check", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Taglock-Admin", "1")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("admin call over HTTPS from loopback: %d, want 404", resp.StatusCode)
	}
}
