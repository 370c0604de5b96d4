package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/taglock/taglock/internal/config"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// PEM is the CA certificate, PEM-encoded.
	PEM []byte
}

// mustCA makes a fresh CA named cn.
func mustCA(t *testing.T, cn string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Pool is a certificate pool holding only the CA.
func (ca *testCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// mustWriteCA writes the CA certificate to a file and returns its path.
func (ca *testCA) mustWrite(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// mustLeaf writes a server certificate for 127.0.0.1 and localhost, signed
// by ca, to cert and key.
func (ca *testCA) mustLeaf(t *testing.T, cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "taglock test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	// Key first: a reader that sees the new certificate must find its key.
	if err := os.WriteFile(key+".tmp", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cert+".tmp", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(key+".tmp", key); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(cert+".tmp", cert); err != nil {
		t.Fatal(err)
	}
}

// httpsClient trusts only pool and speaks HTTP/2 when offered.
func httpsClient(pool *x509.CertPool) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// TestTLSServing ensures taglock serves HTTPS with HTTP/2 and at least TLS
// 1.2, a client that trusts the test CA pushes and pulls through it, and a
// certificate swapped on disk is served to the next connection without a
// restart.
func TestTLSServing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca1 := mustCA(t, "taglock test CA 1")
	ca1.mustLeaf(t, cert, key)
	e := MustEnv(t, Embedded, func(c *config.Config) { c.TLS = config.TLS{Cert: cert, Key: key} })

	resp, err := httpsClient(ca1.Pool()).Get("https://" + e.Addr + "/v2/")
	if err != nil {
		t.Fatalf("GET /v2/ over HTTPS: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Fatalf("GET /v2/ over HTTPS: %d %s, want 200 over HTTP/2", resp.StatusCode, resp.Proto)
	}

	old, err := tls.Dial("tcp", e.Addr, &tls.Config{RootCAs: ca1.Pool(), MaxVersion: tls.VersionTLS11})
	if err == nil {
		old.Close()
		t.Fatal("a TLS 1.1 handshake succeeded; want TLS 1.2 at least")
	}

	img := MustImage(t)
	ref, err := name.ParseReference(e.Addr + "/tls/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(ggcrOpts(t), remote.WithTransport(httpsClient(ca1.Pool()).Transport))
	if err := remote.Write(ref, img, opts...); err != nil {
		t.Fatalf("push over HTTPS: %v", err)
	}
	if d, err := remote.Head(ref, opts...); err != nil || d.Digest.String() != MustDigest(t, img).String() {
		t.Fatalf("HEAD over HTTPS: %v, %v", d, err)
	}

	ca2 := mustCA(t, "taglock test CA 2")
	future := time.Now().Add(2 * time.Second)
	ca2.mustLeaf(t, cert, key)
	for _, p := range []string{cert, key} {
		if err := os.Chtimes(p, future, future); err != nil {
			t.Fatal(err)
		}
	}
	resp, err = httpsClient(ca2.Pool()).Get("https://" + e.Addr + "/v2/")
	if err != nil {
		t.Fatalf("after the swap, a client trusting the new CA: %v", err)
	}
	resp.Body.Close()
	if _, err := httpsClient(ca1.Pool()).Get("https://" + e.Addr + "/v2/"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("after the swap, a client trusting only the old CA: %v; want a certificate error", err)
	}
}

// TestUpstreamTLSVerified ensures taglock verifies the upstream's
// certificate: with the upstream's CA in upstream.tls.ca a push goes
// through, and without it the push is refused with 502 and never trusts
// the unknown certificate.
func TestUpstreamTLSVerified(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "up.crt"), filepath.Join(dir, "up.key")
	ca := mustCA(t, "upstream CA")
	ca.mustLeaf(t, cert, key)
	up := MustUpstreamWith(t, UpstreamOptions{Cert: cert, Key: key}).Addr
	caFile := ca.mustWrite(t)

	trusted := MustEnv(t, Embedded, func(c *config.Config) {
		c.Upstream.URL = "https://" + up
		c.Upstream.TLS.CA = caFile
	})
	img := MustImage(t)
	MustPush(t, trusted.Addr, "secure/app:v1", img)

	untrusted := MustEnv(t, Embedded, func(c *config.Config) { c.Upstream.URL = "https://" + up })
	err := remote.Write(untrusted.Ref(t, "secure/app:v2"), MustImage(t), ggcrOpts(t)...)
	if got := ggcrError(t, err); got.Status != http.StatusBadGateway {
		t.Fatalf("push through a taglock that does not trust the upstream: got %d %s, want 502", got.Status, got.Code)
	}
}

// mustClientCert returns a client certificate for cn signed by ca.
func (ca *testCA) mustClientCert(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// TestClientCertIdentity ensures a client certificate verified against
// tls.client_ca names the identity the access rules see: the release bot's
// certificate pushes a v* tag to prod without a password and is refused
// latest by name, a certificate from another CA is refused at the
// handshake, and a request without one is challenged for a password.
func TestClientCertIdentity(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	serverCA, clientCA := mustCA(t, "server CA"), mustCA(t, "client CA")
	serverCA.mustLeaf(t, cert, key)
	e := MustEnv(t, Embedded, withIssueACL(mustHtpasswd(t, authUsers)), func(c *config.Config) {
		c.TLS = config.TLS{Cert: cert, Key: key, ClientCA: clientCA.mustWrite(t)}
	})
	transport := func(certs ...tls.Certificate) http.RoundTripper {
		return &http.Transport{TLSClientConfig: &tls.Config{RootCAs: serverCA.Pool(), Certificates: certs}}
	}
	img := MustImage(t)
	botTransport := transport(clientCA.mustClientCert(t, "release-bot"))
	ref := func(s string) name.Reference {
		r, err := name.ParseReference(e.Addr + "/" + s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	opts := append(ggcrOpts(t), remote.WithTransport(botTransport))
	if err := remote.Write(ref("prod/cert:v1"), img, opts...); err != nil {
		t.Fatalf("push with the release bot's certificate: %v", err)
	}
	b, err := e.Ledger().Binding(t.Context(), "prod/cert", "v1")
	if err != nil || b.PushedBy != "release-bot" {
		t.Fatalf("binding %+v, %v; want pushed by release-bot", b, err)
	}
	err = remote.Write(ref("prod/cert:latest"), img, opts...)
	wantAccessDenied(t, ggcrError(t, err), "release-bot", "push", "prod/cert:latest", "access: no rule applies")

	// A certificate from another CA never names an identity: the client
	// either does not offer it (it is not from an acceptable CA) or the
	// handshake fails.
	if resp, err := (&http.Client{Transport: transport(serverCA.mustClientCert(t, "release-bot"))}).Get("https://" + e.Addr + "/v2/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("ping with a certificate from another CA: %d, want 401", resp.StatusCode)
		}
	}
	resp, err := (&http.Client{Transport: transport()}).Get("https://" + e.Addr + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("ping without a certificate or password: %d, want 401", resp.StatusCode)
	}
}
