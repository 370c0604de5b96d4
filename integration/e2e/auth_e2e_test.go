//go:build e2e

package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/taglock/taglock/integration/internal/proc"
)

// authPasswords are the users of the access tests.
var authPasswords = map[string]string{
	"release-bot": "bot-secret",
	"dev":         "dev-secret",
	"reader":      "reader-secret",
}

// writeHtpasswd writes a bcrypt htpasswd file for authPasswords.
func writeHtpasswd(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for u, p := range authPasswords {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	path := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// aclConfig is the access section over an htpasswd file, with the
// release bot also allowed to publish public/**, plus extra YAML.
func aclConfig(htpasswd, extra string) string {
	return fmt.Sprintf(`
auth:
  mode: htpasswd
  htpasswd: {path: %q}
  groups:
    releasers: [release-bot]
access:
  - subjects: ["group:releasers"]
    repositories: ["prod/**"]
    tags: ["v*"]
    actions: [pull, push]
  - subjects: ["group:releasers"]
    repositories: ["public/**"]
    actions: [pull, push]
  - subjects: ["authenticated"]
    repositories: ["dev/**"]
    actions: [pull, push, delete]
  - subjects: ["anonymous", "authenticated"]
    repositories: ["public/**"]
    actions: [pull]
  - subjects: ["user:reader"]
    repositories: ["prod/**"]
    actions: [pull]
%s`, htpasswd, extra)
}

// TestAuthDockerMatrix ensures the ACL matrix with real `docker login` and
// `docker push` through the built binary: a wrong password fails login,
// anonymous pushes are challenged, a developer pushes to dev but not prod,
// the release bot pushes v* tags to prod but not latest (docker shows
// taglock's message naming user, action, tag and rule), a pull-only user
// pulls but cannot push, and anonymous pulls public (with crane: docker
// never pulls anonymously from a Basic-auth registry).
func TestAuthDockerMatrix(t *testing.T) {
	t.Parallel()
	docker := proc.Tool(t, "DOCKER")
	if os.Getenv("DOCKER_HOST") == "" {
		t.Fatal("DOCKER_HOST is not set: scripts/test.sh starts a private Docker daemon and sets it")
	}
	tl := startTaglock(t, serveOptions{config: aclConfig(writeHtpasswd(t), "")})
	s := &session{host: tl.Addr, dir: t.TempDir()}
	s.env = []string{"DOCKER_CONFIG=" + filepath.Join(s.dir, "docker")}
	im := makeImage(t)
	mustRun(t, s.cmd(docker, "load", "-i", im.tarball))
	login := func(user string) { mustRun(t, s.cmd(docker, "login", "-u", user, "-p", authPasswords[user], tl.Addr)) }
	push := func(repo, tag string) (string, error) {
		mustRun(t, s.cmd(docker, "tag", im.dockerName(), s.ref(repo, tag)))
		return run(t, s.cmd(docker, "push", s.ref(repo, tag)))
	}
	mustPush := func(repo, tag string) {
		t.Helper()
		if out, err := push(repo, tag); err != nil {
			t.Fatalf("docker push %s:%s: %v\n%s", repo, tag, err, out)
		}
	}
	refused := func(repo, tag string, want ...string) {
		t.Helper()
		out, err := push(repo, tag)
		if err == nil {
			t.Fatalf("docker push %s:%s succeeded; want it refused", repo, tag)
		}
		wantContains(t, "docker's output for "+repo+":"+tag, out, want...)
		if d, err := lookupAs(t, tl.Addr, "reader", repo, tag); err == nil {
			t.Errorf("%s:%s resolves to %s after the refused push", repo, tag, d)
		}
	}

	out := mustFail(t, s.cmd(docker, "login", "-u", "dev", "-p", "wrong", tl.Addr))
	wantContains(t, "docker login with a wrong password", out, "401")
	refused("dev/app", "anon", "no basic auth credentials") // docker's words for a 401 it has no login for

	login("dev")
	mustPush("dev/app", "1")
	refused("prod/app", "v1", "denied")

	login("release-bot")
	mustPush("prod/app", "v1")
	refused("prod/app", "latest", `denied: user "release-bot" may not push prod/app:latest`, "no access rule applies")
	mustPush("public/base", "1")

	login("reader")
	mustRun(t, s.cmd(docker, "rmi", s.ref("prod/app", "v1")))
	mustRun(t, s.cmd(docker, "pull", s.ref("prod/app", "v1")))
	refused("prod/app", "v2", `denied: user "reader" may not push prod/app`, "rule access[4]")

	// Anonymous pulls of public/** work for clients that try without
	// credentials after a Basic challenge (crane here). docker does not: it
	// answers a Basic challenge it has no login for with "no basic auth
	// credentials", as it does against Distribution with htpasswd.
	mustRun(t, s.cmd(docker, "logout", tl.Addr))
	out = mustRun(t, command{bin: proc.Tool(t, "CRANE"), args: []string{"digest", "--insecure", s.ref("public/base", "1")},
		env: []string{"DOCKER_CONFIG=" + t.TempDir()}})
	if got, want := strings.TrimSpace(out), resolveAs(t, tl.Addr, "reader", "public/base", "1"); got != want {
		t.Errorf("anonymous crane digest public/base:1 = %q, want %q", got, want)
	}
	out = mustFail(t, s.cmd(docker, "pull", s.ref("public/base", "1")))
	wantContains(t, "docker pull without a login", out, "no basic auth credentials")
}

// resolveAs is lookupAs that fails the test when the tag does not resolve.
func resolveAs(t testing.TB, host, user, repo, tag string) string {
	t.Helper()
	d, err := lookupAs(t, host, user, repo, tag)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// lookupAs is lookup with Basic credentials.
func lookupAs(t testing.TB, host, user, repo, tag string) (string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+host+"/v2/"+repo+"/manifests/"+tag, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", manifestAccept)
	req.SetBasicAuth(user, authPasswords[user])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s:%s: %s", repo, tag, resp.Status)
	}
	return resp.Header.Get("Docker-Content-Digest"), nil
}

// TestAuthCLIs ensures crane, oras, regctl and skopeo work with credentials:
// each pushes a v* tag to prod as the release bot, is refused latest with
// taglock's message, is refused prod as a developer, and fails with a wrong
// password.
func TestAuthCLIs(t *testing.T) {
	t.Parallel()
	crane := proc.Tool(t, "CRANE")
	oras := proc.Tool(t, "ORAS")
	regctl := proc.Tool(t, "REGCTL")
	skopeo := proc.Tool(t, "SKOPEO")
	tl := startTaglock(t, serveOptions{config: aclConfig(writeHtpasswd(t), "")})
	im := makeImage(t)
	const created = "org.opencontainers.image.created=2000-01-01T00:00:00Z"

	type pusher func(s *session, user, password, ref string) command
	tools := map[string]pusher{
		"crane": func(s *session, user, password, ref string) command {
			dir := filepath.Join(s.dir, "docker-"+user+"-"+password)
			mustRun(t, command{bin: crane, args: []string{"auth", "login", s.host, "-u", user, "-p", password}, env: []string{"DOCKER_CONFIG=" + dir}})
			return command{bin: crane, args: []string{"push", "--insecure", im.layout, ref}, env: []string{"DOCKER_CONFIG=" + dir}}
		},
		"oras": func(s *session, user, password, ref string) command {
			return command{bin: oras, dir: filepath.Dir(im.file), env: s.env,
				args: []string{"push", "--plain-http", "-u", user, "-p", password, "--annotation", created, ref, filepath.Base(im.file) + ":text/plain"}}
		},
		"regctl": func(s *session, user, password, ref string) command {
			cfg := []string{"REGCTL_CONFIG=" + filepath.Join(s.dir, "regctl-"+user+"-"+password+".json")}
			// set pings the registry, which challenges: the setting is stored all the same.
			_, _ = run(t, command{bin: regctl, args: []string{"registry", "set", "--tls", "disabled", s.host}, env: cfg})
			// A wrong password fails already at login.
			if _, err := run(t, command{bin: regctl, args: []string{"registry", "login", s.host, "-u", user, "-p", password}, env: cfg}); err != nil {
				return command{bin: "/bin/false"}
			}
			return command{bin: regctl, args: []string{"image", "copy", "ocidir://" + im.layout + ":" + layoutTag, ref}, env: cfg}
		},
		"skopeo": func(s *session, user, password, ref string) command {
			return command{bin: skopeo, env: s.env, args: []string{"copy", "--insecure-policy", "--dest-tls-verify=false",
				"--dest-creds", user + ":" + password, "oci:" + im.layout + ":" + layoutTag, "docker://" + ref}}
		},
	}
	for name, push := range tools {
		t.Run(name, func(t *testing.T) {
			s := &session{host: tl.Addr, dir: t.TempDir()}
			s.env = []string{"HOME=" + s.dir, "REGISTRY_AUTH_FILE=" + filepath.Join(s.dir, "auth.json")}
			repo := "prod/" + name
			mustRun(t, push(s, "release-bot", authPasswords["release-bot"], s.ref(repo, "v1")))
			if _, err := lookupAs(t, tl.Addr, "reader", repo, "v1"); err != nil {
				t.Fatalf("%s:v1 after the push: %v", repo, err)
			}
			out := mustFail(t, push(s, "release-bot", authPasswords["release-bot"], s.ref(repo, "latest")))
			// regctl and skopeo escape the quotes around the user name.
			wantContains(t, name+"'s output for latest", out, "release-bot", "may not push "+repo+":latest", "no access rule applies")
			mustFail(t, push(s, "dev", authPasswords["dev"], s.ref(repo, "v2")))
			mustFail(t, push(s, "release-bot", "wrong", s.ref(repo, "v3")))
			for _, tag := range []string{"latest", "v2", "v3"} {
				if d, err := lookupAs(t, tl.Addr, "reader", repo, tag); err == nil {
					t.Errorf("%s:%s resolves to %s after the refused push", repo, tag, d)
				}
			}
		})
	}
}

// e2eCA is a certificate authority made for one test.
type e2eCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T, cn string) *e2eCA {
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
	return &e2eCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// write writes the CA certificate to dir/name and returns the path.
func (ca *e2eCA) write(t *testing.T, dir, name string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, ca.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// leaf writes a certificate for 127.0.0.1 signed by ca to cert and key,
// replacing them atomically, key first, with a modification time step
// seconds ahead so a watcher sees the change.
func (ca *e2eCA) leaf(t *testing.T, cert, key string, step int) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "taglock e2e"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(k)
	when := time.Now().Add(time.Duration(step) * 2 * time.Second)
	for _, f := range []struct {
		path string
		data []byte
	}{
		{key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})},
		{cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})},
	} {
		if err := os.WriteFile(f.path+".tmp", f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(f.path+".tmp", when, when); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(f.path+".tmp", f.path); err != nil {
			t.Fatal(err)
		}
	}
}

// startTLSTaglock runs the built binary serving HTTPS with config and waits
// until /healthz answers over TLS, trusting pool.
func startTLSTaglock(t *testing.T, config string, pool *x509.CertPool) *process {
	t.Helper()
	bin := proc.Tool(t, "TAGLOCK_BIN")
	f := filepath.Join(t.TempDir(), "taglock.yaml")
	if err := os.WriteFile(f, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 5 * time.Second}
	return proc.Start(t, proc.Spec{Name: "taglock", Bin: bin, Env: os.Environ(),
		Args:     []string{"serve", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--config", f},
		AddrFrom: proc.TaglockAddr, Ready: "https://%s/healthz", Client: client})
}

// TestAuthTLSClients ensures docker (with the test CA in
// /etc/docker/certs.d/HOST:PORT/ca.crt), crane (with the CA as
// SSL_CERT_FILE) and skopeo (with --dest-cert-dir) log in and push through
// taglock over HTTPS, and that a certificate swapped on disk is served to
// the next client without a restart.
func TestAuthTLSClients(t *testing.T) {
	t.Parallel()
	docker := proc.Tool(t, "DOCKER")
	crane := proc.Tool(t, "CRANE")
	skopeo := proc.Tool(t, "SKOPEO")
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca := newCA(t, "taglock e2e CA")
	ca.leaf(t, cert, key, 0)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	tl := startTLSTaglock(t, aclConfig(writeHtpasswd(t), fmt.Sprintf("tls: {cert: %q, key: %q}\n", cert, key)), pool)
	im := makeImage(t)
	caDir := filepath.Join(t.TempDir(), "certs")
	caFile := ca.write(t, caDir, "ca.crt")

	t.Run("docker", func(t *testing.T) {
		certsD := filepath.Join("/etc/docker/certs.d", tl.Addr)
		ca.write(t, certsD, "ca.crt")
		t.Cleanup(func() { _ = os.RemoveAll(certsD) })
		s := &session{host: tl.Addr, dir: t.TempDir()}
		s.env = []string{"DOCKER_CONFIG=" + filepath.Join(s.dir, "docker")}
		mustRun(t, s.cmd(docker, "login", "-u", "release-bot", "-p", authPasswords["release-bot"], tl.Addr))
		mustRun(t, s.cmd(docker, "load", "-i", im.tarball))
		mustRun(t, s.cmd(docker, "tag", im.dockerName(), s.ref("prod/tls-docker", "v1")))
		mustRun(t, s.cmd(docker, "push", s.ref("prod/tls-docker", "v1")))
	})
	t.Run("crane", func(t *testing.T) {
		env := []string{"SSL_CERT_FILE=" + caFile, "DOCKER_CONFIG=" + t.TempDir()}
		mustRun(t, command{bin: crane, args: []string{"auth", "login", tl.Addr, "-u", "release-bot", "-p", authPasswords["release-bot"]}, env: env})
		mustRun(t, command{bin: crane, args: []string{"push", im.layout, tl.Addr + "/prod/tls-crane:v1"}, env: env})
		out := mustFail(t, command{bin: crane, args: []string{"push", im.layout, tl.Addr + "/prod/tls-crane:v2"}, env: []string{"DOCKER_CONFIG=" + t.TempDir()}})
		wantContains(t, "crane without the CA", out, "certificate")
	})
	t.Run("skopeo", func(t *testing.T) {
		mustRun(t, command{bin: skopeo, env: []string{"REGISTRY_AUTH_FILE=" + filepath.Join(t.TempDir(), "auth.json")},
			args: []string{"copy", "--insecure-policy", "--dest-cert-dir", caDir, "--dest-creds", "release-bot:" + authPasswords["release-bot"],
				"oci:" + im.layout + ":" + layoutTag, "docker://" + tl.Addr + "/prod/tls-skopeo:v1"}})
	})
	t.Run("certificate swap", func(t *testing.T) {
		ca2 := newCA(t, "taglock e2e CA 2")
		ca2.leaf(t, cert, key, 1)
		newCA := ca2.write(t, t.TempDir(), "ca.crt")
		env := []string{"SSL_CERT_FILE=" + newCA, "DOCKER_CONFIG=" + t.TempDir()}
		mustRun(t, command{bin: crane, args: []string{"auth", "login", tl.Addr, "-u", "release-bot", "-p", authPasswords["release-bot"]}, env: env})
		mustRun(t, command{bin: crane, args: []string{"push", im.layout, tl.Addr + "/prod/tls-crane:v2"}, env: env})
		out := mustFail(t, command{bin: crane, args: []string{"digest", tl.Addr + "/prod/tls-crane:v2"}, env: []string{"SSL_CERT_FILE=" + caFile}})
		wantContains(t, "crane trusting only the old CA", out, "certificate")
	})
}
