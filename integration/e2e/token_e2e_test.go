//go:build e2e

package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/auth/token" // also registers the upstream's token auth
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // the upstream's storage
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/sirupsen/logrus"

	"github.com/taglock/taglock/integration/internal/proc"
)

const (
	e2eService = "harbor-registry"
	e2eIssuer  = "harbor-token-issuer"
)

// harborIssuer starts a Docker token service on loopback, like Harbor's:
// users in authPasswords get what they ask for under harbor/**, anyone gets
// pull. It returns the realm URL (on "localhost", since clients refuse
// realms on loopback IP literals) and the JWKS file with its public key.
func harborIssuer(t *testing.T) (realm, jwksFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	const kid = "e2e-key"
	b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: kid, Algorithm: string(jose.ES256), Use: "sig"}}})
	jwksFile = filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwksFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	handler := func(w http.ResponseWriter, r *http.Request) {
		user := ""
		if u, p, ok := r.BasicAuth(); ok {
			if authPasswords[u] == "" || authPasswords[u] != p {
				http.Error(w, "bad credentials", http.StatusUnauthorized)
				return
			}
			user = u
		}
		var access []*token.ResourceActions
		for _, sc := range r.URL.Query()["scope"] {
			parts := strings.Split(sc, ":")
			if len(parts) != 3 || parts[0] != "repository" {
				continue
			}
			var granted []string
			for _, a := range strings.Split(parts[2], ",") {
				if a == "pull" || user != "" && strings.HasPrefix(parts[1], "harbor/") {
					granted = append(granted, a)
				}
			}
			access = append(access, &token.ResourceActions{Type: "repository", Name: parts[1], Actions: granted})
		}
		now := time.Now()
		tok, err := jwt.Signed(signer).Claims(token.ClaimSet{Issuer: e2eIssuer, Subject: user, Audience: token.AudienceList{e2eService},
			Expiration: now.Add(5 * time.Minute).Unix(), NotBefore: now.Add(-time.Minute).Unix(), IssuedAt: now.Unix(),
			JWTID: fmt.Sprint(now.UnixNano()), Access: access}).Serialize()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": 300})
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(handler), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return fmt.Sprintf("http://localhost:%d/service/token", ln.Addr().(*net.TCPAddr).Port), jwksFile
}

// tokenUpstream serves a Distribution registry that requires tokens from
// the issuer, as Harbor's registry does, and returns its address.
func tokenUpstream(t *testing.T, realm, jwksFile string) string {
	t.Helper()
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	cfg, err := configuration.Parse(strings.NewReader(fmt.Sprintf(`
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
  redirect:
    disable: true
auth:
  token:
    realm: %q
    service: %q
    issuer: %q
    jwks: %q
http:
  addr: 127.0.0.1:0
  secret: %q
`, t.TempDir(), realm, e2eService, e2eIssuer, jwksFile, hex.EncodeToString(secret))))
	if err != nil {
		t.Fatal(err)
	}
	// The in-process registry logs every request through logrus's standard
	// logger, whatever its configuration says.
	logrus.SetOutput(io.Discard)
	app := handlers.NewApp(context.Background(), cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: app, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); _ = app.Shutdown() })
	return ln.Addr().String()
}

// TestTokenHarborDocker is the Harbor-like setup with the real clients: a
// Distribution upstream on token auth, a token service, and the built
// taglock in token + passthrough mode in front. docker logs in through
// taglock's challenge, pushes and pulls; crane does the same; and taglock's
// own rules still refuse what the token service would allow.
func TestTokenHarborDocker(t *testing.T) {
	t.Parallel()
	docker := proc.Tool(t, "DOCKER")
	crane := proc.Tool(t, "CRANE")
	if os.Getenv("DOCKER_HOST") == "" {
		t.Fatal("DOCKER_HOST is not set: scripts/test.sh starts a private Docker daemon and sets it")
	}
	realm, jwks := harborIssuer(t)
	up := tokenUpstream(t, realm, jwks)
	tl := startTaglock(t, serveOptions{upstream: "http://" + up, config: fmt.Sprintf(`
auth:
  mode: token
  token: {realm: %q, service: %q, issuer: %q, jwks: %q}
access:
  - subjects: ["authenticated"]
    repositories: ["harbor/dev/**"]
    actions: [pull, push, delete]
  - subjects: ["*"]
    repositories: ["harbor/**"]
    actions: [pull]
`, realm, e2eService, e2eIssuer, jwks)})
	im := makeImage(t)
	s := &session{host: tl.Addr, dir: t.TempDir()}
	s.env = []string{"DOCKER_CONFIG=" + filepath.Join(s.dir, "docker")}

	mustRun(t, s.cmd(docker, "login", "-u", "dev", "-p", authPasswords["dev"], tl.Addr))
	mustRun(t, s.cmd(docker, "load", "-i", im.tarball))
	ref := s.ref("harbor/dev/app", "1")
	mustRun(t, s.cmd(docker, "tag", im.dockerName(), ref))
	mustRun(t, s.cmd(docker, "push", ref))
	mustRun(t, s.cmd(docker, "rmi", ref))
	pulled := lastDigest(t, "docker pull output", mustRun(t, s.cmd(docker, "pull", ref)))

	// The token service grants dev push on harbor/prod; taglock does not.
	prod := s.ref("harbor/prod/app", "1")
	mustRun(t, s.cmd(docker, "tag", im.dockerName(), prod))
	out := mustFail(t, s.cmd(docker, "push", prod))
	wantContains(t, "docker push to harbor/prod", out, `denied: user "dev" may not push harbor/prod/app`, "rule access[1]")

	craneEnv := []string{"DOCKER_CONFIG=" + t.TempDir()}
	mustRun(t, command{bin: crane, args: []string{"auth", "login", tl.Addr, "-u", "dev", "-p", authPasswords["dev"]}, env: craneEnv})
	mustRun(t, command{bin: crane, args: []string{"push", "--insecure", im.layout, s.ref("harbor/dev/crane", "1")}, env: craneEnv})
	got := strings.TrimSpace(mustRun(t, command{bin: crane, args: []string{"digest", "--insecure", ref}, env: craneEnv}))
	if got != pulled {
		t.Errorf("crane digest %s = %s; docker pulled %s", ref, got, pulled)
	}
	// Anonymous pulls get an anonymous token from the issuer.
	got = strings.TrimSpace(mustRun(t, command{bin: crane, args: []string{"digest", "--insecure", ref}, env: []string{"DOCKER_CONFIG=" + t.TempDir()}}))
	if got != pulled {
		t.Errorf("anonymous crane digest %s = %s, want %s", ref, got, pulled)
	}
}
