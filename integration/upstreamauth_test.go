package integration

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd" // the upstream's Basic auth
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/server"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage/bolt"
)

// mustBasicUpstream serves a Distribution registry that demands Basic
// credentials from the htpasswd file at path, like ECR does, and returns its
// address. Distribution re-reads the file when it changes.
func mustBasicUpstream(t *testing.T, htpasswd string) string {
	t.Helper()
	return MustUpstreamWith(t, UpstreamOptions{Auth: fmt.Sprintf("  htpasswd:\n    realm: ecr-like\n    path: %q\n", htpasswd)}).Addr
}

// rotate writes content to path and moves its modification time forward,
// so a reader that watches the time sees a change even on a coarse clock.
func rotate(t *testing.T, path, content string, step int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	when := time.Now().Add(time.Duration(step) * 2 * time.Second)
	if err := os.Chtimes(path, when, when); err != nil {
		t.Fatal(err)
	}
}

// TestUpstreamBasicRotation is the ECR-like setup: the upstream demands a
// service account's password, taglock reads it from a file, and clients of
// taglock send none (or their own, which is never forwarded). The password
// is rotated on the upstream and in the file mid-test, and pushes keep
// working without a restart.
func TestUpstreamBasicRotation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	upHtpasswd := filepath.Join(dir, "upstream.htpasswd")
	pwFile := filepath.Join(dir, "password")
	if err := os.WriteFile(upHtpasswd, []byte(readFile(t, mustHtpasswd(t, map[string]string{"AWS": "first-password"}))), 0o600); err != nil {
		t.Fatal(err)
	}
	rotate(t, pwFile, "first-password\n", 0)
	up := mustBasicUpstream(t, upHtpasswd)

	// Directly, the upstream refuses anonymous pushes.
	if err := remote.Write(mustRef(t, up, "ecr/app:v0"), MustImage(t), ggcrOpts(t)...); err == nil {
		t.Fatal("the upstream accepted an anonymous push; the test setup is wrong")
	}

	e := MustEnv(t, Embedded, func(c *config.Config) {
		c.Upstream.URL = "http://" + up
		c.Upstream.Auth = config.UpstreamAuth{Mode: "basic", Username: "AWS", PasswordFile: pwFile}
	})
	MustPush(t, e.Addr, "ecr/app:v1", MustImage(t))
	// A client's own credentials are replaced, not forwarded.
	req, _ := http.NewRequest(http.MethodGet, "/", nil)
	req.SetBasicAuth("AWS", "wrong")
	resp, body := do(t, http.MethodGet, e.URL("/v2/ecr/app/manifests/v1"), nil,
		http.Header{"Authorization": req.Header["Authorization"], "Accept": {"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET with the client's own wrong credentials: %d %s, want 200 (taglock's account is used)", resp.StatusCode, body)
	}

	// Rotate: the upstream first, then the file, as a cron job would.
	rotate(t, upHtpasswd, readFile(t, mustHtpasswd(t, map[string]string{"AWS": "second-password"})), 1)
	rotate(t, pwFile, "second-password\n", 1)
	img := MustImage(t)
	MustPush(t, e.Addr, "ecr/app:v3", img)
	if got := mustServed(t, e.Addr, "ecr/app:v3"); got != MustDigest(t, img) {
		t.Fatalf("after the rotation, ecr/app:v3 serves %s, want %s", got, MustDigest(t, img))
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestOfflineImportWithUpstreamBasic ensures the commands that reach the
// upstream without serve (import, verify) use the service account too:
// importing from an upstream that demands a password adopts its tags.
func TestOfflineImportWithUpstreamBasic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	upHtpasswd := filepath.Join(dir, "upstream.htpasswd")
	if err := os.WriteFile(upHtpasswd, []byte(readFile(t, mustHtpasswd(t, map[string]string{"AWS": "pw"}))), 0o600); err != nil {
		t.Fatal(err)
	}
	up := mustBasicUpstream(t, upHtpasswd)
	img := MustImage(t)
	opts := append(ggcrOpts(t), remote.WithAuth(&authn.Basic{Username: "AWS", Password: "pw"}))
	if err := remote.Write(mustRef(t, up, "ecr/old:v1"), img, opts...); err != nil {
		t.Fatalf("seed the upstream: %v", err)
	}
	cfg := config.Default()
	cfg.Data = t.TempDir()
	cfg.Upstream.URL = "http://" + up
	cfg.Upstream.Auth = config.UpstreamAuth{Mode: "basic", Username: "AWS", Password: "pw"}
	l, err := bolt.Open(server.LedgerPath(cfg.Data), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	off, err := server.NewOffline(t.Context(), cfg, l, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	rep, err := off.Drift().ImportTags(t.Context(), proxy.ImportOptions{})
	if err != nil || rep.Adopted != 1 {
		t.Fatalf("offline import: %+v, %v; want one tag adopted", rep, err)
	}
	if b, err := l.Binding(t.Context(), "ecr/old", "v1"); err != nil || b.Digest != MustDigest(t, img) {
		t.Fatalf("binding ecr/old:v1 = %+v, %v", b, err)
	}
}
