package integration

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/taglock/taglock/internal/config"
)

// TestCacheAnswersImmutableReadsWithoutTheUpstream checks, with a real
// client and a real registry, that pulls of an immutable tag and of its
// content by digest are answered from what taglock holds once it holds
// the bytes, with the headers the registry sends, while a mutable tag
// still goes to the registry every time.
func TestCacheAnswersImmutableReadsWithoutTheUpstream(t *testing.T) {
	t.Parallel()
	e := MustEnv(t, Separate, func(c *config.Config) {
		// taglock is the gate: no confirmation from the registry.
		c.Upstream.Auth = config.UpstreamAuth{Mode: "basic", Username: "taglock", Password: "unused"}
	})
	up := e.Up

	img := MustImage(t)
	mf := MustManifest(t, img)
	MustPush(t, e.Addr, "team/app:1.0.0", img)
	MustPush(t, e.Addr, "team/app:latest", img)

	direct := headers(t, "http://"+up.Addr+"/v2/team/app/manifests/"+mf.Digest.String(), mf.MediaType)
	for _, ref := range []string{"1.0.0", mf.Digest.String()} {
		before := up.requests.Load()
		for range 5 {
			got := headers(t, e.URL("/v2/team/app/manifests/"+ref), mf.MediaType)
			for _, k := range []string{"Docker-Content-Digest", "Content-Type", "Content-Length", "Etag"} {
				if got.Get(k) != direct.Get(k) {
					t.Errorf("GET team/app:%s through taglock: %s %q, the registry sends %q", ref, k, got.Get(k), direct.Get(k))
				}
			}
		}
		if n := up.requests.Load() - before; n != 0 {
			t.Errorf("5 GETs of team/app:%s reached the registry %d times, want 0", ref, n)
		}
	}
	before := up.requests.Load()
	for range 3 {
		headers(t, e.URL("/v2/team/app/manifests/latest"), mf.MediaType)
	}
	if n := up.requests.Load() - before; n != 3 {
		t.Errorf("3 GETs of the mutable latest reached the registry %d times, want 3", n)
	}
	// ggcr pulls the whole image through the cache.
	if _, err := remote.Image(e.Ref(t, "team/app:1.0.0"), ggcrOpts(t)...); err != nil {
		t.Fatalf("pull: %v", err)
	}
	// A client that does not name the media type gets what the registry
	// gives it.
	before = up.requests.Load()
	resp, _ := do(t, http.MethodGet, e.URL("/v2/team/app/manifests/1.0.0"), nil, http.Header{"Accept": {"application/vnd.example+json"}})
	if up.requests.Load() == before {
		t.Errorf("a GET accepting another media type was answered by the cache (%d)", resp.StatusCode)
	}
}

// headers GETs url accepting mediaType and returns the answer's headers;
// anything but 200 fails the test.
func headers(t *testing.T, url, mediaType string) http.Header {
	t.Helper()
	resp, body := do(t, http.MethodGet, url, nil, http.Header{"Accept": {mediaType}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	return resp.Header
}

// TestCacheNeverAnswersWhomTheUpstreamRefuses is the passthrough setup: the
// registry checks each client's own credentials, so it decides who may
// pull. A cached answer goes only to credentials the registry let pull
// the repository within cache.auth_ttl: anonymous callers, wrong
// passwords and credentials revoked on the registry never get a 200 from
// the cache, by tag or by digest, once the TTL has passed.
func TestCacheNeverAnswersWhomTheUpstreamRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	htpasswd := filepath.Join(dir, "upstream.htpasswd")
	users := map[string]string{"ci": "ci-secret", "bob": "bob-secret"}
	rotate(t, htpasswd, readFile(t, mustHtpasswd(t, users)), 0)
	up := MustUpstreamWith(t, UpstreamOptions{Auth: fmt.Sprintf("  htpasswd:\n    realm: upstream\n    path: %q\n", htpasswd)})
	const ttl = time.Second
	e := &Env{Mode: Separate, Data: t.TempDir(), Up: up}
	e.cfg = config.Default()
	e.cfg.Listen, e.cfg.Data = "127.0.0.1:0", e.Data
	e.cfg.Upstream.URL = "http://" + up.Addr // passthrough, the default
	e.cfg.Cache.AuthTTL = config.Duration(ttl)
	e.Start(t)

	img := MustImage(t)
	mf := MustManifest(t, img)
	if err := remote.Write(e.Ref(t, "team/app:1.0.0"), img, append(ggcrOpts(t), remote.WithAuth(basicAuth("ci", "ci-secret")))...); err != nil {
		t.Fatal(err)
	}
	basic := func(user, password string) http.Header {
		return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))}}
	}
	get := func(ref string, h http.Header) int {
		h = h.Clone()
		h.Set("Accept", mf.MediaType)
		resp, _ := do(t, http.MethodGet, e.URL("/v2/team/app/manifests/"+ref), nil, h)
		return resp.StatusCode
	}
	refs := []string{"1.0.0", mf.Digest.String()}

	// ci is confirmed by its first pull, then answered from the cache.
	for _, ref := range refs {
		if code := get(ref, basic("ci", "ci-secret")); code != http.StatusOK {
			t.Fatalf("ci pulls team/app:%s: %d", ref, code)
		}
	}
	before := up.requests.Load()
	for _, ref := range refs {
		if code := get(ref, basic("ci", "ci-secret")); code != http.StatusOK {
			t.Fatalf("ci pulls team/app:%s again: %d", ref, code)
		}
	}
	if n := up.requests.Load() - before; n != 0 {
		t.Errorf("confirmed pulls reached the registry %d times, want 0", n)
	}

	refused := map[string]http.Header{
		"anonymous":          {},
		"a wrong password":   basic("ci", "not-the-secret"),
		"an unknown user":    basic("mallory", "ci-secret"),
		"a malformed header": {"Authorization": {"Basic !!!"}},
	}
	for name, h := range refused {
		for _, ref := range refs {
			if code := get(ref, h); code != http.StatusUnauthorized {
				t.Errorf("%s pulls team/app:%s: %d, want the registry's 401", name, ref, code)
			}
		}
	}
	// bob never pulled before: his first pull goes to the registry too.
	before = up.requests.Load()
	if code := get("1.0.0", basic("bob", "bob-secret")); code != http.StatusOK {
		t.Fatalf("bob pulls: %d", code)
	}
	if up.requests.Load() == before {
		t.Error("bob's first pull was answered from the cache before the registry confirmed him")
	}

	// The registry revokes ci. Once the TTL has passed, ci gets the
	// registry's 401, never the cache's 200.
	delete(users, "ci")
	rotate(t, htpasswd, readFile(t, mustHtpasswd(t, users)), 1)
	time.Sleep(ttl + 100*time.Millisecond)
	for range 10 {
		for _, ref := range refs {
			if code := get(ref, basic("ci", "ci-secret")); code != http.StatusUnauthorized {
				t.Fatalf("revoked ci pulls team/app:%s after the TTL: %d, want 401", ref, code)
			}
		}
	}
	if code := get("1.0.0", basic("bob", "bob-secret")); code != http.StatusOK {
		t.Errorf("bob pulls after ci's revocation: %d", code)
	}
	if _, err := os.Stat(htpasswd); err != nil {
		t.Fatal(err)
	}
}

// TestCacheNeverAnswersAnotherRepositorysManifest: the bytes taglock holds
// are the bytes of a manifest in one repository. A caller who may pull only
// their own repository binds an immutable tag there to a manifest that
// names a private manifest's digest as a non-distributable layer (the
// registry does not check that such a layer exists), so the ledger says
// their repository references that digest. Reading it as a manifest of
// their own repository must get the registry's answer for that repository
// (404), never the private manifest a reader of the other repository
// pulled before. The registry allows layer URLs, as one that serves
// Windows images does.
func TestCacheNeverAnswersAnotherRepositorysManifest(t *testing.T) {
	t.Parallel()
	up := MustUpstreamWith(t, UpstreamOptions{Extra: "validation:\n  manifests:\n    urls:\n      allow: ['^https://']\n"})
	e := MustEnv(t, Separate, withIssueACL(mustHtpasswd(t, authUsers)), func(c *config.Config) {
		c.Upstream.URL = "http://" + up.Addr
		c.Upstream.Auth = config.UpstreamAuth{Mode: "basic", Username: "taglock", Password: "unused"}
	})

	img := MustImage(t)
	private := MustManifest(t, img)
	if err := pushAs(t, e.Addr, "admin", "prod/app:v1", img); err != nil {
		t.Fatal(err)
	}
	// reader pulls it: taglock now holds its bytes.
	h := basic("reader")
	h.Set("Accept", private.MediaType)
	if resp, _ := do(t, http.MethodGet, e.URL("/v2/prod/app/manifests/v1"), nil, h); resp.StatusCode != http.StatusOK {
		t.Fatalf("reader pulls prod/app:v1: %d", resp.StatusCode)
	}

	// dev may pull and push dev/** only.
	cfg := static.NewLayer([]byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`), types.OCIConfigJSON)
	if err := remote.WriteLayer(e.Ref(t, "dev/x:unused").Context(), cfg, as(t, "dev")...); err != nil {
		t.Fatal(err)
	}
	cfgDigest, _ := cfg.Digest()
	cfgSize, _ := cfg.Size()
	raw := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},`+
		`"layers":[{"mediaType":%q,"digest":%q,"size":%d,"urls":["https://example.com/layer"]}]}`,
		ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig, cfgDigest, cfgSize,
		ocispec.MediaTypeImageLayerNonDistributableGzip, private.Digest, len(private.Raw)) //nolint:staticcheck // the attack needs it
	ph := basic("dev")
	ph.Set("Content-Type", ocispec.MediaTypeImageManifest)
	if resp, body := do(t, http.MethodPut, e.URL("/v2/dev/x/manifests/1.0.0"), []byte(raw), ph); resp.StatusCode != http.StatusCreated {
		t.Fatalf("dev pushes dev/x:1.0.0: %d %s", resp.StatusCode, body)
	}
	if resp, _ := do(t, http.MethodGet, e.URL("/v2/prod/app/manifests/v1"), nil, basic("dev")); resp.StatusCode == http.StatusOK {
		t.Fatal("dev may pull prod/app: the test proves nothing")
	}

	gh := basic("dev")
	gh.Set("Accept", private.MediaType)
	resp, body := do(t, http.MethodGet, e.URL("/v2/dev/x/manifests/"+private.Digest.String()), nil, gh)
	if resp.StatusCode == http.StatusOK || bytes.Equal(body, private.Raw) {
		t.Fatalf("dev read prod/app's manifest as dev/x@%s: %d %s", private.Digest, resp.StatusCode, body)
	}
}
